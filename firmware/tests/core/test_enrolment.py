# The enrolment core (wattcore.enrolment): codes, the request bound to a code, the
# device's reading of the answer, and commissioning records; against the vectors
# made with hashlib/hmac, cbor2 and python-ecdsa (docs/vectors/protocol-vectors.json).
from support import load_vector, raises
from wattcore import cbor, coap, cose, enrolment, exchange, p256
from wattcore.errors import CodeError, EncodeError, EnrolmentError

V = load_vector("protocol-vectors.json")
E = V["enrolment"]


def _priv():
    return int.from_bytes(bytes.fromhex(V["private_key"]), "big")


def _dev():
    return bytes.fromhex(V["device_id"])


def _pub():
    return bytes.fromhex(V["public_key"])


def _sign(tbs):
    return p256.sign(_priv(), tbs)


def test_code_from_random_is_a_valid_code():
    for seed in range(40):
        code = enrolment.code_from_random(lambda n, s=seed: bytes([(s * 37 + i * 11) & 0xFF
                                                                    for i in range(n)]))
        assert len(code) == enrolment.CODE_LEN
        assert enrolment.parse_code(enrolment.format_code(code)) == code


def test_parse_code_reads_what_a_person_types():
    code = E["code"]
    shown = enrolment.format_code(code)
    assert shown[4] == "-" and shown[9] == "-" and len(shown) == 14
    assert enrolment.parse_code(shown) == code
    assert enrolment.parse_code(" " + shown.lower() + " ") == code
    assert enrolment.parse_code(code) == code
    # I and L read as 1, O as 0
    made = enrolment.code_from_random(lambda n: b"\x00\x08\x00\x10\x00\x00\x42")
    assert "0" in made and "1" in made
    assert enrolment.parse_code(made.replace("1", "l").replace("0", "O")) == made
    assert enrolment.parse_code(made.replace("1", "I").replace("0", "o")) == made


def _valid(text):
    try:
        enrolment.parse_code(text)
        return True
    except CodeError:
        return False


def test_every_single_typo_and_swap_is_caught():
    code = E["code"]
    for i in range(len(code)):
        for c in enrolment.ALPHABET:
            if c == code[i]:
                continue
            typo = code[:i] + c + code[i + 1:]
            # 0 and Z differ by 31: the one substitution a check modulo 31 cannot see
            pair = (code[i], c) in (("0", "Z"), ("Z", "0"))
            assert pair or not _valid(typo), typo
    for i in range(len(code) - 1):
        if code[i] != code[i + 1]:
            swapped = code[:i] + code[i + 1] + code[i] + code[i + 2:]
            assert not _valid(swapped), swapped


def test_parse_code_refuses_what_is_not_a_code():
    code = E["code"]
    assert raises(CodeError, enrolment.parse_code, code[:-1])
    assert raises(CodeError, enrolment.parse_code, code + "0")
    assert raises(CodeError, enrolment.parse_code, code[:-1] + "U")
    assert raises(CodeError, enrolment.parse_code, "")
    assert raises(CodeError, enrolment.parse_code, None)


def test_key_binding_and_confirmation_match_the_vectors():
    key = enrolment.code_key(E["code"])
    assert key == bytes.fromhex(E["code_key"])
    assert enrolment.binding(key, _dev(), _pub()) == bytes.fromhex(E["bind"])
    assert enrolment.confirmation(key, _dev(), _pub()) == bytes.fromhex(E["confirm"])
    assert len(enrolment.fingerprint(key)) == 8
    other = enrolment.code_key(enrolment.code_from_random(lambda n: b"\x01" * n))
    assert enrolment.binding(other, _dev(), _pub()) != bytes.fromhex(E["bind"])


def test_request_bytes_match_the_vector():
    r = E["request"]
    key = bytes.fromhex(E["code_key"])
    signed = enrolment.sign_request(key, _dev(), _pub(), r["fields"]["t"], 1, _sign,
                                    sn=r["fields"]["sn"])
    assert signed == bytes.fromhex(r["cose_sign1"])
    sign1, fields = enrolment.open_signed(signed, enrolment.decode_request)
    assert sign1.payload == bytes.fromhex(r["payload"])
    assert sign1.to_be_signed(enrolment.AAD_ENROL) == bytes.fromhex(r["to_be_signed"])
    assert fields["bind"] == bytes.fromhex(E["bind"]) and fields["pub"] == _pub()
    assert fields["sn"] == 2190471 and fields["mdl"] == 1
    # the signature does not cover the bytes a reading's signature covers
    assert sign1.to_be_signed() != sign1.to_be_signed(enrolment.AAD_ENROL)


def test_request_message_matches_the_vector():
    r = E["request"]
    msg = coap.encode(coap.CON, coap.POST, 0x2001, bytes.fromhex("e1e2e3e4"),
                      coap.uri_path_options(exchange.PATH_ENROL)
                      + [(coap.OPT_CONTENT_FORMAT,
                          coap.uint_option(exchange.CONTENT_FORMAT_CBOR))],
                      bytes.fromhex(r["cose_sign1"]))
    assert msg == bytes.fromhex(r["message"])


