"""Several gateways per community: wait for all, or settle after the deadline."""

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
SETTLEMENT_EVENTS = {"P2PAllocation", "PoolAllocation", "PoolContribution", "GridImport",
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
        assert c.settlement.submission_count(interval) == n + 1
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
    with boa.reverts("settlement: deadline not reached"):
        c.settlement.settle(interval)
    boa.env.time_travel(seconds=1)
    expected = _expected(c, interval, [0, 2], by_deadline=True)
    with boa.env.prank(c.new_account("anyone")):
        c.settlement.settle(interval)
    assert event_tuples(c.settlement, SETTLEMENT_EVENTS) == expected
    assert expected[-1][-1] is True  # Settled(..., by_deadline=True)
    # the late gateway is out of this interval for good
    with boa.reverts("settlement: interval already settled"):
        c.submit(interval, READINGS[1], gateway=c.gateways[1])


def test_nothing_to_settle_without_submissions(keyed):
    c = keyed
    interval = c.next_interval()
    boa.env.time_travel(seconds=SETTLE_DELAY + 1)
    with boa.reverts("settlement: nothing submitted"):
        c.settlement.settle(interval)


def test_meter_moved_mid_interval_counts_once(three_gateways):
    c = three_gateways
    interval = c.next_interval()
    c.submit(interval, {1: (0, 500), 2: (100, 0)}, gateway=c.gateways[0])
    with boa.env.prank(c.admin):
        c.registry.set_meter_gateway(1, c.gateways[1])
    c.submit(interval, {1: (0, 999), 5: (300, 0)}, gateway=c.gateways[1])
    c.submit(interval, {8: (50, 0)}, gateway=c.gateways[2])
    events = event_tuples(c.settlement)
    assert ("DuplicateMeterDropped", interval, 1) in events
    settled = [e for e in events if e[0] == "Settled"]
    assert settled == [("Settled", interval, 4, 450, 500, 450, 450 * PRICE, False)]


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
    c.submit(interval, READINGS[0], gateway=c.gateways[0])
    with boa.reverts("settlement: staging slot busy"):
        c.submit(interval - c.settlement.STAGING_RING(), READINGS[1], gateway=c.gateways[1])


def test_single_gateway_community_settles_in_the_submission(trio):
    c = trio
    interval = c.next_interval()
    c.submit(interval, {c.school_meter: (5, 0)})
    assert c.settlement.settled(interval)
    assert c.settlement.submission_count(interval) == 1


def test_at_most_max_meters_per_interval_across_gateways(three_gateways):
    c = three_gateways
    owner = c.new_account("owner")
    while c.registry.active_meter_count() < c.registry.MAX_METERS():
        c.register_meter(owner, c.gateways[0])
    on_first = [m for m, g in c.gateway_of.items() if g == c.gateways[0]]
    assert len(on_first) == 250
    interval = c.next_interval()
    c.submit(interval, {m: (1, 0) for m in on_first}, gateway=c.gateways[0])
    # two of those meters are replaced by meters read by the third gateway
    with boa.env.prank(c.admin):
        c.registry.revoke_meter(on_first[-1])
        c.registry.revoke_meter(on_first[-2])
    extra = [c.register_meter(owner, c.gateways[2]) for _ in range(2)]
    c.submit(interval, {4: (1, 0), 5: (1, 0), 6: (1, 0)}, gateway=c.gateways[1])
    with boa.reverts("settlement: too many meters in this interval"):
        c.submit(interval, {m: (1, 0) for m in [7, 8, 9, *extra]}, gateway=c.gateways[2])
    # the interval still settles at the deadline, without the third gateway
    boa.env.time_travel(seconds=SETTLE_DELAY)
    c.settlement.settle(interval)
    assert c.settlement.settled(interval)
