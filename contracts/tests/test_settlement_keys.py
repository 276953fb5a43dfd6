"""Worked examples, exact numbers: every key type in tier 1 and tier 2, and the
article's resident -> school example."""

import boa
import pytest

from contracts.allocation_reference import (
    KEY_COEFFICIENTS,
    KEY_NONE,
    KEY_PERCENT_REDISTRIBUTED,
    KEY_PRIORITY,
    KEY_PRORATA,
    KEY_STATIC,
    Key,
)
from contracts.boa_harness import PRICE, event_tuples, settlement_outcome

FUNDING = 10**24


@pytest.fixture
def street(community):
    """Producers P1, P2 and consumers A, B, C, D (meters 1..6), price 10 units/Wh."""
    c = community
    names = ["P1", "P2", "A", "B", "C", "D"]
    c.account = {}
    c.meter = {}
    for name in names:
        c.account[name] = c.new_account(name)
        c.meter[name] = c.register_meter(c.account[name])
        c.fund(c.account[name], FUNDING)
    with boa.env.prank(c.admin):
        c.settlement.set_price(10)
    return c


def _settle(c, data):
    """data: {name: (import, export)} -> outcome keyed by names."""
    interval = c.next_interval()
    c.submit(interval, {c.meter[n]: v for n, v in data.items()})
    out = settlement_outcome(event_tuples(c.settlement))
    name_of = {m: n for n, m in c.meter.items()}
    return {
        "p2p": {(name_of[p], name_of[q]): wh for (p, q), wh in out.p2p.items()},
        "pool_in": {name_of[p]: wh for p, wh in out.pool_contributions.items()},
        "pool_out": {name_of[q]: wh for q, wh in out.pool_allocations.items()},
        "grid_import": {name_of[m]: wh for m, wh in out.grid_import.items()},
        "grid_export": {name_of[m]: wh for m, wh in out.grid_export.items()},
        "raw": out,
    }


# P1 exports 1000 Wh; A, B, C need 100, 300, 900 Wh and are P1's beneficiaries;
# D needs 200 Wh and is not. Tier 2 is the default PRORATA over what is left.
TIER1 = {"P1": (0, 1000), "A": (100, 0), "B": (300, 0), "C": (900, 0), "D": (200, 0)}


def _key(c, kind, names, weights):
    return Key(kind, tuple(c.meter[n] for n in names), tuple(weights))


def test_tier1_static(street):
    c = street
    c.set_producer_key(c.meter["P1"], _key(c, KEY_STATIC, "ABC", [5000, 3000, 2000]))
    r = _settle(c, TIER1)
    # 50 % = 500 capped at A's 100; 30 % = 300 to B; 20 % = 200 to C. The unused
    # 400 goes to the pool: C (700 left) and D (200) pro rata: floor(400*700/900) = 311.
    assert r["p2p"] == {("P1", "A"): 100, ("P1", "B"): 300, ("P1", "C"): 200}
    assert r["pool_out"] == {"C": 311, "D": 89}
    assert r["pool_in"] == {"P1": 400}
    assert r["grid_import"] == {"C": 389, "D": 111}
    assert r["grid_export"] == {}
    assert c.settlement.balance_of(c.account["P1"]) == FUNDING + 1000 * 10
    assert c.settlement.balance_of(c.account["C"]) == FUNDING - (200 + 311) * 10


def test_tier1_prorata(street):
    c = street
    c.set_producer_key(c.meter["P1"], _key(c, KEY_PRORATA, "ABC", [0, 0, 0]))
    r = _settle(c, TIER1)
    # 1000 over needs 100:300:900 (sum 1300), telescoping floor:
    # A = floor(1000*100/1300) = 76, B = floor(1000*400/1300) - 76 = 231, C = 1000 - 307
    assert r["p2p"] == {("P1", "A"): 76, ("P1", "B"): 231, ("P1", "C"): 693}
    assert r["pool_out"] == {}
    assert r["grid_import"] == {"A": 24, "B": 69, "C": 207, "D": 200}


