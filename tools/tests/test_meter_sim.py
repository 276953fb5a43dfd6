"""Meter simulator: pymodbus's own clients read the simulated registers (RTU framing over
TCP and over a pty) and decode them with struct back to the model's values; energy
counters never go backwards; every fault is observable from a client; profiles are
deterministic for a seed. Loopback only; every wait is bounded."""

import asyncio
import contextlib
import math
import os
import select
import signal
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer.rtu import FramerRTU
from wattcore import modbus_rtu

from gateway import simclock
from tools.board_config import KIND_WIDTH, compile_meter, get_meter, list_meters
from tools.errors import ConfigError
from tools.meter_sim import (
    PROFILES,
    FaultPlan,
    ManualClock,
    MeterModel,
    MeterSlave,
    RequestParser,
    SharedClock,
    SimClock,
    meter_view,
    parse_fault,
    serve_pty,
    serve_tcp,
)
from tools.meter_sim.__main__ import main as sim_main

REPO_ROOT = Path(__file__).resolve().parents[2]
MONDAY_NOON = datetime(2025, 6, 23, 12, 0, tzinfo=UTC).timestamp()  # a June Monday
MONDAY_EVENING = datetime(2025, 6, 23, 19, 0, tzinfo=UTC).timestamp()
SATURDAY = datetime(2025, 6, 21, 0, 0, tzinfo=UTC).timestamp()
HOUR = 3600.0
DAY = 86400.0
TIMEOUT = 0.4  # client reply timeout when a fault means no usable reply comes


# ---- independent decoding (struct, from the register layout) -----------------------


def _decode(words: list[int], kind: str) -> float:
    raw = struct.pack(f">{len(words)}H", *words)
    if kind == "f32":
        return struct.unpack(">f", raw)[0]
    if kind == "u16":
        return struct.unpack(">H", raw)[0]
    if kind == "u32le_words":
        low, high = struct.unpack(">HH", raw)
        return (high << 16) | low
    if kind == "u32be_words":
        return struct.unpack(">I", raw)[0]
    raise AssertionError(kind)


def _fields_from(meter, start: int, registers: list[int]) -> dict[str, float]:
    """Protocol values of every field, decoded from registers read from ``start``."""
    values = {}
    for name, field in meter.fields.items():
        offset = field.register - start
        words = registers[offset:offset + field.width]
        values[name] = _decode(words, field.kind) * field.num / field.den
    return values


def _assert_matches(meter, decoded: dict[str, float], expected) -> None:
    for name, field in meter.fields.items():
        want = getattr(expected, name)
        got = decoded[name]
        if field.kind == "f32":
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6), name
        else:  # integer registers: within one register unit (rounded or truncated)
            lsb = field.num / field.den
            assert abs(got - abs(want)) <= lsb, (name, got, want)


# ---- harness -------------------------------------------------------------------------


def _slave(meter_id="sdm120ct", profile="pv-household", t=MONDAY_NOON, seed=7, faults=(),
           address=1):
    meter = get_meter(meter_id)
    clock = ManualClock(t)
    model = MeterModel(meter, profile, clock, seed=seed)
    plan = FaultPlan([parse_fault(spec) for spec in faults], seed=seed, meter=meter,
                     slave=address)
    return MeterSlave(model, address, plan)


@contextlib.asynccontextmanager
async def _tcp(slave, timeout=2.0, trace=None):
    server = await serve_tcp(slave, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AsyncModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU,
                                  timeout=timeout, retries=0, reconnect_delay=0,
                                  trace_packet=trace)
    try:
        assert await client.connect()
        yield client
    finally:
        client.close()
        server.close()
        await server.wait_closed()


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


class _Received:
    """pymodbus trace_packet hook keeping the raw bytes the client received."""

    def __init__(self):
        self.frames: list[bytes] = []

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.frames.append(bytes(data))
        return data

    @property
    def last(self) -> bytes:
        return self.frames[-1]


def _crc_valid(frame: bytes) -> bool:
    return FramerRTU.compute_CRC(frame[:-2]).to_bytes(2, "big") == frame[-2:]


# ---- reading every meter model with pymodbus ---------------------------------------