def test_answers_match_the_vectors():
    confirm = bytes.fromhex(E["confirm"])
    ok = exchange.decode_response(bytes.fromhex(E["enrolled"]["payload"]))
    assert ok["confirm"] == confirm
    assert exchange.encode_response(ok["time"], confirm=confirm) == \
        bytes.fromhex(E["enrolled"]["payload"])
    used = exchange.decode_response(bytes.fromhex(E["code_used"]["payload"]))
    assert used["reason"] == enrolment.CODE_USED
    assert coap.decode(bytes.fromhex(E["code_used"]["message"])).code == coap.FORBIDDEN


def test_outcome_of_each_answer():
    confirm = bytes.fromhex(E["confirm"])
    o = enrolment.outcome
    assert o(coap.CHANGED, {"time": 1, "confirm": confirm}, confirm) == enrolment.ENROLLED
    # an answer without the right confirmation is not believed
    assert o(coap.CHANGED, {"time": 1}, confirm) == enrolment.RETRY
    assert o(coap.CHANGED, {"time": 1, "confirm": b"\x00" * 16}, confirm) == enrolment.RETRY
    exists = {"time": 1, "reason": enrolment.DEVICE_EXISTS, "confirm": confirm}
    assert o(coap.CONFLICT, exists, confirm) == enrolment.REGISTERED
    assert o(coap.CONFLICT, {"time": 1, "reason": enrolment.DEVICE_EXISTS}, confirm) == \
        enrolment.RETRY
    for reason in (enrolment.CODE_WRONG, enrolment.CODE_USED, enrolment.CODE_EXPIRED):
        assert o(coap.FORBIDDEN, {"time": 1, "reason": reason}, confirm) == enrolment.REFUSED
    assert o(coap.BAD_REQUEST, {"time": 1, "reason": "cose"}, confirm) == enrolment.REFUSED
    assert o(coap.UNAUTHORIZED, {}, confirm) == enrolment.REFUSED
    assert o(coap.SERVICE_UNAVAILABLE, {}, confirm) == enrolment.RETRY
    assert o(coap.INTERNAL_SERVER_ERROR, {}, confirm) == enrolment.RETRY


def test_request_schema_is_enforced():
    key = bytes.fromhex(E["code_key"])
    good = {"dev": _dev(), "pub": _pub(), "bind": enrolment.binding(key, _dev(), _pub()),
            "t": 1, "mdl": 1}
    assert enrolment.decode_request(enrolment.encode_request(good)) == good
    for name, bad in (("dev", b"\x00" * 7), ("pub", b"\x05" + _pub()[1:]), ("pub", _pub()[:33]),
                      ("bind", b"x" * 31), ("t", -1), ("mdl", 256), ("sn", 1 << 32),
                      ("t", True)):
        r = dict(good)
        r[name] = bad
        assert raises(EncodeError, enrolment.encode_request, r), name
    r = dict(good)
    del r["bind"]
    assert raises(EncodeError, enrolment.encode_request, r)
    # what a peer could send: unknown key, a missing field, not a map, not canonical
    m = {1: _dev(), 2: _pub(), 3: good["bind"], 4: 1, 5: 1}
    assert raises(EnrolmentError, enrolment.decode_request, cbor.dumps(dict(m, **{"x": 1})))
    del m[3]
    assert raises(EnrolmentError, enrolment.decode_request, cbor.dumps(m))
    assert raises(EnrolmentError, enrolment.decode_request, cbor.dumps([1, 2]))
    assert raises(EnrolmentError, enrolment.decode_request, b"\xa1\x04\x18\x01")  # 1 as 18 01
    assert raises(EnrolmentError, enrolment.decode_request, b"\xff")


def test_kid_must_name_dev():
    key = bytes.fromhex(E["code_key"])
    payload = enrolment.encode_request({"dev": _dev(), "pub": _pub(),
                                        "bind": enrolment.binding(key, _dev(), _pub()),
                                        "t": 1, "mdl": 1})
    signed = cose.sign1(payload, b"WS\x00\x00\x00\x00\x00\x01", _sign, enrolment.AAD_ENROL)
    assert raises(EnrolmentError, enrolment.open_signed, signed, enrolment.decode_request)


def test_record_bytes_match_the_vector():
    r = E["record"]
    signed = enrolment.sign_record(_dev(), _pub(), r["t"], r["text"], _sign)
    assert signed == bytes.fromhex(r["cose_sign1"])
    sign1, fields = enrolment.open_signed(signed, enrolment.decode_record)
    assert fields["rec"] == r["text"] and fields["t"] == r["t"]
    assert sign1.to_be_signed(enrolment.AAD_RECORD) == bytes.fromhex(r["to_be_signed"])
    # a record is not an enrolment request, and the other way round
    assert raises(EnrolmentError, enrolment.open_signed, signed, enrolment.decode_request)
    assert raises(EnrolmentError, enrolment.open_signed,
                  bytes.fromhex(E["request"]["cose_sign1"]), enrolment.decode_record)


def test_record_text_is_bounded():
    good = {"dev": _dev(), "pub": _pub(), "t": 5, "rec": "{}"}
    assert enrolment.decode_record(enrolment.encode_record(good)) == good
    big = dict(good, rec="{" + " " * enrolment.MAX_RECORD_TEXT + "}")
    assert raises(EncodeError, enrolment.encode_record, big)
    assert raises(EncodeError, enrolment.encode_record, dict(good, rec=b"{}"))
