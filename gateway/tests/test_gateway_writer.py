"""The group-committing writer: stateful checks, prefixes, device state, failures."""

import asyncio
import contextlib
import sqlite3
import time

import pytest
from gw_testbed import MeterKey, register, stored, write_config
from wattcore import exchange, reading

from gateway import store as store_module
from gateway import verify
from gateway.errors import StorageError
from gateway.metrics import GatewayMetrics
from gateway.writer import GroupStore, ReadingWriter

POLICY = verify.Policy(300, 30 * 86400)


def checked(meter, *readings_bytes):
    cred = verify.Credential(meter.device_id, meter.pubkey, 10**6, False)
    result = verify.check_batch(exchange.encode_batch(list(readings_bytes)), cred,
                                int(time.time()), POLICY)
    assert result.reason is None
    return result.readings


def run_writer(cfg, body, linger_s=0.002):
    metrics = GatewayMetrics()

    async def main():
        writer = ReadingWriter(cfg.db_path, linger_s, 2000, metrics)
        writer.start()
        try:
            return await body(writer)
        finally:
            await writer.close()

    return asyncio.run(main()), metrics


@contextlib.asynccontextmanager
async def two_writers(cfg):
    """Two writers on one database, as two ingest processes have them."""
    a, b = ReadingWriter(cfg.db_path), ReadingWriter(cfg.db_path)
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def put(writer, meter, *readings):
    """Submit signed readings of ``meter`` (checked first) to ``writer``."""
    return writer.submit(meter.device_id, checked(meter, *readings), 1)


def test_group_commit_stores_many_batches_in_few_transactions(tmp_path):
    meters = [MeterKey() for _ in range(10)]
    cfg = write_config(tmp_path)
    register(cfg, *meters)
    jobs = [(m, checked(m, *[m.reading(s) for s in range(1, 6)])) for m in meters]

    async def body(writer):
        futures = [writer.submit(m.device_id, rs, 1) for m, rs in jobs]
        return await asyncio.gather(*futures)

    outcomes, metrics = run_writer(cfg, body, linger_s=0.05)
    assert all((o.stored, o.new, o.reason) == (5, 5, None) for o in outcomes)
    assert len(stored(cfg)) == 50
    assert metrics.commit_rows.count < len(jobs)  # several batches shared a COMMIT
    assert metrics.commit_rows.sum == 50


def test_queries_inside_a_batch_see_the_rows_stored_before_them(tmp_path):
    # New rows are inserted in runs (executemany); a reading that needs a query (a
    # lower seq than one already in the batch, or a repeated seq) must see them.
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)
    r4 = m.reading(4)

    async def body(writer):
        out = [await writer.submit(m.device_id, checked(m, m.reading(1)), 1)]
        # 7 (ei 1007) is appended, then 6 with ei above 7's: counter-backwards
        out.append(await writer.submit(
            m.device_id, checked(m, m.reading(7), m.reading(6, ei=1500)), 1))
        # 4 twice in one batch: stored once, the copy counted as a duplicate
        out.append(await writer.submit(m.device_id, checked(m, r4, r4, m.reading(5)), 1))
        return out

    (a, b, c), _ = run_writer(cfg, body)
    assert (a.stored, a.new, a.reason) == (1, 1, None)
    assert (b.stored, b.new, b.reason) == (1, 1, "counter-backwards")
    assert (c.stored, c.new, c.duplicates, c.reason) == (3, 2, 1, None)
    assert sorted(seq for _, seq in stored(cfg)) == [1, 4, 5, 7]


