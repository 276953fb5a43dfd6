"""The stateless batch checks (gateway.verify), as a pure function."""

import time

from gw_testbed import MeterKey as _MeterKey
from hypothesis import given, settings
from hypothesis import strategies as st
from wattcore import cbor, cose, exchange, reading
from wattcore.errors import DecodeError

from gateway import verify

POLICY = verify.Policy(max_future_skew_s=300, max_age_s=30 * 86400)
NOW = int(time.time())


class MeterKey(_MeterKey):
    # Readings stamped NOW unless told otherwise: the checks run at NOW, however long
    # after this module was imported (in a long `make test`, more than the 300 s skew).
    def reading(self, seq, t=None, **kw):
        return super().reading(seq, t=NOW if t is None else t, **kw)


def credential(meter, revoked=False, limit=25300):
    return verify.Credential(meter.device_id, meter.pubkey, limit, revoked)


def check(payload, cred):
    return verify.check_batch(payload, cred, NOW, POLICY)


def test_valid_batch_passes_with_decoded_fields_and_exact_bytes():
    m = MeterKey()
    items = [m.reading(1, t=NOW, p=-300), m.reading(2, t=NOW)]
    result = check(exchange.encode_batch(items), credential(m))
    assert result.reason is None
    assert result.device_id == m.device_id
    assert [r.seq for r in result.readings] == [1, 2]
    assert [r.cose for r in result.readings] == items
    assert result.readings[0].p == -300 and result.readings[0].ei == 1001


def test_fault_reading_without_measurements_passes():
    m = MeterKey()
    result = check(exchange.encode_batch([m.reading(5, st=reading.ST_METER_NO_REPLY)]),
                   credential(m))
    assert result.reason is None
    assert result.readings[0].ei is None and result.readings[0].p is None


def test_each_stateless_reject_reason():
    m, other = MeterKey(), MeterKey()
    good = m.reading(1)
    forged = bytearray(m.reading(2))
    forged[-1] ^= 1
    schema_payload = cbor.dumps({1: m.device_id, 2: 3})  # no t, st, mdl
    cases = [
        (b"\xff", credential(m), "cbor", None),
        (b"\x80", credential(m), "empty", None),
        (b"\x81\x01", credential(m), "cose", None),
        (exchange.encode_batch([cose.sign1(schema_payload, m.device_id, m.sign)]),
         credential(m), "schema", None),
        (exchange.encode_batch([m.reading(4, kid=other.device_id)]), credential(other),
         "kid-mismatch", 4),
        (exchange.encode_batch([good, other.reading(9)]), credential(m), "mixed-devices", 9),
        (exchange.encode_batch([bytes(forged)]), credential(m), "bad-signature", 2),
        (exchange.encode_batch([m.reading(1)]), credential(other, limit=1), "unknown-device", 1),
        (exchange.encode_batch([m.reading(1)]), None, "unknown-device", 1),
        (exchange.encode_batch([m.reading(1)]), credential(m, revoked=True), "revoked", 1),
        (exchange.encode_batch([m.reading(2**63, ei=1, ee=1)]), credential(m), "seq-range", 2**63),
        (exchange.encode_batch([m.reading(6, st=reading.ST_CLOCK_UNTRUSTED)]), credential(m),
         "clock-untrusted", 6),
        (exchange.encode_batch([m.reading(7, t=NOW + 301)]), credential(m), "time-skew", 7),
        (exchange.encode_batch([m.reading(8, t=NOW - 31 * 86400)]), credential(m),
         "too-old", 8),
        (exchange.encode_batch([m.reading(10, p=-25301)]), credential(m), "over-rating", 10),
    ]
    for payload, cred, reason, seq in cases:
        result = check(payload, cred)
        assert (result.reason, result.rejected_seq) == (reason, seq), (reason, result)
        assert verify.REASONS[reason] >> 5 == 4


def test_old_reading_within_max_age_is_fine():
    m = MeterKey()
    assert check(exchange.encode_batch([m.reading(1, t=NOW - 10 * 86400)]),
                 credential(m)).reason is None


def test_stops_at_first_failure_and_keeps_the_prefix():
    m = MeterKey()
    items = [m.reading(1), m.reading(2), m.reading(3, t=NOW + 3600), m.reading(4)]
    result = check(exchange.encode_batch(items), credential(m))
    assert result.reason == "time-skew" and result.rejected_seq == 3
    assert [r.seq for r in result.readings] == [1, 2]