def test_tier1_percent_redistributed(street):
    c = street
    c.set_producer_key(c.meter["P1"], _key(c, KEY_PERCENT_REDISTRIBUTED, "ABC", [5000, 3000, 2000]))
    r = _settle(c, TIER1)
    # round 1: 500/300/200 -> A capped at 100 (400 back), B capped at 300, C 200;
    # round 2: the 400 goes to C, the only one still in need -> C 600.
    assert r["p2p"] == {("P1", "A"): 100, ("P1", "B"): 300, ("P1", "C"): 600}
    assert r["grid_import"] == {"C": 300, "D": 200}


def test_tier1_priority(street):
    c = street
    c.set_producer_key(c.meter["P1"], _key(c, KEY_PRIORITY, "CAB", [0, 0, 0]))
    r = _settle(c, TIER1)
    assert r["p2p"] == {("P1", "C"): 900, ("P1", "A"): 100}
    assert r["grid_import"] == {"B": 300, "D": 200}


def test_tier1_coefficients_set_by_admin(street):
    c = street
    with boa.env.prank(c.admin):
        c.settlement.set_producer_coefficients(
            c.meter["P1"], [c.meter[n] for n in "ABC"], [250_000, 250_000, 100_000])
    assert c.settlement.producer_key(c.meter["P1"]) == (
        KEY_COEFFICIENTS, [c.meter[n] for n in "ABC"], [250_000, 250_000, 100_000])
    r = _settle(c, TIER1)
    # 25 % -> A capped at 100, 25 % -> B 250, 10 % -> C 100; pool 550 over
    # B 50, C 800, D 200 (1050): B 26, C floor(550*850/1050) - 26 = 419, D 105
    assert r["p2p"] == {("P1", "A"): 100, ("P1", "B"): 250, ("P1", "C"): 100}
    assert r["pool_out"] == {"B": 26, "C": 419, "D": 105}
    assert r["grid_import"] == {"B": 24, "C": 381, "D": 95}


def test_tier1_key_with_absent_beneficiary(street):
    c = street
    c.set_producer_key(c.meter["P1"], _key(c, KEY_PRIORITY, "DA", [0, 0]))
    r = _settle(c, {"P1": (0, 500), "A": (100, 0), "B": (300, 0)})  # D sent nothing
    assert r["p2p"] == {("P1", "A"): 100}
    assert r["pool_out"] == {"B": 300}
    assert r["grid_export"] == {"P1": 100}


# P1 and P2 export 600 + 400 Wh with no key of their own: all 1000 Wh is pooled.
TIER2 = {"P1": (0, 600), "P2": (0, 400), "A": (100, 0), "B": (300, 0), "C": (900, 0)}


@pytest.mark.parametrize(
    "kind, names, weights, pool_out, pool_in",
    [
        # 20 % of 1000 each, A capped at 100; 500 unused -> grid
        (KEY_STATIC, "ABC", [2000, 2000, 2000], {"A": 100, "B": 200, "C": 200},
         {"P1": 300, "P2": 200}),
        (KEY_PRIORITY, "CBA", [0, 0, 0], {"C": 900, "B": 100}, {"P1": 600, "P2": 400}),
        (KEY_PERCENT_REDISTRIBUTED, "ABC", [5000, 3000, 2000], {"A": 100, "B": 300, "C": 600},
         {"P1": 600, "P2": 400}),
        # pro rata restricted to a list: only A and B share the pool
        (KEY_PRORATA, "AB", [0, 0], {"A": 100, "B": 300}, {"P1": 240, "P2": 160}),
        (KEY_COEFFICIENTS, "ABC", [100_000, 200_000, 300_000], {"A": 100, "B": 200, "C": 300},
         {"P1": 360, "P2": 240}),
        (KEY_NONE, "", [], {}, {}),
    ],
)
def test_tier2_community_keys(street, kind, names, weights, pool_out, pool_in):
    c = street
    c.set_community_key(_key(c, kind, names, weights))
    assert c.settlement.community_key() == (kind, [c.meter[n] for n in names], weights)
    r = _settle(c, TIER2)
    assert r["p2p"] == {}
    assert r["pool_out"] == pool_out
    assert r["pool_in"] == pool_in
    shared = sum(pool_out.values())
    assert sum(r["grid_export"].values()) == 1000 - shared
    for n in ("P1", "P2"):
        assert r["grid_export"].get(n, 0) == TIER2[n][1] - pool_in.get(n, 0)
        assert c.settlement.balance_of(c.account[n]) == FUNDING + pool_in.get(n, 0) * 10
    for n in "ABC":
        assert r["grid_import"].get(n, 0) == TIER2[n][0] - pool_out.get(n, 0)