@pytest.mark.parametrize("meter_id", ["sdm120ct", "sdm630ct", "pzem004t-v3"])
@pytest.mark.parametrize("t", [MONDAY_NOON, MONDAY_EVENING])
def test_pymodbus_reads_the_model_values_over_tcp(meter_id, t):
    slave = _slave(meter_id, "pv-household", t)
    meter = slave.model.meter

    async def scenario():
        async with _tcp(slave) as client:
            blocks = []
            for block in meter.blocks:
                reply = await client.read_input_registers(block.start, count=block.count,
                                                          device_id=1)
                assert not reply.isError()
                blocks.append((block.start, reply.registers))
            return blocks

    (start, registers), = _run(scenario())
    expected = meter_view(meter, slave.model.sample_at(t))
    _assert_matches(meter, _fields_from(meter, start, registers), expected)


def test_pymodbus_reads_the_serial_number_with_function_3():
    slave = _slave("sdm120ct", "household", MONDAY_NOON)

    async def scenario():
        async with _tcp(slave) as client:
            good = await client.read_holding_registers(0xFC00, count=2, device_id=1)
            beside = await client.read_holding_registers(0xFC01, count=2, device_id=1)
            return good, beside

    good, beside = _run(scenario())
    assert not good.isError() and beside.isError()
    serial = good.registers[0] << 16 | good.registers[1]
    assert serial == slave.model.serial_number and 1 <= serial <= 99_999_999
    other = _slave("sdm120ct", "household", MONDAY_NOON, seed=8).model.serial_number
    assert other != serial  # each simulated meter its own


def test_values_are_plausible_and_signed_on_a_bidirectional_meter():
    noon = _slave("sdm120ct", "pv-household", MONDAY_NOON).model.sample_at(MONDAY_NOON)
    evening = _slave("sdm120ct", "pv-household", MONDAY_EVENING).model.sample()
    assert noon.power_W < -500 and noon.power_factor_milli < 0  # exporting
    assert evening.power_W > 0 and evening.power_factor_milli > 0
    for s in (noon, evening):
        assert 2200 < s.voltage_dV < 2400
        assert 4990 < s.frequency_cHz < 5010
        amps = s.current_mA / 1000.0
        assert amps * s.voltage_dV / 10 * abs(s.power_factor_milli) / 1000 == pytest.approx(
            abs(s.power_W), rel=1e-9)


def test_fixed_register_layout_from_the_datasheets():
    # Independent of the TOML files: addresses and word orders as the datasheets give them.
    sdm = _slave("sdm120ct", "household", MONDAY_EVENING)
    sample = sdm.model.sample()
    regs = sdm.model.read_registers(4, 0x0000, 76)
    assert struct.unpack(">f", struct.pack(">HH", *regs[0:2]))[0] == pytest.approx(
        sample.voltage_dV / 10, rel=1e-6)
    assert struct.unpack(">f", struct.pack(">HH", *regs[0x48:0x4A]))[0] == pytest.approx(
        sample.import_Wh / 1000, rel=1e-6)
    pzem = _slave("pzem004t-v3", "household", MONDAY_EVENING)
    sample = pzem.model.sample()
    regs = pzem.model.read_registers(4, 0, 10)
    assert regs[0] == round(sample.voltage_dV)  # 0.1 V
    assert regs[1] | regs[2] << 16 == round(sample.current_mA)  # low word first
    assert regs[3] | regs[4] << 16 == round(sample.power_W * 10)  # 0.1 W
    assert regs[5] | regs[6] << 16 == math.floor(sample.import_Wh + sample.export_Wh)
    assert regs[7] == round(sample.frequency_cHz / 10)
    assert regs[8] == round(sample.power_factor_milli / 10)
    assert regs[9] == 0  # no alarm


def test_pzem_shows_magnitudes_and_counts_export_as_import():
    slave = _slave("pzem004t-v3", "pv-producer", MONDAY_NOON)
    true = slave.model.sample()
    assert true.power_W < 0
    shown = _fields_from(slave.model.meter, 0, slave.model.read_registers(4, 0, 10))
    assert shown["power_W"] == pytest.approx(-true.power_W, abs=0.1)
    assert shown["import_Wh"] == math.floor(true.import_Wh + true.export_Wh)


