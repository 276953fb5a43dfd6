"""Settlement invariants as hypothesis properties over random communities (up to the
256-meter, 8-beneficiary limits), checked on the contract and against the pure-Python
reference, event for event."""

import random
from collections import defaultdict

import boa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts import allocation_reference as ref
from contracts.allocation_reference import (
    BPS,
    KEY_COEFFICIENTS,
    KEY_NONE,
    KEY_PERCENT_REDISTRIBUTED,
    KEY_PRIORITY,
    KEY_PRORATA,
    KEY_STATIC,
    MAX_BENEFICIARIES,
    MAX_PRICE,
    MAX_WH,
    PPM,
    Key,
)
from contracts.boa_harness import PRICE, event_tuples

N_METERS = 256
SETTLEMENT_EVENTS = {"P2PAllocation", "SelfSupply", "PoolAllocation", "PoolContribution", "GridImport",
                     "GridExport", "UnpaidAllocation", "ReceivableRecorded", "Settled"}
KINDS = [KEY_NONE, KEY_STATIC, KEY_PRORATA, KEY_PERCENT_REDISTRIBUTED, KEY_PRIORITY,
         KEY_COEFFICIENTS]

wh = st.one_of(st.just(0), st.integers(1, 4000), st.integers(0, MAX_WH))


@st.composite
def weights_for(draw, kind, n):
    if kind in (KEY_PRORATA, KEY_PRIORITY, KEY_NONE):
        return [0] * n
    cap = PPM if kind == KEY_COEFFICIENTS else BPS
    total = draw(st.integers(0, cap))
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=n, max_size=n)))
    return [b - a for a, b in zip([0, *cuts], cuts, strict=False)]


@st.composite
def keys(draw, max_members, highest_meter, exclude=0):
    kind = draw(st.sampled_from(KINDS))
    if kind == KEY_NONE:
        return Key(KEY_NONE)
    candidates = st.integers(1, highest_meter).filter(lambda m: m != exclude)
    members = draw(st.lists(candidates, unique=True, max_size=max_members))
    weights = draw(weights_for(kind, len(members)))
    return Key(kind, tuple(members), tuple(weights))


@st.composite
def intervals(draw, sizes, highest_meter):
    """A random interval: which meters report what, producers' keys, community key, price.
    Keys also name meters up to `highest_meter` that may be absent from the interval."""
    size = draw(sizes)
    if size == N_METERS:
        present = list(range(1, N_METERS + 1))
    else:
        present = draw(st.lists(st.integers(1, highest_meter), unique=True, min_size=1,
                                max_size=size))
    meters = {m: (draw(wh), draw(wh)) for m in present}
    producers = draw(st.lists(st.sampled_from(sorted(meters)), unique=True, max_size=12))
    producer_keys = {}
    for p in producers:
        producer_keys[p] = draw(keys(MAX_BENEFICIARIES, highest_meter, exclude=p))
    community = draw(st.one_of(st.none(), keys(48, highest_meter)))
    price = draw(st.one_of(st.just(0), st.integers(1, 10**15), st.just(MAX_PRICE)))
    return meters, producer_keys, community, price


# up to the full 256 meters (a quarter of the examples), keys naming any meter
ANY_SIZE = intervals(
    st.one_of(st.integers(1, 12), st.integers(1, 12), st.integers(13, 64), st.just(N_METERS)),
    N_METERS,
)
# small, dense neighbourhoods: keys often name meters that are present
DENSE = intervals(st.integers(1, 16), 20)


def _energy_flows(events):
    received = defaultdict(int)
    sent = defaultdict(int)
    own = defaultdict(int)
    grid_import = defaultdict(int)
    grid_export = defaultdict(int)
    for name, *f in events:
        if name == "P2PAllocation":
            sent[f[1]] += f[3]
            received[f[2]] += f[3]
        elif name == "SelfSupply":
            own[f[1]] += f[2]
        elif name == "PoolAllocation":
            received[f[1]] += f[2]
        elif name == "PoolContribution":
            sent[f[1]] += f[2]
        elif name == "GridImport":
            grid_import[f[1]] += f[2]
        elif name == "GridExport":
            grid_export[f[1]] += f[2]
    return received, sent, own, grid_import, grid_export


