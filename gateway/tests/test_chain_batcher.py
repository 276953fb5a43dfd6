"""Batcher + outbox on a real anvil: per-interval totals and Merkle roots from stored
signed readings, submitted once each, settled with the allocations the reference model
predicts; crash between signing and sending; a chain node restarted from an old state."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chain_community import Community, L

from contracts import allocation_reference as ref
from gateway import store
from gateway.chain import batcher, contracts, deploy, merkle
from gateway.chain.outbox import Outbox, counts

STATIC_SCHOOL_BPS = 4000


@pytest.fixture
def community(tmp_path):
    c = Community(tmp_path)
    producer, school = c.member("producer"), c.member("school")
    deploy.set_producer_key(c.port, producer.owner_key, c.settlement, producer.index,
                            "static", [school.index], [STATIC_SCHOOL_BPS])
    yield c
    c.close()


def _run_outbox(outbox, intervals, rounds=50):
    for _ in range(rounds):
        outbox.step()
        state = dict(outbox.conn.execute(
            "SELECT interval, state FROM chain_outbox WHERE contract = ?",
            (outbox.contract,)).fetchall())
        if all(state.get(k) in ("confirmed", "failed") for k in intervals):
            return state
        time.sleep(0.05)
    raise AssertionError(f"outbox not done: {state}")


def test_pack_totals_matches_the_reference_packing():
    entries = [(1, 5, 0), (2, 0, 7), (7, 2**32 - 1, 3), (9, 1, 1), (300, 0, 0)]
    assert contracts.pack_totals(entries) == ref.pack_entries(entries)
    assert contracts.unpack_totals(contracts.pack_totals(entries)) == entries
    with pytest.raises(ValueError):
        contracts.pack_totals([(1, 2**32, 0)])
    with pytest.raises(ValueError):
        contracts.pack_totals([(0, 1, 1)])


def test_intervals_submitted_once_and_settled_as_the_readings_say(community):
    c = community
    first = c.first
    c.store_readings(first * L, (first + 3) * L)
    b = batcher.Batcher(c.conn, c.settlement, length=L, grace_s=60)
    built = b.build_due(since=first)
    # the interval holding the last boundary reading is built too, but it is a gap
    assert [x.interval for x in built] == [first, first + 1, first + 2, first + 3]
    assert built[-1].totals == [] and len(built[-1].gaps) == 3
    assert b.build_due(since=first) == []  # nothing twice

    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement, confirmations=2)
    wanted = [first, first + 1, first + 2]
    state = _run_outbox(outbox, wanted)
    assert all(state[k] == "confirmed" for k in wanted)
    # the last transaction has no block on top yet: 2 confirmations not reached
    assert state[first + 3] == "mined"
    outbox.step()
    assert counts(c.conn, c.settlement)["mined"] == 1
    c.port.request("evm_mine", [])
    assert outbox.step() == {first + 3: "confirmed"}

    submitted = c.logs("Submitted")
    assert sorted(e["interval"] for e in submitted) == wanted + [first + 3]
    settled = {e["interval"]: e for e in c.logs("Settled")}
    assert sorted(settled) == wanted + [first + 3]
    p2p = c.logs("P2PAllocation")
    pool = c.logs("PoolAllocation")
    producer, school = c.member("producer"), c.member("school")
    keys = {producer.index: ref.Key(ref.KEY_STATIC, (school.index,), (STATIC_SCHOOL_BPS,))}
    for k in wanted:
        row = c.conn.execute("SELECT root, packed, leaves FROM chain_outbox WHERE interval = ?",
                             (k,)).fetchone()
        event = next(e for e in submitted if e["interval"] == k)
        assert event["root"] == bytes(row[0]) and event["meters"] == 3
        assert event["gateway"].lower() == c.gateway.lower()
        expected = c.expected_totals(k)
        words = [int(w, 16) for w in json.loads(row[1])]
        assert {m: (i, e) for m, i, e in contracts.unpack_totals(words)} == expected
        assert settled[k]["import_wh"] == sum(i for i, _ in expected.values())
        assert settled[k]["export_wh"] == sum(e for _, e in expected.values())
        flows = ref.allocate(expected, keys)
        assert [(e["producer"], e["consumer"], e["wh"]) for e in p2p if e["interval"] == k] \
            == flows.p2p
        assert [(e["consumer"], e["wh"]) for e in pool if e["interval"] == k] \
            == flows.pool_allocations
        assert flows.p2p and flows.pool_allocations  # the scenario exercises both tiers
        # the root commits to exactly the readings of the interval, salted
        leaves = c.conn.execute(
            "SELECT l.salt, r.cose, r.t FROM chain_leaves l JOIN readings r "
            "ON r.id = l.reading_id WHERE l.interval = ? ORDER BY l.leaf_index", (k,)).fetchall()
        assert len(leaves) == row[2] == 3 * L // 10
        assert all(k * L <= t < (k + 1) * L for _, _, t in leaves)
        tree = merkle.MerkleTree.from_readings((bytes(s), bytes(x)) for s, x, _ in leaves)
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
    b = batcher.Batcher(c.conn, c.settlement, length=L, grace_s=60, max_gap=120)
    built = b.build(first)
    assert household.index not in [m for m, _, _ in built.totals]
    assert built.gaps == {household.meter.device_id.hex(): "gap"}
    assert built.leaves == 2 * (L // 10) + 31  # its readings are still in the root
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    _run_outbox(outbox, [first])
    (event,) = c.logs("Submitted")
    assert event["meters"] == 2


def test_an_import_only_meter_settles_with_export_zero(community):
    # A PZEM-004T has no export register: its readings carry no `ee` at all.
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
    built = batcher.Batcher(c.conn, c.settlement, length=L, grace_s=60).build(first)
    assert built.gaps == {}
    want = c.expected_totals(first)[household.index][0]
    assert (household.index, want, 0) in built.totals


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
    b = batcher.Batcher(c.conn, c.settlement, length=L, grace_s=60)
    b.build(first)
    child = subprocess.run(
        [sys.executable, "-c", _CRASHING_CHILD, str(c.db), c.node.url, c.gateway_key.hex(),
         c.settlement, crash_at], capture_output=True, text=True, timeout=60)
    assert child.returncode == 9, child.stderr
    row = c.conn.execute("SELECT state, tx_hash, nonce FROM chain_outbox").fetchone()
    assert row[0] == "signed"  # stored before sending; the crash came after
    mined_before = c.logs("Submitted")
    assert len(mined_before) == (1 if crash_at == "broadcast" else 0)
    # restart: the stored raw transaction is sent again (same hash), exactly one submission
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    _run_outbox(outbox, [first])
    final = c.conn.execute("SELECT state, tx_hash, nonce, outcome FROM chain_outbox").fetchone()
    assert final[:3] == ("confirmed", row[1], row[2]) and final[3] == "submitted"
    (event,) = c.logs("Submitted")
    assert event["interval"] == first
    assert len(c.logs("Settled")) == 1


def test_node_restarted_from_an_older_state_settles_each_interval_once(community, tmp_path):
    c = community
    first = c.first
    c.store_readings(first * L, (first + 3) * L + 30)
    b = batcher.Batcher(c.conn, c.settlement, length=L, grace_s=60)
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    b.build(first)
    _run_outbox(outbox, [first])
    # the node dumps its state (SIGTERM) and comes back: nothing is lost
    c.node.restart()
    c.port = type(c.port).connect(c.node.url, c.node.chain_id)
    outbox.port = c.port
    state_file = c.node.state_path
    saved = tmp_path / "state-after-first.json"
    shutil.copy(state_file, saved)
    b.build(first + 1)
    b.build(first + 2)
    _run_outbox(outbox, [first + 1, first + 2])
    assert len(c.logs("Settled")) == 3
    hashes = dict(c.conn.execute("SELECT interval, tx_hash FROM chain_outbox").fetchall())
    # power cut: the node loses the last two submissions (back to the saved state)
    os.kill(c.node.pid, 9)
    c.node._process.wait()
    c.node._process, c.node.port = None, None
    shutil.copy(saved, state_file)
    c.node.start()
    c.port = type(c.port).connect(c.node.url, c.node.chain_id)
    outbox.port = c.port
    assert [e["interval"] for e in c.logs("Submitted")] == [first]
    # the outbox notices the missing receipts and re-sends the same transactions
    b.build(first + 3)
    _run_outbox(outbox, [first + 1, first + 2, first + 3])
    for _ in range(3):
        outbox.step()
    assert sorted(e["interval"] for e in c.logs("Submitted")) == [first, first + 1, first + 2,
                                                                  first + 3]
    assert sorted(e["interval"] for e in c.logs("Settled")) == [first, first + 1, first + 2,
                                                                first + 3]
    assert counts(c.conn, c.settlement) == {"confirmed": 4}
    after = dict(c.conn.execute("SELECT interval, tx_hash FROM chain_outbox").fetchall())
    assert {k: after[k] for k in hashes} == hashes  # the same signed transactions
    assert c.conn.execute("SELECT count(*) FROM chain_tx_history").fetchone()[0] == 0


def test_already_submitted_interval_counts_as_done(community):
    # the outbox lost its row (e.g. a restored backup): the contract's refusal is success
    c = community
    first = c.first
    c.store_readings(first * L, (first + 1) * L + 30)
    b = batcher.Batcher(c.conn, c.settlement, length=L, grace_s=60)
    b.build(first)
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    _run_outbox(outbox, [first])
    c.conn.execute("DELETE FROM chain_leaves")
    c.conn.execute("DELETE FROM chain_outbox")
    b.build(first)
    _run_outbox(outbox, [first])
    row = c.conn.execute("SELECT state, outcome, nonce FROM chain_outbox").fetchone()
    assert row == ("confirmed", "already_submitted", None)
    assert len(c.logs("Submitted")) == 1


def test_store_migration_adds_chain_tables(tmp_path):
    conn = store.open_store(tmp_path / "g.sqlite3")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"chain_meters", "chain_outbox", "chain_leaves", "readings_t"} <= names
    assert Path(tmp_path / "g.sqlite3").exists()


class _Stop(Exception):
    pass


def test_nonce_taken_by_another_transaction_is_signed_again(community):
    c = community
    first = c.first
    c.store_readings(first * L, (first + 1) * L + 30)
    batcher.Batcher(c.conn, c.settlement, length=L, grace_s=60).build(first)

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
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    _run_outbox(outbox, [first])
    state, new_nonce, new_hash, outcome = c.conn.execute(
        "SELECT state, nonce, tx_hash, outcome FROM chain_outbox").fetchone()
    assert (state, outcome, new_nonce) == ("confirmed", "submitted", nonce + 1)
    assert new_hash != old_hash and receipt.status == 1
    assert c.conn.execute("SELECT tx_hash FROM chain_tx_history").fetchall() == [(old_hash,)]
    assert len(c.logs("Submitted")) == 1


def test_refused_submission_fails_without_a_nonce_and_can_be_retried(community):
    c = community
    first = c.first
    household = c.member("household")
    batcher.set_meter_index(c.conn, household.meter.device_id, 99)  # not on this gateway
    c.store_readings(first * L, (first + 1) * L + 30)
    b = batcher.Batcher(c.conn, c.settlement, length=L, grace_s=60)
    b.build(first)
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    assert outbox.step() == {first: "failed"}
    state, nonce, error = c.conn.execute("SELECT state, nonce, error FROM chain_outbox"
                                         ).fetchone()
    assert (state, nonce) == ("failed", None) and "not active on this gateway" in error
    assert outbox.step() == {}  # failed stays failed
    from gateway.chain.outbox import retry
    assert retry(c.conn, c.settlement, first)  # same data: refused again, still no nonce
    assert outbox.step() == {first: "failed"}
    # a mapping error needs the interval rebuilt: drop the row, fix the mapping, build
    c.conn.execute("DELETE FROM chain_leaves")
    c.conn.execute("DELETE FROM chain_outbox")
    batcher.set_meter_index(c.conn, household.meter.device_id, household.index)
    b.build(first)
    _run_outbox(outbox, [first])
    assert counts(c.conn, c.settlement) == {"confirmed": 1}
    assert not retry(c.conn, c.settlement, first)  # only failed rows
