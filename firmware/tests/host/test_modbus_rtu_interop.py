"""Modbus RTU core against pymodbus 3.16 (the independent implementation),
exact float scaling against Fraction arithmetic, plus fuzzing."""

import math
import struct
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)
from wattcore import modbus_rtu as m
from wattcore.errors import DecodeError, ModbusError, ModbusExceptionReply

slaves = st.integers(min_value=1, max_value=247)
functions = st.sampled_from([3, 4])
counts = st.integers(min_value=1, max_value=125)
u16s = st.integers(min_value=0, max_value=0xFFFF)
u32s = st.integers(min_value=0, max_value=0xFFFFFFFF)
scales = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.tuples(
        st.integers(min_value=-(10**6), max_value=10**6),
        st.integers(min_value=1, max_value=10**6),
    ),
)

_REQUESTS = {3: ReadHoldingRegistersRequest, 4: ReadInputRegistersRequest}
_RESPONSES = {3: ReadHoldingRegistersResponse, 4: ReadInputRegistersResponse}


def _client_framer():
    return FramerRTU(DecodePDU(is_server=False))


def _server_framer():
    return FramerRTU(DecodePDU(is_server=True))


def _pymodbus_crc(data):
    # pymodbus returns the CRC byte-swapped so that to_bytes(2, "big") gives
    # the wire order (low byte first); ours is the plain CRC value.
    swapped = FramerRTU.compute_CRC(data)
    return ((swapped & 0xFF) << 8) | (swapped >> 8)


def _round_half_away(q):
    # Reference rounding on an exact Fraction.
    sign = -1 if q < 0 else 1
    a = abs(q)
    whole = a.numerator // a.denominator
    if a - whole >= Fraction(1, 2):
        whole += 1
    return sign * whole


def _scale_fraction(scale):
    if isinstance(scale, int):
        return Fraction(scale)
    return Fraction(scale[0], scale[1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_crc_equals_pymodbus(data):
    assert m.crc16(data) == _pymodbus_crc(data)


@settings(max_examples=200, deadline=None)
@given(slaves, functions, u16s, counts)
def test_request_equals_pymodbus(slave, function, address, count):
    if address + count > 0x10000:
        address = 0x10000 - count
    ours = m.read_request(slave, function, address, count)
    pdu = _REQUESTS[function](address=address, count=count, dev_id=slave)
    assert ours == _client_framer().buildFrame(pdu)
    # And a pymodbus server reads our request back.
    used, decoded = _server_framer().handleFrame(ours, 0, 0)
    assert used == len(ours)
    assert (decoded.dev_id, decoded.function_code) == (slave, function)
    assert (decoded.address, decoded.count) == (address, count)


@settings(max_examples=200, deadline=None)
@given(slaves, functions, st.lists(u16s, min_size=1, max_size=125))
def test_parse_accepts_pymodbus_server_reply(slave, function, registers):
    pdu = _RESPONSES[function](registers=registers, dev_id=slave)
    frame = _server_framer().buildFrame(pdu)
    count = len(registers)
    assert len(frame) == m.expected_reply_length(function, count)
    assert m.reply_length_after_header(frame[:5], count) == len(frame) - 5
    data = m.parse_read_reply(frame, slave, function, count)
    assert data == b"".join(struct.pack(">H", r) for r in registers)
    for i, r in enumerate(registers):
        assert m.u16(data, 2 * i) == r


@settings(max_examples=100, deadline=None)
@given(slaves, functions, st.integers(min_value=1, max_value=255), counts)
def test_parse_pymodbus_exception_reply(slave, function, code, count):
    pdu = ExceptionResponse(function, code, device_id=slave)
    frame = _server_framer().buildFrame(pdu)
    assert len(frame) == 5
    assert m.reply_length_after_header(frame, count) == 0
    try:
        m.parse_read_reply(frame, slave, function, count)
    except ModbusExceptionReply as e:
        assert e.code == code
    else:
        raise AssertionError("exception reply accepted")


@settings(max_examples=100, deadline=None)
@given(slaves, functions, st.lists(u16s, min_size=1, max_size=20))
def test_pymodbus_client_reads_our_checked_frames(slave, function, registers):
    # A frame that passes our parser also passes pymodbus's client framer.
    body = bytes([slave, function, 2 * len(registers)])
    body += b"".join(struct.pack(">H", r) for r in registers)
    crc = m.crc16(body)
    frame = body + bytes([crc & 0xFF, crc >> 8])
    assert m.parse_read_reply(frame, slave, function, len(registers)) == body[3:]
    used, pdu = _client_framer().handleFrame(frame, slave, 0)
    assert used == len(frame)
    assert list(pdu.registers) == registers


@settings(max_examples=500, deadline=None)
@given(u32s, scales)
def test_f32_to_scaled_equals_exact_reference(raw, scale):
    (value,) = struct.unpack(">f", struct.pack(">I", raw))
    ours = m.f32_to_scaled(raw, scale)
    if math.isnan(value) or math.isinf(value):
        assert ours is None
        return
    expected = _round_half_away(Fraction(value) * _scale_fraction(scale))
    assert ours == expected
    assert m.decode_value(struct.pack(">I", raw), 0, "f32", scale) == expected


@settings(max_examples=300, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False), scales)
def test_f32_to_scaled_on_float_values(value, scale):
    raw = struct.unpack(">I", struct.pack(">f", value))[0]
    expected = _round_half_away(Fraction(value) * _scale_fraction(scale))
    assert m.f32_to_scaled(raw, scale) == expected
    # Where Python's round() has no tie to break it agrees too.
    exact = Fraction(value) * _scale_fraction(scale)
    if exact.denominator != 2:
        assert m.f32_to_scaled(raw, scale) == round(exact)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=4, max_size=12), st.integers(min_value=0, max_value=8), scales)
