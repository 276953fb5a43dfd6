"""The gateway's SQLite store: connection settings and schema migrations.

One database file per gateway (``DATA_DIR/gateway.sqlite3``) in WAL mode with
``synchronous=FULL``: a reading is acknowledged to a meter only after the COMMIT that
holds it has reached the disk. Only the writers (:mod:`gateway.writer`, one per ingest
process) write readings; the CLI writes the device registry, the chain link its own
tables; everything else reads.

Migrations are a list of statement lists; ``PRAGMA user_version`` counts how many have
been applied. Append to :data:`MIGRATIONS`, never edit an applied entry.
"""

import contextlib
import os
import sqlite3
from pathlib import Path

from gateway.errors import MigrationError, StorageError


def _as_is(value):
    return value


# CPython 3.11's sqlite3 binds int, float, str and bytearray directly, but sends every
# bytes or None parameter through its adaptation protocol: it looks for __adapt__ and
# __conform__, and each failed lookup builds (and discards) an AttributeError with a
# formatted message. A stored reading binds two bytes values (device, cose) and up to six
# None. An adapter registered for those types is found first and returns the value
# unchanged, so what is bound stays the same; it cut the INSERT of a reading from
# ~12.6 to ~10.7 us here (docs/gateway.md, "Throughput"). The registration is
# process-wide and a no-op for every other user of sqlite3.
sqlite3.register_adapter(bytes, _as_is)
sqlite3.register_adapter(type(None), _as_is)

