"""The gateway's fast parse of readings agrees with wattcore's strict decoders.

``gateway.verify`` splits a batch by offsets and reads each reading map with a parser of
the deterministic encoding only (``_fields_fast``),
accepting the result only when it can vouch that wattcore's canonical decoder would
return the same; everything else takes the reference path. These properties check
that claim on encodings a strict decoder must refuse (wide integer heads, unsorted or
repeated keys, indefinite lengths, tags) as well as on valid ones, and that the whole
batch check gives identical outcomes either way.
"""

import time

import cbor2
import pytest
from gw_testbed import MeterKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wattcore import cose, exchange, reading
from wattcore.errors import DecodeError

from gateway import verify

NOW = int(time.time())
POLICY = verify.Policy(300, 10**9)
METER = MeterKey()
CRED = verify.Credential(METER.device_id, METER.pubkey, 50_000, False)


def _head(major, n, width):
    # CBOR head for argument n < 2**64: width 0 is the shortest form, higher widths wider
    forms = [(n, 0)] if n < 24 else []
    forms += [(info, size) for info, size in ((24, 1), (25, 2), (26, 4), (27, 8))
              if n < 1 << (8 * size)]
    info, size = forms[min(width, len(forms) - 1)]
    return bytes((major << 5 | info,)) + (n.to_bytes(size, "big") if size else b"")


def _encode_int(v, width):
    return _head(0, v, width) if v >= 0 else _head(1, -1 - v, width)


valid_values = {name: st.integers(lo, hi) for name, (_, lo, hi, _) in reading.FIELDS.items()
                if name not in ("dev", "st")}
valid_values["st"] = st.sampled_from([0, reading.ST_CLOCK_UNTRUSTED, reading.ST_BOOT])

# a value each field must refuse: out of range, of another type, or (st) a fault flag
# next to measurements
bad_values = {
    name: st.one_of(
        *([st.integers(hi + 1, 2**64 - 1)] if hi < 2**64 - 1 else []),
        st.integers(-(2**64), lo - 1), st.booleans(), st.just(b"\x01"), st.just("1"))
    for name, (_, lo, hi, _) in reading.FIELDS.items() if name != "dev"
}
bad_values["st"] = st.one_of(bad_values["st"], st.just(reading.ST_METER_CRC))


