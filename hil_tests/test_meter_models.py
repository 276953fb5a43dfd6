"""Readings of each meter model decode to exactly the simulator's register values."""

import struct
from fractions import Fraction

from hil_tests.conftest import MODE
from tools.meter_sim import encode_registers

READING_KEYS = {"voltage_dV": 8, "current_mA": 9, "power_W": 7, "frequency_cHz": 10,
                "power_factor_milli": 11, "import_Wh": 5, "export_Wh": 6}


def _round_half_away(x: Fraction) -> int:
    n = abs(x)
    q = int(n)
    if n - q >= Fraction(1, 2):
        q += 1
    return q if x >= 0 else -q


def expected_fields(model) -> dict[int, int]:
    """The reading fields an ideal decoder gets from the simulator's registers, decoded
    here independently of the firmware (struct for float32, Fraction for the scale)."""
    meter = model.meter
    regs = encode_registers(meter, model.sample())
    out = {}
    for name, field in meter.fields.items():
        if name not in READING_KEYS:
            continue
        words = [regs[field.register + i] for i in range(field.width)]
        if field.kind == "f32":
            raw = Fraction(struct.unpack(">f", struct.pack(">HH", *words))[0])
        elif field.kind == "u16":
            raw = Fraction(words[0])
        elif field.kind == "u32le_words":
            raw = Fraction(words[0] | words[1] << 16)
        else:
            raw = Fraction(words[0] << 16 | words[1])
        out[READING_KEYS[name]] = _round_half_away(raw * field.num / field.den)
    return out


def test_each_meter_model_decodes_to_the_simulator_values(rig):
    cases = [("sdm120ct", "pv-producer", 1), ("sdm630ct", "school", 2),
             ("pzem004t-v3", "household", 3)]
    running = []
    for meter_id, profile, model_code in cases:
        model, port = rig.meter(meter_id, profile, seed=model_code, frozen=True)
        dev = rig.device(meter_id, port).start()
        running.append((dev, model, model_code))
    for dev, model, model_code in running:
        assert dev.wait_for(lambda d=dev: len(rig.endpoint.readings(d.device_id)) >= 3, 30), \
            dev.output()[-20:]
        dev.kill()
        want = expected_fields(model)
        assert len(want) >= 6
        for r in rig.endpoint.readings(dev.device_id):
            assert r.fields[12] == model_code
            assert r.fields[4] & 0x09FE == 0, r.fields
            got = {k: v for k, v in r.fields.items() if k in READING_KEYS.values()}
            assert got == want, (model.meter.id, MODE)
    assert not rig.endpoint.log.violations
