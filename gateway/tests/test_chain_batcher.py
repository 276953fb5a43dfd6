"""Batcher + outbox on a real anvil (osaka: the contract checks every signed boundary
reading with P256VERIFY, gas cap per transaction on): batches of intervals built from
stored signed readings, submitted once each, settled with the allocations the reference
model predicts; late readings committed by a later root; large batches in several
transactions; crash between signing and sending; a chain node restarted from an old
state."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chain_community import Community, L

from contracts import allocation_reference as ref
from gateway import store
from gateway.chain import batcher, bundle, contracts, deploy, merkle
from gateway.chain.outbox import Outbox, counts, retry

STATIC_SCHOOL_BPS = 4000


@pytest.fixture
def community(tmp_path):
    c = Community(tmp_path)
    producer, school = c.member("producer"), c.member("school")
    deploy.set_producer_key(c.port, producer.owner_key, c.settlement, producer.index,
                            "static", [school.index], [STATIC_SCHOOL_BPS])
    yield c
    c.close()


def _run(outbox, rounds=50):
    """Step until no row is in flight; returns {(interval, part): state}."""
    for _ in range(rounds):
        outbox.step()
        state = {(k, p): s for k, p, s in outbox.conn.execute(
            "SELECT interval, part, state FROM chain_outbox WHERE contract = ?",
            (outbox.contract,)).fetchall()}
        if all(s in ("confirmed", "failed") for s in state.values()):
            return state
        time.sleep(0.05)
    raise AssertionError(f"outbox not done: {state}")


def test_packing_matches_the_reference():
    entries = [(1, 5, 0), (2, 0, 7), (7, 2**32 - 1, 3), (9, 1, 1), (300, 0, 0)]
    assert contracts.pack_totals(entries) == ref.pack_entries(entries)
    assert contracts.unpack_totals(contracts.pack_totals(entries)) == entries
    runs = [entries, [], [(4, 1, 2)]]
    assert contracts.pack_intervals(runs) == ref.pack_intervals(runs)
    assert contracts.unpack_intervals(contracts.pack_intervals(runs)) == runs
    with pytest.raises(ValueError):
        contracts.pack_totals([(1, 2**32, 0)])
    with pytest.raises(ValueError):
        contracts.pack_totals([(0, 1, 1)])


def test_a_batch_settles_once_as_the_readings_say(community):
    c = community
    first = c.first
    c.store_readings(first * L, (first + 3) * L)
    b = c.batcher()
    # the readings reach boundary first+3: three intervals, one transaction
    (built,) = b.build_due(since=first)
    assert (built.interval, built.part, built.intervals) == (first, 0, 3)
    assert built.anchors == 6  # each meter: a first anchor at `first`, one at first+3
    assert b.build_due(since=first) == []  # nothing twice
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement, confirmations=2)
    for _ in range(10):
        outbox.step()
    # the transaction has no block on top yet: 2 confirmations not reached
    assert counts(c.conn, c.settlement) == {"mined": 1}
    c.port.request("evm_mine", [])
    assert outbox.step() == {first: "confirmed"}

    (submitted,) = c.logs("Submitted")
    row = c.conn.execute("SELECT root, packed, leaves, gas_used FROM chain_outbox"
                         ).fetchone()
    assert (submitted["first_interval"], submitted["intervals"]) == (first, 3)
    assert submitted["root"] == bytes(row[0])
    assert submitted["gateway"].lower() == c.gateway.lower()
    assert row[3] < contracts.TX_GAS_CAP
    settled = {e["interval"]: e for e in c.logs("Settled")}
    assert sorted(settled) == [first, first + 1, first + 2]
    per_interval = contracts.unpack_intervals([int(w, 16) for w in
                                               json.loads(row[1])["intervals"]])
    p2p, pool = c.logs("P2PAllocation"), c.logs("PoolAllocation")
    producer, school = c.member("producer"), c.member("school")
    keys = {producer.index: ref.Key(ref.KEY_STATIC, (school.index,), (STATIC_SCHOOL_BPS,))}
    for k, entries in zip(range(first, first + 3), per_interval, strict=True):
        expected = c.expected_totals(k)
        assert {m: (i, e) for m, i, e in entries} == expected
        assert settled[k]["import_wh"] == sum(i for i, _ in expected.values())
        assert settled[k]["export_wh"] == sum(e for _, e in expected.values())
        flows = ref.allocate(expected, keys)
        assert [(e["producer"], e["consumer"], e["wh"]) for e in p2p if e["interval"] == k] \
            == flows.p2p
        assert [(e["consumer"], e["wh"]) for e in pool if e["interval"] == k] \
            == flows.pool_allocations
        assert flows.p2p and flows.pool_allocations  # the scenario exercises both tiers
    # the root commits, after its header leaf, every reading up to the last anchor
    leaves = c.conn.execute(
        "SELECT l.salt, r.cose, r.t FROM chain_leaves l JOIN readings r "
        "ON r.id = l.reading_id ORDER BY l.leaf_index").fetchall()
    assert len(leaves) == row[2] == 3 * (3 * L // 10 + 1)
    header = bytes.fromhex(json.loads(row[1])["header"])
    tree = merkle.MerkleTree(
        [batcher.header_leaf(header, c.settlement, first, 3)]
        + [merkle.leaf_hash(bytes(s), bytes(x)) for s, x, _ in leaves])
    assert tree.root == bytes(row[0])
    # a second outbox pass changes nothing and sends nothing
    before = c.port.get_block_number()
    assert outbox.step() == {}
    assert c.port.get_block_number() == before


def test_gap_meter_is_left_out_and_recorded(community):
    c = community
    first = c.first
    household = c.member("household")
    others = [m for m in c.members if m is not household]
    c.store_readings(first * L, (first + 1) * L, others)
    c.store_readings(first * L, first * L + 300, [household])  # stops mid-interval
    (built,) = c.batcher().build(first, first + 1)
    assert [m for m, _, _ in built.totals[0]] == sorted(m.index for m in others)
    assert built.gaps == {household.meter.device_id.hex(): {str(first): "gap"}}
    assert built.leaves == 2 * (L // 10 + 1) + 31  # its readings are still in the root
    _run(Outbox(c.conn, c.port, c.gateway_key, c.settlement))
    (settled,) = c.logs("Settled")
    assert settled["meters"] == 2


def test_an_import_only_meter_settles_with_export_zero(community):
    # A PZEM-004T has no export register: its readings carry no `ee` at all, and the
    # contract reads its signed readings as export 0.
    c = community
    first = c.first
    household = c.member("household")
    others = [m for m in c.members if m is not household]
    c.store_readings(first * L, (first + 1) * L, others)
    for t in range(first * L, (first + 1) * L + 1, 10):
        household.seq += 1
        ei, _ = household.counters(t, c.t0)
        c.store_signed(household, [household.meter.reading(household.seq, t=t, ei=ei, ee=None,
                                                           p=0)])
    (built,) = c.batcher().build(first, first + 1)
    assert built.gaps == {}
    want = c.expected_totals(first)[household.index][0]
    assert (household.index, want, 0) in built.totals[0]
    state = _run(Outbox(c.conn, c.port, c.gateway_key, c.settlement))
    assert set(state.values()) == {"confirmed"}


def test_late_readings_are_committed_by_a_later_root_and_provable(community):
    c = community
    first = c.first
    household = c.member("household")
    others = [m for m in c.members if m is not household]
    c.store_readings(first * L, (first + 2) * L, others)
    (built,) = c.batcher().build(first, first + 1)  # the household is offline
    assert set(built.gaps) == {household.meter.device_id.hex()}
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    _run(outbox)
    # its spool comes in: readings of an interval already submitted
    c.store_readings(first * L, (first + 2) * L, [household])
    late = c.conn.execute("SELECT min(id) FROM readings WHERE device = ?",
                          (household.meter.device_id,)).fetchone()[0]
    with pytest.raises(bundle.BundleError, match="under no root yet"):
        bundle.export_bundle(c.conn, late, c.port.chain_id)
    (later,) = c.batcher().build(first + 1, first + 2)
    assert later.gaps == {} and len(later.totals[0]) == 3
    _run(outbox)
    data = bundle.export_bundle(c.conn, late, c.port.chain_id)
    assert data["interval"] == first + 1  # the next submission's root
    report = bundle.verify_bundle(data, c.port)
    assert report.ok, bundle.format_report(report)
    assert "LATE" in bundle.format_report(report)
    # every stored reading is under exactly one root
    assert c.conn.execute("SELECT count(*) FROM readings").fetchone()[0] == \
        c.conn.execute("SELECT count(DISTINCT reading_id) FROM chain_leaves").fetchone()[0] \
        == c.conn.execute("SELECT count(*) FROM chain_leaves").fetchone()[0]


def test_many_meters_send_their_signed_readings_first(tmp_path):
    # 20 meters: 40 signed readings for the first batch, more than one transaction takes
    members = tuple((f"m{i}", 500 + 100 * i, 3000 if i % 4 == 0 else 0) for i in range(20))
    c = Community(tmp_path, members=members, past_intervals=12)
    try:
        first = c.first
        c.store_readings(first * L, (first + 4) * L)
        built = c.batcher().build_due(since=first)
        assert [(x.interval, x.part, x.intervals, x.anchors) for x in built] == [
            (first, -1, 0, 32), (first, 0, 4, 8)]
        state = _run(Outbox(c.conn, c.port, c.gateway_key, c.settlement))
        assert set(state.values()) == {"confirmed"}
        settled = c.logs("Settled")
        assert [e["interval"] for e in settled] == [first + k for k in range(4)]
        assert all(e["meters"] == 20 for e in settled)
        # the next hour: one signed reading per meter, still more than one transaction
        c.store_readings((first + 4) * L + 10, (first + 8) * L)
        built = c.batcher().build_due(since=first)
        assert [(x.part, x.anchors) for x in built] == [(0, 20)]
        _run(Outbox(c.conn, c.port, c.gateway_key, c.settlement))
        assert len(c.logs("Settled")) == 8
    finally:
        c.close()


def test_a_row_too_large_for_one_transaction_is_split(community):
    c = community
    first = c.first
    c.store_readings(first * L, (first + 4) * L)
    (built,) = c.batcher().build_due(since=first)
    assert built.intervals == 4
    # the outbox finds the estimate over the cap (here: told so) and splits the row
    calls = []

    def split(interval, part):
        calls.append((interval, part))
        return batcher.split_row(c.conn, c.settlement, interval, part, length=L)

    box = Outbox(c.conn, c.port, c.gateway_key, c.settlement, split=split)
    real = c.port.estimate_gas
    c.port.estimate_gas = lambda *a: contracts.TX_GAS_CAP if not calls else real(*a)
    try:
        assert box.step() == {first: "split"}
    finally:
        c.port.estimate_gas = real
    rows = c.conn.execute("SELECT interval, part, intervals, anchors, leaves FROM "
                          "chain_outbox ORDER BY interval").fetchall()
    assert [r[:4] for r in rows] == [(first, 0, 2, 6), (first + 2, 0, 2, 0)]
    assert sum(r[4] for r in rows) == built.leaves
    state = _run(box)
    assert set(state.values()) == {"confirmed"}
    assert [e["interval"] for e in c.logs("Settled")] == [first + k for k in range(4)]
    assert not batcher.split_row(c.conn, c.settlement, first, 0, length=L)  # not built


_CRASHING_CHILD = """
import os, sys
from gateway import store
from gateway.chain.outbox import Outbox
from gateway.chain import rpc
db, url, key, contract, event = sys.argv[1:6]
conn = store.open_store(db)
port = rpc.Web3Chain.connect(url, 31337)
def hook(ev, interval):
    if ev == event:
        os._exit(9)  # killed: no cleanup, no further SQL
