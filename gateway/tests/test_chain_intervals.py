"""Per-interval energy from the signed readings at interval boundaries (anchors): worked
examples with exact numbers, windows that add up exactly to what the meter signed, gaps
marked and never filled in, and what the chain already holds respected."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wattcore import reading as wreading

from gateway.chain import intervals
from gateway.chain.errors import GatewayError, IntervalError
from gateway.chain.intervals import (
    COUNTER_DECREASE,
    GAP,
    OVERFLOW,
    ChainAnchor,
    Reading,
    Series,
    plan_meter,
)

L = 900
K = 1_960_000  # an interval id: boundary K is K*900 s
T0 = K * L

_ids = iter(range(1, 10**9))


def r(t, ei, ee=0, seq=None, st=0):
    """A reading at t with counters (seq from t unless given)."""
    return Reading(next(_ids), t - T0 + 10 if seq is None else seq, t, st, ei, ee)


def every(step, t_from, t_to, power_in, power_out=0):
    """A meter reading every `step` s with constant power (W) in and out."""
    return [r(t, 1000 + power_in * (t - T0) // 3600, 50 + power_out * (t - T0) // 3600)
            for t in range(t_from, t_to + 1, step)]


def test_anchor_is_the_first_usable_reading_after_the_boundary():
    s = Series([r(T0 - 5, 1), r(T0 + 3, 2, st=wreading.ST_CLOCK_UNTRUSTED),
                r(T0 + 7, 3, st=wreading.ST_METER_NO_REPLY),
                Reading(99, 40, T0 + 8, wreading.ST_METER_NO_REPLY, None, None),
                r(T0 + 9, 4), r(T0 + 12, 5)], L)
    assert s.anchor(K).ei == 4  # before the boundary, untrusted clock, fault: skipped
    assert Series([r(T0 + 300, 1)], L).anchor(K) is None  # 300 s late is too late
    assert Series([r(T0 + 299, 1)], L).anchor(K).ei == 1


def test_worked_example_an_hour_in_four_intervals():
    # 6 kW in for an hour, a reading every 10 s: boundaries at T0, +900, ... are readings
    s = Series(every(10, T0, T0 + 3600, 6000), L)
    plan = plan_meter(s, ChainAnchor(), K, K + 4, 4)
    # first ever: an anchor at K starts it, one at K+4 closes the one window
    assert [(a.boundary, a.restart, a.before) for a in plan.anchors] == [
        (K, True, K), (K + 4, False, K)]
    assert plan.energy == {K + k: (1500, 0) for k in range(4)}
    assert plan.gaps == {}


def test_energy_is_the_difference_of_the_anchors_never_interpolated():
    # readings at 7 s past each boundary plus noise between: the interval's energy is
    # counter(anchor at its end) - counter(anchor at its start), not a proportion
    readings = [r(T0 + 7, 100), r(T0 + 450, 180), r(T0 + 907, 251), r(T0 + 1807, 259),
                r(T0 + 2707, 1000)]
    plan = plan_meter(Series(readings, L), ChainAnchor(), K, K + 3, 4)
    assert plan.energy == {K: (151, 0), K + 1: (8, 0), K + 2: (741, 0)}
    assert sum(i for i, _ in plan.energy.values()) == 1000 - 100


def test_a_window_continues_from_the_anchor_the_chain_holds():
    s = Series(every(10, T0 + 3600, T0 + 7200, 2000, 400), L)
    at_k4 = s.anchor(K + 4)
    chain = ChainAnchor(K + 4, at_k4.seq, at_k4.ei, at_k4.ee)
    plan = plan_meter(s, chain, K + 4, K + 8, 4)
    assert [(a.boundary, a.restart) for a in plan.anchors] == [(K + 8, False)]
    assert sum(i for i, _ in plan.energy.values()) == s.anchor(K + 8).ei - at_k4.ei
    assert sum(e for _, e in plan.energy.values()) == s.anchor(K + 8).ee - at_k4.ee


def test_outage_is_a_gap_never_filled_in():
    # readings until K+1 (+ a few s), nothing until K+3, then again
    readings = every(10, T0, T0 + 910, 1200) + every(10, T0 + 3 * L, T0 + 6 * L, 1200)
    plan = plan_meter(Series(readings, L), ChainAnchor(), K, K + 6, 4)
    assert plan.gaps == {K + 1: GAP, K + 2: GAP}
    assert set(plan.energy) == {K, K + 3, K + 4, K + 5}
    # after the gap the meter starts afresh: its energy in the gap is never settled
    assert [(a.boundary, a.restart) for a in plan.anchors] == [
        (K, True), (K + 1, False), (K + 3, True), (K + 6, False)]


def test_counter_going_down_ends_the_window_and_restarts():
    readings = every(10, T0, T0 + 2 * L + 10, 3000)
    swapped = [r(t, 5 + 3000 * (t - T0 - 2 * L) // 3600)
               for t in range(T0 + 2 * L + 20, T0 + 4 * L + 1, 10)]
    s = Series(readings + swapped, L)
    plan = plan_meter(s, ChainAnchor(), K, K + 4, 4)
    # K..K+1 settle; the boundary K+2 holds the old counter, K+3 the new: decrease, and
    # the contract refuses lower counters than its last anchor's until the admin resets
    assert plan.energy == {K: (750, 0), K + 1: (750, 0)}
    assert plan.gaps == {K + 2: COUNTER_DECREASE, K + 3: COUNTER_DECREASE}
    k2 = s.anchor(K + 2)
    reset = ChainAnchor(K + 2, k2.seq, k2.ei, k2.ee, open=intervals.RESTART_PENDING)
    plan = plan_meter(s, reset, K + 2, K + 4, 4)
    assert plan.gaps == {K + 2: GAP}  # its anchor at K+2 is the old meter's
    assert plan.energy == {K + 3: (750, 0)}  # the new meter from its own first anchor


def test_a_meter_the_chain_has_ahead_or_refuses_is_a_gap():
    s = Series(every(10, T0, T0 + 2 * L, 900), L)
    # the chain holds a later anchor than the boundary: nothing before it is signed anew
    late = s.anchor(K + 1)
    plan = plan_meter(s, ChainAnchor(K + 1, late.seq, late.ei, 0), K, K + 2, 4)
    assert plan.gaps == {K: GAP} and set(plan.energy) == {K + 1}
    # the chain holds higher counters (meter replaced, no reset yet): a counter decrease
    plan = plan_meter(s, ChainAnchor(K - 4, 1, 10**9, 0), K, K + 2, 4)
    assert plan.gaps == {K: COUNTER_DECREASE, K + 1: COUNTER_DECREASE}
    assert plan.energy == {}
    # ... until the admin's reset: then it starts afresh
    plan = plan_meter(s, ChainAnchor(K - 4, 1, 10**9, 0, open=intervals.RESTART_PENDING),
                      K, K + 2, 4)
    assert set(plan.energy) == {K, K + 1} and plan.anchors[0].restart


def test_a_window_left_open_on_chain_is_settled_as_it_is():
    # a submission got its anchors in (window K..K+3 open on chain) and then failed
    s = Series(every(10, T0, T0 + 4 * L, 2000), L)
    start, end = s.anchor(K), s.anchor(K + 4)
    chain = ChainAnchor(K + 4, end.seq, end.ei, end.ee, 4, end.ei - start.ei,
                        end.ee - start.ee)
    plan = plan_meter(s, chain, K, K + 4, 4)
    assert plan.anchors == []  # the chain has them
    assert plan.energy == {K + k: (500, 0) for k in range(4)}


def test_more_than_a_window_can_hold_is_an_overflow():
    s = Series([r(T0 + 1, 0), r(T0 + L + 1, 2**32)], L)
    plan = plan_meter(s, ChainAnchor(), K, K + 1, 4)
    assert plan.gaps == {K: OVERFLOW} and plan.energy == {}


def test_import_only_meter_exports_nothing():
    s = Series([Reading(1, 1, T0 + 2, 0, 10, None), Reading(2, 2, T0 + L + 2, 0, 30, None)],
               L)
    plan = plan_meter(s, ChainAnchor(), K, K + 1, 4)
    assert plan.energy == {K: (20, 0)}


def test_length_is_checked():
    for bad in (0, 600, 3600, True):
        with pytest.raises(IntervalError, match="must be one of 900, 1800"):
            intervals.check_length(bad)
    assert issubclass(IntervalError, GatewayError)
    assert intervals.max_window(900) == 4 and intervals.max_window(1800) == 2


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 5_000), st.integers(0, 3_000),
                          st.booleans()), min_size=1, max_size=40),
       st.integers(1, 12))
def test_windows_add_up_exactly_to_the_anchors(steps, count):
    # random readings (some missing: outages) with counters that only go up
    readings, t, ei, ee = [], T0, 1000, 0
    for dt, di, de, present in steps:
        t += 1 + dt * 30
        ei += di
        ee += de
        if present:
            readings.append(r(t, ei, ee))
    s = Series(readings, L)
    plan = plan_meter(s, ChainAnchor(), K, K + count, 4)
    # every interval either has energy or a reason, never both
    assert set(plan.energy) | set(plan.gaps) == set(range(K, K + count))
    assert not set(plan.energy) & set(plan.gaps)
    # each window (from an anchor to the next, restarts start one) adds up to the
    # difference of its two signed counters, and lasts at most 4 intervals
    previous = None
    for a in plan.anchors:
        assert s.anchor(a.boundary) == a.reading
        if not a.restart:
            window = range(previous.boundary, a.boundary)
            assert 1 <= len(window) <= 4
            assert sum(plan.energy[k][0] for k in window) == a.reading.ei - previous.reading.ei
            assert sum(plan.energy[k][1] for k in window) == a.reading.ee - previous.reading.ee
        previous = a
