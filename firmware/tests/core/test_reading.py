# Shared tests of the reading schema, the COSE envelope and the exchange.
from support import raises
from wattcore import cbor, cose, exchange, reading
from wattcore.cbor import Tag
from wattcore.errors import CoseError, DecodeError, EncodeError, ReadingError

DEV = b"WS\x00\x01\x02\x03\x04\x05"
GOOD = {
    "dev": DEV,
    "seq": 5,
    "t": 1785319200,
    "st": 0,
    "ei": 10,
    "ee": 20,
    "p": -300,
    "u": 2300,
    "i": 1300,
    "f": 5000,
    "pf": -990,
    "mdl": 1,
}


def _with(**kw):
    r = dict(GOOD)
    r.update(kw)
    return r


def test_round_trip_and_integer_keys():
    p = reading.encode_payload(GOOD)
    m = cbor.loads(p, True)
    assert m[1] == DEV and m[2] == 5 and m[7] == -300 and m[12] == 1
    assert reading.decode_payload(p) == GOOD


def test_schema_rejections_on_encode():
    bad = [
        _with(dev=b"short"),
        _with(seq=-1),
        _with(seq=2**64),
        _with(p=2**31),
        _with(pf=1001),
        _with(u=True),
        _with(mdl=300),
        _with(extra=1),
    ]
    for r in bad:
        assert raises(EncodeError, reading.encode_payload, r), r
    missing = dict(GOOD)
    del missing["seq"]
    assert raises(EncodeError, reading.encode_payload, missing)


def test_fault_reading_carries_no_measurement():
    fault = {"dev": DEV, "seq": 6, "t": 1, "st": reading.ST_METER_CRC, "mdl": 1}
    assert reading.decode_payload(reading.encode_payload(fault)) == fault
    assert raises(EncodeError, reading.encode_payload, _with(st=reading.ST_VALUE_NAN))
    # the same rule on the receiving side, for a payload built by someone else
    m = {1: DEV, 2: 6, 3: 1, 4: reading.ST_METER_NO_REPLY, 5: 10, 12: 1}
    assert raises(ReadingError, reading.decode_payload, cbor.dumps(m))
    # informational flags do not suppress measurements
    ok = _with(st=reading.ST_BOOT | reading.ST_SPOOL_OVERFLOW)
    assert reading.decode_payload(reading.encode_payload(ok)) == ok
    assert reading.flag_names(reading.ST_BOOT | reading.ST_METER_CRC) == ["METER_CRC", "BOOT"]


def test_decode_rejections():
    bad = [
        b"",
        b"\x01",
        cbor.dumps([1, 2]),
        cbor.dumps({1: DEV, 2: 1, 3: 1, 4: 0, 12: 1, 99: 0}),
        cbor.dumps({1: DEV, 2: 1, 3: 1, 4: 0}),
        cbor.dumps({"dev": DEV}),
        bytes.fromhex("a20102") + b"\x01\x02",  # non-canonical head order
    ]
    for data in bad:
        assert raises(ReadingError, reading.decode_payload, data), data


def test_cose_sign1_structure():
    p = reading.encode_payload(GOOD)
    seen = []

    def signer(tbs):
        seen.append(tbs)
        return b"\x11" * 64

    s = cose.sign1(p, DEV, signer)
    assert seen == [cbor.dumps(["Signature1", b"\xa1\x01\x26", b"", p])]
    assert cbor.loads(s) == Tag(18, [b"\xa1\x01\x26", {4: DEV}, p, b"\x11" * 64])
    d = cose.decode_sign1(s)
    assert d.kid == DEV and d.payload == p and d.to_be_signed() == seen[0]
    assert raises(EncodeError, cose.sign1, p, DEV, lambda tbs: b"\x00" * 63)


