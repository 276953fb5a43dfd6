"""The stateless checks of a batch of signed readings.

:func:`check_batch` is a pure function (bytes and plain values in, plain values out,
no I/O, no clock, no shared state except a cache of parsed public keys), so it runs
unchanged in the main process or in verification worker processes
(:mod:`gateway.verifier_pool`). The checks that need stored readings (duplicates,
sequence reuse, counters going backwards) run later, in the writer
(:mod:`gateway.writer`), inside the transaction that stores the readings.

Readings are checked in order; the first failure stops the batch and everything
before it forms the verified prefix. Per reading, in this order:

1. COSE_Sign1 structure (``cose``), reading schema (``schema``), kid == dev
   (``kid-mismatch``);
2. the first reading names the device of the batch (``unknown-device``, ``revoked``);
   later readings must name the same one (``mixed-devices``);
3. ES256 signature (``bad-signature``);
4. plausibility: ``seq-range``, ``clock-untrusted``, ``time-skew`` (ahead of the gateway
   clock), ``too-old`` (older than the maximum age), ``over-rating``.

Reason tokens and codes follow docs/protocol.md, section 4.3.
"""

from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from wattcore import cose, exchange, reading
from wattcore.errors import DecodeError

# Reason token (sent to the device, used as a metric label) -> CoAP response code.
REASONS = {
    "cbor": exchange.BAD_REQUEST,  # the batch is not a CBOR array of items
    "empty": exchange.BAD_REQUEST,  # an array of no readings
    "cose": exchange.BAD_REQUEST,  # an item is not a valid ES256 COSE_Sign1
    "schema": exchange.BAD_REQUEST,  # the signed payload breaks the reading schema
    "kid-mismatch": exchange.BAD_REQUEST,  # COSE kid != reading dev
    "mixed-devices": exchange.BAD_REQUEST,  # one batch, one device
    "bad-signature": exchange.UNAUTHORIZED,
    "unknown-device": exchange.FORBIDDEN,
    "revoked": exchange.FORBIDDEN,
    "not-found": exchange.NOT_FOUND,  # unknown resource path
    "method": exchange.METHOD_NOT_ALLOWED,
    "seq-reuse": exchange.CONFLICT,  # same (device, seq) stored with other bytes
    "too-large": exchange.TOO_LARGE,  # payload or batch over the limits
    "content-format": exchange.UNSUPPORTED_FORMAT,
    "seq-range": exchange.UNPROCESSABLE,  # seq above what the store holds (2**63-1)
    "clock-untrusted": exchange.UNPROCESSABLE,
    "time-skew": exchange.UNPROCESSABLE,  # further ahead of the gateway clock than allowed
    "too-old": exchange.UNPROCESSABLE,  # older than the configured maximum age
    "over-rating": exchange.UNPROCESSABLE,  # |p| above phases x CT rating x voltage bound
    "counter-backwards": exchange.UNPROCESSABLE,
    "internal": exchange.INTERNAL_ERROR,  # a gateway fault (e.g. a worker died)
    "busy": exchange.UNAVAILABLE,  # backlog full; answered with Max-Age
    "storage": exchange.UNAVAILABLE,  # the database failed; answered with Max-Age
}

MAX_STORED_SEQ = 2**63 - 1  # SQLite integers are signed 64-bit


class Credential(NamedTuple):
    """What the checks need to know about the batch's device (from the registry)."""

    device_id: bytes
    pubkey: bytes  # 65-byte SEC1 P-256 point
    power_limit_w: int
    revoked: bool


class Policy(NamedTuple):
    max_future_skew_s: int
    max_age_s: int


class Checked(NamedTuple):
    """A reading that passed the stateless checks: its decoded fields and exact bytes."""

    seq: int
    t: int
    st: int
    ei: int | None
    ee: int | None
    p: int | None
    u: int | None
    i: int | None
    f: int | None
    pf: int | None
    mdl: int
    sn: int | None
    cose: bytes


class BatchCheck(NamedTuple):
    """Outcome of :func:`check_batch`.

    ``readings`` is the verified prefix; ``reason`` (None when every reading passed)
    names what stopped the batch at reading ``len(readings)``, whose seq is
    ``rejected_seq`` when it could be decoded. ``device_id`` is the first reading's kid.
    """

    device_id: bytes | None
    readings: list
    reason: str | None
    rejected_seq: int | None
    detail: str


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_CURVE = ec.SECP256R1()
_KEYS: dict = {}  # SEC1 bytes -> parsed key, per process
_KEY_CACHE_MAX = 10000