@st.composite
def reading_maps(draw):
    """A reading map encoded the canonical way or one of the ways a strict decoder refuses.

    Returns (bytes, canonical_intent): the second is True when the encoder chose
    shortest heads, ascending unique keys and no tags.
    """
    # Values are valid but for at most one (the "bad-value" oddity), so that whatever the
    # encoding checks let through is a reading the schema accepts otherwise: a second
    # fault would hide a missed one.
    fields = {"dev": METER.device_id}
    for name, strategy in valid_values.items():
        if name in ("seq", "t", "st", "mdl") or draw(st.booleans()):
            fields[name] = draw(strategy)
    # One way to break deterministic encoding or the schema per map, or none.
    oddity = draw(st.sampled_from([None, None, "bad-value", "bad-value", "unknown-key",
                                   "missing", "unsorted", "repeated", "wide-key",
                                   "wide-value", "tag", "indefinite", "trailing"]))
    if oddity == "bad-value":
        name = draw(st.sampled_from(sorted(fields)))
        if name == "dev":
            fields[name] = draw(st.sampled_from([b"\x01" * 7, "x" * 8, 5]))
        else:
            fields[name] = draw(bad_values[name])
    if oddity == "unknown-key":
        fields["zz"] = 1  # key 99
    if oddity == "missing":
        del fields[draw(st.sampled_from(["dev", "seq", "t", "st", "mdl"]))]
    pairs = [(reading.FIELDS[n][0] if n in reading.FIELDS else 99, v) for n, v in fields.items()]
    pairs.sort()
    canonical = oddity in (None, "bad-value")
    if oddity == "unsorted":
        pairs = draw(st.permutations(pairs))
        canonical = pairs == sorted(pairs)
    if oddity == "repeated":
        at = draw(st.integers(0, len(pairs) - 1))
        pairs.insert(at, pairs[at])  # next to the first: the keys still do not descend
    wide = draw(st.integers(0, len(pairs) - 1))  # the pair a "wide-*" or "tag" oddity hits
    parts = []
    for index, (key, value) in enumerate(pairs):
        here = index == wide
        key_width = 1 if here and oddity == "wide-key" else 0
        value_width = draw(st.sampled_from([1, 2])) if here and oddity == "wide-value" else 0
        parts.append(_encode_int(key, key_width))
        if isinstance(value, bytes):
            parts.append(_head(2, len(value), value_width) + value)
        elif isinstance(value, str):
            parts.append(_head(3, len(value), value_width) + value.encode())
        elif isinstance(value, bool):
            parts.append(b"\xf5" if value else b"\xf4")
        elif here and oddity == "tag" and 0 <= value < 2**64:
            parts.append(b"\xc2" + _head(2, 8, 0) + value.to_bytes(8, "big"))  # bignum tag
        elif -(2**64) <= value < 2**64:
            encoded = _encode_int(value, value_width)
            if len(encoded) == len(_encode_int(value, 0)) and oddity == "wide-value":
                canonical = True  # no wider head exists for this value: still shortest
            parts.append(encoded)
        else:
            parts.append(b"\xf6")  # null: out of the CBOR integer range
    if oddity == "indefinite":
        data = b"\xbf" + b"".join(parts) + b"\xff"
    else:
        data = _head(5, len(pairs), 0) + b"".join(parts)
    if oddity == "trailing":
        data += draw(st.binary(min_size=1, max_size=3))
    return data, canonical


def _reference(data):
    try:
        return reading.decode_payload(data)
    except DecodeError:
        return None


@settings(max_examples=1500, deadline=None)
@given(reading_maps())
def test_fast_reading_decode_vouches_only_for_what_wattcore_accepts(case):
    data, canonical = case
    fast = verify._fields_fast(data)
    reference = _reference(data)
    if fast is not None:
        assert fast == reference
        assert all(type(fast[k]) is type(reference[k]) for k in fast)  # no True for 1
    if canonical and reference is not None:
        assert fast is not None, "the fast path must take every canonical valid reading"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fast_reading_decode_on_arbitrary_bytes(data):
    fast = verify._fields_fast(data)
    assert fast is None or fast == _reference(data)


def _batch(n=3, **kw):
    return [METER.reading(seq, t=NOW - 100 + seq, **kw) for seq in range(1, n + 1)]


@st.composite
def mutated_batches(draw):
    items = _batch(draw(st.integers(1, 4)))
    payload = bytearray(exchange.encode_batch(items))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 3))
        at = draw(st.integers(0, len(payload) - 1))
        if kind == 0:
            payload[at] = draw(st.integers(0, 255))
        elif kind == 1:
            del payload[at]
        elif kind == 2:
            payload.insert(at, draw(st.integers(0, 255)))
        else:
            payload += draw(st.binary(min_size=1, max_size=3))
    return bytes(payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_batches())
def test_batch_outcome_is_the_same_with_and_without_the_fast_path(payload):
    fast = verify.check_batch(payload, CRED, NOW, POLICY)
    reference = verify.check_batch(payload, CRED, NOW, POLICY, fast=False)
    assert fast == reference


def test_fast_path_keeps_exact_bytes_and_signed_bytes():
    items = _batch(4)
    payload = exchange.encode_batch(items)
    spans = verify._split_fast(payload)
    assert spans is not None and len(spans) == 4
    parsed = list(verify._parse_items(payload))
    for item, p in zip(items, parsed, strict=True):
        sign1 = cose.decode_sign1(item)
        assert p.cose == item
        assert p.kid == sign1.kid
        assert p.to_be_signed == sign1.to_be_signed()
        assert p.signature == sign1.signature
        assert p.fields == reading.decode_payload(sign1.payload)
    result = verify.check_batch(payload, CRED, NOW, POLICY)
    assert result.reason is None and [c.cose for c in result.readings] == items


