"""Fuzz the decoders above CBOR: COSE_Sign1, the reading map, the batch and the response.

Malformed input must raise the cores' own DecodeError, never anything else.
"""

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from wattcore import cose, exchange, reading
from wattcore.errors import DecodeError

DEV = b"WS\x00\x01\x02\x03\x04\x05"
GOOD = reading.encode_payload(
    {"dev": DEV, "seq": 9, "t": 1785319200, "st": 0, "ei": 1, "ee": 2, "p": -3, "mdl": 1}
)
SIGNED = cose.sign1(GOOD, DEV, lambda tbs: b"\x07" * 64)

small = st.one_of(
    st.integers(-(2**64), 2**64 - 1), st.binary(max_size=12), st.text(max_size=6), st.none()
)
maps = st.dictionaries(st.one_of(st.integers(-5, 20), st.text(max_size=3)), small, max_size=14)


def _decoders(data):
    for fn in (
        cose.decode_sign1,
        reading.decode_payload,
        exchange.decode_batch,
        exchange.decode_response,
    ):
        try:
            fn(data)
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    _decoders(data)


@settings(max_examples=300, deadline=None)
@given(maps)
def test_random_maps_as_reading_and_response(m):
    _decoders(cbor2.dumps(m))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_signed_reading_and_batch(data):
    for base in (SIGNED, exchange.encode_batch([SIGNED, SIGNED])):
        b = bytearray(base)
        for _ in range(data.draw(st.integers(1, 3))):
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(b)))
        _decoders(bytes(b))
        _decoders(bytes(b[:cut]))


def test_the_unmutated_inputs_decode():
    assert cose.decode_sign1(SIGNED).payload == GOOD
    assert reading.decode_payload(GOOD)["seq"] == 9
    assert exchange.decode_batch(exchange.encode_batch([SIGNED])) == [SIGNED]
