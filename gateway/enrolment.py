"""Enrolment: a meter registers itself with the technician's one-time code.

``wattshare device invite`` creates an invite (label, owner, optionally the meter model
and CT rating, an expiry) and prints its one-time code once. The database keeps only
K = SHA-256 of the code (:func:`wattcore.enrolment.code_key`); the code itself is never
stored or logged. The installer writes the code into the device's ``device.json``; at
boot the device sends ``POST /e``: a COSE_Sign1 by its own key over its id, its public key
and bind = HMAC(K, id || public key) (docs/protocol.md, section 6). :func:`enrol` checks,
in this order:

===============  =======  ==========================================================
reason           code     when
===============  =======  ==========================================================
``cose``         4.00     not a COSE_Sign1 with the ES256 header
``schema``       4.00     the payload breaks the request schema, or its key is not a
                          point on P-256
``kid-mismatch`` 4.00     COSE kid differs from ``dev``
``bad-signature`` 4.01    the signature does not verify with the key in the request
``code-wrong``   4.03     no invite's K gives this bind (a mistyped or unknown code)
``code-used``    4.03     the invite already enrolled another device or key
``code-expired`` 4.03     the invite expired
``device-exists`` 4.09    the id or the key is registered already (``device add``, or
                          another invite); the answer carries the confirmation
``model-mismatch`` 4.22   the device reads another meter model than the invite names
(none)           2.04     registered now, or this device and key used this invite
                          before (a retransmission): the answer carries
                          confirm = HMAC(K, ...)[:16]
===============  =======  ==========================================================

The device is registered with the invite's label, owner and CT rating (default: the
model's) and the model the device reports (checked against the invite's when it names
one), in the same transaction that marks the invite used, so two ingest processes
cannot both use it. Registering on chain stays a separate step
(``wattshare community add-meter``): it needs the community admin's key.
"""

import asyncio
import hmac
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from wattcore import enrolment as core
from wattcore import exchange
from wattcore.errors import CoseError, DecodeError

from gateway import registry, simclock, store
from gateway.errors import InvalidDevice, InviteNotOpen, StorageError
from gateway.ingest import POST, CoapResponse, code_text
from gateway.logs import RateLimiter

log = logging.getLogger("wattshare.enrolment")

MIN_TTL_S = 60
MAX_TTL_S = 7 * 86400
# invites looked at for a request: every one still open, and those used or expired in
# the last 30 days (to say "used" or "expired" rather than "wrong")
_LOOKBACK_S = 30 * 86400
_MAX_CANDIDATES = 10000

# reason -> CoAP code, for the answers of POST /e (besides method, content-format,
# too-large, storage, which every resource uses)
REASONS = {
    "cose": exchange.BAD_REQUEST,
    "schema": exchange.BAD_REQUEST,
    "kid-mismatch": exchange.BAD_REQUEST,
    "bad-signature": exchange.UNAUTHORIZED,
    core.CODE_WRONG: exchange.FORBIDDEN,
    core.CODE_USED: exchange.FORBIDDEN,
    core.CODE_EXPIRED: exchange.FORBIDDEN,
    core.DEVICE_EXISTS: exchange.CONFLICT,
    core.MODEL_MISMATCH: exchange.UNPROCESSABLE,
}


@dataclass(frozen=True)
class Invite:
    id: int
    label: str
    owner: str
    model: str | None
    ct_rating_a: float | None
    created_at: int
    expires_at: int
    used_at: int | None
    device: bytes | None
    pubkey: bytes | None

    def state(self, now):
        """"open", "used" or "expired"."""
        if self.used_at is not None:
            return "used"
        return "expired" if now >= self.expires_at else "open"


_COLUMNS = ("id, label, owner, model, ct_rating_a, created_at, expires_at, used_at, device, "
            "pubkey")


def _invite(row):
    device = bytes(row[8]) if row[8] is not None else None
    pubkey = bytes(row[9]) if row[9] is not None else None
    return Invite(*row[:8], device, pubkey)


