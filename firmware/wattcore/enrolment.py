# Enrolment and commissioning records (docs/protocol.md, section 6).
#
# Enrolment: a device proves to the gateway that it holds its key, and that the
# person who installed it holds the technician's one-time code, without sending
# the code: the request is a COSE_Sign1 by the device key over its id, its public
# key and bind = HMAC-SHA256(K, id || public key), K = SHA-256 of the code. The
# gateway stores only K and finds the invite whose K gives the same bind. Its
# answer carries confirm = HMAC(K, ...)[:16], so the device knows the answer
# comes from a gateway that knows the code.
#
# Commissioning record: a COSE_Sign1 by the device key over its id, public key,
# its clock and the record the installer's tool wrote (JSON text, not read here).
#
# Each kind of message names itself in the COSE external AAD, so a signature
# made for one never verifies as another (readings use none).
# Sans-IO: bytes and values in, bytes and values out.
from hashlib import sha256

from wattcore import cbor, cose
from wattcore.const import const
from wattcore.errors import CborError, CodeError, EncodeError, EnrolmentError
from wattcore.hmac_sha256 import hmac_sha256

AAD_ENROL = b"wattshare/e"
AAD_RECORD = b"wattshare/c"

# Reason tokens of POST /e besides those every resource uses (docs/protocol.md 6.3)
CODE_WRONG = "code-wrong"  # 4.03: no invite has this code
CODE_USED = "code-used"  # 4.03: the invite enrolled another device
CODE_EXPIRED = "code-expired"  # 4.03: the invite expired
DEVICE_EXISTS = "device-exists"  # 4.09: the id or the key is registered already
MODEL_MISMATCH = "model-mismatch"  # 4.22: the device reads another model than invited

# The one-time code: Crockford base32, 11 random characters (55 bits) and a check
# character, shown as XXXX-XXXX-XXXX. I and L read as 1, O as 0; case, spaces and
# dashes do not matter.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LEN = const(12)
_RANDOM_CHARS = const(11)
_CHECK_MOD = const(31)  # prime: every single substitution and swap is caught
_ALIASES = {"I": "1", "L": "1", "O": "0"}

RESP_CONFIRM = const(6)  # response map key of the confirmation (16 bytes)
CONFIRM_LEN = const(16)
PUBKEY_LEN = const(65)
BIND_LEN = const(32)
MAX_RECORD_TEXT = const(4096)  # bytes of the record's JSON text

# name: (key, kind, lo, hi, required); kind "b": bytes of exactly lo..hi bytes,
# "u": integer lo..hi, "s": UTF-8 text of lo..hi bytes
REQUEST_FIELDS = {
    "dev": (1, "b", 8, 8, True),  # device id (= COSE kid)
    "pub": (2, "b", PUBKEY_LEN, PUBKEY_LEN, True),  # the device's public key, SEC1
    "bind": (3, "b", BIND_LEN, BIND_LEN, True),  # HMAC-SHA256(K, dev || pub)
    "t": (4, "u", 0, 0xFFFFFFFFFF, True),  # device time, unix seconds
    "mdl": (5, "u", 0, 0xFF, True),  # meter model code (boards/meters/*.toml)
    "sn": (6, "u", 0, 0xFFFFFFFF, False),  # meter serial number, when known
}
RECORD_FIELDS = {
    "dev": (1, "b", 8, 8, True),
    "pub": (2, "b", PUBKEY_LEN, PUBKEY_LEN, True),
    "t": (3, "u", 0, 0xFFFFFFFFFF, True),  # device clock when it signed
    "rec": (4, "s", 2, MAX_RECORD_TEXT, True),  # the record, JSON text
}


# ---- the code ------------------------------------------------------------------------


def _check_char(chars):
    total = 0
    for i in range(len(chars)):
        total += (i + 1) * ALPHABET.index(chars[i])
    return ALPHABET[total % _CHECK_MOD]


def code_from_random(random_bytes):
    # random_bytes(n) -> n random bytes. -> the normalised code (12 characters)
    n = int.from_bytes(random_bytes(7), "big") >> 1  # 55 bits
    chars = ""
    for _ in range(_RANDOM_CHARS):
        chars = ALPHABET[n & 31] + chars
        n >>= 5
    return chars + _check_char(chars)


def format_code(code):
    # normalised code -> "XXXX-XXXX-XXXX", as a person reads it
    return code[0:4] + "-" + code[4:8] + "-" + code[8:12]


def parse_code(text):
    # What a person typed -> the normalised code; CodeError says what is wrong.
    if not isinstance(text, str):
        raise CodeError("the code must be text")
    chars = ""
    for c in text.upper():
        if c in " -":
            continue
        c = _ALIASES.get(c, c)
        if c not in ALPHABET:
            raise CodeError("%r is not a code character (0-9 and A-Z without U)" % c)
        chars += c
    if len(chars) != CODE_LEN:
        raise CodeError("a code has %d characters (XXXX-XXXX-XXXX), got %d"
                        % (CODE_LEN, len(chars)))
    if _check_char(chars[:-1]) != chars[-1]:
        raise CodeError("the code does not check out: a character is mistyped")
    return chars