def test_firmware_decoder_reads_the_simulator_through_the_compiled_map():
    # The contract between the compiled JSON, the firmware core and the simulator.
    for meter in list_meters():
        slave = _slave(meter.id, "pv-household", MONDAY_NOON)
        compiled = compile_meter(meter)
        expected = meter_view(meter, slave.model.sample())
        (block_start, count), = compiled["blocks"]
        request = modbus_rtu.read_request(compiled["slave"], compiled["function"],
                                          block_start, count)
        parser = RequestParser()
        frames = parser.feed(request)
        reply = slave.handle(frames[0])
        data = modbus_rtu.parse_read_reply(reply, compiled["slave"], compiled["function"],
                                           count)
        for name, (_, offset, kind, num, den) in compiled["fields"].items():
            value = modbus_rtu.decode_value(data, offset, kind, (num, den))
            want = getattr(expected, name)
            want = want if kind == "f32" else abs(want)
            assert abs(value - want) <= 1 + num / den, (meter.id, name, value, want)


def test_pymodbus_serial_client_reads_over_a_pty():
    slave = _slave("pzem004t-v3", "household", MONDAY_EVENING)
    meter = slave.model.meter

    async def scenario():
        endpoint = await serve_pty(slave)
        client = AsyncModbusSerialClient(endpoint.path, framer=FramerType.RTU, baudrate=9600,
                                         timeout=2, retries=0, reconnect_delay=0)
        try:
            assert await client.connect()
            reply = await client.read_input_registers(0, count=10, device_id=1)
            assert not reply.isError()
            return reply.registers
        finally:
            client.close()
            endpoint.close()

    registers = _run(scenario())
    _assert_matches(meter, _fields_from(meter, 0, registers), meter_view(meter,
                                                                         slave.model.sample()))


# ---- what a third-party master sees (issue 13: phases, 0xF8, holding registers) -----
# Register addresses come from boards/meters/*.toml (one place per fact).


def _value(words: list[int], start: int, register: int, kind: str, num: int, den: int):
    offset = register - start
    return _decode(words[offset:offset + KIND_WIDTH[kind]], kind) * num / den


@pytest.mark.parametrize("profile, t", [("school", MONDAY_NOON), ("pv-producer", MONDAY_NOON),
                                        ("household", MONDAY_EVENING)],
                         ids=["school-importing", "pv-exporting", "household-evening"])
def test_sdm630_reports_each_phase_and_the_phases_add_up_to_the_total(profile, t):
    slave = _slave("sdm630ct", profile, t)
    meter = slave.model.meter
    block = meter.blocks[0]

    async def scenario():
        async with _tcp(slave) as client:
            reply = await client.read_input_registers(block.start, count=block.count,
                                                      device_id=1)
            assert not reply.isError()
            return reply.registers

    words = _run(scenario())
    fields = _fields_from(meter, block.start, words)
    phase = {name: [_value(words, block.start, r, m.kind, m.num, m.den) for r in m.registers]
             for name, m in meter.per_phase.items()}
    assert set(phase) == {"voltage_dV", "current_mA", "power_W"}
    volts = [v / 10 for v in phase["voltage_dV"]]
    amps = [a / 1000 for a in phase["current_mA"]]
    watts = phase["power_W"]
    total = fields["power_W"]
    assert abs(total) > 500  # a real load or feed-in, not standby
    if profile == "school":
        assert total > 5000  # the school at lessons: several kW over three phases
    assert all(215 < v < 245 for v in volts) and len(set(volts)) == 3
    assert all(a > 0.1 for a in amps) and len(set(amps)) == 3
    assert all(w != 0 and (w > 0) == (total > 0) for w in watts)  # every phase carries some
    assert sum(watts) == pytest.approx(total, rel=1e-5)
    pf = abs(fields["power_factor_milli"]) / 1000
    for v, a, w in zip(volts, amps, watts, strict=True):
        assert v * a * pf == pytest.approx(abs(w), rel=1e-5)
    # the reading's fields are phase L1's voltage and current
    assert (fields["voltage_dV"], fields["current_mA"]) == (phase["voltage_dV"][0],
                                                             phase["current_mA"][0])


def test_sdm630_reversed_ct_flips_every_phase():
    slave = _slave("sdm630ct", "pv-producer", MONDAY_NOON)
    meter = slave.model.meter
    words = slave.model.read_registers(4, 0, 76, reversed_ct=True)
    true = slave.model.sample()
    watts = [_value(words, 0, r, meter.per_phase["power_W"].kind, 1, 1)
             for r in meter.per_phase["power_W"].registers]
    total = _fields_from(meter, 0, words)["power_W"]
    assert true.power_W < 0 < total and all(w > 0 for w in watts)
    assert sum(watts) == pytest.approx(total, rel=1e-5)