MIGRATIONS = [
    # 1: registry, readings, per-device state, reject counters
    [
        """CREATE TABLE devices (
            id BLOB PRIMARY KEY CHECK (length(id) = 8),
            pubkey BLOB NOT NULL CHECK (length(pubkey) = 65),
            model TEXT NOT NULL,
            owner TEXT NOT NULL,
            label TEXT NOT NULL DEFAULT '',
            ct_rating_a REAL NOT NULL CHECK (ct_rating_a > 0),
            status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
            added_at INTEGER NOT NULL,
            revoked_at INTEGER
        )""",
        # id: ingest order, a cursor for the chain batcher. cose: the exact signed bytes.
        """CREATE TABLE readings (
            id INTEGER PRIMARY KEY,
            device BLOB NOT NULL REFERENCES devices(id),
            seq INTEGER NOT NULL,
            t INTEGER NOT NULL,
            st INTEGER NOT NULL,
            ei INTEGER,
            ee INTEGER,
            p INTEGER,
            u INTEGER,
            i INTEGER,
            f INTEGER,
            pf INTEGER,
            mdl INTEGER NOT NULL,
            sn INTEGER,
            cose BLOB NOT NULL,
            received_ms INTEGER NOT NULL,
            UNIQUE (device, seq)
        )""",
        "CREATE INDEX readings_received ON readings (received_ms)",
        # Derived per-device summary kept by the writer in the same transactions.
        """CREATE TABLE device_state (
            device BLOB PRIMARY KEY REFERENCES devices(id),
            readings INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            last_t INTEGER NOT NULL,
            last_st INTEGER NOT NULL,
            last_p INTEGER,
            last_ei INTEGER,
            last_ee INTEGER,
            last_received_ms INTEGER NOT NULL,
            faults INTEGER NOT NULL DEFAULT 0,
            last_fault_seq INTEGER,
            last_fault_t INTEGER,
            last_fault_st INTEGER
        )""",
        # device = X'' for rejects that name no registered device.
        """CREATE TABLE rejects (
            device BLOB NOT NULL,
            reason TEXT NOT NULL,
            count INTEGER NOT NULL,
            last_ms INTEGER NOT NULL,
            PRIMARY KEY (device, reason)
        )""",
        # registry_version changes with every change to devices: the running gateway
        # polls it to pick up `wattshare device add/revoke` without a restart.
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('registry_version', 0)",
        """CREATE TRIGGER devices_ins AFTER INSERT ON devices BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'registry_version'; END""",
        """CREATE TRIGGER devices_upd AFTER UPDATE ON devices BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'registry_version'; END""",
        """CREATE TRIGGER devices_del AFTER DELETE ON devices BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'registry_version'; END""",
    ],
    # 2: the chain link (gateway/chain/outbox.py): meter indices, per-interval outbox,
    # Merkle leaves with their salts. Only the chain process writes these tables.
    [
        # the batcher reads the readings of one interval (and its neighbours) by time
        "CREATE INDEX readings_t ON readings (t)",
        # device -> compact on-chain meter index (MeterRegistry), set at commissioning
        """CREATE TABLE chain_meters (
            device BLOB PRIMARY KEY REFERENCES devices(id),
            meter_index INTEGER NOT NULL UNIQUE CHECK (meter_index BETWEEN 1 AND 65535),
            set_at INTEGER NOT NULL
        )""",
        # one row per (settlement contract, interval): the outbox state machine
        # built -> signed -> sent -> mined -> confirmed, or failed
        """CREATE TABLE chain_outbox (
            contract TEXT NOT NULL,
            interval INTEGER NOT NULL,
            length INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('built', 'signed', 'sent', 'mined', 'confirmed', 'failed')),
            root BLOB NOT NULL CHECK (length(root) = 32),
            packed TEXT NOT NULL,
            meters INTEGER NOT NULL,
            leaves INTEGER NOT NULL,
            gaps TEXT NOT NULL,
            last_reading_id INTEGER NOT NULL,
            sender TEXT,
            nonce INTEGER,
            raw_tx BLOB,
            tx_hash BLOB,
            sent_at INTEGER,
            block_number INTEGER,
            block_hash BLOB,
            gas_used INTEGER,
            outcome TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            built_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (contract, interval)
        )""",
        "CREATE INDEX chain_outbox_state ON chain_outbox (state)",
        """CREATE TABLE chain_leaves (
            contract TEXT NOT NULL,
            interval INTEGER NOT NULL,
            leaf_index INTEGER NOT NULL,
            reading_id INTEGER NOT NULL REFERENCES readings(id),
            salt BLOB NOT NULL CHECK (length(salt) = 32),
            PRIMARY KEY (contract, interval, leaf_index)
        )""",
        "CREATE INDEX chain_leaves_reading ON chain_leaves (reading_id)",
        # earlier signed transactions of an interval (re-signed after a lost nonce)
        """CREATE TABLE chain_tx_history (
            contract TEXT NOT NULL,
            interval INTEGER NOT NULL,
            nonce INTEGER NOT NULL,
            tx_hash BLOB NOT NULL,
            replaced_at INTEGER NOT NULL,
            reason TEXT NOT NULL
        )""",
    ],
    # 3: enrolment (gateway/enrolment.py) and commissioning records
    # (gateway/commissioning.py). An invite keeps only K = SHA-256 of its one-time code;
    # once used it names the device (and key) it enrolled.
    [
        """CREATE TABLE invites (
            id INTEGER PRIMARY KEY,
            code_key BLOB NOT NULL UNIQUE CHECK (length(code_key) = 32),
            label TEXT NOT NULL,
            owner TEXT NOT NULL,
            model TEXT,
            ct_rating_a REAL CHECK (ct_rating_a IS NULL OR ct_rating_a > 0),
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            used_at INTEGER,
            device BLOB REFERENCES devices(id),
            pubkey BLOB
        )""",
        "CREATE INDEX invites_device ON invites (device)",
        # `device add` and enrolment refuse a key registered under another id
        "CREATE INDEX devices_pubkey ON devices (pubkey)",
        # every record a device signed at commissioning; the newest is shown
        """CREATE TABLE commissioning (
            id INTEGER PRIMARY KEY,
            device BLOB NOT NULL REFERENCES devices(id),
            cose BLOB NOT NULL,
            t INTEGER NOT NULL,
            received_ms INTEGER NOT NULL
        )""",
        "CREATE INDEX commissioning_device ON commissioning (device, id)",
    ],
    # 4: a submission settles consecutive intervals with the meters' signed readings
    # (docs/chain.md): an outbox row is one transaction, keyed by its first interval and
    # a part (0: intervals; -n .. -1: signed readings sent before them); `packed` holds
    # the call as JSON; a row of signed readings only has no root.
    [
        """CREATE TABLE chain_outbox_4 (
            contract TEXT NOT NULL,
            interval INTEGER NOT NULL,
            part INTEGER NOT NULL DEFAULT 0,
            intervals INTEGER NOT NULL DEFAULT 1,
            anchors INTEGER NOT NULL DEFAULT 0,
            length INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('built', 'signed', 'sent', 'mined', 'confirmed', 'failed')),
            root BLOB CHECK (root IS NULL OR length(root) = 32),
            packed TEXT NOT NULL,
            meters INTEGER NOT NULL,
            leaves INTEGER NOT NULL,
            gaps TEXT NOT NULL,
            last_reading_id INTEGER NOT NULL,
            sender TEXT,
            nonce INTEGER,
            raw_tx BLOB,
            tx_hash BLOB,
            sent_at INTEGER,
            block_number INTEGER,
            block_hash BLOB,
            gas_used INTEGER,
            outcome TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            built_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (contract, interval, part)
        )""",
        """INSERT INTO chain_outbox_4 (contract, interval, length, state, root, packed,
            meters, leaves, gaps, last_reading_id, sender, nonce, raw_tx, tx_hash, sent_at,
            block_number, block_hash, gas_used, outcome, error, attempts, built_at,
            updated_at)
            SELECT contract, interval, length, state, root, packed, meters, leaves, gaps,
            last_reading_id, sender, nonce, raw_tx, tx_hash, sent_at, block_number,
            block_hash, gas_used, outcome, error, attempts, built_at, updated_at
            FROM chain_outbox""",
        "DROP TABLE chain_outbox",
        "ALTER TABLE chain_outbox_4 RENAME TO chain_outbox",
        "CREATE INDEX chain_outbox_state ON chain_outbox (state)",
        "ALTER TABLE chain_tx_history ADD COLUMN part INTEGER NOT NULL DEFAULT 0",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


def connect(path, readonly=False):
    """Open the database with the gateway's settings (WAL, synchronous=FULL).

    The connection is in autocommit mode: callers issue BEGIN/COMMIT themselves.
    """
    path = Path(path)
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5.0,
                check_same_thread=False,
            )
        else:
            conn = sqlite3.connect(
                path, isolation_level=None, timeout=10.0, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as e:
        raise StorageError(f"{path}: cannot open database: {e}") from None
    return conn


def migrate(conn):
    """Apply the migrations this database has not seen yet; returns the schema version."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise MigrationError(
                f"database schema version {version} is newer than this gateway "
                f"({SCHEMA_VERSION}): upgrade wattshare"
            )
        for number in range(version, SCHEMA_VERSION):
            with immediate(conn):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1:d}")
        return SCHEMA_VERSION
    except sqlite3.Error as e:
        raise MigrationError(f"cannot migrate the database: {e}") from None


@contextlib.contextmanager
def immediate(conn):
    """One write transaction on ``conn`` (opened with ``isolation_level=None``): BEGIN
    IMMEDIATE (the write lock now, not at the first write), COMMIT when the block ends,
    ROLLBACK if it raises or the COMMIT fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def open_store(path):
    """Connect and migrate: what every writer of the database does first."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    migrate(conn)
    return conn


# Below this much free space on the database's volume the writer checkpoints the WAL
# after every COMMIT and truncates it. SQLite checkpoints by itself only once the WAL
# holds 1,000 pages (4 MB): on a small volume that WAL alone filled the disk (a 4 MB
# volume stopped at 186 readings).
LOW_SPACE_BYTES = 64 << 20
# What one stored reading takes on disk, about (row, COSE bytes, three indices): for the
# readings-left estimate of `gateway status` when the database holds too few to measure.
READING_BYTES = 400


def free_bytes(path):
    """Bytes free for this process on the volume of ``path`` (the database file)."""
    stat = os.statvfs(Path(path).parent)
    return stat.f_bavail * stat.f_frsize


def storage_bytes(path):
    """Bytes on disk of the database with its WAL and shared-memory files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += Path(str(path) + suffix).stat().st_size
        except FileNotFoundError:
            pass
    return total