def _full_case():
    """All 256 meters report; 12 producers each name 8 beneficiaries (every key kind);
    a 48-member PERCENT_REDISTRIBUTED community key."""
    rng = random.Random(2024)
    meters = {m: (rng.randint(0, 4000), rng.randint(0, 4000)) for m in range(1, N_METERS + 1)}
    weight_of = {KEY_STATIC: 1250, KEY_PERCENT_REDISTRIBUTED: 1250, KEY_COEFFICIENTS: 125_000,
                 KEY_PRORATA: 0, KEY_PRIORITY: 0}
    producer_keys = {}
    for n, p in enumerate(rng.sample(range(1, N_METERS + 1), 12)):
        kind = KINDS[1 + n % 5]
        members = tuple(rng.sample([m for m in range(1, N_METERS + 1) if m != p],
                                   MAX_BENEFICIARIES))
        producer_keys[p] = Key(kind, members, (weight_of[kind],) * MAX_BENEFICIARIES)
    community = Key(KEY_PERCENT_REDISTRIBUTED, tuple(rng.sample(range(1, N_METERS + 1), 48)),
                    (200,) * 48)
    return meters, producer_keys, community, PRICE


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=ANY_SIZE)
@example(case=_full_case())
def test_invariants_up_to_the_maximum_community(big_community, case):
    _check_interval(big_community, case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=DENSE)
def test_invariants_in_dense_neighbourhoods(big_community, case):
    _check_interval(big_community, case)


def _check_interval(c, case):
    meters, producer_keys, community, price = case
    s = c.settlement
    with boa.env.prank(c.admin):
        s.set_price(price)
        if community is not None:
            s.set_community_key(community.kind, list(community.members), list(community.weights))
    for producer, key in producer_keys.items():
        c.set_producer_key(producer, key)
    accounts = c.accounts
    before = ref.Ledger(balance={a: s.balance_of(a) for a in accounts})
    held_before = c.token.balanceOf(s.address)

    interval = c.window_start  # every meter's signed window covers it (conftest)
    c.submit(interval, meters, anchors=[])
    events = event_tuples(s, SETTLEMENT_EVENTS)

    # 1. the contract does exactly what the reference rule says, event for event
    expected_ledger = ref.Ledger(balance=dict(before.balance))
    expected = ref.settle(interval, meters, c.owners, producer_keys,
                          community or ref.DEFAULT_COMMUNITY_KEY, price, expected_ledger)
    assert events == expected

    # 2. energy: per meter, own + P2P received + grid import == import and
    #    own + P2P sent + grid export == export; nothing is allocated beyond either;
    #    the pool never returns a meter's own export to it as shared energy
    received, sent, own, grid_import, grid_export = _energy_flows(events)
    flows = (received, sent, own, grid_import, grid_export)
    assert all(v > 0 for d in flows for v in d.values())
    assert set().union(*flows) <= set(meters)
    for m, (imp, exp) in meters.items():
        assert own[m] + received[m] + grid_import[m] == imp
        assert own[m] + sent[m] + grid_export[m] == exp
    assert sum(received.values()) == sum(sent.values())
    pooled_to = {e[2] for e in events if e[0] == "PoolAllocation"}
    pooled_from = {e[2] for e in events if e[0] == "PoolContribution"}
    assert not pooled_to & pooled_from
    assert events[-1][5] == sum(received.values())  # Settled.p2p_wh: shared, not own

    # 3. tokens: settlement neither creates nor destroys any; payments follow the price
    balances = {a: s.balance_of(a) for a in accounts}
    debts = {a: s.debt_of(a) for a in accounts}
    receivables = {a: s.receivable_of(a) for a in accounts}
    assert c.token.balanceOf(s.address) == held_before
    assert sum(balances.values()) + s.recovered() == held_before
    assert sum(receivables.values()) == sum(debts.values()) + s.recovered()
    shared_wh = sum(received.values())
    assert events[-1][-2] == shared_wh * price
    assert balances == {a: expected_ledger.balance.get(a, 0) for a in accounts}
    assert debts == {a: expected_ledger.debt.get(a, 0) for a in accounts}
    assert receivables == {a: expected_ledger.receivable.get(a, 0) for a in accounts}
    unpaid = [e[-1] for e in events if e[0] == "UnpaidAllocation"]
    recorded = [e[-1] for e in events if e[0] == "ReceivableRecorded"]
    assert sum(unpaid) == sum(recorded) == sum(debts.values()) - sum(before.debt.values())

    # 4. settled once
    assert s.settled(interval)
    with boa.reverts("settlement: interval already submitted by this gateway"):
        c.submit(interval, meters, anchors=[])