def test_single_phase_meters_have_one_phase_equal_to_the_total():
    for meter_id in ("sdm120ct", "pzem004t-v3"):
        sample = _slave(meter_id, "household", MONDAY_EVENING).model.sample()
        assert sample.phase_power_W == (sample.power_W,)
        assert sample.phase_voltage_dV == (sample.voltage_dV,)
        assert not get_meter(meter_id).per_phase


def test_pzem_answers_the_general_address_like_its_own():
    slave = _slave("pzem004t-v3", "household", MONDAY_EVENING, address=5)
    general = slave.model.meter.general_address
    received = _Received()

    async def scenario():
        async with _tcp(slave, timeout=TIMEOUT, trace=received) as client:
            own = await client.read_input_registers(0, count=10, device_id=5)
            shared = await client.read_input_registers(0, count=10, device_id=general)
            try:
                other = await client.read_input_registers(0, count=10, device_id=6)
            except ModbusIOException as exc:
                other = exc
            return own, shared, other

    own, shared, other = _run(scenario())
    assert general == 0xF8
    assert not own.isError() and not shared.isError()
    assert shared.registers == own.registers  # the same meter, the same (frozen) moment
    assert [f[0] for f in received.frames] == [5, 0xF8]  # each reply as it was addressed
    assert isinstance(other, ModbusIOException)  # another address: silence
    assert slave.stats["other_address"] == 1


def test_a_meter_without_a_general_address_ignores_0xf8():
    slave = _slave("sdm120ct", "household", MONDAY_EVENING)
    assert slave.model.meter.general_address is None

    async def scenario():
        async with _tcp(slave, timeout=TIMEOUT) as client:
            try:
                return await client.read_input_registers(0, count=76, device_id=0xF8)
            except ModbusIOException as exc:
                return exc

    assert isinstance(_run(scenario()), ModbusIOException)


@pytest.mark.parametrize("meter_id", ["sdm120ct", "sdm630ct", "pzem004t-v3"])
def test_holding_register_gives_the_slave_address(meter_id):
    slave = _slave(meter_id, "household", MONDAY_EVENING, address=7)
    holding = slave.model.meter.holding["slave_address"]
    width = KIND_WIDTH[holding.kind]

    async def scenario():
        async with _tcp(slave) as client:
            node = await client.read_holding_registers(holding.register, count=width,
                                                       device_id=7)
            beside = await client.read_holding_registers(holding.register + width, count=1,
                                                         device_id=7)
            return node, beside

    node, beside = _run(scenario())
    assert not node.isError(), node
    assert _decode(node.registers, holding.kind) == 7
    assert beside.isError() and beside.exception_code == 2  # not a register: 02, not 01


def test_cli_pzem_tells_its_address_to_a_master_on_0xf8():
    # how a new user finds a PZEM's address: read holding 0x0002 at the general address
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.meter_sim", "--meter", "pzem004t-v3", "--profile",
         "household", "--tcp", "127.0.0.1:0", "--slave", "9"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = _wait_for_line(proc, "meter_sim: listening tcp ")
        port = int(line.split()[3].rpartition(":")[2])
        holding = get_meter("pzem004t-v3").holding["slave_address"]

        async def scenario():
            client = AsyncModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU,
                                          timeout=2, retries=0, reconnect_delay=0)
            try:
                assert await client.connect()
                return await client.read_holding_registers(holding.register, count=1,
                                                           device_id=0xF8)
            finally:
                client.close()

        reply = _run(scenario())
        assert not reply.isError() and reply.registers == [9]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


# ---- energy counters -----------------------------------------------------------------


def test_energy_counters_never_go_backwards_in_the_registers():
    for meter_id in ("sdm120ct", "pzem004t-v3"):
        slave = _slave(meter_id, "pv-household", SATURDAY)
        meter, clock = slave.model.meter, slave.model.clock
        last = {"import_Wh": -1.0, "export_Wh": -1.0}
        for _ in range(2 * 24 * 6):  # two days, every 10 minutes
            clock.advance(600.0)
            block = meter.blocks[0]
            shown = _fields_from(meter, block.start,
                                 slave.model.read_registers(4, block.start, block.count))
            for name in last:
                if name in shown:
                    assert shown[name] >= last[name], (meter_id, name)
                    last[name] = shown[name]


