# The device key: generated on the device from its RNG at first boot, stored
# sealed in the data folder, never printed or sent. Only the public key and the
# device id leave the device (provisioning). Re-keying is explicit and logged.
from wattcore import p256

from app import record_tag
from app.errors import StorageError

KEY_FILE = "key"
DEVICE_ID_PREFIX = b"WS"


def device_id(hardware_id):
    # "WS" + the board's 6-byte hardware id (the ESP32 base MAC)
    if len(hardware_id) != 6:
        raise ValueError("hardware id must be 6 bytes, got %d" % len(hardware_id))
    return DEVICE_ID_PREFIX + bytes(hardware_id)


def _store(storage, priv):
    storage.write_atomic(KEY_FILE, record_tag.seal(priv.to_bytes(32, "big")))


def load_or_create(storage, random_bytes, log):
    blob = storage.read(KEY_FILE)
    if blob is None:
        priv = p256.private_key_from_random(random_bytes)
        _store(storage, priv)
        log("key: generated a new device key at first boot")
        return priv
    data = record_tag.unseal(blob)
    if data is None or len(data) != 32:
        raise StorageError("key: the key file is corrupt; re-key explicitly (main.rekey) and "
                           "register the new public key")
    return int.from_bytes(data, "big")


def rekey(storage, random_bytes, log):
    priv = p256.private_key_from_random(random_bytes)
    _store(storage, priv)
    log("key: RE-KEYED: new public key %s; register it before readings are accepted"
        % public_key_hex(priv))
    return priv


def public_key_hex(priv):
    from binascii import hexlify

    return hexlify(p256.public_key(priv)).decode()
