"""The enrolment core against independent implementations: hashlib/hmac for the code key
and binding, cbor2 for the maps, `cryptography` and pycose for the ES256 signatures (with
the external AAD that names the message kind); and fuzzing of its decoders."""

import hashlib
import hmac

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import given, settings
from hypothesis import strategies as st
from pycose.keys import EC2Key
from pycose.messages import Sign1Message
from wattcore import enrolment, p256
from wattcore.errors import CodeError, DecodeError

PRIV = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
PUB = p256.public_key(PRIV)
DEV = b"WS\xa4\xc1\x38\xf1\xe2\xd0"


def _sign(tbs):
    return p256.sign(PRIV, tbs)


def _verifies(pub, tbs, sig):
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
    der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                     int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


codes = st.binary(min_size=7, max_size=7).map(lambda b: enrolment.code_from_random(lambda n: b))


@settings(max_examples=200, deadline=None)
@given(codes, st.binary(min_size=8, max_size=8))
def test_key_and_binding_equal_hashlib_and_hmac(code, dev):
    key = enrolment.code_key(code)
    assert key == hashlib.sha256(b"wattshare enrol code\x00" + code.encode()).digest()
    assert enrolment.binding(key, dev, PUB) == hmac.new(
        key, b"wattshare enrol\x00" + dev + PUB, hashlib.sha256).digest()


@settings(max_examples=200, deadline=None)
@given(codes)
def test_every_generated_code_parses_back(code):
    assert enrolment.parse_code(enrolment.format_code(code).lower()) == code


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_parse_code_raises_only_code_error(text):
    try:
        enrolment.parse_code(text)
    except CodeError:
        pass


@settings(max_examples=40, deadline=None)
@given(codes, st.integers(0, 2**40 - 1), st.integers(0, 255),
       st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_request_equals_cbor2_and_verifies_with_cryptography(code, t, mdl, sn):
    key = enrolment.code_key(code)
    signed = enrolment.sign_request(key, DEV, PUB, t, mdl, _sign, sn=sn)
    tag = cbor2.loads(signed)
    protected, unprotected, payload, sig = tag.value
    expected = {1: DEV, 2: PUB, 3: enrolment.binding(key, DEV, PUB), 4: t, 5: mdl}
    if sn is not None:
        expected[6] = sn
    assert payload == cbor2.dumps(expected, canonical=True)
    assert unprotected == {4: DEV}
    tbs = cbor2.dumps(["Signature1", protected, b"wattshare/e", payload])
    assert _verifies(PUB, tbs, sig)
    # without the AAD (as a reading would be checked) it does not verify
    assert not _verifies(PUB, cbor2.dumps(["Signature1", protected, b"", payload]), sig)


def test_record_verifies_with_pycose():
    text = '{"installer":"x","checks":{"modbus":{"ok":true}}}'
    signed = enrolment.sign_record(DEV, PUB, 1785318060, text, _sign)
    msg = Sign1Message.decode(signed)
    msg.external_aad = b"wattshare/c"
    x, y = PUB[1:33], PUB[33:]
    msg.key = EC2Key(crv="P_256", x=x, y=y)
    assert msg.verify_signature()
    assert cbor2.loads(msg.payload)[4] == text
    msg.external_aad = b"wattshare/e"  # the same signature, read as another kind of message
    assert not msg.verify_signature()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_raise_only_decode_errors(data):
    for decode in (enrolment.decode_request, enrolment.decode_record):
        try:
            decode(data)
        except DecodeError:
            pass
        try:
            enrolment.open_signed(data, decode)
        except DecodeError:
            pass


small = st.one_of(st.integers(-(2**64), 2**64 - 1), st.binary(max_size=70), st.text(max_size=6),
                  st.none(), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.integers(-2, 8), small, max_size=8))
def test_random_maps_raise_only_decode_errors(m):
    data = cbor2.dumps(m, canonical=True)
    for decode in (enrolment.decode_request, enrolment.decode_record):
        try:
            decode(data)
        except DecodeError:
            pass