def test_duplicates_seq_reuse_and_counters_in_order(tmp_path):
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)
    r1, r2, r3, r5 = (m.reading(s) for s in (1, 2, 3, 5))
    other2 = m.reading(2)  # same seq, different signature bytes

    async def body(writer):
        out = []
        out.append(await writer.submit(m.device_id, checked(m, r1, r2, r5), 1))
        # duplicate r1, seq reuse at 2: r3 after it is not stored
        out.append(await writer.submit(m.device_id, checked(m, r1, other2, r3), 1))
        # out of order: 4 between 3 (absent) and 5; ei must lie between its neighbours
        out.append(await writer.submit(m.device_id, checked(m, m.reading(4, ei=1006)), 1))
        out.append(await writer.submit(m.device_id, checked(m, m.reading(4, ei=1001)), 1))
        out.append(await writer.submit(m.device_id, checked(m, m.reading(4)), 1))
        out.append(await writer.submit(m.device_id, checked(m, m.reading(6, ee=10)), 1))
        return out

    (a, b, c, d, e, f), _ = run_writer(cfg, body)
    assert (a.stored, a.new, a.duplicates, a.reason) == (3, 3, 0, None)
    assert (b.stored, b.new, b.duplicates, b.reason) == (1, 0, 1, "seq-reuse")
    assert (c.stored, c.reason) == (0, "counter-backwards") and "later" in c.detail
    assert (d.stored, d.reason) == (0, "counter-backwards") and "earlier" in d.detail
    assert (e.stored, e.new, e.reason) == (1, 1, None)
    assert (f.stored, f.reason) == (0, "counter-backwards")
    assert sorted(s for _, s in stored(cfg)) == [1, 2, 4, 5]
    assert stored(cfg)[(m.device_id, 2)] == r2


def test_fault_readings_are_stored_and_counters_skip_them(tmp_path):
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)
    fault = m.reading(2, st=reading.ST_METER_CRC)

    def store(groups, job, items, received_ms):
        return groups.commit([("store", job, m.device_id, checked(m, *items), received_ms)])[0][1]

    groups = GroupStore(store_module.open_store(cfg.db_path))
    first = store(groups, 1, [m.reading(1), fault], 1000)
    # A fresh writer (empty cache) still compares with reading 1, the last with counters.
    groups.conn.close()
    groups = GroupStore(store_module.open_store(cfg.db_path))
    late = store(groups, 2, [m.reading(3, ei=1000)], 2000)
    ok = store(groups, 3, [m.reading(3)], 3000)
    groups.conn.close()
    assert first.new == 2 and late.reason == "counter-backwards" and ok.new == 1
    conn = sqlite3.connect(cfg.db_path)
    row = conn.execute("SELECT readings, last_seq, faults, last_fault_seq, last_fault_st, "
                       "last_received_ms, last_ei FROM device_state").fetchone()
    conn.close()
    assert row == (3, 3, 1, 2, reading.ST_METER_CRC, 3000, 1003)


def test_failed_commit_fails_every_batch_of_the_group_and_the_writer_goes_on(tmp_path):
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)
    db = sqlite3.connect(cfg.db_path, isolation_level=None)
    db.execute("CREATE TRIGGER broken BEFORE INSERT ON readings WHEN NEW.seq = 2 "
               "BEGIN SELECT RAISE(ABORT, 'bad sector'); END")

    async def body(writer):
        f1 = writer.submit(m.device_id, checked(m, m.reading(1)), 1)
        f2 = writer.submit(m.device_id, checked(m, m.reading(2)), 1)
        results = await asyncio.gather(f1, f2, return_exceptions=True)
        db.execute("DROP TRIGGER broken")
        again = await writer.submit(m.device_id, checked(m, m.reading(1), m.reading(2)), 1)
        return results, again

    (results, again), _ = run_writer(cfg, body, linger_s=0.05)
    db.close()
    assert all(isinstance(r, StorageError) for r in results)
    assert again.new == 2 and len(stored(cfg)) == 2


def test_reject_counts_are_persisted(tmp_path):
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)

    async def body(writer):
        writer.count_reject(m.device_id, "bad-signature")
        writer.count_reject(m.device_id, "bad-signature")
        writer.count_reject(None, "cbor")
        writer.flush_rejects()
        writer.count_reject(None, "cbor")

    run_writer(cfg, body)  # close() flushes what is left
    conn = sqlite3.connect(cfg.db_path)
    rows = sorted(conn.execute("SELECT device, reason, count FROM rejects"))
    conn.close()
    assert rows == [(b"", "cbor", 2), (m.device_id, "bad-signature", 2)]


