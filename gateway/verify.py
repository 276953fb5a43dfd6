"""The stateless checks of a batch of signed readings.

:func:`check_batch` is a pure function (bytes and plain values in, plain values out,
no I/O, no clock, no shared state except a cache of parsed public keys), so it runs
unchanged in every ingest process (:mod:`gateway.app`). The checks that need stored
readings (duplicates,
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
    "internal": exchange.INTERNAL_ERROR,  # a gateway fault (an unexpected error)
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

    ``readings`` is the verified prefix (:class:`Checked`); ``reason`` (None when every
    reading passed) names what stopped the batch at reading ``len(readings)``, whose seq is
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


class _Parsed(NamedTuple):
    # One item of a batch, parsed: what the checks below need.
    cose: bytes  # the exact COSE_Sign1 bytes (stored, re-verifiable)
    kid: bytes
    fields: dict  # the reading's fields by name (wattcore.reading.decode_payload)
    to_be_signed: bytes
    signature: bytes  # 64 bytes r || s


class _Bad(NamedTuple):
    # An item that could not be parsed: the reason token and the decoder's message.
    reason: str
    detail: str


def _parse_generic(item):
    """The reference parse of one item, with wattcore's strict decoders."""
    try:
        sign1 = cose.decode_sign1(item)
    except DecodeError as e:
        return _Bad("cose", str(e))
    try:
        fields = reading.decode_payload(sign1.payload)
    except DecodeError as e:
        return _Bad("schema", str(e))
    return _Parsed(item, sign1.kid, fields, sign1.to_be_signed(), sign1.signature)


# -- fast path -------------------------------------------------------------------------
# A meter's reading always has the same layout: the tag, the fixed protected header, an
# 8-byte kid, a short payload and a 64-byte signature. For that layout the item is split
# by offsets and the reading map read by a parser that knows only the deterministic
# encoding of the schema (_fields_fast), which makes its result what wattcore's strict
# decoders return for the same bytes (property-tested against them in
# gateway/tests/test_gateway_verify_fast.py). Anything else takes the reference path, so
# every reject keeps its exact reason and message.

_KID_AT = len(_SIGN1_PREFIX)
_PAYLOAD_HEAD_AT = _KID_AT + reading.DEVICE_ID_LEN
# cbor.dumps(["Signature1", h'a10126', h'', payload]) without the payload's own head
_TBS_PREFIX = b"\x84\x6aSignature1\x43" + cose.PROTECTED_ES256 + b"\x40"
_SIG_HEAD = b"\x58\x40"  # byte string of 64
_REQUIRED_NAMES = frozenset(name for name, spec in reading.FIELDS.items() if spec[3])
_MEASUREMENT_NAMES = frozenset(reading.MEASUREMENTS)


def _split_fast(payload):
    """``[(start, payload_start, payload_end, end)]`` per item when every item of the batch
    has the usual layout, else None."""
    n = len(payload)
    if n < 2 or n > exchange.MAX_PAYLOAD:
        return None
    head = payload[0]
    if 0x81 <= head <= 0x97:
        count, pos = head & 0x1F, 1
    elif head == 0x98 and payload[1] >= 24:
        count, pos = payload[1], 2
    else:
        return None
    if count > exchange.MAX_BATCH:
        return None
    spans = []
    for _ in range(count):
        at = pos + _PAYLOAD_HEAD_AT
        if at + 2 > n or payload[pos:pos + _KID_AT] != _SIGN1_PREFIX:
            return None
        b = payload[at]
        if 0x40 <= b <= 0x57:
            start, length = at + 1, b - 0x40
        elif b == 0x58 and payload[at + 1] >= 24:
            start, length = at + 2, payload[at + 1]
        else:
            return None
        end = start + length
        stop = end + 2 + cose.SIG_LEN
        if stop > n or payload[end:end + 2] != _SIG_HEAD:
            return None
        spans.append((pos, start, end, stop))
        pos = stop
    return spans if pos == n else None


