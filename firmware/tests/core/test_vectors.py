# The protocol test vectors (docs/vectors/protocol-vectors.json, made by
# independent implementations) reproduced byte for byte by our cores, under
# CPython and inside the MicroPython VM.
from support import load_vector
from wattcore import coap, cose, exchange, p256, reading

V = load_vector("protocol-vectors.json")


def _fields(v):
    f = dict(v["fields"])
    f["dev"] = bytes.fromhex(f["dev"])
    return f


def _priv():
    return int.from_bytes(bytes.fromhex(V["private_key"]), "big")


def test_public_key():
    assert p256.public_key(_priv()) == bytes.fromhex(V["public_key"])


def test_payloads_encode_and_decode():
    for v in V["readings"]:
        payload = bytes.fromhex(v["payload"])
        assert reading.encode_payload(_fields(v)) == payload, v["name"]
        assert reading.decode_payload(payload) == _fields(v), v["name"]


def test_to_be_signed():
    for v in V["readings"]:
        tbs = cose.sig_structure(cose.PROTECTED_ES256, bytes.fromhex(v["payload"]))
        assert tbs == bytes.fromhex(v["to_be_signed"]), v["name"]


def test_cose_sign1_bytes_with_our_signer():
    priv = _priv()
    for v in V["readings"]:
        f = _fields(v)
        signed = cose.sign1(reading.encode_payload(f), f["dev"], lambda tbs: p256.sign(priv, tbs))
        assert signed == bytes.fromhex(v["cose_sign1"]), v["name"]


def test_cose_sign1_parses():
    for v in V["readings"]:
        s = cose.decode_sign1(bytes.fromhex(v["cose_sign1"]))
        assert s.kid == bytes.fromhex(V["device_id"])
        assert s.payload == bytes.fromhex(v["payload"])
        assert s.signature == bytes.fromhex(v["signature"])
        assert s.to_be_signed() == bytes.fromhex(v["to_be_signed"])


def test_batch():
    signed = [bytes.fromhex(v["cose_sign1"]) for v in V["readings"]]
    batch = bytes.fromhex(V["batch"]["payload"])
    assert exchange.encode_batch(signed) == batch
    assert exchange.decode_batch(batch) == signed


def test_coap_post_readings():
    raw = bytes.fromhex(V["coap"]["post_readings"]["message"])
    batch = bytes.fromhex(V["batch"]["payload"])
    ours = coap.encode(
        coap.CON,
        coap.POST,
        0x1234,
        bytes.fromhex("a1b2c3d4"),
        coap.uri_path_options(exchange.PATH_READINGS)
        + [(coap.OPT_CONTENT_FORMAT, coap.uint_option(exchange.CONTENT_FORMAT_CBOR))],
        batch,
    )
    assert ours == raw
    m = coap.decode(raw)
    assert m.uri_path() == exchange.PATH_READINGS
    assert m.content_format() == exchange.CONTENT_FORMAT_CBOR
    assert m.payload == batch


def test_coap_responses():
    for name, code, mid, token in (
        ("changed", exchange.CHANGED, 0x1234, "a1b2c3d4"),
        ("unauthorized", exchange.UNAUTHORIZED, 0x1235, "a1b2c3d5"),
    ):
        vec = V["coap"][name]
        m = coap.decode(bytes.fromhex(vec["message"]))
        assert m.mtype == coap.ACK and m.code == code and m.mid == mid
        assert m.token == bytes.fromhex(token)
        assert m.payload == bytes.fromhex(vec["payload"])
    ok = exchange.decode_response(bytes.fromhex(V["coap"]["changed"]["payload"]))
    assert ok == {"ack": 18446744073709551615, "time": 1785319230}
    bad = exchange.decode_response(bytes.fromhex(V["coap"]["unauthorized"]["payload"]))
    assert bad == {"time": 1785319230, "rejected": 7, "reason": "bad-signature"}
    assert exchange.encode_response(
        1785319230, rejected=7, reason="bad-signature"
    ) == bytes.fromhex(V["coap"]["unauthorized"]["payload"])
    assert exchange.device_action(exchange.UNAUTHORIZED) == exchange.ACT_BACKOFF


def test_coap_get_time():
    raw = bytes.fromhex(V["coap"]["get_time"]["message"])
    assert coap.encode(coap.CON, coap.GET, 1, b"\x01", coap.uri_path_options("t"), b"") == raw
    assert coap.decode(raw).uri_path() == exchange.PATH_TIME