def test_unopenable_database_fails_at_start(tmp_path):
    (tmp_path / "db").mkdir()
    writer = ReadingWriter(tmp_path / "db", 0.001, 10)
    with pytest.raises(StorageError):
        writer.start()


def test_a_taken_write_lock_is_waited_for_without_blocking_the_event_loop(tmp_path):
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)
    blocker = sqlite3.connect(cfg.db_path, isolation_level=None)

    async def body(writer):
        blocker.execute("BEGIN IMMEDIATE")  # e.g. the chain link writing its outbox
        future = writer.submit(m.device_id, checked(m, m.reading(1)), 1)
        # This sleep ends only if the loop runs; meanwhile the writer's retries (timers
        # of the same loop) find the lock taken again and again. A writer that waited
        # for the lock inside the loop would have tried once.
        await asyncio.sleep(0.05)
        assert writer.lock_waits >= 3
        assert not future.done() and writer.pending_rows == 1
        blocker.execute("COMMIT")
        return await asyncio.wait_for(future, 5)

    outcome, _ = run_writer(cfg, body)
    blocker.close()
    assert outcome.new == 1 and len(stored(cfg)) == 1


def test_a_write_lock_held_too_long_fails_the_group_with_a_storage_error(tmp_path):
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)
    blocker = sqlite3.connect(cfg.db_path, isolation_level=None)

    async def main():
        writer = ReadingWriter(cfg.db_path, 0.0, 2000, lock_timeout_s=0.2)
        writer.start()
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageError, match="locked by another connection for 0.2 s"):
                await asyncio.wait_for(writer.submit(m.device_id, checked(m, m.reading(1)), 1), 5)
        finally:
            blocker.execute("ROLLBACK")
        # the next group finds the lock free
        outcome = await writer.submit(m.device_id, checked(m, m.reading(1)), 1)
        await writer.close()
        return outcome

    assert asyncio.run(main()).new == 1
    blocker.close()
    assert len(stored(cfg)) == 1


def test_two_writers_on_one_database_see_each_others_readings(tmp_path):
    # Ingest processes share the database; a meter's requests may reach another process
    # (e.g. after its source port changed). Each writer's cache of the latest seq and
    # counters must not hide what the other stored.
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)

    async def main():
        async with two_writers(cfg) as (a, b):
            first = await put(a, m, m.reading(1), m.reading(2))
            second = await put(b, m, m.reading(3, ei=5000))
            # below seq 3's counter, above seq 2's (which a's cache last saw)
            backwards = await put(a, m, m.reading(4, ei=4000))
            reuse = await put(a, m, m.reading(3, ei=6000))
            return first, second, backwards, reuse

    first, second, backwards, reuse = asyncio.run(main())
    assert (first.new, second.new) == (2, 1)
    assert (backwards.stored, backwards.reason) == (0, "counter-backwards")
    assert (reuse.stored, reuse.reason) == (0, "seq-reuse")
    assert sorted(stored(cfg)) == [(m.device_id, s) for s in (1, 2, 3)]


def test_a_writer_keeps_its_cache_when_another_writes_other_devices(tmp_path):
    # Each ingest process mostly sees its own meters: another process's COMMIT must not
    # cost a reload of every cached device (three queries each), only one confirmation.
    mine, theirs = MeterKey(), MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, mine, theirs)

    async def main():
        async with two_writers(cfg) as (a, b):
            statements = []
            a._conn.set_trace_callback(statements.append)
            await put(a, mine, mine.reading(1))
            await put(b, theirs, theirs.reading(1))
            statements.clear()
            outcome = await put(a, mine, mine.reading(2))
            kept = list(statements)
            await put(b, mine, mine.reading(3))  # one of a's devices, via b
            statements.clear()
            late = await put(a, mine, mine.reading(4, ei=1))
            return outcome, kept, list(statements), late

    outcome, kept, reloaded, late = asyncio.run(main())
    assert outcome.new == 1
    assert not any("max(seq)" in s for s in kept)  # confirmed, not reloaded
    assert any("FROM device_state WHERE device IN" in s for s in kept)
    assert any("max(seq)" in s for s in reloaded)  # b stored one of a's devices: reload
    assert (late.stored, late.reason) == (0, "counter-backwards")  # ei 1 below seq 3's


