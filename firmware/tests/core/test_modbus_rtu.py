# Shared tests for wattcore.modbus_rtu (CPython and the MicroPython VM).
# Expected frames are the well-known examples from the Modbus serial line spec
# and meter manuals; expected values are derived by hand from the IEEE-754
# bits (value = mantissa * 2^exponent), written next to each case.
from support import raises
from wattcore import modbus_rtu as m
from wattcore.errors import (
    DecodeError,
    EncodeError,
    ModbusAddressError,
    ModbusCrcError,
    ModbusError,
    ModbusExceptionReply,
)

H = bytes.fromhex


# Bit-by-bit CRC straight from the spec's flow chart, to check the table one.
def _crc_bitwise(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def _with_crc(body):
    crc = _crc_bitwise(body)
    return body + bytes((crc & 0xFF, crc >> 8))


def test_crc16_check_value():
    # CRC-16/MODBUS catalogue check value.
    assert m.crc16(b"123456789") == 0x4B37
    assert m.crc16(b"") == 0xFFFF


def test_crc16_known_frames():
    # Classic examples: low byte first on the wire.
    assert m.crc16(H("01040000000A")) == 0x0D70
    assert m.crc16(H("01030000000A")) == 0xCDC5
    assert m.crc16(H("018402")) == 0xC1C2


def test_crc16_matches_bitwise():
    data = bytes(range(256))
    for n in range(0, 256, 7):
        assert m.crc16(data[:n]) == _crc_bitwise(data[:n])
    assert m.crc16(bytearray(b"\x01\x02")) == _crc_bitwise(b"\x01\x02")
    assert m.crc16(memoryview(b"\x01\x02")) == _crc_bitwise(b"\x01\x02")


def test_read_request_known_bytes():
    assert m.read_request(1, 4, 0x0000, 10) == H("01040000000A700D")
    assert m.read_request(1, 3, 0x0000, 10) == H("01030000000AC5CD")
    # SDM import kWh from slave 247.
    assert m.read_request(247, 4, 0x0048, 2) == H("F70400480002E54B")
    assert m.read_request(1, 4, 0xFFFF, 1) == _with_crc(H("0104FFFF0001"))
    assert m.read_request(2, 4, 0x0000, 125) == _with_crc(H("02040000007D"))


def test_read_request_rejects_bad_arguments():
    bad = [
        (0, 4, 0, 1),
        (248, 4, 0, 1),
        (1, 6, 0, 1),
        (1, 0x84, 0, 1),
        (1, 4, 0, 0),
        (1, 4, 0, 126),
        (1, 4, -1, 1),
        (1, 4, 0xFFFF, 2),
        (1, 4, 0x10000, 1),
        (1, 4, "0", 1),
        (1, 4, 0, None),
        (None, 4, 0, 1),
    ]
    for args in bad:
        assert raises(EncodeError, m.read_request, *args), args


def test_expected_reply_length():
    assert m.expected_reply_length(4, 1) == 7
    assert m.expected_reply_length(3, 10) == 25
    assert m.expected_reply_length(4, 125) == 255
    assert raises(EncodeError, m.expected_reply_length, 4, 0)
    assert raises(EncodeError, m.expected_reply_length, 4, 126)
    assert raises(EncodeError, m.expected_reply_length, 16, 1)


def test_reply_length_after_header():
    normal = H("01040A0000")
    assert m.reply_length_after_header(normal, 5) == 10
    assert m.reply_length_after_header(normal, 1) == 2
    assert m.reply_length_after_header(H("0184"), 5) == 3
    assert m.reply_length_after_header(H("018402C2C1"), 5) == 0
    assert m.reply_length_after_header(H("0104"), 2) == 7
    assert raises(ModbusError, m.reply_length_after_header, b"\x01", 2)
    assert raises(ModbusError, m.reply_length_after_header, b"", 2)
    assert raises(EncodeError, m.reply_length_after_header, normal, 0)


def test_parse_read_reply_sdm_voltage():
    frame = H("010404 4366199A 85E4")
    assert m.parse_read_reply(frame, 1, 4, 2) == H("4366199A")
    assert m.parse_read_reply(bytearray(frame), 1, 4, 2) == H("4366199A")
    assert m.parse_read_reply(memoryview(frame), 1, 4, 2) == H("4366199A")


def test_parse_read_reply_pzem_frame():
    # PZEM-004T v3 reply to 01 04 0000 000A: 230.1 V, 123.456 A, 0 W, 65536 Wh,
    # 50.0 Hz, PF 1.00, no alarm.
    frame = H("010414 08FD E2400001 00000000 00000001 01F4 0064 0000 AEF1")
    data = m.parse_read_reply(frame, 1, 4, 10)
    assert len(data) == 20
    assert m.decode_value(data, 0, "u16", 1) == 2301
    assert m.decode_value(data, 2, "u32le_words", 1) == 123456
    assert m.decode_value(data, 6, "u32le_words", 1) == 0
    assert m.decode_value(data, 10, "u32le_words", 1) == 65536
    assert m.decode_value(data, 14, "u16", 1) == 500
    assert m.decode_value(data, 16, "u16", 1) == 100
    assert m.decode_value(data, 18, "u16", 1) == 0


def test_parse_read_reply_exception():
    frame = H("018402C2C1")
    try:
        m.parse_read_reply(frame, 1, 4, 10)
    except ModbusExceptionReply as e:
        assert e.code == 2
    else:
        raise AssertionError("no exception reply raised")
    # An exception for the other function is a reply to something else.
    assert raises(ModbusAddressError, m.parse_read_reply, frame, 1, 3, 10)
    # From another slave.
    assert raises(ModbusAddressError, m.parse_read_reply, _with_crc(H("028402")), 1, 4, 10)


def test_parse_read_reply_errors():
    good = H("0104040000FFFF FA34")
    assert m.parse_read_reply(good, 1, 4, 2) == H("0000FFFF")
    # Every wrong length, including the empty frame.
    for n in range(len(good)):
        assert raises(ModbusError, m.parse_read_reply, good[:n], 1, 4, 2), n
    assert raises(ModbusError, m.parse_read_reply, good + b"\x00", 1, 4, 2)
    # A 5-byte frame that is not an exception reply.
    assert raises(ModbusError, m.parse_read_reply, _with_crc(H("010400")), 1, 4, 2)
    # Any flipped bit breaks the CRC.
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x10
        assert raises(ModbusCrcError, m.parse_read_reply, bytes(bad), 1, 4, 2), i
    # Right CRC, wrong slave / function / byte count.
    assert raises(ModbusAddressError, m.parse_read_reply, good, 2, 4, 2)
    assert raises(ModbusAddressError, m.parse_read_reply, _with_crc(H("0103040000FFFF")), 1, 4, 2)
    assert raises(ModbusError, m.parse_read_reply, _with_crc(H("0104030000FFFF")), 1, 4, 2)
    # Exception reply with a length of a normal one.
    assert raises(ModbusError, m.parse_read_reply, _with_crc(H("0184020000")), 1, 4, 1)
    # Error classes all derive from DecodeError.
    assert issubclass(ModbusCrcError, DecodeError)
    assert issubclass(ModbusExceptionReply, ModbusError)


def test_timing():
    # 3.5 chars * 11 bits, rounded up to a whole microsecond.
    assert m.silent_interval_us(9600) == 4011  # 4010.42
    assert m.silent_interval_us(19200) == 2006  # 2005.21
    assert m.silent_interval_us(2400) == 16042  # 16041.67
    assert m.silent_interval_us(38400) == 1750
    assert m.silent_interval_us(115200) == 1750
    assert m.inter_char_timeout_us(9600) == 1719  # 1718.75
    assert m.inter_char_timeout_us(19200) == 860  # 859.375
    assert m.inter_char_timeout_us(57600) == 750
    assert raises(EncodeError, m.silent_interval_us, 0)
    assert raises(EncodeError, m.inter_char_timeout_us, -9600)


def test_word_orders():
    data = H("1234ABCD")
    assert m.u16(data, 0) == 0x1234
    assert m.u16(data, 2) == 0xABCD
    assert m.u32_high_word_first(data, 0) == 0x1234ABCD
    assert m.u32_low_word_first(data, 0) == 0xABCD1234
    assert m.f32_high_word_first_raw(data, 0) == 0x1234ABCD
    assert m.decode_value(data, 0, "u32be_words", 1) == 0x1234ABCD
    assert m.decode_value(data, 0, "u32le_words", 1) == 0xABCD1234
    assert m.u32_low_word_first(H("FFFF0000"), 0) == 0x0000FFFF
    assert m.u32_high_word_first(H("FFFFFFFF"), 0) == 0xFFFFFFFF


def test_offsets_out_of_range():
    data = H("1234ABCD")
    assert raises(ModbusError, m.u16, data, 3)
    assert raises(ModbusError, m.u16, data, -1)
    assert raises(ModbusError, m.u32_high_word_first, data, 1)
    assert raises(ModbusError, m.u32_low_word_first, data, -2)
    assert raises(ModbusError, m.decode_value, data, 2, "f32", 1)
    assert raises(ModbusError, m.decode_value, b"", 0, "u16", 1)


def test_decode_value_bad_kind_or_scale():
    data = H("1234ABCD")
    assert raises(EncodeError, m.decode_value, data, 0, "s16", 1)
    assert raises(EncodeError, m.decode_value, data, 0, "u16", (1, 0))
    assert raises(EncodeError, m.decode_value, data, 0, "u16", (1, 2, 3))
    assert raises(EncodeError, m.decode_value, data, 0, "u16", "10")
    assert raises(EncodeError, m.f32_to_scaled, -1, 1)
    assert raises(EncodeError, m.f32_to_scaled, 0x100000000, 1)


def test_f32_known_values():
    # 230.1 V: 0x4366199A = 0xE6199A * 2^-16 = 230.100006103515625.
    assert m.f32_to_scaled(0x4366199A, 1) == 230
    assert m.f32_to_scaled(0x4366199A, 10) == 2301
    assert m.f32_to_scaled(0x4366199A, 1000) == 230100
    # 1234.567 kWh: 0x449A5225 = 0x9A5225 * 2^-13 = 1234.5670166015625 -> Wh.
    assert m.f32_to_scaled(0x449A5225, 1000) == 1234567
    assert m.decode_value(H("449A5225"), 0, "f32", 1000) == 1234567
    # Export: -1500.25 W = 0xC4BB8800 = -(0xBB8800 * 2^-13).
    assert m.f32_to_scaled(0xC4BB8800, 1) == -1500
    assert m.f32_to_scaled(0xC4BB8800, 10) == -15003  # -15002.5, away from zero
    assert m.f32_to_scaled(0xC4BB8800, (1, 1000)) == -2  # -1.50025
    # 1.0, 2.0, 0.1 (0x3DCCCCCD = 0xCCCCCD * 2^-27 = 0.100000001490116...).
    assert m.f32_to_scaled(0x3F800000, 1) == 1
    assert m.f32_to_scaled(0x40000000, 7) == 14
    assert m.f32_to_scaled(0x3DCCCCCD, 10) == 1
    assert m.f32_to_scaled(0x3DCCCCCD, 10**9) == 100000001  # 100000001.49


def test_f32_rounding_half_away_from_zero():
    assert m.f32_to_scaled(0x3F000000, 1) == 1  # 0.5
    assert m.f32_to_scaled(0xBF000000, 1) == -1  # -0.5
    assert m.f32_to_scaled(0x3FC00000, 1) == 2  # 1.5
    assert m.f32_to_scaled(0x40200000, 1) == 3  # 2.5 (bankers' rounding gives 2)
    assert m.f32_to_scaled(0xC0200000, 1) == -3  # -2.5
    assert m.f32_to_scaled(0x3EFFFFFF, 1) == 0  # just below 0.5
    assert m.f32_to_scaled(0x3F000001, 1) == 1  # just above 0.5
    assert m.f32_to_scaled(0x3F800000, (1, 3)) == 0  # 0.333
    assert m.f32_to_scaled(0x40000000, (1, 3)) == 1  # 0.667
    assert m.f32_to_scaled(0x3F800000, (-3, 2)) == -2  # -1.5


def test_f32_zero_denormal_and_extremes():
    assert m.f32_to_scaled(0x00000000, 1000) == 0
    assert m.f32_to_scaled(0x80000000, 1000) == 0  # -0.0
    # Smallest subnormal 2^-149.
    assert m.f32_to_scaled(0x00000001, 10**6) == 0
    assert m.f32_to_scaled(0x00000001, 2**149) == 1
    assert m.f32_to_scaled(0x00000001, 2**148) == 1  # exactly 0.5
    assert m.f32_to_scaled(0x80000001, 2**148) == -1
    assert m.f32_to_scaled(0x00000003, 2**148) == 2  # 1.5
    # Largest subnormal (2^23 - 1) * 2^-149 and smallest normal 2^-126.
    assert m.f32_to_scaled(0x007FFFFF, 2**149) == 2**23 - 1
    assert m.f32_to_scaled(0x00800000, 2**126) == 1
    # Largest finite float (2^24 - 1) * 2^104, exactly.
    assert m.f32_to_scaled(0x7F7FFFFF, 1) == (2**24 - 1) * 2**104
    assert m.f32_to_scaled(0xFF7FFFFF, 1) == -((2**24 - 1) * 2**104)
    # Big integers: 2^24 + 2 (0x4B800001) stays exact.
    assert m.f32_to_scaled(0x4B800001, 1) == 2**24 + 2


def test_f32_nan_and_infinity():
    for raw in (0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF):
        assert m.f32_to_scaled(raw, 1000) is None, hex(raw)
    assert m.decode_value(H("7FC00000"), 0, "f32", 1) is None


def test_integer_scaling():
    # PZEM power 0.1 W units -> W.
    assert m.int_to_scaled(12345, (1, 10)) == 1235  # 1234.5
    assert m.int_to_scaled(12344, (1, 10)) == 1234
    assert m.int_to_scaled(5, (1, 10)) == 1  # 0.5
    assert m.int_to_scaled(4, (1, 10)) == 0
    assert m.int_to_scaled(7, (-1, 2)) == -4  # -3.5
    assert m.int_to_scaled(0xFFFFFFFF, 1000) == 0xFFFFFFFF * 1000
    assert m.decode_value(H("08FD"), 0, "u16", (1, 10)) == 230  # 230.1 V
    assert m.decode_value(H("08FD"), 0, "u16", 100) == 230100  # 0.1 V -> mV