def test_energy_integrates_the_profile_power():
    clock = ManualClock(SATURDAY)
    model = MeterModel(get_meter("sdm120ct"), "pv-household", clock, seed=3)
    imp0, exp0 = model.energy_Wh(SATURDAY)
    imp1, exp1 = model.energy_Wh(SATURDAY + DAY)
    step = 5.0  # independent midpoint integration of the same power function
    imported = exported = 0.0
    for i in range(int(DAY / step)):
        p = model.power_W(SATURDAY + (i + 0.5) * step)
        imported += max(p, 0.0) * step / HOUR
        exported += max(-p, 0.0) * step / HOUR
    assert imported > 1000 and exported > 1000  # a pv-household day both imports and exports
    assert imp1 - imp0 == pytest.approx(imported, rel=0.01)
    assert exp1 - exp0 == pytest.approx(exported, rel=0.01)


def test_energy_does_not_depend_on_how_often_the_meter_is_read():
    meter = get_meter("sdm630ct")
    often = MeterModel(meter, "school", ManualClock(SATURDAY), seed=1)
    once = MeterModel(meter, "school", ManualClock(SATURDAY), seed=1)
    for minute in range(1, 3 * 24 * 60, 7):
        often.energy_Wh(SATURDAY + 60.0 * minute)
    end = SATURDAY + 3 * DAY
    assert often.energy_Wh(end) == pytest.approx(once.energy_Wh(end), rel=1e-12)
    # asking about an earlier time again gives the earlier value
    first = once.energy_Wh(SATURDAY + DAY)
    assert once.energy_Wh(SATURDAY + DAY) == first


# ---- profiles ------------------------------------------------------------------------


def _powers(profile, start, hours, seed=0, step=300.0):
    model = MeterModel(get_meter("sdm120ct"), profile, ManualClock(start), seed=seed)
    return [model.power_W(start + h * HOUR + i * step)
            for h in hours for i in range(int(HOUR / step))]


def _mean(values):
    return sum(values) / len(values)


def test_pv_producer_exports_by_day_only():
    day = _powers("pv-producer", datetime(2025, 6, 23, tzinfo=UTC).timestamp(), range(10, 15))
    night = _powers("pv-producer", datetime(2025, 6, 23, tzinfo=UTC).timestamp(), range(0, 3))
    assert max(day) < 0 and _mean(day) < -1000
    assert all(0 < p < 10 for p in night)  # inverter standby


def test_household_imports_with_morning_and_evening_peaks():
    midnight = datetime(2025, 6, 23, tzinfo=UTC).timestamp()
    all_day = _powers("household", midnight, range(24))
    assert min(all_day) > 0
    night = _mean(_powers("household", midnight, range(1, 4)))
    morning = _mean(_powers("household", midnight, [7]))
    evening = _mean(_powers("household", midnight, range(18, 21)))
    assert morning > 2 * night and evening > 3 * night


def test_school_imports_in_school_hours_on_weekdays():
    monday = datetime(2025, 6, 23, tzinfo=UTC).timestamp()
    lessons = _mean(_powers("school", monday, range(9, 15)))
    night = _mean(_powers("school", monday, range(0, 5)))
    saturday = _mean(_powers("school", SATURDAY, range(9, 15)))
    assert lessons > 5000 and night < 1000 and saturday < 1000


def test_pv_household_imports_and_exports():
    midnight = datetime(2025, 6, 23, tzinfo=UTC).timestamp()
    day = _powers("pv-household", midnight, range(24))
    assert min(day) < -1000 and max(day) > 500


def test_pv_away_by_day_exports_while_its_residents_are_at_work():
    monday = datetime(2025, 6, 23, tzinfo=UTC).timestamp()
    midday = _powers("pv-away-by-day", monday, range(10, 15))
    evening = _mean(_powers("pv-away-by-day", monday, range(19, 22)))
    at_home = _mean(_powers("pv-household", monday, range(10, 15), seed=0))
    assert max(midday) < 0 and _mean(midday) < at_home  # more surplus than a home in use
    assert evening > 300  # imports once they are back


def test_pv_battery_exports_in_the_evening():
    monday = datetime(2025, 6, 23, tzinfo=UTC).timestamp()
    charging = _mean(_powers("pv-battery", monday, range(10, 13)))
    afternoon = _mean(_powers("pv-battery", monday, range(14, 16)))
    evening = _powers("pv-battery", monday, range(17, 21))
    night = _mean(_powers("pv-battery", monday, range(1, 4)))
    assert afternoon < charging <= 0  # the battery holds back the midday surplus
    assert max(evening) <= -2000 and night > 0


