"""Readings of each meter model, through the real firmware and gateway, decode to
exactly the simulator's register values (decoded here independently of the firmware:
struct for float32, Fraction for the scale), as the gateway shows them
(``wattshare device show ID --json``: the last reading)."""

import struct
from fractions import Fraction

from tools.meter_sim import encode_registers

# the meter map's field -> the gateway's name for it in a device's last reading
SHOWN_AS = {"voltage_dV": "u_dv", "current_mA": "i_ma", "power_W": "p_w",
            "frequency_cHz": "f_chz", "power_factor_milli": "pf_milli",
            "import_Wh": "ei_wh", "export_Wh": "ee_wh"}


def _round_half_away(x: Fraction) -> int:
    n = abs(x)
    q = int(n)
    if n - q >= Fraction(1, 2):
        q += 1
    return q if x >= 0 else -q


def expected_fields(model) -> dict[str, int]:
    """What an ideal decoder reads from the simulator's registers."""
    meter = model.meter
    regs = encode_registers(meter, model.sample())
    out = {}
    for name, field in meter.fields.items():
        if name not in SHOWN_AS:
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
        out[SHOWN_AS[name]] = _round_half_away(raw * field.num / field.den)
    return out


def test_each_meter_model_decodes_to_the_simulator_values(gateway_site):
    site = gateway_site
    cases = [("sdm120ct", "pv-producer", 1), ("sdm630ct", "school", 2),
             ("pzem004t-v3", "household", 3)]
    devices = site.add_many([((f"model {m}", m, profile), dict(seed=seed, frozen=True))
                             for m, profile, seed in cases])
    for dev in devices:
        dev.start()
    for dev in devices:
        assert dev.wait_for(lambda d=dev: site.device_status(d.label)["readings"] >= 3, 60), \
            dev.output()[-20:]
        dev.power_cut()
        want = expected_fields(dev.model)
        assert len(want) >= 6
        shown = site.cli_json("device", "show", dev.device_id)["last_reading"]
        assert shown["signature_valid"] and shown["flags"] == [], shown
        got = {k: shown[k] for k in want}
        assert got == want, (dev.label, shown)
        for r in site.readings(dev.label):  # every reading, not only the last
            assert (r["p"], r["ei"], r["ee"]) == (want["p_w"], want["ei_wh"],
                                                  want.get("ee_wh")), r
