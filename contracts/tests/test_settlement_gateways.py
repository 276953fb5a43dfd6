"""Several gateways per community: wait for all, or settle after the deadline (counted
from the first submission of a late interval too); a late gateway still settles its own
meters; a meter is settled by the gateway it was bound to during the interval."""

import boa
import pytest

from contracts import allocation_reference as ref
from contracts.allocation_reference import KEY_PRIORITY, KEY_STATIC, Key
from contracts.boa_harness import PRICE, SETTLE_DELAY, event_tuples

# meters 1-3 on gateway 0, 4-6 on gateway 1, 7-9 on gateway 2 (fixture three_gateways)
READINGS = {
    0: {1: (0, 900), 2: (250, 0), 3: (400, 10)},
    1: {4: (0, 1200), 5: (700, 0), 6: (30, 0)},
    2: {7: (0, 0), 8: (1500, 0), 9: (0, 333)},
}
KEYS = {
    1: Key(KEY_STATIC, (8, 2), (5000, 2500)),  # across gateways: 1 is on gw0, 8 on gw2
    4: Key(KEY_PRIORITY, (6, 5, 3), (0, 0, 0)),
}
SETTLEMENT_EVENTS = {"P2PAllocation", "SelfSupply", "PoolAllocation", "PoolContribution", "GridImport",
                     "GridExport", "UnpaidAllocation", "ReceivableRecorded", "Settled"}


def _expected(c, interval, gateways, by_deadline=False):
    meters = {m: v for g in gateways for m, v in READINGS[g].items()}
    ledger = ref.Ledger(balance={a: c.settlement.balance_of(a) for a in set(c.owners.values())})
    return ref.settle(interval, meters, c.owners, KEYS, ref.DEFAULT_COMMUNITY_KEY, PRICE, ledger,
                      by_deadline)


@pytest.fixture
def keyed(three_gateways):
    c = three_gateways
    for producer, key in KEYS.items():
        c.set_producer_key(producer, key)
    return c


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_settles_when_the_last_gateway_submits(keyed, order):
    c = keyed
    interval = c.next_interval()
    expected = _expected(c, interval, [0, 1, 2])
    for n, g in enumerate(order):
        assert not c.settlement.settled(interval)
        c.submit(interval, READINGS[g], gateway=c.gateways[g])
        events = event_tuples(c.settlement, SETTLEMENT_EVENTS)
        if n < 2:
            assert c.settlement.submission_count(interval) == n + 1
            assert events == []  # staged, waiting for the others
    assert c.settlement.settled(interval)
    # same flows, in the same order, whatever the submission order
    assert events == expected
    assert ("P2PAllocation", interval, 1, 8, 450, 450 * PRICE) in expected


def test_deadline_settlement_with_a_missing_gateway(keyed):
    c = keyed
    interval = c.next_interval()
    c.submit(interval, READINGS[0], gateway=c.gateways[0])
    c.submit(interval, READINGS[2], gateway=c.gateways[2])
    deadline = c.settlement.deadline(interval)
    assert deadline == (interval + 1) * 900 + SETTLE_DELAY
    boa.env.time_travel(seconds=deadline - boa.env.evm.patch.timestamp - 1)
    anyone = c.new_account("anyone")
    with boa.env.prank(anyone), boa.reverts("settlement: deadline not reached"):
        c.settlement.settle(interval)  # early settle() by a third party
    boa.env.time_travel(seconds=1)
    expected = _expected(c, interval, [0, 2], by_deadline=True)
    with boa.env.prank(anyone):
        c.settlement.settle(interval)
    assert event_tuples(c.settlement, SETTLEMENT_EVENTS) == expected
    assert expected[-1][-1] is True  # Settled(..., by_deadline=True)
    # the late gateway's backfill still settles: its meters among themselves
    late = _expected(c, interval, [1], by_deadline=True)
    c.submit(interval, READINGS[1], gateway=c.gateways[1])
    assert event_tuples(c.settlement, SETTLEMENT_EVENTS) == late
    assert ("P2PAllocation", interval, 4, 6, 30, 30 * PRICE) in late


def test_deadline_counts_from_a_late_first_submission(keyed):
    # gateway 1 comes back after a long outage and backfills an old interval: the
    # others get the full delay from then, not from the interval's end
    c = keyed
    interval = c.next_interval()
    boa.env.time_travel(seconds=5 * 3600)
    c.submit(interval, READINGS[1], gateway=c.gateways[1])
    first = boa.env.evm.patch.timestamp
    assert c.settlement.deadline(interval) == first + SETTLE_DELAY
    boa.env.time_travel(seconds=SETTLE_DELAY - 1)
    with boa.reverts("settlement: deadline not reached"):
        c.settlement.settle(interval)
    # the other two backfill in time: settled with everyone, not by the deadline
    c.submit(interval, READINGS[0], gateway=c.gateways[0])
    c.submit(interval, READINGS[2], gateway=c.gateways[2])
    settled = [e for e in event_tuples(c.settlement) if e[0] == "Settled"]
    assert len(settled) == 1 and settled[0][-1] is False and settled[0][2] == 9