def _pair_table():
    # (key byte << 8 | head byte) -> how to read that pair, for every pair a meter can
    # write in deterministic encoding, as (key, name, width, value, low, high):
    # - width 0: the head holds the value (in range: checked here, once);
    # - width 1, 2, 4 or 8: that many argument bytes follow; value says whether the
    #   integer is negative (-1 - argument); low..high bounds the argument: too small for
    #   a shorter head, and the field's value in range;
    # - width -1: the 8-byte device id follows.
    table = {}
    for name, (key, lo, hi, _) in reading.FIELDS.items():
        if name == "dev":
            table[key << 8 | 0x40 + reading.DEVICE_ID_LEN] = (key, name, -1, None, 0, 0)
            continue
        for major, negative in ((0, False), (1, True)):
            for info in range(24):
                value = -1 - info if negative else info
                if lo <= value <= hi:
                    table[key << 8 | major << 5 | info] = (key, name, 0, value, 0, 0)
            for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
                smallest = {1: 24, 2: 1 << 8, 4: 1 << 16, 8: 1 << 32}[width]
                low, high = (-1 - hi, -1 - lo) if negative else (lo, hi)
                table[key << 8 | major << 5 | info] = (key, name, width, negative,
                                                       max(low, smallest), high)
    return table


_PAIRS = _pair_table()
_from_bytes = int.from_bytes


def _fields_fast(data):
    """The reading in ``data`` by field name, or None if the fast path cannot vouch for it.

    Reads the one shape a meter writes and nothing else: a map of fewer than 24 pairs,
    keys the schema's small integers in ascending order, ``dev`` an 8-byte string, every
    other value an integer in its shortest encoding and in range, and no byte left over.
    That is deterministic encoding as wattcore's strict decoder demands it, so the result
    is what that decoder returns; anything else (a tag, a float, an indefinite length, a
    longer head, an unknown key) gives None and the reference path decides.
    """
    n = len(data)
    if n == 0:
        return None
    count = data[0] - 0xA0
    if not 0 < count < 24:
        return None
    pos = 1
    last = 0
    fields = {}
    pairs = _PAIRS
    try:
        for _ in range(count):
            # KeyError: an unknown key, or a head no value of the key has
            key, name, width, value, low, high = pairs[data[pos] << 8 | data[pos + 1]]
            if key <= last:  # keys ascend: no repeats
                return None
            last = key
            pos += 2
            if width > 0:
                end = pos + width
                u = _from_bytes(data[pos:end], "big")
                if not low <= u <= high:  # a shorter head would have done, or out of range
                    return None
                value = -1 - u if value else u
                pos = end
            elif width < 0:
                end = pos + reading.DEVICE_ID_LEN
                value = data[pos:end]
                pos = end
            fields[name] = value
    except (KeyError, IndexError):
        return None
    if pos != n or not _REQUIRED_NAMES <= fields.keys():
        return None
    if fields["st"] & reading.ST_FAULT_MASK and not _MEASUREMENT_NAMES.isdisjoint(fields):
        return None
    return fields


def _parse_items(payload, fast=True):
    """Parsed items of a batch (a :class:`_Parsed` or :class:`_Bad` each), lazily; raises
    DecodeError when the payload is not a batch. ``fast=False``: wattcore's decoders only."""
    spans = _split_fast(payload) if fast else None
    if spans is None:
        for item in exchange.decode_batch(payload):
            yield _parse_generic(item)
        return
    for start, payload_start, payload_end, stop in spans:
        item = payload[start:stop]
        fields = _fields_fast(payload[payload_start:payload_end])
        if fields is None:
            yield _parse_generic(item)
            continue
        yield _Parsed(
            item, payload[start + _KID_AT:start + _PAYLOAD_HEAD_AT], fields,
            _TBS_PREFIX + payload[start + _PAYLOAD_HEAD_AT:payload_end],
            payload[payload_end + 2:stop],
        )


def signature_valid(pubkey, sign1):
    """ES256 check of a parsed COSE_Sign1 against a 65-byte SEC1 key."""
    return _signature_valid(pubkey, sign1.signature, sign1.to_be_signed())


