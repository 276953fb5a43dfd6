"""The one writer of readings: group commit in a writer process.

The event loop hands over verified batches (:meth:`ReadingWriter.submit`) and gets an
asyncio future back. The writer process (:func:`serve`, started as
``python -m gateway.worker writer``) takes everything that has arrived (waiting up to
``linger`` for more, at most ``max_rows`` rows), stores it in ONE transaction, COMMITs
(WAL, synchronous=FULL: on disk when COMMIT returns) and only then answers: a response
to a meter never runs ahead of the disk. If the transaction fails, every batch of the
group fails with :class:`~gateway.errors.StorageError` and nothing of it is
acknowledged; if the process dies, its pending batches fail the same way and a new
writer is started.

Inside the transaction :class:`GroupStore` runs the checks that need stored data, in
order per batch, stopping a batch at its first failure:

- same (device, seq) already stored: identical bytes -> a duplicate (retransmission or
  replay; acknowledged, not stored again); other bytes -> ``seq-reuse``;
- ``counter-backwards``: ei/ee below the nearest stored reading with a lower seq
  (that carries the counter) or above the nearest one with a higher seq.

A per-device cache of the highest stored seq and latest counters makes the usual case
(a meter appending in order) cost no extra query.
"""

import asyncio
import logging
import sqlite3
import time
from typing import NamedTuple

from wattcore import reading

from gateway import ipc, store
from gateway.errors import StorageError
from gateway.logs import RateLimiter
from gateway.verify import Checked

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


class GroupStore:
    """Stores groups of messages on one connection, one transaction per group.

    Messages: ``("store", job_id, device_id, readings, received_ms)`` with readings as
    tuples in :class:`gateway.verify.Checked` field order, or
    ``("rejects", {(device, reason): count}, now_ms)``. :meth:`commit` returns
    ``[(job_id, StoreOutcome)]``, or rolls back and raises :class:`sqlite3.Error`.
    """

    def __init__(self, conn):
        self.conn = conn
        self._tails = {}

    def commit(self, group):
        conn = self.conn
        results = []
        try:
            with store.immediate(conn):
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
            self._tails.clear()  # may hold rows of the rolled-back transaction
            raise
        return results

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

    def _store(self, conn, device, readings, received_ms, touched):
        tail = self._tail(conn, device)
        new = duplicates = 0
        summary = touched.get(device)
        rows = []  # new rows not yet inserted: one executemany per run of appended readings
        for index, r in enumerate(map(Checked._make, readings)):
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
            rows.append((device, r.seq, r.t, r.st, r.ei, r.ee, r.p, r.u, r.i, r.f, r.pf, r.mdl,
                         r.sn, r.cose, received_ms))
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



def serve(sock, db_path, linger_s, max_rows):
    """The writer process: gather, store, COMMIT, answer; until the pipe closes.

    Each frame from the gateway is a list of messages (see :class:`GroupStore`).
    """
    try:
        conn = store.open_store(db_path)
    except StorageError as e:
        ipc.write_frame(sock, ("failed", str(e)))
        return 1
    groups = GroupStore(conn)
    ipc.write_frame(sock, ("ready", store.SCHEMA_VERSION))
    frames = ipc.FrameReader(sock)
    try:
        closing = False
        while not closing:
            frame = frames.next()
            if frame is None:
                return 0
            group = list(frame)
            rows = sum(map(_rows, frame))
            # Linger asleep rather than waiting on the pipe: frames that arrive meanwhile
            # are queued without waking us, then everything queued joins the group
            # (A/B at 8 readings per message: +13% readings/s on one core, +4% on two).
            if rows < max_rows and linger_s > 0:
                time.sleep(linger_s)
            while rows < max_rows:
                frame = frames.next(0.0)
                if frame is ipc.TIMEOUT:
                    break
                if frame is None:
                    closing = True
                    break
                group.extend(frame)
                rows += sum(map(_rows, frame))
            started = time.perf_counter()
            try:
                results, failure = groups.commit(group), None
            except sqlite3.Error as e:
                results, failure = [], f"database write failed: {e}"
            jobs = [m[1] for m in group if m[0] == "store"]
            ipc.write_frame(sock, ("done", results, failure, jobs,
                                   time.perf_counter() - started, rows))
        return 0
    finally:
        conn.close()


def _rows(message):
    return len(message[3]) if message[0] == "store" else 1