def test_passing_gateways_make_an_interval_final(keyed):
    # a gateway with nothing to say for an interval moves past it with a later one;
    # once every gateway has passed, anyone may settle at once
    c = keyed
    interval = c.next_interval()
    c.submit(interval, READINGS[0], gateway=c.gateways[0])
    c.submit(interval, READINGS[1], gateway=c.gateways[1])
    later = c.next_interval()
    with boa.reverts("settlement: deadline not reached"):
        c.settlement.settle(interval)
    c.submit(later, READINGS[2], gateway=c.gateways[2])  # skips `interval`
    assert c.settlement.cursor(c.gateways[2]) == later + 1
    assert not c.settlement.settled(interval)
    c.settlement.settle(interval)
    settled = [e for e in event_tuples(c.settlement) if e[0] == "Settled"]
    assert settled[0][1:3] == (interval, 6) and settled[0][-1] is False


def test_nothing_to_settle_without_submissions(keyed):
    c = keyed
    interval = c.next_interval()
    boa.env.time_travel(seconds=SETTLE_DELAY + 1)
    with boa.reverts("settlement: nothing submitted"):
        c.settlement.settle(interval)


def test_meter_is_settled_by_the_gateway_bound_during_the_interval(three_gateways):
    c = three_gateways
    before = c.next_interval()  # meter 1 is on gateway 0
    boa.env.time_travel(seconds=100)  # into the next interval
    with boa.env.prank(c.admin):
        c.registry.set_meter_gateway(1, c.gateways[1])
    # gateway 1 cannot take the interval before the move, not even signed
    with boa.reverts("anchor: meter not bound to this gateway"):
        c.submit(before, {1: (0, 500)}, gateway=c.gateways[1])
    # gateway 0 still settles it after the move (its backlog)
    c.submit(before, {1: (0, 500), 2: (100, 0)}, gateway=c.gateways[0])
    after = c.next_interval()
    with boa.reverts("anchor: meter not bound to this gateway"):
        c.submit(after, {1: (0, 700)}, gateway=c.gateways[0])
    c.submit(after, {1: (0, 700), 5: (300, 0)}, gateway=c.gateways[1])
    # nor can gateway 0 take a share of the window gateway 1 opened for meter 1
    c.submit(after, {2: (10, 0)}, gateway=c.gateways[0])
    assert c.anchor_state(1)[4] == 0  # gateway 1 settled its window in full
    nxt = c.next_interval()
    c.travel_to((nxt + 2) * 900)  # a two-interval window for meter 1
    c.submit(nxt, {1: (0, 70), 5: (30, 0)}, gateway=c.gateways[1], anchors=[
        c.anchor(1, nxt, restart=True), c.anchor(1, nxt + 2, 0, 140),
        *c.window_anchors(nxt, {5: (30, 0)})])
    with boa.reverts("settlement: meter not bound to this gateway"):
        c.submit(nxt + 1, {1: (0, 70)}, gateway=c.gateways[0], anchors=[])


def test_staging_ring_settles_an_expired_interval_on_reuse(keyed):
    c = keyed
    old = c.next_interval()
    c.submit(old, READINGS[0], gateway=c.gateways[0])  # staged, waits for 1 and 2
    ring = c.settlement.STAGING_RING()
    boa.env.time_travel(seconds=ring * 900)
    new = old + ring  # same ring slot, long past the old deadline
    expected_old = _expected(c, old, [0], by_deadline=True)
    c.submit(new, READINGS[1], gateway=c.gateways[1])
    assert event_tuples(c.settlement, SETTLEMENT_EVENTS) == expected_old
    assert c.settlement.settled(old)
    assert not c.settlement.settled(new)
    c.submit(new, READINGS[0], gateway=c.gateways[0])
    c.submit(new, READINGS[2], gateway=c.gateways[2])
    assert c.settlement.settled(new)


def test_staging_slot_busy_for_a_backlog_interval(keyed):
    c = keyed
    interval = c.next_interval()
    ring = c.settlement.STAGING_RING()
    boa.env.time_travel(seconds=ring * 900)
    c.submit(interval, READINGS[0], gateway=c.gateways[0])  # late: its deadline runs
    with boa.reverts("settlement: staging slot busy"):
        c.submit(interval + ring, READINGS[0], gateway=c.gateways[0])


def test_single_gateway_community_settles_in_the_submission(trio):
    c = trio
    interval = c.next_interval()
    c.submit(interval, {c.school_meter: (5, 0)})
    assert c.settlement.settled(interval)
    assert c.settlement.submission_count(interval) == 0  # nothing staged


def test_meter_registered_during_an_interval_is_not_in_it(three_gateways):
    c = three_gateways
    interval = c.next_interval()
    boa.env.time_travel(seconds=-600)  # back inside the interval
    late = c.register_meter(c.new_account("late"), c.gateways[2])
    boa.env.time_travel(seconds=600)
    with boa.reverts("anchor: before the meter's registration"):
        c.submit(interval, {late: (1, 0)}, gateway=c.gateways[2])
    c.submit(c.next_interval(), {late: (1, 0)}, gateway=c.gateways[2])
