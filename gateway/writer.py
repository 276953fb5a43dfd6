"""Group commit of verified readings, in the process that received them.

The event loop hands over verified batches (:meth:`ReadingWriter.submit`) and gets an
asyncio future back. Everything submitted in one turn of the loop (or within
``linger``) is stored in ONE transaction and COMMITted (WAL, synchronous=FULL: on disk
when COMMIT returns; the COMMIT runs in a helper thread while the loop verifies the
next requests) before any future resolves: a response to a meter never runs ahead of
the disk. If the transaction fails, every batch of the
group fails with :class:`~gateway.errors.StorageError` and nothing of it is
acknowledged (the meter keeps its readings and retries).

Inside the transaction :class:`GroupStore` runs the checks that need stored data, in
order per batch, stopping a batch at its first failure:

- same (device, seq) already stored: identical bytes -> a duplicate (retransmission or
  replay; acknowledged, not stored again); other bytes -> ``seq-reuse``;
- ``counter-backwards``: ei/ee below the nearest stored reading with a lower seq
  (that carries the counter) or above the nearest one with a higher seq.

A per-device cache of the highest stored seq and latest counters makes the usual case
(a meter appending in order) cost no extra query. When another connection has committed
since (``PRAGMA data_version``: another ingest process, the chain link), one query
confirms the cached devices of the group against their ``device_state`` reading counts
and drops any that changed, so several ingest processes can share the database.
"""

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from wattcore import reading

from gateway import simclock, store
from gateway.errors import StorageError
from gateway.logs import RateLimiter
from gateway.verify import Checked

log = logging.getLogger("wattshare.writer")

# sqlite3 errors that mean the gateway used sqlite3 wrongly (a bug), not that the database
# failed: they are not answered as a storage problem.
_OUR_FAULT = (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.NotSupportedError)


class StoreOutcome(NamedTuple):
    """What the writer did with one batch.

    ``stored``: readings of the batch's prefix that are now in the database (new +
    duplicates). ``reason``: None, or why reading ``stored`` stopped the batch.
    """

    stored: int
    new: int
    duplicates: int
    reason: str | None
    detail: str


class _Tail:
    # Highest stored seq of a device and the counters of its latest readings carrying them;
    # `count`: the device's stored readings (device_state.readings) they were computed
    # from; `version`: the PRAGMA data_version at which that count was last confirmed.
    __slots__ = ("last_seq", "ei", "ee", "count", "version")

    def __init__(self, last_seq, ei, ee, count, version):
        self.last_seq = last_seq
        self.ei = ei
        self.ee = ee
        self.count = count
        self.version = version


class _Touched:
    # Per-device summary of one group, written to device_state before COMMIT.
    __slots__ = ("new", "faults", "last", "last_fault", "received_ms")

    def __init__(self):
        self.new = 0
        self.faults = 0
        self.last = None
        self.last_fault = None
        self.received_ms = 0


# A row is (device, *checked, received_ms): the columns of a Checked in its field order.
_INSERT = (
    f"INSERT OR IGNORE INTO readings (device, {', '.join(Checked._fields)}, received_ms)"
    f" VALUES ({', '.join('?' * (len(Checked._fields) + 2))})"
)
_STATE_UPSERT = """
INSERT INTO device_state (device, readings, last_seq, last_t, last_st, last_p, last_ei,
    last_ee, last_received_ms, faults, last_fault_seq, last_fault_t, last_fault_st)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (device) DO UPDATE SET
    readings = readings + excluded.readings,
    faults = faults + excluded.faults,
    last_received_ms = max(last_received_ms, excluded.last_received_ms),
    last_t = CASE WHEN excluded.last_seq > last_seq THEN excluded.last_t ELSE last_t END,
    last_st = CASE WHEN excluded.last_seq > last_seq THEN excluded.last_st ELSE last_st END,
    last_p = CASE WHEN excluded.last_seq > last_seq THEN excluded.last_p ELSE last_p END,
    last_ei = CASE WHEN excluded.last_seq > last_seq THEN excluded.last_ei ELSE last_ei END,
    last_ee = CASE WHEN excluded.last_seq > last_seq THEN excluded.last_ee ELSE last_ee END,
    last_fault_t = CASE WHEN excluded.last_fault_seq > coalesce(last_fault_seq, -1)
        THEN excluded.last_fault_t ELSE last_fault_t END,
    last_fault_st = CASE WHEN excluded.last_fault_seq > coalesce(last_fault_seq, -1)
        THEN excluded.last_fault_st ELSE last_fault_st END,
    last_fault_seq = max(coalesce(last_fault_seq, -1), coalesce(excluded.last_fault_seq, -1)),
    last_seq = max(last_seq, excluded.last_seq)
"""
_REJECT_UPSERT = """
INSERT INTO rejects (device, reason, count, last_ms) VALUES (?, ?, ?, ?)
ON CONFLICT (device, reason) DO UPDATE SET
    count = count + excluded.count, last_ms = excluded.last_ms
"""


