"""Settlement: who may submit and settle, each interval once and in order, input checks,
key checks, storage slot of the roots (light-client proofs)."""

import hashlib

import boa
import pytest
from eth_utils import keccak
from vyper.compiler.output import build_layout_output

from contracts.allocation_reference import (
    KEY_COEFFICIENTS,
    KEY_NONE,
    KEY_PERCENT_REDISTRIBUTED,
    KEY_PRIORITY,
    KEY_PRORATA,
    KEY_STATIC,
    MAX_PRICE,
    pack_entries,
)
from contracts.boa_harness import deployer, event_tuples

ROOT = hashlib.sha256(b"salted merkle root").digest()
INCREASING = "settlement: meter indices must strictly increase"
NOT_OWNER = "settlement: caller does not own the producer meter"


def _data(c):
    return {c.resident_meter: (0, 1000), c.school_meter: (800, 0), c.neighbour_meter: (300, 0)}


def test_only_authorised_gateways_submit(trio):
    c = trio
    interval = c.next_interval()
    for outsider in (c.admin, c.resident, c.new_account("rogue")):
        with boa.reverts("registry: not a gateway"):
            c.submit(interval, _data(c), gateway=outsider)
    assert not c.settlement.settled(interval)
    c.submit(interval, _data(c))
    assert c.settlement.settled(interval)


def test_gateway_may_only_submit_its_own_active_meters(trio):
    c = trio
    other = c.new_account("other-gateway")
    with boa.env.prank(c.admin):
        c.registry.add_gateway(other)
        c.registry.set_meter_gateway(c.neighbour_meter, other)
    interval = c.next_interval()
    with boa.reverts("anchor: meter not bound to this gateway"):
        c.submit(interval, _data(c))  # includes the neighbour, now on `other`
    with boa.env.prank(c.admin):
        c.registry.revoke_meter(c.neighbour_meter)
    with boa.reverts("anchor: meter revoked"):
        c.submit(interval, {c.neighbour_meter: (1, 0)}, gateway=other)


def test_removed_gateway_cannot_submit(trio):
    c = trio
    spare = c.new_account("spare")
    with boa.env.prank(c.admin):
        c.registry.add_gateway(spare)
        for m in (c.resident_meter, c.school_meter, c.neighbour_meter):
            c.registry.set_meter_gateway(m, spare)
        c.registry.remove_gateway(c.gateways[0])
    interval = c.next_interval()
    with boa.reverts("registry: not a gateway"):
        c.submit(interval, {})
    c.submit(interval, _data(c), gateway=spare)
    assert c.settlement.settled(interval)


def test_interval_settles_once(trio):
    c = trio
    interval = c.next_interval()
    c.submit(interval, _data(c))
    balance = c.settlement.balance_of(c.resident)
    with boa.reverts("settlement: interval already submitted by this gateway"):
        c.submit(interval, _data(c), anchors=[])
    with boa.reverts("settlement: interval already submitted by this gateway"):
        c.submit(interval, _data(c))  # with freshly signed readings too
    boa.env.time_travel(seconds=10 * 3600)
    with boa.reverts("settlement: nothing submitted"):
        c.settlement.settle(interval)  # settled in the submission: nothing waits
    assert c.settlement.balance_of(c.resident) == balance
    assert c.settlement.cursor(c.gateways[0]) == interval + 1


def test_gateway_submits_once_per_interval(three_gateways):
    c = three_gateways
    interval = c.next_interval()
    c.submit(interval, {1: (10, 0)}, gateway=c.gateways[0])
    with boa.reverts("settlement: interval already submitted by this gateway"):
        c.submit(interval, {}, gateway=c.gateways[0], anchors=[])
    assert c.settlement.submission_count(interval) == 1


def test_only_finished_intervals_after_the_start_and_fresh_roots(trio):
    c = trio
    interval = c.next_interval()
    current = interval + 1  # it started now
    with boa.reverts("settlement: interval not over"):
        c.submit(current, _data(c))  # (its closing readings cannot exist yet either)
    with boa.reverts("settlement: interval not over"):
        c.submit(current, {}, anchors=[])
    with boa.reverts("settlement: interval not over"):
        c.submit(current + 5, {}, anchors=[])
    with boa.reverts("settlement: interval before the community started"):
        c.submit(c.settlement.start_interval() - 1, {}, anchors=[])
    with boa.reverts("settlement: interval before the community started"):
        c.submit(1, {}, anchors=[])  # 1970
    with boa.reverts("settlement: zero root"):
        c.submit(interval, _data(c), root=b"\x00" * 32)
    with boa.reverts("settlement: empty submission"):
        with boa.env.prank(c.gateways[0]):
            c.settlement.submit(interval, ROOT, [], [])
    c.submit(interval, _data(c), root=ROOT)
    assert c.settlement.settled(interval)
    later = c.next_interval()
    with boa.reverts("settlement: root already used"):
        c.submit(later, _data(c), root=ROOT)  # the root of another interval


