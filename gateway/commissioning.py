"""Commissioning records: what the installer's checks found, signed by the device.

The installer's tool runs the checks through the board (``main.commission``), writes the
record as JSON, has the device sign it (``main.sign_record``: a COSE_Sign1 by the device
key over its id, its public key, its clock and the JSON text; docs/protocol.md section
6.4) and sends it to the gateway with ``POST /c``. :func:`store_record` keeps it when it
verifies against the device's registered key; ``wattshare device show`` and
``/api/devices/ID`` show the newest one, checked again when shown.

The record's JSON text is an object with at least ``installer`` (text) and ``checks`` (an
object: check name -> object with a boolean ``ok`` and the values measured); ``model``,
``serial``, ``time`` and anything else the tool adds are kept as sent.

Answers: 2.04 stored; 4.00 ``cose``/``schema``/``kid-mismatch``; 4.01 ``bad-signature``
(also when the record names another key than the registered one); 4.03
``unknown-device``/``revoked``; and, as for /e, 4.05 ``method``, 4.13 ``too-large``,
4.15 ``content-format``.
"""

import asyncio
import json
import logging
import sqlite3
from typing import NamedTuple

from wattcore import enrolment as core
from wattcore import exchange
from wattcore.errors import CoseError, DecodeError

from gateway import registry, store
from gateway.enrolment import request_refusal, signature_ok
from gateway.errors import StorageError
from gateway.ingest import CoapResponse, code_text
from gateway.logs import RateLimiter

log = logging.getLogger("wattshare.commissioning")

REASONS = {
    "cose": exchange.BAD_REQUEST,
    "schema": exchange.BAD_REQUEST,
    "kid-mismatch": exchange.BAD_REQUEST,
    "bad-signature": exchange.UNAUTHORIZED,
    "unknown-device": exchange.FORBIDDEN,
    "revoked": exchange.FORBIDDEN,
}
MAX_CHECKS = 32


class RecordError(ValueError):
    """The record's JSON text breaks the record schema (the message names the key)."""


def check_record_text(text):
    """The record's JSON text -> the parsed object; :class:`RecordError` naming the key."""
    try:
        record = json.loads(text)
    except ValueError as e:
        raise RecordError(f"not JSON: {e}") from None
    if not isinstance(record, dict):
        raise RecordError("the record must be a JSON object")
    installer = record.get("installer")
    if not isinstance(installer, str) or not 1 <= len(installer) <= 120:
        raise RecordError("installer: must be a name of 1..120 characters")
    checks = record.get("checks")
    if not isinstance(checks, dict) or not 1 <= len(checks) <= MAX_CHECKS:
        raise RecordError(f"checks: must be an object of 1..{MAX_CHECKS} checks")
    for name, check in checks.items():
        if not isinstance(check, dict) or not isinstance(check.get("ok"), bool):
            raise RecordError(f"checks.{name}: must be an object with \"ok\": true or false")
    return record


class Outcome(NamedTuple):
    reason: str | None  # None: stored
    detail: str
    device_id: bytes | None = None

    @property
    def code(self):
        return exchange.CHANGED if self.reason is None else REASONS[self.reason]


def store_record(conn, signed, now_ms):
    """Check one ``POST /c`` payload against the registry and keep it -> :class:`Outcome`."""
    try:
        sign1, r = core.open_signed(signed, core.decode_record)
    except CoseError as e:
        return Outcome("cose", str(e))
    except DecodeError as e:
        return Outcome("kid-mismatch" if "kid" in str(e) else "schema", str(e))
    dev = r["dev"]
    device = registry.get_device(conn, dev, missing_ok=True)
    if device is None:
        return Outcome("unknown-device", f"device {dev.hex()} is not registered", dev)
    if device.status == "revoked":
        return Outcome("revoked", f"device {dev.hex()} is revoked", dev)
    if r["pub"] != device.pubkey:
        return Outcome("bad-signature", "the record names another key than the registered one",
                       dev)
    if not signature_ok(device.pubkey, sign1.signature, sign1.to_be_signed(core.AAD_RECORD)):
        return Outcome("bad-signature", "the record's signature does not verify", dev)
    try:
        check_record_text(r["rec"])
    except RecordError as e:
        return Outcome("schema", str(e), dev)
    with store.immediate(conn):
        conn.execute("INSERT INTO commissioning (device, cose, t, received_ms) VALUES (?, ?, ?, ?)",
                     (dev, bytes(signed), r["t"], now_ms))
    return Outcome(None, "stored", dev)


def latest(conn, device):
    """The newest record of a :class:`gateway.registry.Device`, decoded and checked again
    against its key, as plain JSON data; None when it has none."""
    row = conn.execute("SELECT cose, t, received_ms FROM commissioning WHERE device = ? "
                       "ORDER BY id DESC LIMIT 1", (device.id,)).fetchone()
    if row is None:
        return None
    signed, t, received_ms = bytes(row[0]), row[1], row[2]
    sign1, r = core.open_signed(signed, core.decode_record)
    valid = bool(r["pub"] == device.pubkey and signature_ok(
        device.pubkey, sign1.signature, sign1.to_be_signed(core.AAD_RECORD)))
    return {
        "record": json.loads(r["rec"]),
        "device_time": t,
        "received_ms": received_ms,
        "signature_valid": valid,
        "cose": signed.hex(),
    }


class CommissioningResource:
    """``POST /c`` in a running gateway: :func:`store_record` in a thread, counted in
    ``wattshare_commissioning_records_total{outcome}``, logged (rate-limited per sender)."""

    def __init__(self, db_path, metrics, log_limiter=None):
        self.db_path = db_path
        self.metrics = metrics
        self._limiter = log_limiter or RateLimiter(window=60.0)

    def _store(self, payload, now_ms):
        conn = store.connect(self.db_path)
        try:
            return store_record(conn, payload, now_ms)
        except sqlite3.Error as e:
            raise StorageError(f"commissioning record: {e}") from None
        finally:
            conn.close()

    async def handle(self, request, now):
        refusal = request_refusal(request, now)
        if refusal is not None:
            self.metrics.commissioning.inc(label_value=refusal.reason)
            return refusal.response
        outcome = await asyncio.to_thread(self._store, request.payload, now * 1000)
        self.metrics.commissioning.inc(label_value=outcome.reason or "stored")
        fields = {"device": outcome.device_id.hex() if outcome.device_id else "",
                  "peer": request.peer, "detail": outcome.detail}
        if outcome.reason is None:
            log.info("commissioning record stored", extra={"fields": fields})
        elif self._limiter.allow("peer " + request.peer) is not None:
            fields.update(reason=outcome.reason, code=code_text(outcome.code))
            log.warning("commissioning record refused", extra={"fields": fields})
        return CoapResponse(outcome.code, exchange.encode_response(now, reason=outcome.reason))