def test_cose_rejections():
    p = reading.encode_payload(GOOD)
    sig = b"\x22" * 64
    good = [b"\xa1\x01\x26", {4: DEV}, p, sig]
    cases = [
        cbor.dumps(good),  # untagged
        cbor.dumps(Tag(17, good)),
        cbor.dumps(Tag(18, good[:3])),
        cbor.dumps(Tag(18, [cbor.dumps({1: -35}), {4: DEV}, p, sig])),  # ES384
        cbor.dumps(Tag(18, [b"\xa1\x01\x26", {}, p, sig])),  # no kid
        cbor.dumps(Tag(18, [b"\xa1\x01\x26", {4: DEV, 1: -7}, p, sig])),
        cbor.dumps(Tag(18, [b"\xa1\x01\x26", {4: DEV}, None, sig])),  # detached
        cbor.dumps(Tag(18, [b"\xa1\x01\x26", {4: DEV}, p, sig[:-1]])),
        cbor.dumps(Tag(18, good))[:-1],
        b"\xff",
    ]
    for data in cases:
        assert raises(CoseError, cose.decode_sign1, data), data


def test_batch_limits():
    one = b"\xd2\x84\x40\xa0\x40\x40"
    assert exchange.decode_batch(exchange.encode_batch([one] * 3)) == [one] * 3
    assert exchange.batch_size([one] * 3) == len(exchange.encode_batch([one] * 3))
    assert raises(EncodeError, exchange.encode_batch, [])
    assert raises(EncodeError, exchange.encode_batch, [one] * (exchange.MAX_BATCH + 1))
    assert raises(DecodeError, exchange.decode_batch, cbor.dumps([]))
    assert raises(DecodeError, exchange.decode_batch, b"\x98\x21" + one * 33)
    assert raises(DecodeError, exchange.decode_batch, b"\x81" + b"\x40" * exchange.MAX_PAYLOAD)
    assert raises(DecodeError, exchange.decode_batch, b"\xa0")


def test_response_round_trip_and_errors():
    r = exchange.encode_response(100, ack=7, rejected=8, reason="counter-backwards", max_batch=8)
    assert exchange.decode_response(r) == {
        "time": 100,
        "ack": 7,
        "rejected": 8,
        "reason": "counter-backwards",
        "max_batch": 8,
    }
    assert raises(DecodeError, exchange.decode_response, cbor.dumps({1: 2}))
    assert raises(DecodeError, exchange.decode_response, cbor.dumps({2: "now"}))
    assert raises(DecodeError, exchange.decode_response, cbor.dumps({2: -1}))
    assert raises(DecodeError, exchange.decode_response, b"\x00\x01")


def test_every_response_code_has_a_device_action():
    keep = (exchange.ACT_BACKOFF, exchange.ACT_WAIT)
    assert exchange.device_action(exchange.CHANGED) == exchange.ACT_ACKED
    assert exchange.device_action(exchange.UNPROCESSABLE) == exchange.ACT_DROP_REJECTED
    assert exchange.device_action(exchange.TOO_LARGE) == exchange.ACT_SPLIT
    assert exchange.device_action(exchange.UNAVAILABLE) == exchange.ACT_WAIT
    assert exchange.device_action(exchange.FORBIDDEN) in keep
    assert exchange.device_action(0x9F) in keep  # an unknown code never loses data


def test_max_batch_of_the_largest_readings_fits_max_payload():
    big = {"dev": b"\xff" * 8, "seq": 2**64 - 1, "t": 0xFFFFFFFFFF,
           "st": 0xFFFFFFFF & ~reading.ST_FAULT_MASK, "ei": 2**48 - 1, "ee": 2**48 - 1,
           "p": -(2**31), "u": 0xFFFF, "i": 0xFFFFFFFF, "f": 0xFFFF, "pf": -1000, "mdl": 255,
           "sn": 0xFFFFFFFF}
    one = cose.sign1(reading.encode_payload(big), big["dev"], lambda tbs: b"\x00" * 64)
    batch = exchange.encode_batch([one] * exchange.MAX_BATCH)
    assert len(batch) <= exchange.MAX_PAYLOAD
    assert exchange.decode_batch(batch) == [one] * exchange.MAX_BATCH