@pytest.mark.parametrize(
    "words, reason",
    [
        ([(2 << 64) | 5, ], None),  # well-formed single entry
        ([((2 << 64) | 5) | (((1 << 64) | 5) << 80)], INCREASING),
        ([((1 << 64) | 5) | (((1 << 64) | 6) << 80)], INCREASING),
        ([5], INCREASING),  # meter index 0
        ([(1 << 64) | ((2 << 64) << 160)], "settlement: entry after padding"),
        ([(1 << 64), 0], "settlement: malformed packed word"),
        ([(1 << 64) | (1 << 250)], "settlement: malformed packed word"),
    ],
)
def test_packed_format_is_checked(trio, words, reason):
    c = trio
    interval = c.next_interval()
    anchors = c.window_anchors(interval, {2: (0, 5)})
    with boa.env.prank(c.gateways[0]):
        if reason is None:
            c.settlement.submit(interval, ROOT, anchors, [len(words), *words])
        else:
            with boa.reverts(reason):
                c.settlement.submit(interval, ROOT, anchors, [len(words), *words])


def test_at_most_max_meters_per_submission(trio):
    c = trio
    assert c.settlement.MAX_METERS() == 256
    entries = [(m << 64) | 1 for m in range(1, 258)]
    words = [sum(e << (80 * k) for k, e in enumerate(entries[i:i + 3]))
             for i in range(0, len(entries), 3)]
    assert len(words) == c.settlement.MAX_WORDS()
    interval = c.next_interval()
    with boa.env.prank(c.gateways[0]), boa.reverts("settlement: too many meters"):
        c.settlement.submit(interval, ROOT, [], [len(words), *words])


@pytest.mark.parametrize("intervals", [
    [87] + [1] * 87,  # more words than an interval can have
    [2, 1 << 64],  # fewer words than its header says
    [0] * 9,  # more intervals than a submission takes
])
def test_malformed_intervals_array(trio, intervals):
    c = trio
    interval = c.next_interval()
    with boa.env.prank(c.gateways[0]), boa.reverts("settlement: malformed intervals"):
        c.settlement.submit(interval, ROOT, [], intervals)


def test_roots_are_public_storage_for_light_client_proofs(trio):
    c = trio
    interval = c.next_interval()
    c.submit(interval, _data(c), root=ROOT)
    assert event_tuples(c.settlement, {"Submitted"}) == [
        ("Submitted", c.gateways[0], interval, 1, ROOT)]
    word = c.settlement.root_of(ROOT)
    assert word == int(c.gateways[0], 16) | (interval << 160) | (1 << 200)
    # vyper hashes the slot first: keccak(slot . root)
    layout = build_layout_output(deployer("Settlement").compiler_data)["storage_layout"]
    slot = layout["root_of"]["slot"]
    key = keccak(slot.to_bytes(32, "big") + ROOT)
    raw = boa.env.get_storage(c.settlement.address, int.from_bytes(key, "big"))
    assert raw == word


# ------------------------------------------------------------------ keys


def test_producer_key_is_set_by_the_producer_only(trio):
    c = trio
    args = (c.resident_meter, KEY_STATIC, [c.school_meter], [4000])
    for caller in (c.school, c.admin, c.gateways[0]):
        with boa.env.prank(caller), boa.reverts(NOT_OWNER):
            c.settlement.set_producer_key(*args)
    with boa.env.prank(c.resident):
        c.settlement.set_producer_key(*args)
        assert event_tuples(c.settlement) == [
            ("ProducerKeySet", c.resident_meter, c.resident, KEY_STATIC, [c.school_meter], [4000])]
    assert c.settlement.producer_key(c.resident_meter) == (KEY_STATIC, [c.school_meter], [4000])