class GroupStore:
    """Stores groups of messages on one connection, one transaction per group.

    Messages: ``("store", job_id, device_id, readings, received_ms)`` with readings as
    :class:`gateway.verify.Checked` (what ``check_batch`` returns), or
    ``("rejects", {(device, reason): count}, now_ms)``. :meth:`commit` returns
    ``[(job_id, StoreOutcome)]``, or rolls back and raises :class:`sqlite3.Error`.
    """

    def __init__(self, conn):
        self.conn = conn
        self._tails = {}
        self._data_version = None  # PRAGMA data_version when the cache was last right
        self._db_path = conn.execute("PRAGMA database_list").fetchone()[2]
        self._space_checked = None  # monotonic time of the last look at the free space
        self._space_short = False
        self.checkpoints = 0  # WAL checkpoints made because space was short

    def commit(self, group):
        """Store ``group`` in one transaction, COMMIT included."""
        results = self.stage(group)
        self.finish()
        return results

    def stage(self, group):
        """BEGIN IMMEDIATE and store ``group``, short of the COMMIT (:meth:`finish`, which
        may run in another thread). Rolls back and raises if anything fails; raises
        :class:`sqlite3.OperationalError` (SQLITE_BUSY) if the write lock is taken."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        results = []
        try:
            # Another connection (another ingest process, the chain link) committed since
            # our last transaction: confirm the cached tails of this group's devices.
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._data_version = version
                self._confirm_tails(conn, {m[2] for m in group if m[0] == "store"})
            touched = {}
            for message in group:
                if message[0] == "rejects":
                    _, deltas, now_ms = message
                    conn.executemany(
                        _REJECT_UPSERT, [(d, r, n, now_ms) for (d, r), n in deltas.items()]
                    )
                else:
                    _, job_id, device, readings, received_ms = message
                    results.append(
                        (job_id, self._store(conn, device, readings, received_ms, touched))
                    )
            self._write_state(conn, touched)
        except BaseException:
            self._abort()
            raise
        return results

    def finish(self):
        """COMMIT what :meth:`stage` stored (on disk when it returns); rolls back and
        raises if the COMMIT fails. When the volume is short of space, the WAL is then
        checkpointed into the database and truncated (see ``store.LOW_SPACE_BYTES``)."""
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            self._abort()
            raise
        if self._short_of_space():
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.checkpoints += 1
            except sqlite3.OperationalError:
                pass  # busy (a reader), or the disk is full: the next COMMIT tries again

    def _short_of_space(self):
        # statvfs at most once a second; while short, every COMMIT checkpoints.
        now = time.monotonic()
        if self._space_checked is None or now - self._space_checked >= 1.0:
            self._space_checked = now
            try:
                self._space_short = store.free_bytes(self._db_path) < store.LOW_SPACE_BYTES
            except OSError:
                self._space_short = False
        return self._space_short

    def _abort(self):
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self._tails.clear()  # may hold rows of the rolled-back transaction

    def _confirm_tails(self, conn, devices):
        # A device's readings change only together with its device_state.readings (both
        # written here, in one transaction): a cached tail whose count still matches is
        # right. One query for the whole group; a tail that no longer matches is dropped.
        cached = [d for d in devices if d in self._tails]
        for at in range(0, len(cached), 500):
            chunk = cached[at:at + 500]
            marks = ",".join("?" * len(chunk))
            counts = dict(conn.execute(
                f"SELECT device, readings FROM device_state WHERE device IN ({marks})", chunk))
            for device in chunk:
                tail = self._tails[device]
                if counts.get(device, 0) == tail.count:
                    tail.version = self._data_version
                else:
                    del self._tails[device]

    def _tail(self, conn, device):
        tail = self._tails.get(device)
        if tail is not None and tail.version != self._data_version:
            self._confirm_tails(conn, (device,))
            tail = self._tails.get(device)
        if tail is None:
            last = conn.execute(
                "SELECT max(seq) FROM readings WHERE device = ?", (device,)
            ).fetchone()[0]
            count = conn.execute(
                "SELECT readings FROM device_state WHERE device = ?", (device,)
            ).fetchone()
            tail = _Tail(last, _nearest(conn, device, "ei", None, False),
                         _nearest(conn, device, "ee", None, False),
                         count[0] if count else 0, self._data_version)
            self._tails[device] = tail
        return tail

    def _store(self, conn, device, readings, received_ms, touched):
        tail = self._tail(conn, device)
        new = duplicates = 0
        summary = touched.get(device)
        rows = []  # new rows not yet inserted: one executemany per run of appended readings
        for index, r in enumerate(readings):
            appended = tail.last_seq is None or r.seq > tail.last_seq
            if appended:
                bad = _backwards(r, tail.ei, tail.ee, None, None)
            else:
                self._insert(conn, device, rows)  # the queries below must see them
                row = conn.execute(
                    "SELECT cose FROM readings WHERE device = ? AND seq = ?", (device, r.seq)
                ).fetchone()
                if row is not None:
                    if bytes(row[0]) == r.cose:
                        duplicates += 1
                        continue
                    return StoreOutcome(index, new, duplicates, "seq-reuse",
                                        f"seq {r.seq} already stored with other bytes")
                bad = _backwards(
                    r,
                    _nearest(conn, device, "ei", r.seq, False) if r.ei is not None else None,
                    _nearest(conn, device, "ee", r.seq, False) if r.ee is not None else None,
                    _nearest(conn, device, "ei", r.seq, True) if r.ei is not None else None,
                    _nearest(conn, device, "ee", r.seq, True) if r.ee is not None else None,
                )
            if bad:
                self._insert(conn, device, rows)
                return StoreOutcome(index, new, duplicates, "counter-backwards", bad)
            rows.append((device, *r, received_ms))
            new += 1
            tail.count += 1  # device_state.readings after this transaction
            if appended:
                tail.last_seq = r.seq
                if r.ei is not None:
                    tail.ei = r.ei
                if r.ee is not None:
                    tail.ee = r.ee
            if summary is None:
                summary = touched[device] = _Touched()
            summary.new += 1
            summary.received_ms = max(summary.received_ms, received_ms)
            if summary.last is None or r.seq > summary.last.seq:
                summary.last = r
            if r.st & reading.ST_FAULT_MASK:
                summary.faults += 1
                if summary.last_fault is None or r.seq > summary.last_fault.seq:
                    summary.last_fault = r
        self._insert(conn, device, rows)
        return StoreOutcome(len(readings), new, duplicates, None, "")

    def _insert(self, conn, device, rows):
        if not rows:
            return
        cur = conn.executemany(_INSERT, rows)
        if cur.rowcount != len(rows):
            # The cache said "new" but a row exists: drop the cache and decide again.
            self._tails.pop(device, None)
            raise sqlite3.DatabaseError("reading cache out of step with the database")
        rows.clear()

    def _write_state(self, conn, touched):
        rows = []
        for device, s in touched.items():
            r, fault = s.last, s.last_fault
            rows.append((
                device, s.new, r.seq, r.t, r.st, r.p, r.ei, r.ee, s.received_ms, s.faults,
                fault.seq if fault else None, fault.t if fault else None,
                fault.st if fault else None,
            ))
        if rows:
            conn.executemany(_STATE_UPSERT, rows)



class ReadingWriter:
    """Group commit in the event loop's process.

    :meth:`submit` returns a future resolving to a :class:`StoreOutcome` (or failing
    with :class:`StorageError`). Batches submitted while the loop is busy wait for one
    COMMIT together: the group is stored when the loop turn that started it ends (or
    ``linger_s`` later, if set, so that more can join), or as soon as possible once it
    reaches ``max_rows``. Under load a loop turn handles everything the front end read
    in one wakeup, so groups grow with the load by themselves.

    Many meters each sending now and then (1,000 meters every 10 s) would make every
    reading a COMMIT of its own, and every COMMIT an fsync: the SD card of a gateway
    wears by writes. So a group that starts small waits up to ``window_s`` for more when
    readings of OTHER meters are expected meanwhile (their rate over the last second
    says at least one will come): one fsync then holds them all. A group of
    ``GROUP_ENOUGH`` readings or more goes at once (the fsync is shared enough), and a
    meter alone waits for nobody. Acknowledgements still follow the COMMIT.

    The checks and INSERTs run in the event loop; the COMMIT (the wait for the disk)
    runs in a helper thread while the loop goes on verifying the next requests (SQLite
    releases the GIL meanwhile), and the next group starts when it has returned.
    The write lock is never waited for in the event loop: when another connection holds
    it (another ingest process, the chain link, the CLI) BEGIN fails at once and the
    group is tried again a little later while the loop goes on verifying and answering
    (5.03 when the backlog is full). After ``lock_timeout_s`` without the lock the group
    fails with :class:`StorageError`. Call the methods from the loop that ran :meth:`start`.
    """

    # Lock holders are other ingest processes (a few ms: their COMMIT) or, rarely, the
    # chain link or the CLI: retry soon and often (a failed BEGIN costs microseconds).
    RETRY_FIRST_S = 0.0005
    RETRY_MAX_S = 0.002
    # A group this large shares its fsync well enough: it does not wait for the window.
    GROUP_ENOUGH = 32

    def __init__(self, db_path, linger_s=0.0, max_rows=2000, metrics=None, lock_timeout_s=10.0,
                 window_s=0.0, clock=time.monotonic):
        self._db_path = Path(db_path)
        self._linger = linger_s
        self._window = window_s
        self._clock = clock
        self._windowed = False  # the scheduled commit waits for the window
        # on_window(True) when a group starts waiting for the window, on_window(False)
        # when it ends, just before the COMMIT: the front end stops reading meanwhile and
        # then reads what came, so it joins this COMMIT (one wakeup per window instead
        # of one per datagram). Set by the app.
        self.on_window = None
        self._draining = False  # inside on_window(False): no new group is scheduled
        # readings and distinct devices submitted in the current second, and the rate
        # of readings of "other" devices measured over the second before
        self._second = None
        self._second_rows = 0
        self._second_devices = set()
        self._others_per_s = 0.0
        self._max_rows = max_rows
        self._metrics = metrics
        self._lock_timeout = lock_timeout_s
        self._conn = None
        self._groups = None
        self._thread = None  # runs the COMMITs
        self._group = []  # messages of the next transaction
        self._group_rows = 0
        self._committing = None  # future of the COMMIT running in the thread
        self._committing_rows = 0
        self._timer = None  # the scheduled commit of the group, if any
        self._locked_since = None  # monotonic time of the first BEGIN that found the lock taken
        self._retry_s = self.RETRY_FIRST_S
        self._closing = False
        self._pending = {}  # job id -> future
        self._next_job = 0
        self._reject_deltas = {}
        self._log_limiter = RateLimiter(window=60.0, global_max=10)
        self.lock_waits = 0  # BEGINs that found the write lock taken

    @property
    def pending_rows(self):
        """Readings handed over and not yet committed (or failed)."""
        return self._group_rows + self._committing_rows

    def start(self):
        """Open (and migrate) the database; raises :class:`StorageError`."""
        conn = store.open_store(self._db_path)
        conn.execute("PRAGMA busy_timeout = 0")  # a taken write lock: SQLITE_BUSY at once
        self._conn = conn
        self._groups = GroupStore(conn)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="wattshare-commit")

    async def close(self):
        """Commit what is pending (reject counts too; waiting for the lock if need be)
        and close the database."""
        if self._conn is None:
            return
        self.flush_rejects()
        self._closing = True
        if self._committing is not None:
            await asyncio.wait([self._committing])
        deadline = time.monotonic() + self._lock_timeout
        while self._group and not self.commit(in_thread=False):
            if time.monotonic() >= deadline:
                self._fail(self._take_group(), StorageError(
                    "the gateway stopped before the write lock was free"))
                break
            await asyncio.sleep(self._retry_s)
        self._thread.shutdown(wait=True)
        self._conn.close()
        self._conn = None

    def submit(self, device_id, readings, received_ms):
        if self._window > 0:
            self._count_rate(device_id, len(readings))
        future = asyncio.get_running_loop().create_future()
        self._next_job += 1
        job = self._next_job
        self._pending[job] = future
        self._add(("store", job, device_id, readings, received_ms), len(readings))
        return future

    def count_reject(self, device_id, reason):
        """Count a reject for the ``rejects`` table (written with the next COMMIT)."""
        key = (device_id or b"", reason)
        self._reject_deltas[key] = self._reject_deltas.get(key, 0) + 1

    def flush_rejects(self):
        """Hand the reject counts gathered so far to the next COMMIT (about once a second)."""
        if self._reject_deltas:
            deltas, self._reject_deltas = self._reject_deltas, {}
            self._add(("rejects", deltas, simclock.now_ms()), 0)

    def _add(self, message, rows):
        self._group.append(message)
        self._group_rows += rows
        if self._committing is None:
            self._schedule()

    def _count_rate(self, device_id, rows):
        second = int(self._clock())
        if second != self._second:
            devices = len(self._second_devices)
            # readings/s of devices other than any one of them, over the last full second
            recent = second - 1 == self._second and devices > 1
            self._others_per_s = self._second_rows * (devices - 1) / devices if recent else 0.0
            self._second = second
            self._second_rows = 0
            self._second_devices.clear()
        self._second_rows += rows
        self._second_devices.add(device_id)

    @property
    def others_per_s(self):
        """Readings per second of devices other than any one of them, over the last
        full second (what a group waiting for the window can expect to gather)."""
        return self._others_per_s

    def _wait_s(self):
        # How long a new group waits before its COMMIT: the linger if configured, the
        # window while other meters' readings are expected within it, else no time.
        if self._linger > 0:
            return self._linger
        if (self._window > 0 and self._group_rows < self.GROUP_ENOUGH
                and self._others_per_s * self._window >= 1.0):
            return self._window
        return 0.0

    def _schedule(self):
        # The group waits for the end of this loop turn (or the linger, or the window),
        # or goes now if it is full; close(), the lock retry timer or the end of a COMMIT
        # in flight take it on otherwise.
        if not self._group or self._closing or self._locked_since is not None or self._draining:
            return
        if self._group_rows >= self._max_rows:
            self.commit()
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            if self._windowed and self._group_rows >= self.GROUP_ENOUGH:
                self._timer.cancel()  # enough readings to share the fsync: go at once
                self._timer = loop.call_soon(self.commit)
            return
        wait = self._wait_s()
        if wait > 0 and self._linger <= 0:
            self._windowed = True
            self._timer = loop.call_later(wait, self.commit)
            if self.on_window is not None:
                self.on_window(True)
        else:
            self._timer = loop.call_later(wait, self.commit) if wait > 0 else loop.call_soon(
                self.commit)

    def _end_window(self):
        # The group's wait is over: the front end reads what came meanwhile (its
        # requests join the group), then the group is committed.
        self._windowed = False
        if self.on_window is not None:
            self._draining = True
            try:
                self.on_window(False)
            finally:
                self._draining = False

    def _take_group(self):
        group = self._group
        self._group, self._group_rows = [], 0
        return group

    def commit(self, in_thread=True):
        """Store the group in one transaction; its futures resolve after the COMMIT
        (in the helper thread, or here with ``in_thread=False``). Returns False if the
        write lock was taken (the group stays; a retry is scheduled unless closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._windowed:
            self._end_window()
        if not self._group or self._committing is not None:
            return True
        rows = self._group_rows
        started = time.perf_counter()
        try:
            results = self._groups.stage(self._group)
        except BaseException as e:
            if (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_BUSY:
                return self._locked()
            if not self._commit_failed(self._take_group(), e):
                raise  # a fault of ours: its requests have it, and so does the loop's log
            return True
        group = self._take_group()
        self._locked_since = None
        self._retry_s = self.RETRY_FIRST_S
        if not in_thread:
            try:
                self._groups.finish()
            except BaseException as e:
                if not self._commit_failed(group, e):
                    raise
                return True
            self._committed(group, results, rows, started)
            return True
        self._committing_rows = rows
        self._committing = asyncio.get_running_loop().run_in_executor(
            self._thread, self._groups.finish)
        self._committing.add_done_callback(
            lambda done: self._finished(done, group, results, rows, started))
        return True

    def _finished(self, done, group, results, rows, started):
        self._committing = None
        self._committing_rows = 0
        error = done.exception()
        if error is not None:
            self._commit_failed(group, error)
        else:
            self._committed(group, results, rows, started)
        self._schedule()  # what arrived meanwhile

    def _committed(self, group, results, rows, started):
        for job, outcome in results:
            future = self._pending.pop(job)
            if not future.done():  # its request may have been cancelled meanwhile
                future.set_result(outcome)
        if self._metrics is not None:
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
            self._metrics.commit_rows.observe(rows)

    def _locked(self):
        self.lock_waits += 1
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        elif now - self._locked_since >= self._lock_timeout:
            self._locked_since = None
            self._fail(self._take_group(), StorageError(
                f"database is locked by another connection for {self._lock_timeout:g} s"))
            return False
        if self._closing:
            return False  # close() waits itself
        self._timer = asyncio.get_running_loop().call_later(self._retry_s, self.commit)
        self._retry_s = min(self._retry_s * 2, self.RETRY_MAX_S)
        return False

    def _commit_failed(self, group, error):
        """Fail ``group`` after ``error``. A database problem (disk full, I/O error,
        corruption, ...) fails its requests with :class:`StorageError` (5.03 ``storage``:
        the meters retry) and returns True. Anything else is a fault of ours (a bug, or a
        misuse of sqlite3): its requests get the error itself (5.00 ``internal``, logged
        with its traceback) and it returns False: the caller lets it go on up."""
        if isinstance(error, sqlite3.Error) and not isinstance(error, _OUR_FAULT):
            self._fail(group, StorageError(f"database write failed: {error}"))
            return True
        self._fail(group, error)
        return False

    def _fail(self, group, error):
        suppressed = self._log_limiter.allow("commit")
        if suppressed is not None:
            ours = not isinstance(error, StorageError)
            log.error("commit failed" + (": a fault of the gateway" if ours else ""),
                      exc_info=error if ours else None,
                      extra={"fields": {"error": str(error), "suppressed": suppressed}})
        for message in group:
            if message[0] == "store":
                future = self._pending.pop(message[1])
                if not future.done():
                    future.set_exception(error)
            else:  # reject counts: kept for the next transaction, never lost with this one
                for key, count in message[1].items():
                    self._reject_deltas[key] = self._reject_deltas.get(key, 0) + count


def _nearest(conn, device, column, seq, higher):
    # Counter `column` of the stored reading nearest to `seq` below it (or above it when
    # `higher`) that carries the counter; seq None = the latest such reading.
    if seq is None:
        sql = ("SELECT %s FROM readings WHERE device = ? AND %s IS NOT NULL "
               "ORDER BY seq DESC LIMIT 1")
        args = (device,)
    elif higher:
        sql = ("SELECT %s FROM readings WHERE device = ? AND seq > ? AND %s IS NOT NULL "
               "ORDER BY seq ASC LIMIT 1")
        args = (device, seq)
    else:
        sql = ("SELECT %s FROM readings WHERE device = ? AND seq < ? AND %s IS NOT NULL "
               "ORDER BY seq DESC LIMIT 1")
        args = (device, seq)
    row = conn.execute(sql % (column, column), args).fetchone()
    return None if row is None else row[0]


def _backwards(r, ei_below, ee_below, ei_above, ee_above):
    if r.ei is not None:
        if ei_below is not None and r.ei < ei_below:
            return f"ei {r.ei} below {ei_below} of an earlier reading"
        if ei_above is not None and r.ei > ei_above:
            return f"ei {r.ei} above {ei_above} of a later reading"
    if r.ee is not None:
        if ee_below is not None and r.ee < ee_below:
            return f"ee {r.ee} below {ee_below} of an earlier reading"
        if ee_above is not None and r.ee > ee_above:
            return f"ee {r.ee} above {ee_above} of a later reading"
    return None
