"""Per-interval import/export from cumulative counters: worked examples with exact
numbers, floor rounding, telescoping sums, gaps marked and never filled in."""

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chain import intervals
from gateway.chain.errors import GatewayError, IntervalError
from gateway.chain.intervals import COUNTER_DECREASE, GAP, OK

T0 = 1_764_000_000  # a multiple of 900 and 1800


def test_worked_example_interpolates_and_rounds_down():
    readings = [(T0 + 850, 1000, 0), (T0 + 950, 1100, 5),
                (T0 + 1790, 1200, 7), (T0 + 1810, 1300, 9)]
    (mi,) = intervals.meter_intervals(readings, T0 + 900, 1)
    # at T0+900:  ei 1000 + 100*50//100 = 1050   ee 0 + 5*50//100 = 2 (2.5 rounded down)
    # at T0+1800: ei 1200 + 100*10//20 = 1250    ee 7 + 2*10//20 = 8
    assert (mi.import_wh, mi.export_wh) == (200, 6)
    assert mi.quality == OK and not mi.gap and mi.end == T0 + 1800


def test_worked_example_telescopes_to_the_counter_difference():
    readings = [(T0, 0, 0), (T0 + 400, 333, 0), (T0 + 1000, 1001, 10),
                (T0 + 2000, 1700, 10), (T0 + 2700, 2000, 10)]
    result = intervals.meter_intervals(readings, T0, 3)
    # boundaries: T0 -> 0; T0+900 -> 333 + 668*500//600 = 889 (556.67 down);
    # T0+1800 -> 1001 + 699*800//1000 = 1560 (559.2 down); T0+2700 -> 2000
    assert [m.import_wh for m in result] == [889, 671, 440]
    # export: T0+900 -> 10*500//600 = 8 (8.33 down); T0+1800 -> 10
    assert [m.export_wh for m in result] == [8, 2, 0]
    assert sum(m.import_wh for m in result) == 2000 - 0
    assert sum(m.export_wh for m in result) == 10 - 0


def test_reading_on_the_boundary_is_used_as_is():
    readings = [(T0, 500, 40), (T0 + 900, 650, 41), (T0 + 1000, 10_000, 50)]
    (mi,) = intervals.meter_intervals(readings, T0, 1)
    assert (mi.import_wh, mi.export_wh) == (150, 1)


def test_fault_readings_are_skipped():
    readings = [(T0 - 100, 100, 0), (T0, None, None), (T0 + 100, 200, 0),
                (T0 + 899, None, None), (T0 + 900, 290, 3)]
    (mi,) = intervals.meter_intervals(readings, T0, 1)
    # T0 interpolated between T0-100 and T0+100 (150), the fault at T0 ignored
    assert (mi.import_wh, mi.export_wh) == (140, 3)
    assert mi.quality == OK


