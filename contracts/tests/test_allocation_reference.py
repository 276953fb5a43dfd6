"""The pure-Python reference of the allocation rule, on its own (no EVM)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.allocation_reference import (
    BPS,
    KEY_COEFFICIENTS,
    KEY_NONE,
    KEY_PERCENT_REDISTRIBUTED,
    KEY_PRIORITY,
    KEY_PRORATA,
    KEY_STATIC,
    MAX_WH,
    PPM,
    Key,
    PackingError,
    allocate,
    pack_entries,
    split,
    telescoping,
    unpack_words,
)

KINDS = [KEY_NONE, KEY_STATIC, KEY_PRORATA, KEY_PERCENT_REDISTRIBUTED, KEY_PRIORITY,
         KEY_COEFFICIENTS]


@st.composite
def split_cases(draw):
    kind = draw(st.sampled_from(KINDS))
    n = draw(st.integers(0, 12))
    needs = draw(st.lists(st.integers(0, 5000), min_size=n, max_size=n))
    budget = draw(st.integers(0, 20000))
    if kind in (KEY_STATIC, KEY_PERCENT_REDISTRIBUTED, KEY_COEFFICIENTS):
        cap = PPM if kind == KEY_COEFFICIENTS else BPS
        cuts = sorted(draw(st.lists(st.integers(0, cap), min_size=n, max_size=n)))
        weights = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    else:
        weights = [0] * n
    return kind, budget, needs, weights


@settings(max_examples=300, deadline=None)
@given(split_cases())
def test_split_never_exceeds_need_or_budget(case):
    kind, budget, needs, weights = case
    shares = split(kind, budget, needs, weights)
    assert len(shares) == len(needs)
    assert all(0 <= s <= n for s, n in zip(shares, needs, strict=True))
    assert sum(shares) <= budget


@settings(max_examples=200, deadline=None)
@given(split_cases())
def test_prorata_and_priority_hand_out_all_they_can(case):
    _, budget, needs, _ = case
    for kind in (KEY_PRORATA, KEY_PRIORITY):
        assert sum(split(kind, budget, needs, [0] * len(needs))) == min(budget, sum(needs))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.lists(st.integers(0, 10**4), min_size=1, max_size=20))
def test_telescoping_is_exact_and_bounded(total, parts):
    total = min(total, sum(parts))
    shares = telescoping(total, parts)
    assert sum(shares) == total
    assert all(0 <= s <= p for s, p in zip(shares, parts, strict=True))


def test_percent_redistributed_worked_example():
    # 1000 Wh, 50/30/20 %; A needs 100, so its unused 400 goes to B and C 3:2,
    # then B is capped at 300 and C takes the rest.
    assert split(KEY_PERCENT_REDISTRIBUTED, 1000, [100, 300, 900], [5000, 3000, 2000]) == [
        100,
        300,
        600,
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.integers(1, 40),
        st.tuples(st.integers(0, 5000), st.integers(0, 5000)),
        max_size=30,
    )
)
def test_allocation_conserves_energy_with_default_key(meters):
    flows = allocate(meters, {})
    received = {m: 0 for m in meters}
    sent = {m: 0 for m in meters}
    own = dict(flows.self_supply)
    for c, wh in flows.pool_allocations:
        received[c] += wh
    for p, wh in flows.pool_contributions:
        sent[p] += wh
    for m, (imp, exp) in meters.items():
        assert own.get(m, 0) == min(imp, exp)  # a meter's own export covers its import
        assert own.get(m, 0) + received[m] + flows.grid_import.get(m, 0) == imp
        assert own.get(m, 0) + sent[m] + flows.grid_export.get(m, 0) == exp
    # the pool never hands a meter back what it put in
    assert not {c for c, _ in flows.pool_allocations} & {p for p, _ in flows.pool_contributions}
    # default key: pro-rata, so either every import or every export is covered
    assert not (flows.grid_import and flows.grid_export)


def test_self_supply_is_not_shared_energy():
    # the case: a resident importing a little while its PV exports; the pool
    # gave it back part of its own export as shared energy
    flows = allocate({1: (18, 500), 2: (300, 0)}, {})
    assert flows.self_supply == [(1, 18)]
    assert flows.pool_allocations == [(2, 300)]
    assert flows.pool_contributions == [(1, 300)]
    assert flows.grid_export == {1: 182} and flows.grid_import == {}


def test_pack_round_trip_and_layout():
    entries = [(1, 10, 0), (2, 0, 7), (300, MAX_WH, MAX_WH), (65535, 1, 2)]
    words = pack_entries(entries)
    assert len(words) == 2
    assert words[0] & ((1 << 80) - 1) == (1 << 64) | (10 << 32)
    assert words[0] >> 240 == 0
    assert unpack_words(words) == entries


@pytest.mark.parametrize(
    "entries",
    [
        [(2, 0, 0), (1, 0, 0)],  # not increasing
        [(1, 0, 0), (1, 0, 0)],  # duplicate
        [(0, 1, 1)],  # index 0
        [(1, MAX_WH + 1, 0)],  # too large
        [(1, -1, 0)],
    ],
)
def test_pack_rejects_bad_entries(entries):
    with pytest.raises(PackingError):
        pack_entries(entries)


def test_key_defaults():
    assert Key().kind == KEY_NONE