def test_profiles_are_deterministic_for_a_seed():
    meter = get_meter("sdm120ct")
    for name in PROFILES:
        runs = []
        for seed in (11, 11, 12):
            clock = ManualClock(SATURDAY)
            model = MeterModel(meter, name, clock, seed=seed)
            samples = []
            for _ in range(48):
                clock.advance(1800.0)
                samples.append(model.sample())
            runs.append(samples)
        assert runs[0] == runs[1], name
        assert runs[0] != runs[2], name


def test_unknown_profile_is_a_config_error():
    with pytest.raises(ConfigError, match="profile 'office': unknown; one of pv-producer"):
        MeterModel(get_meter("sdm120ct"), "office", ManualClock(0.0))


def test_sim_clock_runs_at_speed():
    ticks = iter([100.0, 101.0, 103.5])
    clock = SimClock(start=SATURDAY, speed=60, monotonic=lambda: next(ticks))
    assert clock() == SATURDAY + 60
    assert clock() == SATURDAY + 210


def test_shared_clock_is_the_gateways_simulated_clock(monkeypatch):
    monkeypatch.delenv(simclock.ENV, raising=False)
    assert SharedClock.from_env() is None
    monkeypatch.setenv(simclock.ENV, f"{SATURDAY},{time.time()},60")
    clock = SharedClock.from_env()
    assert clock is not None and clock.speed == 60
    first = clock()
    assert simclock.now() >= first >= SATURDAY  # the same function of the wall clock
    assert clock() - simclock.now() < 1.0
    model = MeterModel(get_meter("sdm120ct"), "household", clock, seed=1)
    assert SATURDAY <= model.start <= clock()


