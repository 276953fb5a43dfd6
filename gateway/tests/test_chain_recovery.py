"""The outbox against a chain node that dies and forgets, on a real anvil: SIGKILLs of the
node at chosen points of the outbox's work (restart from the state file), a node that
comes back at an older state (a restored snapshot: more than a SIGKILL can lose), a nonce
hole left by a forgotten transaction, and a randomized bounded mix of all of them.

Invariants checked: a confirmed settlement survives a SIGKILL of the node (the outbox
has the state written before it counts one as confirmed); in the end every interval is
confirmed and on chain exactly once (one ``Submitted`` and one ``Settled`` event), and
:func:`outbox.agreement` says the outbox and the chain agree.
"""

import random
import shutil
from collections import Counter

import pytest
from chain_community import Community, L

from gateway.chain import rpc
from gateway.chain.errors import RpcError
from gateway.chain.outbox import Outbox, agreement, counts


class _Kill(Exception):
    pass


def _community(tmp_path, intervals):
    c = Community(tmp_path, past_intervals=intervals + 2)
    c.node.checkpoint()  # as `chain deploy` leaves it: the deployment in the state file
    c.store_readings(c.first * L, (c.first + intervals) * L)
    return c


def _outbox(c, hook=None):
    return Outbox(c.conn, c.port, c.gateway_key, c.settlement, durable=c.node.ensure_checkpoint,
                  hook=hook)


def _agreement(c):
    return agreement(c.conn, c.port, c.settlement, c.gateway,
                     from_block=c.deployment.block_number)


def _drive(c, box, intervals, rounds=80):
    """Step until every interval is confirmed; restart the node when it is down."""
    for _ in range(rounds):
        try:
            box.step()
        except RpcError:
            box.port = c.restart_node()
            continue
        state = dict(c.conn.execute("SELECT interval, state FROM chain_outbox").fetchall())
        if all(state.get(k) == "confirmed" for k in intervals):
            return
    raise AssertionError(f"outbox not done: {counts(c.conn, c.settlement)}")


def _settled_once_each(c, intervals):
    submitted = Counter(e["first_interval"] for e in c.logs("Submitted"))
    settled = Counter(e["interval"] for e in c.logs("Settled"))
    assert submitted == Counter(intervals), submitted
    assert settled == Counter(intervals), settled
    assert counts(c.conn, c.settlement) == {"confirmed": len(intervals)}
    a = _agreement(c)
    assert a["agree"] and a["confirmed"] == len(intervals), a


def _snapshot(c, path):
    c.node.checkpoint()
    shutil.copy(c.node.state_path, path)


def _restore(c, path):
    """The node comes back at an older state than it had (a lost disk write, a restored
    backup): more than a SIGKILL of the node can lose."""
    if c.node.running():
        c.kill_node()
    shutil.copy(path, c.node.state_path)
    return c.restart_node()


def test_already_submitted_is_submitted_again_when_the_node_forgets_it(tmp_path):
    # The outbox lost the transaction of a row (restored from a copy taken before it was
    # sent): the contract refuses the interval as already submitted. The reported bug:
    # such a row was finished with no block, the audit skipped it, and when the node then
    # forgot the submission it was never sent again.
    c = _community(tmp_path, 2)
    first = c.first
    try:
        _snapshot(c, tmp_path / "deployed.json")
        b = c.batcher()
        b.build(first, first + 1)
        box = _outbox(c)
        _drive(c, box, [first])
        c.conn.execute("UPDATE chain_outbox SET state = 'built', nonce = NULL, raw_tx = NULL, "
                       "tx_hash = NULL, block_number = NULL, block_hash = NULL")
        _drive(c, box, [first])
        outcome, nonce, number, block_hash = c.conn.execute(
            "SELECT outcome, nonce, block_number, block_hash FROM chain_outbox").fetchone()
        # found on chain at a block the outbox names, not on the refusal's word
        assert (outcome, nonce) == ("already_submitted", None)
        header = c.port.get_block_header(number)
        assert bytes.fromhex(header["hash"][2:]) == bytes(block_hash)

        box.port = c.view.port = _restore(c, tmp_path / "deployed.json")
        assert c.logs("Submitted") == []
        b.build(first + 1, first + 2)
        _drive(c, box, [first, first + 1])
        _settled_once_each(c, [first, first + 1])
        assert c.conn.execute("SELECT outcome FROM chain_outbox WHERE interval = ?",
                              (first,)).fetchone()[0] == "submitted"
    finally:
        c.close()