# Every valid COSE_Sign1 with an 8-byte kid starts with these bytes (the protected
# header is fixed, the encoding canonical), followed by the kid.
_SIGN1_PREFIX = bytes.fromhex("d28443a10126a10448")


def peek_device_id(payload):
    """The kid of a batch's first reading, read at its fixed offset without decoding.

    Only a hint for choosing which key to send with the batch: :func:`check_batch`
    decodes everything and compares. None when the bytes do not have the expected shape.
    """
    if not payload:
        return None
    head = payload[0]
    if 0x81 <= head <= 0x97:
        start = 1
    elif head == 0x98:
        start = 2
    else:
        return None
    end = start + len(_SIGN1_PREFIX)
    if payload[start:end] != _SIGN1_PREFIX or len(payload) < end + reading.DEVICE_ID_LEN:
        return None
    return bytes(payload[end : end + reading.DEVICE_ID_LEN])


def batch_length(payload):
    """Items announced by the batch's CBOR array head, or None if it is not one."""
    if not payload:
        return None
    head = payload[0]
    if 0x80 <= head <= 0x97:
        return head & 0x1F
    size = {0x98: 1, 0x99: 2, 0x9A: 4, 0x9B: 8}.get(head)
    if size is None or len(payload) < 1 + size:
        return None
    return int.from_bytes(payload[1 : 1 + size], "big")


def public_key(sec1):
    key = _KEYS.get(sec1)
    if key is None:
        if len(_KEYS) >= _KEY_CACHE_MAX:
            _KEYS.clear()
        key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, sec1)
        _KEYS[sec1] = key
    return key


def signature_valid(pubkey, sign1):
    """ES256 check of a parsed COSE_Sign1 against a 65-byte SEC1 key."""
    sig = sign1.signature
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        public_key(pubkey).verify(der, sign1.to_be_signed(), _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


def check_batch(payload, credential, now, policy):
    """Stateless checks of one POST /r payload (see the module docstring).

    ``credential``: the :class:`Credential` of the device the first reading names, or
    None when no such device is registered. ``now``: gateway unix time, seconds.
    """
    try:
        items = exchange.decode_batch(payload)
    except DecodeError as e:
        reason = "empty" if payload == b"\x80" else "cbor"
        return BatchCheck(None, [], reason, None, str(e))
    checked = []
    device_id = None

    def stop(reason, seq, detail):
        return BatchCheck(device_id, checked, reason, seq, detail)

    for index, item in enumerate(items):
        try:
            sign1 = cose.decode_sign1(item)
        except DecodeError as e:
            return stop("cose", None, f"reading {index}: {e}")
        try:
            r = reading.decode_payload(sign1.payload)
        except DecodeError as e:
            return stop("schema", None, f"reading {index}: {e}")
        seq = r["seq"]
        if sign1.kid != r["dev"]:
            return stop("kid-mismatch", seq, f"reading {index}: COSE kid differs from dev")
        if index == 0:
            device_id = sign1.kid
            if credential is None or credential.device_id != device_id:
                return stop("unknown-device", seq, f"device {device_id.hex()} is not registered")
            if credential.revoked:
                return stop("revoked", seq, f"device {device_id.hex()} is revoked")
        elif sign1.kid != device_id:
            return stop("mixed-devices", seq, f"reading {index} names another device")
        if not signature_valid(credential.pubkey, sign1):
            return stop("bad-signature", seq, f"reading {index}: signature does not verify")
        if seq > MAX_STORED_SEQ:
            return stop("seq-range", seq, "seq above 2**63-1")
        st = r["st"]
        if st & reading.ST_CLOCK_UNTRUSTED:
            return stop("clock-untrusted", seq, "reading stamped by an unset clock")
        t = r["t"]
        if t > now + policy.max_future_skew_s:
            return stop("time-skew", seq, f"t is {t - now} s ahead of the gateway")
        if t < now - policy.max_age_s:
            return stop("too-old", seq,
                        f"t is {now - t} s old (max age {policy.max_age_s} s)")
        p = r.get("p")
        if p is not None and abs(p) > credential.power_limit_w:
            return stop(
                "over-rating", seq, f"|p| = {abs(p)} W above {credential.power_limit_w} W"
            )
        g = r.get
        checked.append(
            Checked(seq, t, st, g("ei"), g("ee"), p, g("u"), g("i"), g("f"), g("pf"),
                    r["mdl"], g("sn"), item)
        )
    return BatchCheck(device_id, checked, None, None, "")


def check_batches(jobs, policy):
    """:func:`check_batch` over a list of ``(payload, credential, now)``: one worker task."""
    return [check_batch(payload, credential, now, policy) for payload, credential, now in jobs]
