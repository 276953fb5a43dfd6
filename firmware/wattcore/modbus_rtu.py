# Modbus RTU master framing, sans-IO: build read requests, size and check the
# replies, decode register values to scaled integers. No floats anywhere, so
# the ESP32 (single-precision floats) and the host (doubles) agree bit for bit.
#
# Frame layout (Modbus over Serial Line V1.02):
#   request  [slave][function][address hi][address lo][count hi][count lo][crc lo][crc hi]
#   reply    [slave][function][byte count][data ...][crc lo][crc hi]
#   error    [slave][function | 0x80][exception code][crc lo][crc hi]
#
# Scale: every decoder returns an integer
#   round_half_away_from_zero(register_value * num / den)
# where `scale` is either an int n (meaning n/1) or a (num, den) pair of ints
# with den >= 1. `register_value` is the value in the register's own units:
#   SDM import energy 0x0048, float kWh, wanted in Wh        -> scale 1000
#   PZEM voltage u16 in 0.1 V, kept in 0.1 V                 -> scale 1
#   PZEM current u32 in mA, kept in mA                       -> scale 1
#   PZEM power u32 in 0.1 W, wanted in W                     -> scale (1, 10)

from array import array

from wattcore.const import const
from wattcore.errors import (
    EncodeError,
    ModbusAddressError,
    ModbusCrcError,
    ModbusError,
    ModbusExceptionReply,
)

READ_HOLDING_REGISTERS = const(3)
READ_INPUT_REGISTERS = const(4)
MAX_READ_COUNT = const(125)
# A master reads this many bytes first: a whole exception reply, or the start
# of a normal one (then reply_length_after_header() more bytes).
HEADER_LENGTH = const(5)
EXCEPTION_REPLY_LENGTH = const(5)
# Register kinds understood by decode_value().
KINDS = ("f32", "u16", "u32le_words", "u32be_words")

_MIN_SLAVE = const(1)
_MAX_SLAVE = const(247)
_BITS_PER_CHAR = const(11)  # start + 8 data + parity/stop + stop
_FIXED_ABOVE_BAUD = const(19200)


def _crc_table():
    table = array("H", [0] * 256)
    for i in range(256):
        crc = i
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
        table[i] = crc
    return table


_CRC_TABLE = _crc_table()


# Modbus CRC-16 (reflected poly 0xA001, init 0xFFFF). On the wire the low byte
# goes first.
def crc16(data):
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def _check_read(function, count):
    if function != READ_HOLDING_REGISTERS and function != READ_INPUT_REGISTERS:
        raise EncodeError(f"modbus function {function!r}: only 3 and 4 are supported")
    if not isinstance(count, int) or not 1 <= count <= MAX_READ_COUNT:
        raise EncodeError(f"modbus register count {count!r}: must be 1..125")


def read_request(slave, function, address, count):
    if not isinstance(slave, int) or not _MIN_SLAVE <= slave <= _MAX_SLAVE:
        raise EncodeError(f"modbus slave {slave!r}: must be 1..247")
    _check_read(function, count)
    # The last register read must exist: address + count - 1 <= 0xFFFF.
    if not isinstance(address, int) or address < 0 or address + count > 0x10000:
        raise EncodeError(f"modbus address {address!r}: must be 0..65535 with the count")
    frame = bytearray(8)
    frame[0] = slave
    frame[1] = function
    frame[2] = address >> 8
    frame[3] = address & 0xFF
    frame[4] = count >> 8
    frame[5] = count & 0xFF
    crc = crc16(memoryview(frame)[:6])
    frame[6] = crc & 0xFF
    frame[7] = crc >> 8
    return bytes(frame)


# Length of a normal reply to a read of `count` registers.
def expected_reply_length(function, count):
    _check_read(function, count)
    return 5 + 2 * count


# How many more bytes to read once the first bytes (at least 2, normally
# HEADER_LENGTH) of a reply to a read of `count` registers have arrived: an
# exception reply is complete at 5 bytes. The caller then hands the whole
# frame to parse_read_reply(), which checks everything.
def reply_length_after_header(header_bytes, count):
    n = len(header_bytes)
    if n < 2:
        raise ModbusError(f"modbus reply header: {n} bytes, need at least 2")
    if header_bytes[1] & 0x80:
        total = EXCEPTION_REPLY_LENGTH
    else:
        if not isinstance(count, int) or not 1 <= count <= MAX_READ_COUNT:
            raise EncodeError(f"modbus register count {count!r}: must be 1..125")
        total = 5 + 2 * count
    return total - n if total > n else 0