def test_layouts_outside_the_fast_path_still_verify():
    # 24 readings need a two-byte array head (0x98 0x18), which the fast path takes;
    # a needlessly wide array head is refused by both paths alike.
    big = exchange.encode_batch(_batch(24))
    assert verify._split_fast(big) is not None
    assert verify.check_batch(big, CRED, NOW, POLICY).reason is None
    # a non-canonical array head (0x98 0x03) is refused by both paths alike
    items = _batch(3)
    odd = b"\x98\x03" + b"".join(items)
    assert verify._split_fast(odd) is None
    assert verify.check_batch(odd, CRED, NOW, POLICY) == verify.check_batch(
        odd, CRED, NOW, POLICY, fast=False)
    assert verify.check_batch(odd, CRED, NOW, POLICY).reason == "cbor"


def test_fast_path_takes_only_one_byte_map_heads():
    fields = METER.fields(5, t=NOW)
    canonical = reading.encode_payload(fields)
    assert verify._fields_fast(canonical) == fields
    pairs = canonical[1:]
    # a map head with a one-byte count (0xb8) is the reference decoder's to judge
    assert verify._fields_fast(b"\xb8" + bytes((canonical[0] - 0xA0,)) + pairs) is None
    assert verify._fields_fast(b"\xb8\x18" + pairs) is None
    assert verify._fields_fast(b"\xa0") is None and verify._fields_fast(b"") is None


@pytest.mark.parametrize("name, encoded", [
    ("p", b"\xf5"), ("p", b"\xf4"), ("p", b"\x41\x01"), ("p", b"\x61\x31"), ("pf", b"\xf6"),
    ("pf", b"\xf9\x3c\x00"),  # half-precision 1.0
    ("dev", b"\x68" + b"x" * 8), ("dev", b"\x47" + b"\x01" * 7), ("dev", b"\x49" + b"\x01" * 9),
    ("st", bytes((reading.ST_METER_CRC,))),  # a fault flag next to measurements
])
def test_fast_path_refuses_a_value_of_the_wrong_kind(name, encoded):
    # the rest of the map is valid and canonical: only this value can be the reason
    fields = METER.fields(5, t=NOW, pf=-900)
    key = reading.FIELDS[name][0]
    parts = b""
    for n in sorted(fields, key=lambda n: reading.FIELDS[n][0]):
        k = reading.FIELDS[n][0]
        value = encoded if k == key else _value_bytes(fields[n])
        parts += bytes((k,)) + value
    data = bytes((0xA0 + len(fields),)) + parts
    assert _reference(data) is None
    assert verify._fields_fast(data) is None


def _value_bytes(value):
    return _head(2, len(value), 0) + value if isinstance(value, bytes) else _encode_int(value, 0)


def test_fast_path_rejects_what_cbor2_would_happily_accept():
    # cbor2 decodes a bignum-tagged seq and a repeated key without complaint; the
    # fast path must not, and the reject reason comes from the reference decoder.
    fields = METER.fields(5, t=NOW)
    canonical = reading.encode_payload(fields)
    assert verify._fields_fast(canonical) == fields
    wide = canonical.replace(b"\x02\x05", b"\x02\x18\x05", 1)  # seq 5 in a 2-byte head
    assert cbor2.loads(wide)[2] == 5
    assert verify._fields_fast(wide) is None
    item = cose.sign1(wide, METER.device_id, METER.sign)
    result = verify.check_batch(exchange.encode_batch([item]), CRED, NOW, POLICY)
    assert result.reason == "schema" and "non-shortest" in result.detail
