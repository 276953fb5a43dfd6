"""The one writer of readings: group commit on a dedicated thread.

The event loop hands over verified batches (:meth:`ReadingWriter.submit`) and gets an
asyncio future back. The writer thread takes everything queued (waiting up to
``linger`` for more, at most ``max_rows`` rows), stores it in ONE transaction, COMMITs
(WAL, synchronous=FULL: on disk when COMMIT returns) and only then resolves the futures:
a response to a meter never runs ahead of the disk. If the transaction fails, every
future of the group fails with :class:`~gateway.errors.StorageError` and nothing of it
is acknowledged.

Inside the transaction the writer runs the checks that need stored data, in order per
batch, stopping a batch at its first failure:

- same (device, seq) already stored: identical bytes -> a duplicate (retransmission or
  replay; acknowledged, not stored again); other bytes -> ``seq-reuse``;
- ``counter-backwards``: ei/ee below the nearest stored reading with a lower seq
  (that carries the counter) or above the nearest one with a higher seq.

A per-device cache of the highest stored seq and latest counters makes the usual case
(a meter appending in order) cost no extra query. SQLite releases the GIL while it
works and fsyncs, so the event loop keeps serving meanwhile.
"""

import logging
import queue
import sqlite3
import threading
import time
from typing import NamedTuple

from wattcore import reading

from gateway import store
from gateway.errors import StorageError

log = logging.getLogger("wattshare.writer")


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


class _Job:
    __slots__ = ("device_id", "readings", "received_ms", "future")

    def __init__(self, device_id, readings, received_ms, future):
        self.device_id = device_id
        self.readings = readings
        self.received_ms = received_ms
        self.future = future


class _RejectFlush:
    __slots__ = ("deltas", "now_ms")

    def __init__(self, deltas, now_ms):
        self.deltas = deltas
        self.now_ms = now_ms


class _Tail:
    # Highest stored seq of a device and the counters of its latest readings carrying them.
    __slots__ = ("last_seq", "ei", "ee")

    def __init__(self, last_seq, ei, ee):
        self.last_seq = last_seq
        self.ei = ei
        self.ee = ee


class _Touched:
    # Per-device summary of one group, written to device_state before COMMIT.
    __slots__ = ("new", "faults", "last", "last_fault", "received_ms")

    def __init__(self):
        self.new = 0
        self.faults = 0
        self.last = None
        self.last_fault = None
        self.received_ms = 0


_STOP = object()