# Checks a reply to read_request(slave, function, _, count) and returns the
# register data (2 * count bytes, big-endian registers as on the wire).
def parse_read_reply(frame, slave, function, count):
    expected = expected_reply_length(function, count)
    n = len(frame)
    if n != expected and n != EXCEPTION_REPLY_LENGTH:
        raise ModbusError(f"modbus reply: {n} bytes, expected {expected}")
    crc = frame[n - 2] | (frame[n - 1] << 8)
    if crc16(memoryview(frame)[: n - 2]) != crc:
        raise ModbusCrcError("modbus reply: bad CRC")
    if frame[0] != slave:
        raise ModbusAddressError(f"modbus reply from slave {frame[0]}, asked {slave}")
    if frame[1] == function | 0x80:
        if n != EXCEPTION_REPLY_LENGTH:
            raise ModbusError(f"modbus exception reply: {n} bytes, expected 5")
        raise ModbusExceptionReply(frame[2])
    if frame[1] != function:
        raise ModbusAddressError(f"modbus reply for function {frame[1]}, asked {function}")
    if n != expected:
        raise ModbusError(f"modbus reply: {n} bytes, expected {expected}")
    if frame[2] != 2 * count:
        raise ModbusError(f"modbus reply: byte count {frame[2]}, expected {2 * count}")
    return bytes(frame[3 : n - 2])


# Modbus RTU timing (spec section 2.5.1.1): frames are separated by 3.5
# character times of silence and a gap over 1.5 character times inside a frame
# aborts it. Above 19200 baud both are fixed (1750 us and 750 us). Rounded up.
def _char_times_us(baud, half_chars, fixed_us):
    if not isinstance(baud, int) or baud <= 0:
        raise EncodeError(f"modbus baud {baud!r}: must be a positive integer")
    if baud > _FIXED_ABOVE_BAUD:
        return fixed_us
    num = half_chars * _BITS_PER_CHAR * 1000000
    den = 2 * baud
    return (num + den - 1) // den


def silent_interval_us(baud):
    return _char_times_us(baud, 7, 1750)


def inter_char_timeout_us(baud):
    return _char_times_us(baud, 3, 750)


# ---- register values -------------------------------------------------------


def _need(data, offset, size):
    if not isinstance(offset, int) or offset < 0 or offset + size > len(data):
        raise ModbusError(
            f"modbus register data: {size} bytes at offset {offset!r} past {len(data)} bytes"
        )


# Offsets are byte offsets into the register data (register index * 2).
def u16(data, offset):
    _need(data, offset, 2)
    return (data[offset] << 8) | data[offset + 1]


def u32_high_word_first(data, offset):
    _need(data, offset, 4)
    return (
        (data[offset] << 24) | (data[offset + 1] << 16) | (data[offset + 2] << 8) | data[offset + 3]
    )


# PZEM-004T: the low 16-bit word is in the first register.
def u32_low_word_first(data, offset):
    _need(data, offset, 4)
    return (
        (data[offset + 2] << 24) | (data[offset + 3] << 16) | (data[offset] << 8) | data[offset + 1]
    )


# The raw IEEE-754 binary32 bits of a float in two registers, high word first
# (Eastron SDM).
def f32_high_word_first_raw(data, offset):
    return u32_high_word_first(data, offset)


def _scale_pair(scale):
    if isinstance(scale, int):
        return scale, 1
    try:
        num, den = scale
    except (TypeError, ValueError):
        raise EncodeError(f"scale {scale!r}: an int or a (num, den) pair") from None
    if not isinstance(num, int) or not isinstance(den, int) or den < 1:
        raise EncodeError(f"scale {scale!r}: an int or a (num, den) pair, den >= 1")
    return num, den


# round_half_away_from_zero(num / den) for den > 0.
def _div_round(num, den):
    neg = num < 0
    if neg:
        num = -num
    q = num // den
    if 2 * (num - q * den) >= den:
        q += 1
    return -q if neg else q


def int_to_scaled(value, scale):
    num, den = _scale_pair(scale)
    return _div_round(value * num, den)


# Exact value of the binary32 `raw_u32` times scale, rounded half away from
# zero, by integer arithmetic: value = (-1)^s * m * 2^e with an integer
# mantissa m. None for NaN and the infinities.
def f32_to_scaled(raw_u32, scale):
    num, den = _scale_pair(scale)
    if not isinstance(raw_u32, int) or not 0 <= raw_u32 <= 0xFFFFFFFF:
        raise EncodeError(f"f32 bits {raw_u32!r}: must be 0..0xFFFFFFFF")
    biased = (raw_u32 >> 23) & 0xFF
    frac = raw_u32 & 0x7FFFFF
    if biased == 0xFF:
        return None
    if biased == 0:
        m = frac  # zero or subnormal: 0.frac * 2^-126
        e = -149
    else:
        m = frac | 0x800000
        e = biased - 150
    if raw_u32 & 0x80000000:
        m = -m
    if e >= 0:
        return _div_round((m * num) << e, den)
    return _div_round(m * num, den << -e)


def decode_value(data, offset, kind, scale):
    if kind == "f32":
        return f32_to_scaled(u32_high_word_first(data, offset), scale)
    if kind == "u16":
        return int_to_scaled(u16(data, offset), scale)
    if kind == "u32le_words":
        return int_to_scaled(u32_low_word_first(data, offset), scale)
    if kind == "u32be_words":
        return int_to_scaled(u32_high_word_first(data, offset), scale)
    raise EncodeError("register kind {!r}: one of {}".format(kind, ", ".join(KINDS)))