def test_a_cached_device_left_out_of_one_confirmation_is_confirmed_when_it_returns(tmp_path):
    # Confirmation covers the devices of the group at hand; another cached device must
    # still be checked when it comes back, even though nobody committed in between.
    x, y = MeterKey(), MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, x, y)

    async def main():
        async with two_writers(cfg) as (a, b):
            await put(a, x, x.reading(1))
            await put(a, y, y.reading(1))
            await put(b, y, y.reading(2, ei=5000))
            await put(a, x, x.reading(2))  # confirms x only
            # below seq 2's counter (stored by b), above seq 1's (what a cached)
            return await put(a, y, y.reading(3, ei=4000))

    outcome = asyncio.run(main())
    assert (outcome.stored, outcome.reason) == (0, "counter-backwards")


def test_bytes_and_none_parameters_are_bound_as_blob_and_null(tmp_path):
    # gateway.store registers pass-through adapters for bytes and None (a speed-up):
    # what is stored must be exactly what was bound without them.
    conn = store_module.connect(tmp_path / "g.sqlite3")
    conn.execute("CREATE TABLE x (a, b)")
    conn.execute("INSERT INTO x VALUES (?, ?)", (b"\x00\xffsigned", None))
    assert conn.execute("SELECT typeof(a), a, typeof(b), b FROM x").fetchone() == (
        "blob", b"\x00\xffsigned", "null", None)
    conn.close()


def test_a_fault_of_ours_keeps_its_cause_and_is_not_called_storage(tmp_path, caplog):
    # A bug inside the transaction (here: a batch that is not made of checked readings,
    # and a value sqlite3 cannot bind) fails its request with the error itself: the
    # ingest handler answers 5.00 `internal` and logs the traceback, where a storage
    # problem would be 5.03 `storage`. The writer goes on with the next group.
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)
    good = checked(m, m.reading(1))

    async def body(writer):
        not_a_reading = writer.submit(m.device_id, [("not", "a", "reading")], 1)
        results = [await asyncio.gather(not_a_reading, return_exceptions=True)]
        unbindable = writer.submit(m.device_id, [good[0]._replace(u=[1, 2])], 1)
        results += [await asyncio.gather(unbindable, return_exceptions=True)]
        after = await writer.submit(m.device_id, good, 1)
        return [r[0] for r in results], after

    (errors, after), _ = run_writer(cfg, body)
    assert type(errors[0]) is AttributeError
    assert isinstance(errors[1], sqlite3.ProgrammingError)
    assert not any(isinstance(e, StorageError) for e in errors)
    assert after.new == 1 and len(stored(cfg)) == 1
    traced = [r for r in caplog.records if r.getMessage().startswith("commit failed")]
    assert traced and all(r.exc_info for r in traced)


def test_reject_counts_are_not_lost_with_a_failed_commit(tmp_path):
    # The counts once shared the readings' transaction: a failed COMMIT lost them (the
    # rejects table said 14 where /metrics said 88). They are now kept for the next one.
    m = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, m)
    db = sqlite3.connect(cfg.db_path, isolation_level=None)
    db.execute("CREATE TRIGGER broken BEFORE INSERT ON readings "
               "BEGIN SELECT RAISE(ABORT, 'disk full'); END")

    async def body(writer):
        failures = 0
        for seq in range(1, 6):
            writer.count_reject(m.device_id, "bad-signature")
            writer.count_reject(None, "cbor")
            writer.flush_rejects()  # in the same group as the readings below
            try:
                await put(writer, m, m.reading(seq))
            except StorageError:
                failures += 1
                writer.count_reject(m.device_id, "storage")
        db.execute("DROP TRIGGER broken")
        await put(writer, m, m.reading(9))
        writer.flush_rejects()
        await put(writer, m, m.reading(10))
        return failures

    failures, _ = run_writer(cfg, body)
    db.close()
    assert failures == 5
    conn = sqlite3.connect(cfg.db_path)
    rows = dict(((bytes(d), r), n) for d, r, n in conn.execute(
        "SELECT device, reason, count FROM rejects"))
    conn.close()
    assert rows == {(m.device_id, "bad-signature"): 5, (b"", "cbor"): 5,
                    (m.device_id, "storage"): 5}