def test_peek_device_id_matches_the_decoded_kid():
    m = MeterKey()
    for n in (1, 23, 24, 32):
        payload = exchange.encode_batch([m.reading(i) for i in range(n)])
        assert verify.peek_device_id(payload) == m.device_id
        assert verify.batch_length(payload) == n
    assert verify.peek_device_id(b"") is None
    assert verify.peek_device_id(b"\x81\x01") is None
    assert verify.batch_length(b"\x98") is None
    assert verify.batch_length(b"\x99\x01\x00") == 256


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data):
    result = verify.check_batch(data, _CRED, NOW, POLICY)
    assert result.reason in verify.REASONS


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255))
def test_one_flipped_byte_is_rejected_or_identical(position, value):
    payload = bytearray(_BATCH)
    position %= len(payload)
    payload[position] = value
    result = verify.check_batch(bytes(payload), _CRED, NOW, POLICY)
    if bytes(payload) == _BATCH:
        assert result.reason is None
    else:
        assert result.reason is not None


_METER = MeterKey()
_CRED = credential(_METER)
_BATCH = exchange.encode_batch([_METER.reading(1, t=NOW)])


# -- the order of the checks ---------------------------------------------------------
# check_batch checks the signatures last, in one run; its outcome must be that of
# checking the readings one after the other, each signature between the other checks
# of its reading, as the module docstring orders them. The oracle below does that with
# wattcore's strict decoders only.

_M, _OTHER = MeterKey(), MeterKey()
_DEFECTS = {
    "bad-signature": None,  # a flipped signature bit, applied after signing
    "cose": None,  # the item is not a COSE_Sign1
    "kid-mismatch": {"kid": _OTHER.device_id},
    "other-device": None,  # a reading of another meter
    "seq-range": {"seq": 2**63, "ei": 1, "ee": 1},
    "clock-untrusted": {"st": reading.ST_CLOCK_UNTRUSTED},
    "time-skew": {"t": NOW + 3600},
    "too-old": {"t": NOW - 40 * 86400},
    "over-rating": {"p": -10**6},
}


def _in_order(payload, cred):
    """(reason, rejected seq, seqs of the verified prefix) as the docstring orders it."""
    try:
        items = exchange.decode_batch(payload)
    except DecodeError:
        return ("empty" if payload == b"\x80" else "cbor"), None, []
    seqs, device = [], None
    for index, item in enumerate(items):
        try:
            sign1 = cose.decode_sign1(item)
        except DecodeError:
            return "cose", None, seqs
        try:
            r = reading.decode_payload(sign1.payload)
        except DecodeError:
            return "schema", None, seqs
        seq, t, p = r["seq"], r["t"], r.get("p")
        if sign1.kid != r["dev"]:
            return "kid-mismatch", seq, seqs
        if index == 0:
            device = sign1.kid
            if cred is None or cred.device_id != device:
                return "unknown-device", seq, seqs
            if cred.revoked:
                return "revoked", seq, seqs
        elif sign1.kid != device:
            return "mixed-devices", seq, seqs
        if not verify.signature_valid(cred.pubkey, sign1):
            return "bad-signature", seq, seqs
        for reason, failed in (
            ("seq-range", seq > verify.MAX_STORED_SEQ),
            ("clock-untrusted", r["st"] & reading.ST_CLOCK_UNTRUSTED),
            ("time-skew", t > NOW + POLICY.max_future_skew_s),
            ("too-old", t < NOW - POLICY.max_age_s),
            ("over-rating", p is not None and abs(p) > cred.power_limit_w),
        ):
            if failed:
                return reason, seq, seqs
        seqs.append(seq)
    return None, None, seqs


def _item(seq, defects):
    values = {}
    for defect in defects:
        values.update(_DEFECTS[defect] or {})
    values.setdefault("seq", seq)
    if "cose" in defects:
        return b"\x01"
    meter = _OTHER if "other-device" in defects else _M
    item = bytearray(meter.reading(t=values.pop("t", NOW - 100 + seq), **values))
    if "bad-signature" in defects:
        item[-1] ^= 1
    return bytes(item)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(sorted(_DEFECTS)), max_size=2) | st.just([]),
                min_size=1, max_size=6),
       st.sampled_from(["valid", "revoked", "none"]))
def test_outcome_is_that_of_checking_each_reading_in_order(defects, cred_kind):
    payload = exchange.encode_batch(
        [_item(seq, kinds) for seq, kinds in enumerate(defects, start=1)])
    cred = {"valid": credential(_M), "revoked": credential(_M, revoked=True),
            "none": None}[cred_kind]
    result = verify.check_batch(payload, cred, NOW, POLICY)
    assert (result.reason, result.rejected_seq, [r.seq for r in result.readings]) == \
        _in_order(payload, cred)