def test_outage_is_a_gap_never_filled_in():
    # readings every 60 s until T0+300, nothing until T0+3000, then every 60 s again
    readings = [(t, 10 * (t - T0) // 60, 0) for t in range(T0, T0 + 301, 60)]
    readings += [(t, 10 * (t - T0) // 60, 0) for t in range(T0 + 3000, T0 + 5401, 60)]
    result = intervals.meter_intervals(readings, T0, 6, max_gap=1800)
    assert [m.quality for m in result] == [GAP, GAP, GAP, GAP, OK, OK]
    for m in result[:4]:
        assert m.gap and m.import_wh is None and m.export_wh is None
    assert [m.import_wh for m in result[4:]] == [150, 150]
    totals = intervals.interval_totals({"a": readings}, T0 + 3600)
    assert totals.gaps == [] and totals.meters["a"].import_wh == 150


def test_no_reading_after_the_end_is_a_gap():
    readings = [(T0 - 30, 0, 0), (T0 + 600, 100, 0)]
    (mi,) = intervals.meter_intervals(readings, T0, 1)
    assert mi.gap and mi.quality == GAP and mi.import_wh is None


def test_counter_decrease_is_flagged():
    readings = [(T0, 500, 7), (T0 + 450, 100, 7), (T0 + 900, 200, 8)]  # meter swapped
    (mi,) = intervals.meter_intervals(readings, T0, 1)
    assert mi.import_wh is None and mi.import_quality == COUNTER_DECREASE
    assert mi.export_wh == 1 and mi.export_quality == OK
    assert mi.quality == COUNTER_DECREASE and mi.gap
    # a decrease between the readings bracketing a boundary
    readings = [(T0 - 10, 500, 0), (T0 + 10, 100, 0), (T0 + 900, 200, 0)]
    assert intervals.meter_intervals(readings, T0, 1)[0].import_quality == COUNTER_DECREASE


def test_meter_without_export_register_has_unknown_export():
    readings = [(T0, 10, None), (T0 + 900, 60, None)]  # e.g. a PZEM-004T
    (mi,) = intervals.meter_intervals(readings, T0, 1)
    assert mi.import_wh == 50 and mi.export_wh is None
    assert mi.export_quality == GAP and mi.gap


def test_interval_totals_per_meter_and_1800_s_intervals():
    readings = {
        b"meter-a!": [(T0, 0, 0), (T0 + 1800, 900, 0)],
        b"meter-b!": [(T0, 0, 0), (T0 + 600, 10, 20)],
    }
    totals = intervals.interval_totals(readings, T0, length=1800)
    assert totals.meters[b"meter-a!"].import_wh == 900
    assert totals.gaps == [b"meter-b!"]
    assert totals.length == 1800 and totals.start == T0


def test_lengths_alignment_and_input_are_checked():
    assert intervals.interval_start(T0 + 899) == T0
    assert intervals.interval_start(T0 + 1799, 1800) == T0
    for bad in (600, 3600, True, "900"):
        with pytest.raises(IntervalError, match="not allowed"):
            intervals.check_length(bad)
    with pytest.raises(IntervalError, match="not aligned"):
        intervals.meter_intervals([], T0 + 60, 1)
    with pytest.raises(IntervalError, match="max_gap"):
        intervals.meter_intervals([], T0, 1, max_gap=0)
    with pytest.raises(IntervalError, match="integers"):
        intervals.meter_intervals([(T0, -1, 0)], T0, 1)
    with pytest.raises(IntervalError, match=r"\(t, ei, ee\)"):
        intervals.meter_intervals([(T0, 1)], T0, 1)
    assert issubclass(IntervalError, GatewayError)


def _reference_at(points, b, max_gap):
    # Independent reference: exact rational interpolation, then floor.
    at = [v for t, v in points if t == b]
    if at:
        return max(at)
    before = [(t, v) for t, v in points if t < b]
    after = [(t, v) for t, v in points if t > b]
    if not before or not after:
        return None
    (t0, v0), (t1, v1) = max(before), min(after)
    if b - t0 > max_gap or t1 - b > max_gap:
        return None
    return math.floor(v0 + Fraction(v1 - v0) * (b - t0) / (t1 - t0))


@st.composite
def _series(draw):
    n = draw(st.integers(1, 8))
    length = draw(st.sampled_from([900, 1800]))
    times = sorted(set(draw(st.lists(st.integers(1, n * length - 1), max_size=40))))
    if draw(st.booleans()):  # readings exactly on the outer boundaries
        times = [0] + times + [n * length]
    readings, ei, ee = [], draw(st.integers(0, 10**9)), draw(st.integers(0, 10**6))
    for t in times:
        ei += draw(st.integers(0, 5000))
        ee += draw(st.integers(0, 5000))
        readings.append((T0 + t, ei, ee))
    return n, length, readings


@settings(max_examples=150, deadline=None)
@given(series=_series(), max_gap=st.integers(60, 4000))
def test_sums_telescope_and_gaps_match_a_reference(series, max_gap):
    n, length, readings = series
    result = intervals.meter_intervals(readings, T0, n, length, max_gap)
    points = [(t, ei) for t, ei, _ in readings]
    bounds = [_reference_at(points, T0 + k * length, max_gap) for k in range(n + 1)]
    for k, mi in enumerate(result):
        if bounds[k] is None or bounds[k + 1] is None:
            assert mi.import_wh is None and mi.gap
        else:
            assert mi.import_wh == bounds[k + 1] - bounds[k] >= 0
    # any run of known intervals sums to the difference of its outer boundary values,
    # the raw counter difference when the outer boundaries are readings
    known = [mi.import_wh is not None for mi in result]
    if all(known):
        assert sum(mi.import_wh for mi in result) == bounds[n] - bounds[0]
        if readings and readings[0][0] == T0 and readings[-1][0] == T0 + n * length:
            assert sum(mi.import_wh for mi in result) == readings[-1][1] - readings[0][1]
            assert sum(mi.export_wh for mi in result) == readings[-1][2] - readings[0][2]