class StepClock:
    """The writer's rate clock, moved by hand (whole seconds)."""

    def __init__(self):
        self.now = 100.5

    def __call__(self):
        return self.now


def run_windowed(cfg, body, window_s=30.0):
    # A window far longer than any test: a group that waited for it would hang the test,
    # so every group here is committed because of what it holds, never by the timer.
    metrics = GatewayMetrics()
    clock = StepClock()
    windows = []

    async def main():
        writer = ReadingWriter(cfg.db_path, 0.0, 2000, metrics, window_s=window_s,
                               clock=clock)
        writer.on_window = windows.append
        writer.start()
        try:
            return await body(writer, clock)
        finally:
            await writer.close()

    return asyncio.run(main()), metrics, windows


def test_a_meter_alone_never_waits_for_the_window(tmp_path):
    meter = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, meter)

    async def body(writer, clock):
        outcomes = []
        for seq in range(1, 6):  # one reading a second: nobody else to wait for
            outcomes.append(await put(writer, meter, meter.reading(seq)))
            clock.now += 1
        return outcomes

    outcomes, metrics, windows = run_windowed(cfg, body)
    assert [o.new for o in outcomes] == [1] * 5
    assert metrics.commit_rows.count == 5 and windows == []


def test_many_meters_share_one_commit_through_the_window(tmp_path):
    meters = [MeterKey() for _ in range(40)]
    cfg = write_config(tmp_path)
    register(cfg, *meters)

    async def body(writer, clock):
        # First second: 40 meters, each reading committed as it comes (no rate known yet).
        for m in meters:
            await put(writer, m, m.reading(1))
        assert writer.others_per_s == 0.0
        first = writer._metrics.commit_rows.count
        clock.now += 1
        # Next second: 39 readings/s of other meters are expected, so a small group
        # waits; readings arriving in later loop turns join it, and once it holds
        # GROUP_ENOUGH it is committed at once (not after the 30 s window).
        futures = []
        for m in meters[:ReadingWriter.GROUP_ENOUGH]:
            futures.append(put(writer, m, m.reading(2)))
            await asyncio.sleep(0)  # a loop turn of its own, as datagrams come
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*futures)
        return first, outcomes, writer.others_per_s

    (first, outcomes, rate), metrics, windows = run_windowed(cfg, body)
    assert first == 40
    assert rate == pytest.approx(39.0)
    assert all(o.new == 1 and o.reason is None for o in outcomes)
    assert metrics.commit_rows.count == 41  # the 32 readings of the second went in one COMMIT
    assert windows == [True, False]  # reading paused for the window, resumed before COMMIT
    assert len(stored(cfg)) == 40 + ReadingWriter.GROUP_ENOUGH


def test_what_comes_in_while_reading_is_paused_joins_the_windowed_commit(tmp_path):
    meters = [MeterKey() for _ in range(8)]
    cfg = write_config(tmp_path)
    register(cfg, *meters)
    late = []

    async def body(writer, clock):
        for m in meters[:4]:  # a second of four meters: a rate of 3/s from others
            await put(writer, m, m.reading(1))
        clock.now += 1

        def on_window(paused):
            if not paused:  # the front end reads what waited in the socket: it joins
                late.extend(put(writer, m, m.reading(1)) for m in meters[4:])

        writer.on_window = on_window
        waiting = put(writer, meters[0], meters[0].reading(2))
        await asyncio.sleep(0)
        assert not waiting.done()  # waits for the window (3/s x 30 s >= 1 expected)
        assert writer.commit() is True  # the window ends (here: now, by hand)
        first = await waiting
        return first, await asyncio.gather(*late)

    (first, late_outcomes), metrics, _ = run_windowed(cfg, body)
    assert first.new == 1 and [o.new for o in late_outcomes] == [1] * 4
    assert metrics.commit_rows.count == 5  # 4 alone, then 1 + the 4 read at the window's end
    assert len(stored(cfg)) == 9