def code_key(code):
    # K: what the gateway stores of a code, and the key of bind and confirm
    return sha256(b"wattshare enrol code\x00" + code.encode()).digest()


def binding(key, dev, pub):
    return hmac_sha256(key, b"wattshare enrol\x00" + dev + pub)


def confirmation(key, dev, pub):
    return hmac_sha256(key, b"wattshare enrolled\x00" + dev + pub)[:CONFIRM_LEN]


def fingerprint(key):
    # what a device keeps to remember which code enrolled it
    return sha256(b"wattshare enrol fingerprint\x00" + key).digest()[:8]


# ---- maps ------------------------------------------------------------------------------


def _problem(name, kind, lo, hi, v):
    if kind == "u":
        if not isinstance(v, int) or isinstance(v, bool):
            return "%s must be an integer" % name
        if v < lo or v > hi:
            return "%s out of range" % name
    elif kind == "b":
        if not isinstance(v, bytes) or not lo <= len(v) <= hi:
            return "%s must be %d bytes" % (name, hi)
    else:
        if not isinstance(v, str):
            return "%s must be text" % name
        n = len(v.encode())
        if n < lo or n > hi:
            return "%s must be %d..%d bytes" % (name, lo, hi)
    return None


def _validate(spec, r):
    for name in spec:
        if spec[name][4] and name not in r:
            return "missing %s" % name
    for name in r:
        if name not in spec:
            return "unknown field %s" % name
        key, kind, lo, hi, _ = spec[name]
        err = _problem(name, kind, lo, hi, r[name])
        if err:
            return err
    if r["pub"][0] != 4:
        return "pub must be an uncompressed SEC1 point (04 ...)"
    return None


def _encode(spec, r):
    err = _validate(spec, r)
    if err:
        raise EncodeError(err)
    m = {}
    for name in r:
        m[spec[name][0]] = r[name]
    return cbor.dumps(m)


def _decode(spec, data):
    try:
        m = cbor.loads(data, True)
    except CborError as e:
        raise EnrolmentError("payload: %s" % e)
    if not isinstance(m, dict):
        raise EnrolmentError("payload must be a map")
    names = {}
    for name in spec:
        names[spec[name][0]] = name
    r = {}
    for k in m:
        name = names.get(k) if isinstance(k, int) and not isinstance(k, bool) else None
        if name is None:
            raise EnrolmentError("unknown key %r" % (k,))
        r[name] = m[k]
    err = _validate(spec, r)
    if err:
        raise EnrolmentError(err)
    return r


def encode_request(r):
    # r: {"dev", "pub", "bind", "t", "mdl"[, "sn"]} -> canonical CBOR payload
    return _encode(REQUEST_FIELDS, r)


def decode_request(payload):
    return _decode(REQUEST_FIELDS, payload)


def encode_record(r):
    # r: {"dev", "pub", "t", "rec"} -> canonical CBOR payload
    return _encode(RECORD_FIELDS, r)


def decode_record(payload):
    return _decode(RECORD_FIELDS, payload)


def sign_request(key, dev, pub, t, mdl, sign_fn, sn=None):
    # key: K of the code; sign_fn(to_be_signed) -> r || s. -> COSE_Sign1 bytes
    r = {"dev": dev, "pub": pub, "bind": binding(key, dev, pub), "t": t, "mdl": mdl}
    if sn is not None:
        r["sn"] = sn
    return cose.sign1(encode_request(r), dev, sign_fn, AAD_ENROL)


def sign_record(dev, pub, t, text, sign_fn):
    return cose.sign1(encode_record({"dev": dev, "pub": pub, "t": t, "rec": text}), dev,
                      sign_fn, AAD_RECORD)


def open_signed(data, decode):
    # COSE_Sign1 bytes -> (Sign1, fields); the signature is the caller's to check
    # (against fields["pub"] for a request, the registered key for a record).
    sign1 = cose.decode_sign1(data)
    fields = decode(sign1.payload)
    if fields["dev"] != sign1.kid:
        raise EnrolmentError("COSE kid differs from dev")
    return sign1, fields


# ---- the device's side of the answer to POST /e ----------------------------------------

ENROLLED = const(0)  # done: remember it, send readings
REGISTERED = const(1)  # the gateway knows the device already: stop enrolling, send readings
REFUSED = const(2)  # a person must act (new code, registry): keep readings, retry rarely
RETRY = const(3)  # the gateway is busy, faulty or unreachable: back off and retry
_CHANGED = const(0x44)  # 2.04
_CONFLICT = const(0x89)  # 4.09
_CLIENT_ERROR = const(4)


def outcome(code, resp, expected_confirm):
    # code: the CoAP response code; resp: the decoded response map (may be empty);
    # expected_confirm: confirmation(K, dev, pub). An answer that should carry a
    # confirmation and does not is not believed (RETRY).
    confirmed = resp.get("confirm") == expected_confirm
    if code == _CHANGED:
        return ENROLLED if confirmed else RETRY
    if code == _CONFLICT and resp.get("reason") == DEVICE_EXISTS:
        return REGISTERED if confirmed else RETRY
    if code >> 5 == _CLIENT_ERROR:
        return REFUSED
    return RETRY
