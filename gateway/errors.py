"""The gateway's error tree.

::

    GatewayError                 anything the gateway reports to an operator
     +-- ConfigError             gateway.toml is missing, unreadable or invalid
     +-- StorageError            the SQLite store failed (disk, schema, locking)
     |    +-- MigrationError     the schema cannot be brought to this version
     +-- RegistryError           a device registry operation was refused
     |    +-- DeviceNotFound
     |    +-- DeviceExists
     |    +-- InvalidDevice      a device id, key, owner or model is malformed
     +-- KeystoreError           the gateway's chain key cannot be created or read
     +-- ChainError              the chain layer failed (tree in gateway.chain.errors)

Protocol rejects (bad CBOR, bad signature, replay, ...) are not exceptions: they are
answers to a device, listed with their CoAP codes in :mod:`gateway.verify`.
"""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration file is missing, unreadable or invalid."""


class StorageError(GatewayError):
    """The SQLite store failed."""


class MigrationError(StorageError):
    """The database schema cannot be migrated to the version this code needs."""


class RegistryError(GatewayError):
    """A device registry operation was refused."""


class DeviceNotFound(RegistryError):
    """No device with this id is registered."""


class DeviceExists(RegistryError):
    """A device with this id is already registered."""


class InvalidDevice(RegistryError):
    """A device id, public key, owner address or model is malformed."""


class InviteNotOpen(RegistryError):
    """The invite does not exist, or was used or expired: nothing to cancel."""


class KeystoreError(GatewayError):
    """The gateway's encrypted chain key cannot be created or read."""
