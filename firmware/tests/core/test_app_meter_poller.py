import struct

from app.meter_poller import MeterPoller
from app_fakes import FakeBus, FakeClock, run_sync
from wattcore import modbus_rtu, reading

SDM120 = {"id": "sdm120ct", "model": 1, "phases": 1, "baud": 9600, "parity": "N",
          "stop_bits": 1, "slave": 1, "function": 4, "blocks": [[0, 76]], "ct_rating_A": 100,
          "fields": {"voltage_dV": [0, 0, "f32", 10, 1], "current_mA": [0, 12, "f32", 1000, 1],
                     "power_W": [0, 24, "f32", 1, 1], "frequency_cHz": [0, 140, "f32", 100, 1],
                     "power_factor_milli": [0, 60, "f32", 1000, 1],
                     "import_Wh": [0, 144, "f32", 1000, 1],
                     "export_Wh": [0, 148, "f32", 1000, 1]},
          "serial_number": [3, 0xFC00, "u32be_words"]}
PZEM = {"id": "pzem004t-v3", "model": 3, "phases": 1, "baud": 9600, "parity": "N",
        "stop_bits": 1, "slave": 1, "function": 4, "blocks": [[0, 10]], "ct_rating_A": 100,
        "fields": {"voltage_dV": [0, 0, "u16", 1, 1], "current_mA": [0, 2, "u32le_words", 1, 1],
                   "power_W": [0, 6, "u32le_words", 1, 10],
                   "frequency_cHz": [0, 14, "u16", 10, 1],
                   "power_factor_milli": [0, 16, "u16", 10, 1],
                   "import_Wh": [0, 10, "u32le_words", 1, 1], "alarm": [0, 18, "u16", 1, 1]}}
FAULTS = reading.ST_FAULT_MASK


def _crc(frame):
    c = modbus_rtu.crc16(frame)
    return frame + bytes((c & 0xFF, c >> 8))


def _sdm_registers(v=230.5, i=5.25, p=1207.0, pf=0.875, f=50.0, ei=1234.5, ee=12.25):
    regs = bytearray(152)
    for off, x in ((0, v), (12, i), (24, p), (60, pf), (140, f), (144, ei), (148, ee)):
        regs[off:off + 4] = struct.pack(">f", x)
    return bytes(regs)


class Meter:
    # replies to function-4 reads from a register image; `faults` is a list of
    # per-request actions ("crc", "silent", "exception", "address", None)
    def __init__(self, regs, faults=()):
        self.regs = regs
        self.faults = list(faults)

    def reply(self, request):
        fault = self.faults.pop(0) if self.faults else None
        if fault == "silent":
            return b""
        if fault == "exception":
            return _crc(bytes((request[0], 0x84, 4)))
        addr = request[0] + 1 if fault == "address" else request[0]
        count = request[5]
        frame = _crc(bytes((addr, 4, 2 * count)) + self.regs[:2 * count])
        if fault == "crc":
            frame = frame[:-1] + bytes((frame[-1] ^ 0xFF,))
        return frame


def _poller(meter_map, regs, faults=(), **kw):
    meter = Meter(regs, faults)
    bus = FakeBus(meter.reply)
    return MeterPoller(bus, FakeClock(), meter_map, 1, 100, **kw), meter, bus


def test_sdm_values_decode_exactly():
    poller, _, bus = _poller(SDM120, _sdm_registers())
    values, st = run_sync(poller.poll())
    assert st == 0
    assert values == {"u": 2305, "i": 5250, "p": 1207, "pf": 875, "f": 5000, "ei": 1234500,
                      "ee": 12250}
    assert bus.sent == [modbus_rtu.read_request(1, 4, 0, 76)]


def test_pzem_values_decode_and_alarm():
    regs = bytearray(20)
    regs[0:2] = (2301).to_bytes(2, "big")
    regs[2:6] = bytes((0x12, 0x34, 0x00, 0x01))  # 0x00011234 mA, low word first
    regs[6:10] = bytes((0x2F, 0x1A, 0x00, 0x00))  # 12058 -> 1205.8 W -> 1206
    regs[10:14] = bytes((0x86, 0xA0, 0x00, 0x01))  # 100000 Wh
    regs[14:16] = (500).to_bytes(2, "big")
    regs[16:18] = (93).to_bytes(2, "big")
    poller, meter, _ = _poller(PZEM, bytes(regs))
    values, st = run_sync(poller.poll())
    assert st == 0
    assert values == {"u": 2301, "i": 0x11234, "p": 1206, "ei": 100000, "f": 5000, "pf": 930}
    regs[18:20] = b"\xff\xff"
    meter.regs = bytes(regs)
    values, st = run_sync(poller.poll())
    assert st == reading.ST_METER_ALARM and values == {}


def test_each_bus_fault_after_retries_gives_its_flag_and_no_values():
    cases = (("crc", reading.ST_METER_CRC), ("silent", reading.ST_METER_NO_REPLY),
             ("exception", reading.ST_METER_EXCEPTION),
             ("address", reading.ST_METER_WRONG_ADDRESS))
    for fault, flag in cases:
        poller, _, bus = _poller(SDM120, _sdm_registers(), [fault] * 3)
        values, st = run_sync(poller.poll())
        assert (values, st) == ({}, flag), fault
        assert len(bus.sent) == 3  # one try and two retries