def test_nonce_hole_left_by_a_forgotten_transaction_is_filled(tmp_path, caplog):
    # Interval A's nonce is taken by another transaction of the gateway key, so A is
    # signed again with the next nonce. Then the node forgets both: the other transaction
    # is gone for good, and A's nonce waits behind a hole no row of the outbox holds.
    c = _community(tmp_path, 3)
    first = c.first
    try:
        _snapshot(c, tmp_path / "deployed.json")
        hole = c.port.get_nonce(c.gateway, "latest")
        b = c.batcher()
        b.build(first, first + 1)

        def stop_after_signing(event, interval):
            if event == "signed":
                raise _Kill

        with pytest.raises(_Kill):
            _outbox(c, hook=stop_after_signing).step()
        rpc.send_transaction(c.port, c.gateway_key, c.gateway, b"", gas=21_000)  # the other
        box = _outbox(c)
        _drive(c, box, [first])
        assert c.conn.execute("SELECT nonce FROM chain_outbox").fetchone()[0] == hole + 1
        assert c.conn.execute("SELECT nonce FROM chain_tx_history").fetchall() == [(hole,)]

        box.port = c.view.port = _restore(c, tmp_path / "deployed.json")
        assert c.port.get_nonce(c.gateway, "latest") == hole
        b.build(first + 1, first + 2)
        b.build(first + 2, first + 3)
        _drive(c, box, [first, first + 1, first + 2])
        _settled_once_each(c, [first, first + 1, first + 2])
        # A kept its signed transaction; the rows hold hole+1..hole+3, so the hole was
        # filled by an empty transaction of the outbox
        assert sorted(n for (n,) in c.conn.execute("SELECT nonce FROM chain_outbox")) == [
            hole + 1, hole + 2, hole + 3]
        assert c.port.get_nonce(c.gateway, "latest") == hole + 4
        assert "nonce hole filled with an empty transaction" in caplog.text
    finally:
        c.close()


def test_sigkills_of_the_node_at_chosen_points_lose_no_confirmed_settlement(tmp_path):
    # one kill at each point of a submission's life: its raw transaction stored but not
    # sent, sent but not recorded as sent, sent, confirmed; each time the node restarts
    # from its state file and the outbox carries on
    c = _community(tmp_path, 4)
    first = c.first
    plan = [("signed", first), ("broadcast", first + 1), ("sent", first + 2),
            ("confirmed", first + 1)]
    try:
        b = c.batcher()
        wanted = [x.interval for k in range(first, first + 4) for x in b.build(k, k + 1)]
        assert wanted == [first, first + 1, first + 2, first + 3]
        done = []

        def kill(event, interval):
            if len(done) < len(plan) and (event, interval) == plan[len(done)]:
                done.append((event, interval))
                c.kill_node()

        box = _outbox(c, hook=kill)
        for _ in range(40):
            try:
                box.step()
            except RpcError:  # the step ran into the dead node
                confirmed = {k for (k,) in c.conn.execute(
                    "SELECT interval FROM chain_outbox WHERE state = 'confirmed'")}
                box.port = c.restart_node()
                # what the outbox counted as confirmed is on chain at once, unsent again
                on_chain = {e["first_interval"] for e in c.logs("Submitted")}
                assert confirmed <= on_chain, (done[-1], confirmed, on_chain)
                assert _agreement(c)["missing_on_chain"] == []
            if len(done) == len(plan) and counts(c.conn, c.settlement) == {"confirmed": 4}:
                break
        assert done == plan
        _settled_once_each(c, wanted)
    finally:
        c.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11])
def test_random_sigkills_and_a_forgetful_node_settle_every_interval_once(tmp_path, seed):
    """Bounded: 6 intervals built two at a time; at each outbox event a 15 % chance to
    SIGKILL the node, at most 6 times; a third of the restarts restore an older
    snapshot instead of the node's own state file."""
    rnd = random.Random(seed)
    intervals = 6
    c = _community(tmp_path, intervals)
    first = c.first
    b = c.batcher()
    tally = Counter()
    snapshots = []
    try:
        _snapshot(c, tmp_path / "snap-0.json")
        snapshots.append(tmp_path / "snap-0.json")

        def maybe_kill(event, interval):
            tally["events"] += 1
            if c.node.running() and tally["kills"] < 6 and rnd.random() < 0.15:
                tally["kills"] += 1
                c.kill_node()

        box = _outbox(c, hook=maybe_kill)
        built = []
        for k in range(first, first + intervals, 2):
            built += [x.interval for x in b.build(k, k + 1) + b.build(k + 1, k + 2)]
            for _ in range(6):
                try:
                    box.step()
                except RpcError:
                    confirmed = {k for (k,) in c.conn.execute(
                        "SELECT interval FROM chain_outbox WHERE state = 'confirmed'")}
                    if snapshots and rnd.random() < 1 / 3:
                        tally["restores"] += 1
                        box.port = _restore(c, rnd.choice(snapshots))
                    else:
                        box.port = c.restart_node()
                        # a SIGKILL loses nothing the outbox counted as confirmed
                        on_chain = {e["first_interval"] for e in c.logs("Submitted")}
                        assert confirmed <= on_chain, (seed, confirmed, on_chain)
            if rnd.random() < 0.5:
                path = tmp_path / f"snap-{len(snapshots)}.json"
                _snapshot(c, path)
                snapshots.append(path)
        box._hook = lambda event, interval: None
        _drive(c, box, built)
        _settled_once_each(c, built)
        tally["resigned"] = c.conn.execute("SELECT count(*) FROM chain_tx_history").fetchone()[0]
        print(f"seed {seed}: {dict(tally)}")
        assert tally["kills"] >= 2  # the seed exercises what it claims
    finally:
        c.close()