def test_default_community_key_is_prorata_over_everyone(street):
    c = street
    assert c.settlement.community_key() == (KEY_PRORATA, [], [])
    r = _settle(c, TIER2 | {"C": (2600, 0)})
    # 1000 Wh over 100:300:2600 (3000): A 33, B floor(1000*400/3000) - 33 = 100, C 867
    assert r["pool_out"] == {"A": 33, "B": 100, "C": 867}
    assert r["pool_in"] == {"P1": 600, "P2": 400}


# ------------------------------------------------------------- the article


@pytest.fixture
def noon(trio):
    """A weekday noon interval: the resident is at work, its 5 kW of PV export
    1250 Wh in the 15 minutes; the school draws 11.8 kW (2950 Wh); the neighbour,
    at home, 1.6 kW (400 Wh). The resident gives 40 % to the school (STATIC),
    the rest goes to the community pool (default PRORATA)."""
    c = trio
    c.set_producer_key(c.resident_meter, Key(KEY_STATIC, (c.school_meter,), (4000,)))
    return c


def test_article_resident_gives_40_percent_to_the_school(noon):
    c = noon
    interval = c.next_interval()
    c.submit(interval, {c.resident_meter: (0, 1250), c.school_meter: (2950, 0),
                        c.neighbour_meter: (400, 0)})
    events = event_tuples(c.settlement)
    r = settlement_outcome(events)
    res, school, neighbour = c.resident_meter, c.school_meter, c.neighbour_meter
    # tier 1: 40 % of 1250 = 500 Wh straight to the school, a P2P entry
    assert r.p2p == {(res, school): 500}
    assert r.p2p_tokens == {(res, school): 500 * PRICE}
    # tier 2: the other 750 Wh pro rata to the remaining needs 2450 : 400
    # school floor(750 * 2450 / 2850) = 644, neighbour 750 - 644 = 106
    assert r.pool_contributions == {res: 750}
    assert r.pool_allocations == {school: 644, neighbour: 106}
    # market entries, distinct from the P2P ones
    assert r.grid_import == {school: 2950 - 500 - 644, neighbour: 400 - 106}
    assert r.grid_export == {}
    assert r.settled == (interval, 3, 3350, 1250, 1250, 1250 * PRICE, False)
    # payments at 0.15 token/kWh (1.5e14 units per Wh)
    s = c.settlement
    assert s.balance_of(c.resident) == 1250 * PRICE == 187_500_000_000_000_000
    assert s.balance_of(c.school) == 10**24 - 1144 * PRICE
    assert s.balance_of(c.neighbour) == 10**24 - 106 * PRICE
    assert c.token.balanceOf(s.address) == 2 * 10**24  # nothing created or destroyed
    # the resident takes its earnings out
    with boa.env.prank(c.resident):
        s.withdraw(1250 * PRICE)
    assert c.token.balanceOf(c.resident) == 187_500_000_000_000_000


def test_article_school_closed_unused_share_goes_to_pool_then_grid(noon):
    c = noon
    interval = c.next_interval()
    # Saturday: the school only draws 100 Wh
    c.submit(interval, {c.resident_meter: (0, 1250), c.school_meter: (100, 0),
                        c.neighbour_meter: (400, 0)})
    r = settlement_outcome(event_tuples(c.settlement))
    res, school, neighbour = c.resident_meter, c.school_meter, c.neighbour_meter
    # STATIC: 500 Wh offered, only 100 usable; the unused 400 joins the pool
    assert r.p2p == {(res, school): 100}
    assert r.pool_allocations == {neighbour: 400}
    assert r.pool_contributions == {res: 400}
    assert r.grid_export == {res: 750}
    assert r.grid_import == {}
    assert c.settlement.balance_of(c.resident) == 500 * PRICE