def test_a_retry_that_succeeds_is_a_good_reading():
    poller, _, _ = _poller(SDM120, _sdm_registers(), ["crc", "silent"])
    values, st = run_sync(poller.poll())
    assert st == 0 and values["p"] == 1207


def test_nan_and_all_ones_are_faults():
    nan = bytearray(_sdm_registers())
    nan[24:28] = b"\x7f\xc0\x00\x00"
    poller, _, _ = _poller(SDM120, bytes(nan))
    assert run_sync(poller.poll()) == ({}, reading.ST_VALUE_NAN)
    regs = bytearray(20)
    regs[0:2] = b"\xff\xff"
    poller, _, _ = _poller(PZEM, bytes(regs))
    assert run_sync(poller.poll()) == ({}, reading.ST_VALUE_NAN)


def test_counter_backwards_keeps_the_last_good_baseline():
    poller, meter, _ = _poller(SDM120, _sdm_registers(ei=1000.0))
    assert run_sync(poller.poll())[1] == 0
    meter.regs = _sdm_registers(ei=999.0)
    assert run_sync(poller.poll()) == ({}, reading.ST_COUNTER_BACKWARDS)
    meter.regs = _sdm_registers(ei=1000.5)
    values, st = run_sync(poller.poll())
    assert st == 0 and values["ei"] == 1000500


def test_power_over_the_ct_rating():
    poller, _, _ = _poller(SDM120, _sdm_registers(p=-30000.0))  # 100 A CT: 25.3 kW max
    assert run_sync(poller.poll()) == ({}, reading.ST_POWER_OVER_RATING)
    poller, _, _ = _poller(SDM120, _sdm_registers(i=150.0))
    assert run_sync(poller.poll()) == ({}, reading.ST_POWER_OVER_RATING)


def test_reversed_ct_evidence():
    # a consumer-only site that shows export
    poller, _, _ = _poller(SDM120, _sdm_registers(p=-800.0), exports_allowed=False)
    assert run_sync(poller.poll()) == ({}, reading.ST_CT_REVERSED)
    # import power while only the export counter moves, two polls in a row
    poller, meter, _ = _poller(SDM120, _sdm_registers(p=900.0, ei=100.0, ee=50.0))
    assert run_sync(poller.poll())[1] == 0
    meter.regs = _sdm_registers(p=900.0, ei=100.0, ee=50.5)
    assert run_sync(poller.poll())[1] == 0  # once can be a load step
    meter.regs = _sdm_registers(p=900.0, ei=100.0, ee=51.0)
    assert run_sync(poller.poll()) == ({}, reading.ST_CT_REVERSED)


def test_faulty_polls_never_carry_measurements():
    poller, meter, _ = _poller(SDM120, _sdm_registers())
    for regs in (_sdm_registers(v=-1.0), _sdm_registers(pf=2.5), _sdm_registers(ei=-5.0)):
        meter.regs = regs
        values, st = run_sync(poller.poll())
        assert st & FAULTS and values == {}


def test_link_quality_counts_every_failed_attempt():
    faults = ["crc", "silent", None, "exception", "address", "crc"]
    poller, _, _ = _poller(SDM120, _sdm_registers(), faults)
    assert run_sync(poller.poll())[1] == 0  # the third attempt answered
    values, st = run_sync(poller.poll())  # three failures in a row
    assert values == {} and st == (reading.ST_METER_EXCEPTION | reading.ST_METER_WRONG_ADDRESS
                                   | reading.ST_METER_CRC)
    assert poller.link == {"retries": 4, "crc_errors": 2, "no_reply": 1, "exceptions": 1,
                           "wrong_address": 1}


def test_answers_finds_the_slave_that_replies():
    def reply(request):
        if request[0] == 7:
            return _crc(bytes((7, 4, 2)) + b"\x43\x66")
        if request[0] == 9:
            return _crc(bytes((9, 0x84, 2)))  # an exception is an answer too
        return b""

    bus = FakeBus(reply)
    poller = MeterPoller(bus, FakeClock(), SDM120, 1, 100)
    found = [s for s in range(1, 12) if run_sync(poller.answers(s, 20))]
    assert found == [7, 9]
    assert bus.sent[6] == modbus_rtu.read_request(7, 4, 0, 1)
    assert poller.link["no_reply"] == 0  # the scan is not the link's quality


def test_serial_number_read_with_its_own_function():
    def reply(request):
        if request[1] == 3 and request[2:4] == b"\xfc\x00":
            return _crc(bytes((1, 3, 4)) + (2190471).to_bytes(4, "big"))
        return b""

    bus = FakeBus(reply)
    poller = MeterPoller(bus, FakeClock(), SDM120, 1, 100)
    assert run_sync(poller.serial_number()) == 2190471
    assert bus.sent == [modbus_rtu.read_request(1, 3, 0xFC00, 2)]
    silent = MeterPoller(FakeBus(lambda r: b""), FakeClock(), SDM120, 1, 100, retries=1)
    assert run_sync(silent.serial_number()) is None
    assert run_sync(MeterPoller(bus, FakeClock(), PZEM, 1, 100).serial_number()) is None
