"""The device registry: which meters may send readings, with which key.

A device is identified by its 8-byte id (the COSE kid and the reading's ``dev``
field) and holds a P-256 public key (65-byte uncompressed SEC1 point), the meter
model, the owner's EVM account, a label and the CT rating used by the over-rating
plausibility check. Devices are revoked, never deleted, so their stored readings keep
a registry entry.
"""

import functools
import sqlite3
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from wattcore import reading

from gateway import simclock
from gateway.errors import ConfigError, DeviceExists, DeviceNotFound, InvalidDevice, StorageError


@dataclass(frozen=True)
class MeterModel:
    name: str  # as the registry stores it, e.g. SDM120CT
    code: int  # the reading's "mdl" field
    phases: int
    default_ct_rating_a: float
    meter_id: str  # the definition in boards/meters/, e.g. sdm120ct


@functools.cache
def models():
    """Registry name -> :class:`MeterModel`, from ``boards/meters/*.toml`` (the one place
    for a meter's code, phases and default CT rating); ConfigError if those files are
    broken."""
    from tools import board_config
    from tools.errors import ToolsError

    try:
        meters = board_config.list_meters()
    except ToolsError as e:
        raise ConfigError(f"meter definitions: {e}") from None
    return {m.model: MeterModel(m.model, m.model_code, m.phases, float(m.ct_rating_A), m.id)
            for m in meters}


def model_by_code(code):
    """The :class:`MeterModel` a reading's ``mdl`` names, or None."""
    return next((m for m in models().values() if m.code == code), None)


@dataclass(frozen=True)
class Device:
    id: bytes
    pubkey: bytes
    model: str
    owner: str
    label: str
    ct_rating_a: float
    status: str  # "active" | "revoked"
    added_at: int
    revoked_at: int | None

    def power_limit_w(self, voltage_max_v):
        """Largest plausible |p| in W: phases x CT rating x the voltage bound."""
        return int(models()[self.model].phases * self.ct_rating_a * voltage_max_v)


def parse_device_id(text):
    """Hex (16 digits, optional 0x) -> 8 bytes."""
    raw = _hex(text, "device id")
    if len(raw) != reading.DEVICE_ID_LEN:
        raise InvalidDevice(
            f"device id {text!r}: must be {reading.DEVICE_ID_LEN} bytes "
            f"({2 * reading.DEVICE_ID_LEN} hex digits)"
        )
    return raw


def parse_pubkey(text):
    """Hex SEC1 P-256 point (65 bytes uncompressed or 33 compressed) -> 65 bytes."""
    raw = _hex(text, "public key")
    if len(raw) not in (33, 65):
        raise InvalidDevice(
            "public key: must be a P-256 SEC1 point, 65 bytes (04...) or 33 bytes "
            f"(02.../03...), got {len(raw)} bytes"
        )
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise InvalidDevice("public key: not a point on P-256") from None
    return uncompressed(key)


def uncompressed(public_key):
    """65-byte SEC1 encoding of a `cryptography` EC public key."""
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def parse_owner(text):
    """EVM address -> EIP-55 checksummed text; a mixed-case address must carry a valid checksum."""
    from eth_utils import is_checksum_address, to_checksum_address  # slow import: CLI only

    ok = isinstance(text, str) and len(text) == 42 and text[:2] == "0x"
    if ok:
        try:
            bytes.fromhex(text[2:])
        except ValueError:
            ok = False
    if not ok:
        raise InvalidDevice(f"owner {text!r}: must be a 0x-prefixed 20-byte hex address")
    body = text[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(text):
        raise InvalidDevice(f"owner {text}: mixed-case address with a wrong EIP-55 checksum")
    return to_checksum_address(text)


def parse_model(text):
    """A model's registry name or its boards/meters/ id, any case -> the registry name."""
    for m in models().values():
        if text.upper() in (m.name, m.meter_id.upper()):
            return m.name
    allowed = ", ".join(f"{m.name} ({m.meter_id})" for m in models().values())
    raise InvalidDevice(f"model {text!r}: allowed: {allowed}")


def _hex(text, what):
    t = text[2:] if text[:2] in ("0x", "0X") else text
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise InvalidDevice(f"{what} {text!r}: not hex") from None


_COLUMNS = "id, pubkey, model, owner, label, ct_rating_a, status, added_at, revoked_at"


def _device(row):
    return Device(bytes(row[0]), bytes(row[1]), *row[2:])


def add_device(conn, device_id, pubkey, model, owner, label="", ct_rating_a=None, now=None):
    """Register a device (all values already parsed); returns the :class:`Device`."""
    if ct_rating_a is None:
        ct_rating_a = models()[model].default_ct_rating_a
    if not ct_rating_a > 0:
        raise InvalidDevice(f"CT rating {ct_rating_a!r} A: must be above 0")
    now = int(simclock.now()) if now is None else now
    holder = device_with_key(conn, pubkey)
    if holder is not None and holder.id != device_id:
        raise DeviceExists(
            f"public key {pubkey.hex()[:16]}... is already registered as device "
            f"{holder.id.hex()} ({holder.label!r}, {holder.status}): a key belongs to one "
            "device; check the id, or re-key this device"
        )
    try:
        conn.execute(
            f"INSERT INTO devices ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'active', ?, NULL)",
            (device_id, pubkey, model, owner, label, float(ct_rating_a), now),
        )
    except sqlite3.IntegrityError:
        if get_device(conn, device_id, missing_ok=True) is not None:
            raise DeviceExists(f"device {device_id.hex()} is already registered") from None
        raise
    except sqlite3.Error as e:
        raise StorageError(f"cannot add device {device_id.hex()}: {e}") from None
    return get_device(conn, device_id)


def get_device(conn, device_id, missing_ok=False):
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE id = ?", (device_id,)
    ).fetchone()
    if row is None:
        if missing_ok:
            return None
        raise DeviceNotFound(f"no device {device_id.hex()} is registered")
    return _device(row)


def device_with_key(conn, pubkey):
    """The device registered with this public key (65-byte SEC1), or None."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE pubkey = ?", (pubkey,)).fetchone()
    return _device(row) if row is not None else None


def list_devices(conn):
    return [_device(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM devices ORDER BY label, id")]


def revoke_device(conn, device_id, now=None):
    """Mark a device revoked: its readings are refused from now on (4.03 "revoked")."""
    device = get_device(conn, device_id)
    if device.status == "revoked":
        return device
    now = int(simclock.now()) if now is None else now
    conn.execute(
        "UPDATE devices SET status = 'revoked', revoked_at = ? WHERE id = ?", (now, device_id)
    )
    return get_device(conn, device_id)


def registry_version(conn):
    return conn.execute("SELECT value FROM meta WHERE key = 'registry_version'").fetchone()[0]


def credentials(conn, voltage_max_v):
    """Device id -> :class:`gateway.verify.Credential` for every registered device."""
    from gateway.verify import Credential

    return {
        d.id: Credential(d.id, d.pubkey, d.power_limit_w(voltage_max_v), d.status == "revoked")
        for d in list_devices(conn)
    }


def active_count(conn):
    """Registered devices that are not revoked."""
    return conn.execute("SELECT count(*) FROM devices WHERE status = 'active'").fetchone()[0]
