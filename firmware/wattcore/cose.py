# COSE_Sign1 (RFC 9052 section 4.2) with ES256 only: the envelope of every
# Wattshare reading. The protected header is always exactly {1: -7} (alg ES256)
# and the unprotected header carries the key id (= device id), so a receiver
# finds the key before it checks the signature.
from wattcore import cbor
from wattcore.cbor import Tag
from wattcore.const import const
from wattcore.errors import CborError, CoseError, EncodeError

TAG_SIGN1 = const(18)
HDR_ALG = const(1)
HDR_KID = const(4)
ALG_ES256 = const(-7)
SIG_LEN = const(64)
# cbor.dumps({1: -7}), fixed so both sides sign the same bytes
PROTECTED_ES256 = b"\xa1\x01\x26"


def sig_structure(protected, payload, external_aad=b""):
    # Sig_structure for COSE_Sign1: the bytes the signature covers
    return cbor.dumps(["Signature1", protected, external_aad, payload])


def sign1(payload, kid, sign_fn, external_aad=b""):
    # sign_fn(to_be_signed) -> 64-byte r||s (ES256). Returns the tagged
    # COSE_Sign1 bytes. external_aad: bytes the signature covers without carrying
    # them (readings: none; other messages name their kind there, so a signature
    # made for one kind of message never verifies as another).
    if not isinstance(kid, bytes) or not isinstance(payload, bytes):
        raise EncodeError("kid and payload must be bytes")
    sig = sign_fn(sig_structure(PROTECTED_ES256, payload, external_aad))
    if len(sig) != SIG_LEN:
        raise EncodeError("ES256 signature must be 64 bytes")
    return cbor.dumps(Tag(TAG_SIGN1, [PROTECTED_ES256, {HDR_KID: kid}, payload, sig]))


class Sign1:
    # A parsed COSE_Sign1; the signature is not checked here (that needs the
    # device's key: see the gateway's verifier).
    def __init__(self, protected, kid, payload, signature):
        self.protected = protected
        self.kid = kid
        self.payload = payload
        self.signature = signature

    def to_be_signed(self, external_aad=b""):
        return sig_structure(self.protected, self.payload, external_aad)


def decode_sign1(data):
    try:
        obj = cbor.loads(data, True)
    except CborError as e:
        raise CoseError("COSE_Sign1 is not canonical CBOR: %s" % e)
    if not isinstance(obj, Tag) or obj.tag != TAG_SIGN1:
        raise CoseError("not a tagged COSE_Sign1 (tag 18)")
    arr = obj.value
    if not isinstance(arr, list) or len(arr) != 4:
        raise CoseError("COSE_Sign1 must be an array of 4")
    protected, unprotected, payload, signature = arr
    if not isinstance(protected, bytes) or not isinstance(unprotected, dict):
        raise CoseError("bad COSE_Sign1 headers")
    if not isinstance(payload, bytes):
        raise CoseError("COSE_Sign1 payload must be a byte string (not detached)")
    if not isinstance(signature, bytes) or len(signature) != SIG_LEN:
        raise CoseError("ES256 signature must be 64 bytes")
    if protected != PROTECTED_ES256:
        raise CoseError("protected header must be exactly {1: -7} (ES256)")
    kid = unprotected.get(HDR_KID)
    if not isinstance(kid, bytes) or len(unprotected) != 1:
        raise CoseError("unprotected header must be exactly {4: kid}")
    return Sign1(protected, kid, payload, signature)