class ReadingWriter:
    """The event loop's handle on the writer process.

    :meth:`submit` returns a future resolving to a :class:`StoreOutcome` (or failing
    with :class:`StorageError`); call the methods from the loop that ran :meth:`start`.
    """

    def __init__(self, db_path, linger_s=0.002, max_rows=2000, metrics=None):
        self._db_path = db_path
        self._linger = linger_s
        self._max_rows = max_rows
        self._metrics = metrics
        self._channel = None
        self._pending = {}  # job id -> (future, rows)
        self._next_job = 0
        self._pending_rows = 0
        self._reject_deltas = {}
        self._outbox = []  # messages sent together at the end of this loop iteration
        self._log_limiter = RateLimiter(window=60.0, global_max=10)
        self._ready = None
        self._closing = False
        self.restarts = 0

    @property
    def pending_rows(self):
        """Readings handed over and not yet committed (or failed)."""
        return self._pending_rows

    @property
    def process(self):
        return self._channel.process if self._channel is not None else None

    async def start(self):
        """Start the writer process; raises :class:`StorageError` if it cannot open the db."""
        self._ready = asyncio.get_running_loop().create_future()
        self._channel = await ipc.Channel.start(
            "writer", [self._db_path, self._linger, self._max_rows],
            self._on_message, self._on_lost,
        )
        try:
            await self._ready
        except StorageError:
            self._closing = True
            await self._channel.stop()
            self._channel = None
            raise

    async def close(self):
        """Flush reject counts, let the process commit what it has, and stop it."""
        self._closing = True
        if self._channel is not None:
            self.flush_rejects()
            self._flush()
            await self._channel.stop()
            self._channel = None

    def submit(self, device_id, readings, received_ms):
        future = asyncio.get_running_loop().create_future()
        self._next_job += 1
        job = self._next_job
        self._pending[job] = (future, len(readings))
        self._pending_rows += len(readings)
        if self._channel is None:
            self._fail([job], "the writer process is not running")
        else:
            # plain tuples: a tenth of the pickling cost of named tuples
            self._post(("store", job, device_id, [tuple(r) for r in readings], received_ms))
        return future

    def _post(self, message):
        # One frame (one wake-up of the writer) per loop iteration, however many batches.
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(message)

    def _flush(self):
        outbox, self._outbox = self._outbox, []
        if not outbox:
            return
        if self._channel is not None:
            self._channel.send(outbox)
        else:
            self._fail([m[1] for m in outbox if m[0] == "store"],
                       "the writer process is not running")

    def count_reject(self, device_id, reason):
        """Count a reject for the ``rejects`` table (written on the next flush)."""
        key = (device_id or b"", reason)
        self._reject_deltas[key] = self._reject_deltas.get(key, 0) + 1

    def flush_rejects(self):
        """Hand the reject counts gathered so far to the writer (about once a second)."""
        if self._reject_deltas and self._channel is not None:
            deltas, self._reject_deltas = self._reject_deltas, {}
            self._post(("rejects", deltas, int(time.time() * 1000)))

    def _on_message(self, message):
        kind = message[0]
        if kind in ("ready", "failed"):
            if not self._ready.done():
                if kind == "ready":
                    self._ready.set_result(None)
                else:
                    self._ready.set_exception(StorageError(message[1]))
            return
        _, results, failure, jobs, seconds, rows = message
        if failure is not None:
            suppressed = self._log_limiter.allow("commit")
            if suppressed is not None:
                log.error("commit failed",
                          extra={"fields": {"error": failure, "suppressed": suppressed}})
            self._fail(jobs, failure)
            return
        for job, outcome in results:
            future = self._take(job)
            if future is not None:
                future.set_result(outcome)
        if self._metrics is not None:
            self._metrics.commit_seconds.observe(seconds)
            self._metrics.commit_rows.observe(rows)

    def _take(self, job):
        """The future of pending ``job``, no longer pending; None if gone or done."""
        entry = self._pending.pop(job, None)
        if entry is None:
            return None
        future, n = entry
        self._pending_rows -= n
        return None if future.done() else future

    def _fail(self, jobs, reason):
        error = StorageError(reason)
        for job in jobs:
            future = self._take(job)
            if future is not None:
                future.set_exception(error)

    def _on_lost(self):
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(StorageError("the writer process exited at start-up"))
            return
        self._fail(list(self._pending), "the writer process exited")
        if self._closing:
            return
        # Supervisor: start a new writer; meters retry what failed meanwhile.
        log.error("writer process exited; restarting it")
        self._channel = None
        self.restarts += 1
        asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self):
        while not self._closing:
            try:
                await self.start()
                return
            except StorageError:
                log.exception("writer process could not restart")
                await asyncio.sleep(1.0)


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