@pytest.mark.parametrize("extra, message", [
    (["--speed", "30"], "--speed 30 differs from $WATTSHARE_SIM_CLOCK (speed 60)"),
    (["--start", "2025-06-23T12:00"],
     "--start: the simulated time comes from $WATTSHARE_SIM_CLOCK"),
])
def test_cli_refuses_a_clock_that_contradicts_the_shared_one(monkeypatch, capsys, extra,
                                                             message):
    monkeypatch.setenv(simclock.ENV, f"{SATURDAY},{time.time()},60")
    with pytest.raises(SystemExit) as info:
        sim_main(["--meter", "sdm120ct", "--profile", "household", "--pty", *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# ---- faults, seen from a pymodbus client ---------------------------------------------


def _read_with_faults(faults, meter_id="sdm120ct", profile="pv-household", reads=2,
                      timeout=TIMEOUT):
    slave = _slave(meter_id, profile, MONDAY_NOON, faults=faults)
    received = _Received()
    meter = slave.model.meter
    block = meter.blocks[0]

    async def scenario():
        results = []
        async with _tcp(slave, timeout=timeout, trace=received) as client:
            for _ in range(reads):
                try:
                    results.append(await client.read_input_registers(
                        block.start, count=block.count, device_id=1))
                except ModbusIOException as exc:
                    results.append(exc)
        return results

    return slave, received, _run(scenario())


def test_fault_no_reply_times_out_then_recovers():
    slave, received, (first, second) = _read_with_faults(["no-reply@1"])
    assert isinstance(first, ModbusIOException)
    assert not isinstance(second, ModbusIOException) and not second.isError()
    assert len(received.frames) == 1  # only the second request was answered
    assert slave.stats["fault:no-reply"] == 1


def test_fault_crc_is_a_corrupted_but_complete_reply():
    slave, received, (first, second) = _read_with_faults(["crc@1"])
    assert isinstance(first, ModbusIOException)  # pymodbus drops the frame: no response
    bad = received.frames[0]
    assert len(bad) == 5 + 2 * 76 and bad[:3] == bytes([1, 4, 152])
    assert not _crc_valid(bad)
    assert not second.isError()


def test_fault_exception_reply_with_configured_code():
    _, _, (first, second) = _read_with_faults(["exception=2@1"])
    assert first.isError() and first.exception_code == 2
    assert not second.isError()
    _, _, (default,) = _read_with_faults(["exception:1"], reads=1)
    assert default.isError() and default.exception_code == 4


def test_fault_wrong_address_in_reply():
    _, received, (first, second) = _read_with_faults(["wrong-address=7@1"])
    assert isinstance(first, ModbusIOException)  # pymodbus skips a reply from slave 7
    wrong = received.frames[0]
    assert wrong[0] == 7 and wrong[1] == 4 and _crc_valid(wrong)
    assert not second.isError()


def test_fault_nan_in_a_register():
    slave, _, (first, second) = _read_with_faults(["nan=voltage_dV@1"])
    meter = slave.model.meter
    faulty = _fields_from(meter, 0, first.registers)
    assert math.isnan(faulty["voltage_dV"])
    assert all(math.isfinite(v) for k, v in faulty.items() if k != "voltage_dV")
    assert math.isfinite(_fields_from(meter, 0, second.registers)["voltage_dV"])
    # integer registers have no NaN: all ones
    slave, _, (pzem,) = _read_with_faults(["nan"], meter_id="pzem004t-v3", reads=1)
    assert pzem.registers[3:5] == [0xFFFF, 0xFFFF]


def test_fault_reversed_ct_flips_power_and_swaps_counters():
    slave, _, (reply,) = _read_with_faults(["reversed-ct"], profile="pv-producer", reads=1)
    meter = slave.model.meter
    true = slave.model.sample()
    shown = _fields_from(meter, 0, reply.registers)
    assert true.power_W < 0 < shown["power_W"]  # exporting, but looks like import
    assert shown["power_W"] == pytest.approx(-true.power_W, rel=1e-6)
    assert shown["power_factor_milli"] == pytest.approx(-true.power_factor_milli, rel=1e-6)
    assert shown["import_Wh"] == pytest.approx(true.export_Wh, rel=1e-6)
    assert shown["export_Wh"] == pytest.approx(true.import_Wh, rel=1e-6)


def test_probabilistic_faults_are_deterministic_for_a_seed():
    request = modbus_rtu.read_request(1, 4, 0, 76)

    def pattern(seed):
        slave = _slave(faults=["crc:0.3", "no-reply:0.1"], seed=seed)
        out = []
        for _ in range(200):
            reply = slave.handle(request)
            out.append("-" if reply is None else ("ok" if _crc_valid(reply) else "crc"))
        return out

    a, b, c = pattern(5), pattern(5), pattern(6)
    assert a == b and a != c
    assert 30 <= a.count("crc") <= 90 and 5 <= a.count("-") <= 40


def test_fault_specs_are_validated():
    meter = get_meter("pzem004t-v3")
    cases = {
        "crc:2": "fault 'crc:2': probability 2 is not in [0, 1]",
        "slow:0.1": "fault 'slow:0.1': 'slow' is not one of no-reply, crc, exception",
        "crc=3": "fault 'crc=3': crc takes no =value",
        "exception=300": "fault 'exception=300': exception code 300 is not in 1..255",
        "no-reply@0": "fault 'no-reply@0': @0: request numbers start at 1",
        "no-reply@x": "fault 'no-reply@x': @x: expected request numbers",
    }
    for spec, message in cases.items():
        with pytest.raises(ConfigError) as info:
            parse_fault(spec)
        assert str(info.value).startswith(message), spec
    with pytest.raises(ConfigError, match="field 'export_Wh' is not one of pzem004t-v3's"):
        FaultPlan([parse_fault("nan=export_Wh")], meter=meter, slave=1)
    with pytest.raises(ConfigError, match="address 1 is the simulated slave's own address"):
        FaultPlan([parse_fault("wrong-address=1")], meter=meter, slave=1)


# ---- RTU framing, sans-IO ------------------------------------------------------------


def _exception_code(reply: bytes) -> int:
    assert _crc_valid(reply) and reply[1] & 0x80
    return reply[2]


def test_requests_reassembled_from_bytes_and_noise():
    request = modbus_rtu.read_request(1, 4, 0, 10)
    parser = RequestParser()
    frames = []
    for i in range(len(request)):
        frames += parser.feed(request[i:i + 1])
    assert frames == [request]
    assert parser.feed(b"\x00\xff\x13" + request + request) == [request, request]
    assert parser.discarded == 3
    assert parser.feed(bytes(range(256)) * 40) == []  # noise: nothing, and bounded
    assert parser.buffered <= 256
    assert parser.feed(request) == [request]  # and it recovers


def test_slave_answers_only_its_address_and_refuses_bad_requests():
    slave = _slave("sdm120ct")
    assert slave.handle(modbus_rtu.read_request(2, 4, 0, 76)) is None
    assert slave.stats["other_address"] == 1
    # function 03 reads configuration registers; 0x0000 is not one of them
    assert _exception_code(slave.handle(modbus_rtu.read_request(1, 3, 0, 2))) == 2
    write = bytes([1, 6, 0x00, 0x14, 0x00, 0x07])  # write single register: not served
    assert _exception_code(slave.handle(write + _crc(write))) == 1
    assert _exception_code(slave.handle(modbus_rtu.read_request(1, 4, 0x0100, 2))) == 2
    assert _exception_code(slave.handle(modbus_rtu.read_request(1, 4, 0x004A, 4))) == 2
    too_many = bytes([1, 4, 0, 0, 0, 126])
    assert _exception_code(slave.handle(too_many + _crc(too_many))) == 3
    unknown = bytes([1, 0x2B, 0x0E, 0x01, 0x00])  # read device identification
    frames = RequestParser().feed(unknown + _crc(unknown))
    assert _exception_code(slave.handle(frames[0])) == 1
    assert slave.requests == 6


def _crc(data: bytes) -> bytes:
    return FramerRTU.compute_CRC(data).to_bytes(2, "big")


# ---- command line --------------------------------------------------------------------


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        sim_main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--tcp", "--pty", "--serial", "pv-producer", "reversed-ct", "MBAP"):
        assert word in out


@pytest.mark.parametrize("argv, message", [
    (["--meter", "sdm72", "--profile", "household", "--pty"],
     "--meter 'sdm72': unknown; one of pzem004t-v3, sdm120ct, sdm630ct"),
    (["--meter", "sdm120ct", "--profile", "office", "--pty"],
     "argument --profile: invalid choice: 'office'"),
    (["--meter", "sdm120ct", "--profile", "household"],
     "at least one of --tcp, --pty, --serial"),
    (["--meter", "sdm120ct", "--profile", "household", "--tcp", "localhost"],
     "argument --tcp: 'localhost' is not HOST:PORT"),
    (["--meter", "sdm120ct", "--profile", "household", "--pty", "--slave", "0"],
     "argument --slave: 0 is not in 1..247"),
    (["--meter", "sdm120ct", "--profile", "household", "--pty", "--speed", "-1"],
     "argument --speed: -1 is not in (0, 1000000]"),
    (["--meter", "sdm120ct", "--profile", "household", "--pty", "--fault", "crc:2"],
     "--fault: fault 'crc:2': probability 2 is not in [0, 1]"),
    (["--meter", "sdm120ct", "--profile", "household", "--pty", "--start", "noon"],
     "argument --start: 'noon' is not 'now' or an ISO 8601 time"),
], ids=["meter", "profile", "no-transport", "tcp", "slave", "speed", "fault", "start"])
def test_cli_names_the_bad_option(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        sim_main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def _wait_for_line(proc, prefix: str, deadline_s: float = 10.0) -> str:
    """The first stdout line starting with ``prefix`` (raw fd reads: no hidden buffer)."""
    fd = proc.stdout.fileno()
    buffer = b""
    while True:
        lines = buffer.split(b"\n")
        for line in lines[:-1]:
            if line.startswith(prefix.encode()):
                return line.decode()
        ready, _, _ = select.select([fd], [], [], deadline_s)
        assert ready, f"no line {prefix!r} from the simulator; got {buffer!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"simulator exited: {buffer!r} {proc.stderr.read()!r}"
        buffer += chunk


def test_cli_serves_rtu_over_tcp():
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.meter_sim", "--meter", "sdm630ct", "--profile",
         "pv-producer", "--tcp", "127.0.0.1:0", "--start", "2025-06-23T12:00",
         "--speed", "1", "--seed", "4", "--fault", "exception=3@2"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = _wait_for_line(proc, "meter_sim: listening tcp ")
        port = int(line.split()[3].rpartition(":")[2])

        async def scenario():
            client = AsyncModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU,
                                          timeout=2, retries=0, reconnect_delay=0)
            try:
                assert await client.connect()
                first = await client.read_input_registers(0, count=76, device_id=1)
                second = await client.read_input_registers(0, count=76, device_id=1)
                return first, second
            finally:
                client.close()

        first, second = _run(scenario())
        power = struct.unpack(">f", struct.pack(">HH", *first.registers[0x34:0x36]))[0]
        assert power < -500  # a PV producer at noon exports
        assert second.isError() and second.exception_code == 3
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert b"stopped after 2 requests, 2 replies (faults: exception 1)" in out
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