def test_integer_kinds_equal_struct(data, offset, scale):
    s = _scale_fraction(scale)
    if offset + 2 <= len(data):
        (v,) = struct.unpack_from(">H", data, offset)
        assert m.decode_value(data, offset, "u16", scale) == _round_half_away(v * s)
    if offset + 4 <= len(data):
        hi, lo = struct.unpack_from(">HH", data, offset)
        assert m.decode_value(data, offset, "u32be_words", scale) == _round_half_away(
            ((hi << 16) | lo) * s
        )
        assert m.decode_value(data, offset, "u32le_words", scale) == _round_half_away(
            ((lo << 16) | hi) * s
        )
    else:
        try:
            m.decode_value(data, offset, "u32le_words", scale)
        except ModbusError:
            pass
        else:
            raise AssertionError("read past the data")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=260), slaves, functions, counts)
def test_parse_fuzz_raises_only_decode_errors(frame, slave, function, count):
    try:
        data = m.parse_read_reply(frame, slave, function, count)
    except DecodeError:
        return
    assert isinstance(data, bytes) and len(data) == 2 * count


@settings(max_examples=300, deadline=None)
@given(slaves, functions, st.lists(u16s, min_size=1, max_size=10), st.data())
def test_parse_fuzz_corrupted_valid_frames(slave, function, registers, draw):
    # Near-valid frames reach the checks past the CRC more often than noise.
    pdu = _RESPONSES[function](registers=registers, dev_id=slave)
    frame = bytearray(_server_framer().buildFrame(pdu))
    i = draw.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    frame[i] = draw.draw(st.integers(min_value=0, max_value=255))
    if draw.draw(st.booleans()):
        body = frame[:-2]
        crc = m.crc16(body)
        frame = body + bytes([crc & 0xFF, crc >> 8])
    count = draw.draw(st.sampled_from([len(registers), max(1, len(registers) - 1)]))
    try:
        data = m.parse_read_reply(bytes(frame), slave, function, count)
    except DecodeError:
        return
    assert frame[0] == slave and frame[1] == function and frame[2] == 2 * count
    assert data == bytes(frame[3:-2])