_INSERT = (
    "INSERT OR IGNORE INTO readings (device, seq, t, st, ei, ee, p, u, i, f, pf, mdl, sn, cose,"
    " received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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


class ReadingWriter:
    """Group-committing writer thread for one database.

    Loop-side methods (:meth:`submit`, :meth:`count_reject`, :meth:`flush_rejects`)
    must be called from the event loop thread given to :meth:`start`.
    """

    def __init__(self, db_path, linger_s=0.002, max_rows=2000, metrics=None):
        self._db_path = db_path
        self._linger = linger_s
        self._max_rows = max_rows
        self._metrics = metrics
        self._queue = queue.SimpleQueue()
        self._tails = {}
        self._submitted_rows = 0  # written by the loop thread only
        self._done_rows = 0  # written by the writer thread only
        self._reject_deltas = {}
        self._loop = None
        self._thread = None

    @property
    def pending_rows(self):
        """Readings handed over and not yet committed (or failed)."""
        return self._submitted_rows - self._done_rows

    def start(self, loop):
        # Open (and migrate) here so a broken database fails start-up, not the thread.
        conn = store.open_store(self._db_path)
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="reading-writer", daemon=True
        )
        self._thread.start()

    def close(self):
        """Commit what is queued (including reject counts), then stop the thread."""
        if self._thread is None:
            return
        self.flush_rejects()
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None

    def submit(self, device_id, readings, received_ms):
        """Queue a verified batch prefix; the future resolves to a :class:`StoreOutcome`."""
        future = self._loop.create_future()
        self._submitted_rows += len(readings)
        self._queue.put(_Job(device_id, readings, received_ms, future))
        return future

    def count_reject(self, device_id, reason):
        """Count a reject for the ``rejects`` table (written on the next flush)."""
        key = (device_id or b"", reason)
        self._reject_deltas[key] = self._reject_deltas.get(key, 0) + 1

    def flush_rejects(self):
        """Hand the reject counts gathered so far to the writer (called about once a second)."""
        if self._reject_deltas:
            deltas, self._reject_deltas = self._reject_deltas, {}
            self._queue.put(_RejectFlush(deltas, int(time.time() * 1000)))

    # -- writer thread ---------------------------------------------------------------

    def _run(self, conn):
        try:
            while True:
                job = self._queue.get()
                if job is _STOP:
                    return
                group, stop = self._gather(job)
                self._commit(conn, group)
                if stop:
                    return
        finally:
            conn.close()

    def _gather(self, first):
        group = [first]
        rows = _rows(first)
        deadline = time.monotonic() + self._linger
        while rows < self._max_rows:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is _STOP:
                return group, True
            group.append(job)
            rows += _rows(job)
        return group, False

    def _commit(self, conn, group):
        started = time.perf_counter()
        results = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                touched = {}
                for job in group:
                    if isinstance(job, _RejectFlush):
                        conn.executemany(
                            _REJECT_UPSERT,
                            [(d, r, n, job.now_ms) for (d, r), n in job.deltas.items()],
                        )
                    else:
                        results.append((job, self._store(conn, job, touched)))
                self._write_state(conn, touched)
                conn.execute("COMMIT")
            except BaseException:
                self._tails.clear()  # may hold rows of the rolled-back transaction
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as e:  # the writer must survive any failure of one group
            if isinstance(e, sqlite3.Error):
                log.error("commit failed", extra={"fields": {"error": str(e)}})
                failure = StorageError(f"database write failed: {e}")
            else:
                log.exception("writer bug while storing a group")
                failure = e
            self._finish([(job, failure) for job in group if isinstance(job, _Job)])
            return
        if self._metrics is not None:
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
            self._metrics.commit_rows.observe(sum(len(j.readings) for j, _ in results))
        self._finish(results)

    def _finish(self, results):
        self._done_rows += sum(len(job.readings) for job, _ in results)
        if results:
            self._loop.call_soon_threadsafe(_resolve, results)

    def _tail(self, conn, device):
        tail = self._tails.get(device)
        if tail is None:
            last = conn.execute(
                "SELECT max(seq) FROM readings WHERE device = ?", (device,)
            ).fetchone()[0]
            tail = _Tail(last, _nearest(conn, device, "ei", None, False),
                         _nearest(conn, device, "ee", None, False))
            self._tails[device] = tail
        return tail

    def _store(self, conn, job, touched):
        device = job.device_id
        tail = self._tail(conn, device)
        new = duplicates = 0
        summary = touched.get(device)
        for index, r in enumerate(job.readings):
            appended = tail.last_seq is None or r.seq > tail.last_seq
            if appended:
                bad = _backwards(r, tail.ei, tail.ee, None, None)
            else:
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
                return StoreOutcome(index, new, duplicates, "counter-backwards", bad)
            cur = conn.execute(
                _INSERT,
                (device, r.seq, r.t, r.st, r.ei, r.ee, r.p, r.u, r.i, r.f, r.pf, r.mdl, r.sn,
                 r.cose, job.received_ms),
            )
            if cur.rowcount == 0:
                # The cache said "new" but the row exists: drop the cache and decide again.
                self._tails.pop(device, None)
                raise sqlite3.DatabaseError("reading cache out of step with the database")
            new += 1
            if appended:
                tail.last_seq = r.seq
                if r.ei is not None:
                    tail.ei = r.ei
                if r.ee is not None:
                    tail.ee = r.ee
            if summary is None:
                summary = touched[device] = _Touched()
            summary.new += 1
            summary.received_ms = max(summary.received_ms, job.received_ms)
            if summary.last is None or r.seq > summary.last.seq:
                summary.last = r
            if r.st & reading.ST_FAULT_MASK:
                summary.faults += 1
                if summary.last_fault is None or r.seq > summary.last_fault.seq:
                    summary.last_fault = r
        return StoreOutcome(len(job.readings), new, duplicates, None, "")

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


def _rows(job):
    return len(job.readings) if isinstance(job, _Job) else 1


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


def _resolve(results):
    for job, outcome in results:
        if job.future.done():  # the request was cancelled meanwhile
            continue
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