def _signature_valid(pubkey, sig, to_be_signed):
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        public_key(pubkey).verify(der, to_be_signed, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


class _Failure(NamedTuple):
    # The first check a reading failed, other than its signature.
    at: int  # the reading's index in the batch
    reason: str
    seq: int | None
    detail: str


def check_batch(payload, credential, now, policy, fast=True):
    """Stateless checks of one POST /r payload (see the module docstring).

    ``credential``: the :class:`Credential` of the device the first reading names, or
    None when no such device is registered. ``now``: gateway unix time, seconds.
    ``fast=False`` parses with wattcore's strict decoders only (the reference the fast
    path is tested against); the outcome is the same either way.

    The signatures are checked last, one after the other (the signature code and its
    tables stay in the CPU's caches: ~9 us less per reading in the running pipeline
    than checking each between the other checks, docs/gateway.md); the outcome is that
    of checking each reading in the order of the module docstring, which
    gateway/tests/test_gateway_verify.py checks against a straightforward
    implementation.
    """
    try:
        signed, device_id, failure = _unsigned_checks(payload, credential, now, policy, fast)
    except DecodeError as e:  # the payload is not a batch of items at all
        reason = "empty" if payload == b"\x80" else "cbor"
        return BatchCheck(None, [], reason, None, str(e))
    checked = []
    for index, parsed in enumerate(signed):
        r = parsed.fields
        if not _signature_valid(credential.pubkey, parsed.signature, parsed.to_be_signed):
            return BatchCheck(device_id, checked, "bad-signature", r["seq"],
                              f"reading {index}: signature does not verify")
        if failure is not None and failure.at == index:
            break  # its signature is good: the check after the signature stops the batch
        g = r.get
        checked.append(Checked(r["seq"], r["t"], r["st"], g("ei"), g("ee"), g("p"), g("u"),
                               g("i"), g("f"), g("pf"), r["mdl"], g("sn"), parsed.cose))
    if failure is not None:
        return BatchCheck(device_id, checked, failure.reason, failure.seq, failure.detail)
    return BatchCheck(device_id, checked, None, None, "")


def _unsigned_checks(payload, credential, now, policy, fast):
    """Every check but the signatures, reading by reading, up to the first failure:
    ``(readings whose signatures are to be checked, device id, _Failure or None)``. A
    reading that failed a check that comes after its signature is among the readings
    to check: a bad signature is what it is rejected for then."""
    signed = []
    device_id = None
    for index, parsed in enumerate(_parse_items(payload, fast)):
        if type(parsed) is _Bad:
            return signed, device_id, _Failure(index, parsed.reason, None,
                                               f"reading {index}: {parsed.detail}")
        r = parsed.fields
        seq = r["seq"]
        kid = parsed.kid
        if kid != r["dev"]:
            return signed, device_id, _Failure(
                index, "kid-mismatch", seq, f"reading {index}: COSE kid differs from dev")
        if index == 0:
            device_id = kid
            if credential is None or credential.device_id != device_id:
                return signed, device_id, _Failure(
                    index, "unknown-device", seq, f"device {device_id.hex()} is not registered")
            if credential.revoked:
                return signed, device_id, _Failure(
                    index, "revoked", seq, f"device {device_id.hex()} is revoked")
        elif kid != device_id:
            return signed, device_id, _Failure(
                index, "mixed-devices", seq, f"reading {index} names another device")
        signed.append(parsed)
        # the checks after the signature
        t = r["t"]
        p = r.get("p")
        if seq > MAX_STORED_SEQ:
            failure = ("seq-range", "seq above 2**63-1")
        elif r["st"] & reading.ST_CLOCK_UNTRUSTED:
            failure = ("clock-untrusted", "reading stamped by an unset clock")
        elif t > now + policy.max_future_skew_s:
            failure = ("time-skew", f"t is {t - now} s ahead of the gateway")
        elif t < now - policy.max_age_s:
            failure = ("too-old", f"t is {now - t} s old (max age {policy.max_age_s} s)")
        elif p is not None and abs(p) > credential.power_limit_w:
            failure = ("over-rating", f"|p| = {abs(p)} W above {credential.power_limit_w} W")
        else:
            continue
        return signed, device_id, _Failure(index, failure[0], seq, failure[1])
    return signed, device_id, None