def test_admin_only_settings(trio):
    c = trio
    calls = [
        (c.settlement.set_producer_coefficients, (c.resident_meter, [c.school_meter], [1])),
        (c.settlement.set_community_key, (KEY_PRIORITY, [c.school_meter], [0])),
        (c.settlement.set_price, (1,)),
    ]
    for fn, args in calls:
        for caller in (c.resident, c.gateways[0]):
            with boa.env.prank(caller), boa.reverts("settlement: caller is not the admin"):
                fn(*args)
        with boa.env.prank(c.admin):
            fn(*args)
    with boa.env.prank(c.admin):
        with boa.reverts("settlement: price too high"):
            c.settlement.set_price(MAX_PRICE + 1)
        c.settlement.set_price(MAX_PRICE)
        assert event_tuples(c.settlement) == [("PriceSet", MAX_PRICE)]
    assert c.settlement.p2p_price() == MAX_PRICE


@pytest.mark.parametrize(
    "kind, members, weights, reason",
    [
        (KEY_STATIC, "sn", [6000, 4001], "settlement: weights exceed 10000 basis points"),
        (KEY_PERCENT_REDISTRIBUTED, "s", [10001], "settlement: weights exceed 10000 basis points"),
        (KEY_COEFFICIENTS, "sn", [600_000, 400_001], "settlement: coefficients exceed 1e6 ppm"),
        (KEY_PRORATA, "s", [1], "settlement: PRORATA and PRIORITY take weight 0"),
        (KEY_PRIORITY, "s", [1], "settlement: PRORATA and PRIORITY take weight 0"),
        (KEY_STATIC, "ss", [1, 1], "settlement: duplicate member"),
        (KEY_STATIC, "r", [1], "settlement: a producer cannot be its own beneficiary"),
        (KEY_STATIC, "x", [1], "registry: unknown meter"),
        (KEY_STATIC, "0", [1], "settlement: meter index 0"),
        (KEY_NONE, "s", [0], "settlement: KEY_NONE takes no members"),
        (6, "s", [0], "settlement: unknown key kind"),
        (KEY_STATIC, "sn", [1], "settlement: members and weights differ in length"),
    ],
)
def test_producer_key_validation(trio, kind, members, weights, reason):
    c = trio
    meter = {"s": c.school_meter, "n": c.neighbour_meter, "r": c.resident_meter, "x": 99, "0": 0}
    with boa.env.prank(c.resident), boa.reverts(reason):
        c.settlement.set_producer_key(c.resident_meter, kind, [meter[m] for m in members], weights)


def test_at_most_max_beneficiaries(community):
    c = community
    owner = c.new_account("owner")
    meters = [c.register_meter(owner) for _ in range(10)]
    assert c.settlement.MAX_BENEFICIARIES() == 8
    with boa.env.prank(owner):
        c.settlement.set_producer_key(meters[0], KEY_PRIORITY, meters[1:9], [0] * 8)
        with pytest.raises(Exception):  # noqa: B017 - the ABI bound rejects a 9th entry
            c.settlement.set_producer_key(meters[0], KEY_PRIORITY, meters[1:10], [0] * 9)
    assert c.settlement.producer_key(meters[0]) == (KEY_PRIORITY, meters[1:9], [0] * 8)


def test_community_key_validation(trio):
    c = trio
    with boa.env.prank(c.admin):
        with boa.reverts("settlement: duplicate member"):
            c.settlement.set_community_key(KEY_PRIORITY, [c.school_meter, c.school_meter], [0, 0])
        with boa.reverts("settlement: weights exceed 10000 basis points"):
            c.settlement.set_community_key(KEY_STATIC, [c.school_meter, c.neighbour_meter],
                                           [5000, 5001])
        c.settlement.set_community_key(KEY_STATIC, [c.school_meter, c.neighbour_meter],
                                       [5000, 5000])
    assert c.settlement.community_key() == (
        KEY_STATIC, [c.school_meter, c.neighbour_meter], [5000, 5000])


# -------------------------------------------------------------- deployment


@pytest.mark.parametrize("length, delay, ok", [
    (900, 3600, True), (1800, 1800, True), (900, 48 * 900, True),
    (600, 3600, False), (3600, 3600, False), (900, 0, False), (900, 48 * 900 + 1, False),
])
def test_interval_length_and_delay_at_deploy(community, length, delay, ok):
    c = community
    args = (c.token.address, c.registry.address, c.anchors.address, length, delay, 1)
    if ok:
        s = deployer("Settlement").deploy(*args)
        now = boa.env.evm.patch.timestamp
        assert (s.interval_length(), s.settle_delay()) == (length, delay)
        # the first interval that starts at or after the deployment
        assert s.start_interval() == -(-now // length)
        assert s.deadline(7) == 8 * length + delay
    else:
        with boa.reverts():
            deployer("Settlement").deploy(*args)