Outbox(conn, port, bytes.fromhex(key), contract, hook=hook).step()
sys.exit(0)
"""


@pytest.mark.parametrize("crash_at", ["signed", "broadcast"])
def test_crash_between_signing_and_sending_submits_exactly_once(community, crash_at):
    c = community
    first = c.first
    c.store_readings(first * L, (first + 1) * L + 30)
    c.batcher().build(first, first + 1)
    child = subprocess.run(
        [sys.executable, "-c", _CRASHING_CHILD, str(c.db), c.node.url, c.gateway_key.hex(),
         c.settlement, crash_at], capture_output=True, text=True, timeout=60)
    assert child.returncode == 9, child.stderr
    row = c.conn.execute("SELECT state, tx_hash, nonce FROM chain_outbox").fetchone()
    assert row[0] == "signed"  # stored before sending; the crash came after
    mined_before = c.logs("Submitted")
    assert len(mined_before) == (1 if crash_at == "broadcast" else 0)
    # restart: the stored raw transaction is sent again (same hash), exactly one submission
    _run(Outbox(c.conn, c.port, c.gateway_key, c.settlement))
    final = c.conn.execute("SELECT state, tx_hash, nonce, outcome FROM chain_outbox").fetchone()
    assert final[:3] == ("confirmed", row[1], row[2]) and final[3] == "submitted"
    (event,) = c.logs("Submitted")
    assert event["first_interval"] == first
    assert len(c.logs("Settled")) == 1


def test_node_restarted_from_an_older_state_settles_each_interval_once(community, tmp_path):
    c = community
    first = c.first
    c.store_readings(first * L, (first + 4) * L + 30)
    b = c.batcher()
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    b.build(first, first + 1)
    _run(outbox)
    # the node writes its state and comes back: nothing is lost
    c.node.restart()
    outbox.port = c.view.port = c.port = type(c.port).connect(c.node.url, c.node.chain_id)
    state_file = c.node.state_path
    saved = tmp_path / "state-after-first.json"
    shutil.copy(state_file, saved)
    b.build(first + 1, first + 2)
    b.build(first + 2, first + 3)  # built ahead: from what the pending row will leave
    _run(outbox)
    assert len(c.logs("Settled")) == 3
    hashes = dict(c.conn.execute("SELECT interval, tx_hash FROM chain_outbox").fetchall())
    # power cut: the node loses the last two submissions (back to the saved state)
    os.kill(c.node.pid, 9)
    c.node._process.wait()
    c.node._process, c.node.port = None, None
    shutil.copy(saved, state_file)
    c.node.start()
    outbox.port = c.view.port = c.port = type(c.port).connect(c.node.url, c.node.chain_id)
    assert [e["first_interval"] for e in c.logs("Submitted")] == [first]
    # the outbox notices the missing receipts and re-sends the same transactions
    _run(outbox)
    b.build(first + 3, first + 4)
    _run(outbox)
    assert [e["first_interval"] for e in c.logs("Submitted")] == [first + k for k in range(4)]
    assert [e["interval"] for e in c.logs("Settled")] == [first + k for k in range(4)]
    assert counts(c.conn, c.settlement) == {"confirmed": 4}
    after = dict(c.conn.execute("SELECT interval, tx_hash FROM chain_outbox").fetchall())
    assert {k: after[k] for k in hashes} == hashes  # the same signed transactions
    assert c.conn.execute("SELECT count(*) FROM chain_tx_history").fetchone()[0] == 0


def test_lost_outbox_finds_its_submission_on_chain(community):
    # the outbox lost its rows (e.g. a restored backup) and builds the same intervals
    # again: the contract has them under the first root; nothing is sent
    c = community
    first = c.first
    c.store_readings(first * L, (first + 1) * L + 30)
    b = c.batcher()
    b.build(first, first + 1)
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    _run(outbox)
    c.conn.execute("DELETE FROM chain_leaves")
    c.conn.execute("DELETE FROM chain_outbox")
    b.build(first, first + 1)
    _run(outbox)
    row = c.conn.execute("SELECT state, outcome, nonce FROM chain_outbox").fetchone()
    assert row == ("confirmed", "superseded", None)
    assert len(c.logs("Submitted")) == 1


def test_store_migration_adds_chain_tables(tmp_path):
    conn = store.open_store(tmp_path / "g.sqlite3")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"chain_meters", "chain_outbox", "chain_leaves", "readings_t"} <= names
    columns = {r[1] for r in conn.execute("PRAGMA table_info(chain_outbox)")}
    assert {"part", "intervals", "anchors"} <= columns
    assert Path(tmp_path / "g.sqlite3").exists()


def test_a_schema_3_outbox_row_still_reads_after_the_migration(tmp_path):
    # a row of the one-interval format (packed: a list of words; gaps: device -> reason)
    # reads per interval after migration 4, for the status and community pages
    conn = sqlite3.connect(tmp_path / "g.sqlite3", isolation_level=None)
    for number in range(3):
        for statement in store.MIGRATIONS[number]:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    words = contracts.pack_totals([(1, 10, 0), (2, 0, 20)])
    conn.execute(
        "INSERT INTO chain_outbox (contract, interval, length, state, root, packed, meters, "
        "leaves, gaps, last_reading_id, built_at, updated_at) VALUES (?, 7, 900, "
        "'confirmed', ?, ?, 2, 5, ?, 9, 0, 0)",
        ("0x" + "ab" * 20, bytes(32), json.dumps([hex(w) for w in words]),
         json.dumps({"aa" * 8: "gap"})))
    conn.close()
    conn = store.open_store(tmp_path / "g.sqlite3")
    (row,) = batcher.outbox_intervals(conn, "0x" + "ab" * 20, 0, 100).items()
    assert row[0] == 7 and row[1]["entries"] == [(1, 10, 0), (2, 0, 20)]
    assert row[1]["gaps"] == {"aa" * 8: "gap"} and row[1]["state"] == "confirmed"


class _Stop(Exception):
    pass


def test_nonce_taken_by_another_transaction_is_signed_again(community):
    c = community
    first = c.first
    c.store_readings(first * L, (first + 1) * L + 30)
    c.batcher().build(first, first + 1)

    def stop_after_signing(event, interval):
        if event == "signed":
            raise _Stop

    with pytest.raises(_Stop):
        Outbox(c.conn, c.port, c.gateway_key, c.settlement, hook=stop_after_signing).step()
    state, nonce, old_hash = c.conn.execute(
        "SELECT state, nonce, tx_hash FROM chain_outbox").fetchone()
    assert state == "signed"
    # someone else with the gateway key (an operator's wallet) spends that nonce
    from gateway.chain import rpc
    receipt = rpc.send_transaction(c.port, c.gateway_key, c.gateway, b"", gas=21_000)
    assert c.port.get_nonce(c.gateway, "latest") == nonce + 1
    _run(Outbox(c.conn, c.port, c.gateway_key, c.settlement))
    state, new_nonce, new_hash, outcome = c.conn.execute(
        "SELECT state, nonce, tx_hash, outcome FROM chain_outbox").fetchone()
    assert (state, outcome, new_nonce) == ("confirmed", "submitted", nonce + 1)
    assert new_hash != old_hash and receipt.status == 1
    assert c.conn.execute("SELECT tx_hash FROM chain_tx_history").fetchall() == [(old_hash,)]
    assert len(c.logs("Submitted")) == 1


def test_refused_submission_fails_without_a_nonce_and_is_rebuilt_on_retry(community):
    c = community
    first = c.first
    household = c.member("household")
    batcher.set_meter_index(c.conn, household.meter.device_id, 99)  # not registered
    c.store_readings(first * L, (first + 1) * L + 30)
    b = c.batcher()
    b.build(first, first + 1)
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    assert outbox.step() == {first: "failed"}
    state, nonce, error = c.conn.execute("SELECT state, nonce, error FROM chain_outbox"
                                         ).fetchone()
    assert (state, nonce) == ("failed", None) and "registry: unknown meter" in error
    assert outbox.step() == {}  # failed stays failed
    assert b.due(first) is None  # and nothing is built past it
    # the mapping fixed, a retry drops the failed row: built again from the readings
    batcher.set_meter_index(c.conn, household.meter.device_id, household.index)
    assert retry(c.conn, c.settlement, first)
    assert c.conn.execute("SELECT count(*) FROM chain_leaves").fetchone()[0] == 0
    b.build(first, first + 1)
    _run(outbox)
    assert counts(c.conn, c.settlement) == {"confirmed": 1}
    assert not retry(c.conn, c.settlement, first)  # only failed rows