def parse_ttl(text):
    """"30m", "2h", "1d", "90s" (or a number of minutes) -> seconds, 1 min..7 days."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", str(text))
    if not m:
        raise InvalidDevice(f"expiry {text!r}: a duration such as 30m, 2h or 1d")
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        raise InvalidDevice(f"expiry {text!r}: must be between 1 minute and 7 days")
    return seconds


def create_invite(conn, label, owner, ttl_s, model=None, ct_rating_a=None, now=None,
                  random_bytes=os.urandom):
    """A new invite (values already parsed) -> (code, :class:`Invite`). The code is
    returned once: only its K is stored."""
    if ct_rating_a is not None and not ct_rating_a > 0:
        raise InvalidDevice(f"CT rating {ct_rating_a!r} A: must be above 0")
    now = int(simclock.now()) if now is None else now
    for _ in range(3):  # a repeated code (2^-55 per pair) is drawn again
        code = core.code_from_random(random_bytes)
        try:
            with store.immediate(conn):
                cur = conn.execute(
                    "INSERT INTO invites (code_key, label, owner, model, ct_rating_a, "
                    "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (core.code_key(code), label, owner, model,
                     None if ct_rating_a is None else float(ct_rating_a), now, now + ttl_s))
        except sqlite3.IntegrityError:
            continue
        except sqlite3.Error as e:
            raise StorageError(f"cannot store the invite: {e}") from None
        return code, get_invite(conn, cur.lastrowid)
    raise StorageError("cannot draw a new invite code")


def list_invites(conn, now=None, ended=False):
    """Open invites, newest first; ``ended``: the used and expired ones too."""
    now = int(simclock.now()) if now is None else now
    where = "" if ended else "WHERE used_at IS NULL AND expires_at > ? "
    rows = conn.execute(f"SELECT {_COLUMNS} FROM invites {where}ORDER BY id DESC",
                        () if ended else (now,)).fetchall()
    return [_invite(row) for row in rows]


def cancel_invite(conn, invite_id, now=None):
    """An open invite ends now (its code answers ``code-expired`` from then on) ->
    the :class:`Invite` as it is now."""
    now = int(simclock.now()) if now is None else now
    try:
        with store.immediate(conn):
            invite = get_invite(conn, invite_id)
            if invite is None:
                raise InviteNotOpen(f"no invite {invite_id} (wattshare device invites --all "
                                    "lists them)")
            state = invite.state(now)
            if state == "used":
                raise InviteNotOpen(f"invite {invite_id} ({invite.label}) enrolled device "
                                    f"{invite.device.hex() if invite.device else '?'} already: "
                                    "revoke the device instead (wattshare device revoke)")
            if state == "expired":
                raise InviteNotOpen(f"invite {invite_id} ({invite.label}) has expired already")
            conn.execute("UPDATE invites SET expires_at = ? WHERE id = ?", (now, invite_id))
    except sqlite3.Error as e:
        raise StorageError(f"cannot cancel the invite: {e}") from None
    return get_invite(conn, invite_id)


def get_invite(conn, invite_id):
    row = conn.execute(f"SELECT {_COLUMNS} FROM invites WHERE id = ?", (invite_id,)).fetchone()
    return _invite(row) if row is not None else None


def enrolled_by(conn, device_id):
    """The invite that enrolled this device, or None (registered with ``device add``)."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM invites WHERE device = ? ORDER BY used_at "
                       "LIMIT 1", (device_id,)).fetchone()
    return _invite(row) if row is not None else None


class Outcome(NamedTuple):
    """What :func:`enrol` decided. ``reason`` None: enrolled (``repeat``: before)."""

    reason: str | None
    detail: str
    device_id: bytes | None = None
    confirm: bytes | None = None
    invite: Invite | None = None
    repeat: bool = False

    @property
    def code(self):
        return exchange.CHANGED if self.reason is None else REASONS[self.reason]


def signature_ok(pub, sig, tbs):
    """ES256 check of r || s over ``tbs`` with a 65-byte SEC1 key; None when the key is
    not a point on P-256."""
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
    except ValueError:
        return None
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _matching_invite(conn, bind, dev, pub, now):
    rows = conn.execute(
        f"SELECT {_COLUMNS}, code_key FROM invites WHERE expires_at > ? OR used_at > ? "
        "OR used_at IS NULL ORDER BY id DESC LIMIT ?",
        (now - _LOOKBACK_S, now - _LOOKBACK_S, _MAX_CANDIDATES))
    for row in rows:
        key = bytes(row[10])
        if hmac.compare_digest(core.binding(key, dev, pub), bind):
            return _invite(row[:10]), key
    return None, None


def _refusal(conn, invite, r, now, confirm):
    """The :class:`Outcome` that stops this request at ``invite`` (or a repeat of an
    enrolment already done), or None when the device may be registered."""
    dev, pub = r["dev"], r["pub"]
    if invite.used_at is not None:
        if invite.device == dev and invite.pubkey == pub:
            return Outcome(None, "enrolled before with this invite", dev, confirm, invite,
                           repeat=True)
        return Outcome(core.CODE_USED, f"invite {invite.id} enrolled device "
                       f"{invite.device.hex() if invite.device else '?'} already", dev,
                       invite=invite)
    if now >= invite.expires_at:
        return Outcome(core.CODE_EXPIRED, f"invite {invite.id} expired "
                       f"{now - invite.expires_at} s ago", dev, invite=invite)
    existing = registry.get_device(conn, dev, missing_ok=True)
    holder = registry.device_with_key(conn, pub)
    if existing is not None or holder is not None:
        what = (f"device {dev.hex()} is registered already" if existing is not None
                else f"its key is registered as device {holder.id.hex()}")
        return Outcome(core.DEVICE_EXISTS, what, dev, confirm, invite)
    model = registry.model_by_code(r["mdl"])
    if model is None or (invite.model is not None and invite.model != model.name):
        reads = model.name if model is not None else f"model code {r['mdl']}"
        return Outcome(core.MODEL_MISMATCH, f"the device reads a {reads}, the invite is "
                       f"for {invite.model or 'a known model'}", dev, invite=invite)
    return None


def enrol(conn, signed, now):
    """Check one ``POST /e`` payload and register its device -> :class:`Outcome`
    (the table in the module docstring). ``conn``: a writable connection."""
    try:
        sign1, r = core.open_signed(signed, core.decode_request)
    except CoseError as e:
        return Outcome("cose", str(e))
    except DecodeError as e:
        reason = "kid-mismatch" if "kid" in str(e) else "schema"
        return Outcome(reason, str(e))
    dev, pub = r["dev"], r["pub"]
    ok = signature_ok(pub, sign1.signature, sign1.to_be_signed(core.AAD_ENROL))
    if ok is None:
        return Outcome("schema", "pub is not a point on P-256", dev)
    if not ok:
        return Outcome("bad-signature", "the request's signature does not verify with its key",
                       dev)
    # Every refusal is decided on a plain read, without the database's write lock (which
    # the readings' writers need); the lock is taken only to register, and the invite
    # is read again under it, so two processes cannot both use it.
    invite, key = _matching_invite(conn, r["bind"], dev, pub, now)
    if invite is None:
        return Outcome(core.CODE_WRONG, "no invite has this code", dev)
    confirm = core.confirmation(key, dev, pub)
    refusal = _refusal(conn, invite, r, now, confirm)
    if refusal is not None:
        return refusal
    with store.immediate(conn):
        invite = get_invite(conn, invite.id)
        refusal = _refusal(conn, invite, r, now, confirm)
        if refusal is not None:  # another process used it in the meantime
            return refusal
        model = registry.model_by_code(r["mdl"])
        registry.add_device(conn, dev, pub, model.name, invite.owner, invite.label,
                            invite.ct_rating_a, now=now)
        conn.execute("UPDATE invites SET used_at = ?, device = ?, pubkey = ? WHERE id = ?",
                     (now, dev, pub, invite.id))
    return Outcome(None, "enrolled", dev, confirm, get_invite(conn, invite.id))


class EnrolmentResource:
    """``POST /e`` in a running gateway: :func:`enrol` on its own connection in a thread
    (it may wait for the database's write lock), counted in
    ``wattshare_enrolment_requests_total{outcome}`` and logged (rate-limited per sender)
    without anything secret. ``on_registered()``: called after a device was added, so
    its readings are accepted at once."""

    def __init__(self, db_path, metrics, on_registered=None, log_limiter=None):
        self.db_path = db_path
        self.metrics = metrics
        self.on_registered = on_registered or (lambda: None)
        self._limiter = log_limiter or RateLimiter(window=60.0)

    def _enrol(self, payload, now):
        conn = store.connect(self.db_path)
        try:
            return enrol(conn, payload, now)
        except sqlite3.Error as e:
            raise StorageError(f"enrolment: {e}") from None
        finally:
            conn.close()

    async def handle(self, request, now):
        """-> :class:`gateway.ingest.CoapResponse`"""
        refusal = request_refusal(request, now)
        if refusal is not None:
            self.metrics.enrolments.inc(label_value=refusal.reason)
            return refusal.response
        outcome = await asyncio.to_thread(self._enrol, request.payload, now)
        label = ("repeat" if outcome.repeat else "enrolled") if outcome.reason is None \
            else outcome.reason
        self.metrics.enrolments.inc(label_value=label)
        fields = {"outcome": label, "device": outcome.device_id.hex() if outcome.device_id
                  else "", "peer": request.peer, "detail": outcome.detail}
        if outcome.invite is not None:
            fields["invite"] = outcome.invite.id
        if outcome.reason is None:
            if not outcome.repeat:
                self.on_registered()
                fields.update(label=outcome.invite.label, owner=outcome.invite.owner)
                log.info("device enrolled", extra={"fields": fields})
        elif self._limiter.allow("peer " + request.peer) is not None:
            fields["code"] = code_text(outcome.code)
            log.warning("enrolment refused", extra={"fields": fields})
        return CoapResponse(outcome.code, exchange.encode_response(
            now, reason=outcome.reason, confirm=outcome.confirm))


class Refusal(NamedTuple):
    reason: str
    response: object  # CoapResponse


def request_refusal(request, now):
    """A :class:`Refusal` when a request to /e or /c is refused before its payload is
    read (not a POST: 4.05 ``method``; over the size limit or blockwise: 4.13
    ``too-large``; not CBOR: 4.15 ``content-format``), else None."""
    if request.method != POST:
        reason, code = "method", exchange.METHOD_NOT_ALLOWED
    elif request.blockwise or len(request.payload) > exchange.MAX_PAYLOAD:
        reason, code = "too-large", exchange.TOO_LARGE
    elif request.content_format != exchange.CONTENT_FORMAT_CBOR:
        reason, code = "content-format", exchange.UNSUPPORTED_FORMAT
    else:
        return None
    size1 = exchange.MAX_PAYLOAD if reason == "too-large" else None
    return Refusal(reason, CoapResponse(code, exchange.encode_response(now, reason=reason),
                                        size1=size1))
