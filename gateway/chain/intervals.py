"""Per-interval import and export energy of each meter, from cumulative counters.

Intervals are aligned to the Unix epoch: interval ``k`` is ``[k*L, (k+1)*L)`` with
``L`` = 900 s (default) or 1800 s. A meter's readings are ``(t, ei, ee)``: Unix seconds
and its cumulative import and export counters in Wh (``None`` in a fault reading, which
is skipped; the two counters are handled separately).

Counter at a boundary ``b``
    - a reading at exactly ``b``: its value (the highest, if several share that second);
    - else linear interpolation between the last reading before ``b`` ``(t0, v0)`` and the
      first after ``(t1, v1)``, rounded down in integer arithmetic:
      ``v0 + (v1 - v0) * (b - t0) // (t1 - t0)``;
    - unknown if there is no reading on one side within ``max_gap`` seconds
      (default two intervals), or if the counter went down between ``t0`` and ``t1``.

Energy in an interval = counter at its end - counter at its start. Each boundary value
is computed once, from the readings alone, so consecutive intervals sum exactly to the
difference of the boundary values (they telescope), and to the raw counter difference
when the outer boundaries fall on readings; rounding never loses or creates a Wh.

An interval whose boundary is unknown is a *gap*: its energy is ``None`` and its quality
says why; it is never filled in. The same holds when the counter goes down anywhere
between the readings that bracket the interval (meter swap, reset): quality
``counter_decrease``.
"""

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from gateway.chain.errors import IntervalError

DEFAULT_LENGTH = 900
ALLOWED_LENGTHS = (900, 1800)
DEFAULT_MAX_GAP_INTERVALS = 2

OK = "ok"
GAP = "gap"  # no reading near a boundary
COUNTER_DECREASE = "counter_decrease"  # the cumulative counter went down


def check_length(length):
    """``length`` if it is an allowed interval length (s), else :class:`IntervalError`."""
    if length not in ALLOWED_LENGTHS or isinstance(length, bool):
        allowed = ", ".join(str(x) for x in ALLOWED_LENGTHS)
        raise IntervalError(f"interval length {length!r} s not allowed: must be one of {allowed}")
    return length


def interval_start(t, length=DEFAULT_LENGTH):
    """Start of the aligned interval containing Unix time ``t``."""
    check_length(length)
    return t - t % length


@dataclass(frozen=True)
class MeterInterval:
    """One meter's energy in one interval. ``None`` energy = not known (see ``quality``)."""

    start: int
    length: int
    import_wh: int | None
    export_wh: int | None
    import_quality: str
    export_quality: str

    @property
    def end(self):
        return self.start + self.length

    @property
    def quality(self):
        """``ok`` if both counters are known, else the first problem (import first)."""
        if self.import_quality != OK:
            return self.import_quality
        return self.export_quality

    @property
    def gap(self):
        return self.quality != OK


@dataclass(frozen=True)
class IntervalTotals:
    """Every meter's :class:`MeterInterval` for the interval starting at ``start``."""

    start: int
    length: int
    meters: dict

    @property
    def gaps(self):
        """Meters whose import or export is not known in this interval."""
        return [m for m, mi in self.meters.items() if mi.gap]


class _Counter:
    # One cumulative counter's readings, sorted by (t, value).

    def __init__(self, points):
        points = sorted(points)
        self.times = [t for t, _ in points]
        self.values = [v for _, v in points]
        # decreases[i]: number of decreases among values[0..i]
        self.decreases, n = [], 0
        for i, v in enumerate(self.values):
            if i and v < self.values[i - 1]:
                n += 1
            self.decreases.append(n)

    def _bracket(self, b):
        # (index of last reading at or before b, index of first reading at or after b)
        return bisect_right(self.times, b) - 1, bisect_left(self.times, b)

    def at(self, b, max_gap):
        """(value or None, quality) of the counter at boundary b."""
        before, after = self._bracket(b)
        if before >= 0 and self.times[before] == b:
            return self.values[before], OK
        if before < 0 or after >= len(self.times):
            return None, GAP
        t0, t1 = self.times[before], self.times[after]
        if b - t0 > max_gap or t1 - b > max_gap:
            return None, GAP
        v0, v1 = self.values[before], self.values[after]
        if v1 < v0:
            return None, COUNTER_DECREASE
        return v0 + (v1 - v0) * (b - t0) // (t1 - t0), OK

    def decreased_between(self, start, end):
        # Any decrease among the readings from the one bracketing start to the one
        # bracketing end (inclusive)?
        lo = max(self._bracket(start)[0], 0)
        hi = min(self._bracket(end)[1], len(self.values) - 1)
        return hi > lo and self.decreases[hi] != self.decreases[lo]

    def energy(self, start, end, max_gap):
        v_start, q_start = self.at(start, max_gap)
        v_end, q_end = self.at(end, max_gap)
        if COUNTER_DECREASE in (q_start, q_end) or (
                v_start is not None and v_end is not None
                and self.decreased_between(start, end)):
            return None, COUNTER_DECREASE
        if v_start is None or v_end is None:
            return None, GAP
        return v_end - v_start, OK


def _counters(readings):
    imports, exports = [], []
    for r in readings:
        try:
            t, ei, ee = r
        except (TypeError, ValueError):
            raise IntervalError(f"a reading must be (t, ei, ee), got {r!r}") from None
        for value, points in ((ei, imports), (ee, exports)):
            if value is None:
                continue
            if isinstance(t, bool) or not isinstance(t, int) or isinstance(value, bool) \
                    or not isinstance(value, int) or value < 0:
                raise IntervalError(f"reading {r!r}: t and counters must be integers >= 0")
            points.append((t, value))
    return _Counter(imports), _Counter(exports)


def _max_gap(length, max_gap):
    if max_gap is None:
        return DEFAULT_MAX_GAP_INTERVALS * length
    if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap <= 0:
        raise IntervalError(f"max_gap must be an integer number of seconds > 0, not {max_gap!r}")
    return max_gap


def meter_intervals(readings, first_start, count, length=DEFAULT_LENGTH, max_gap=None):
    """One meter's :class:`MeterInterval` for ``count`` consecutive intervals from
    ``first_start`` (aligned). ``readings``: ``(t, ei, ee)`` in any order; pass the
    readings up to ``max_gap`` before and after the span so boundaries can be bracketed.
    """
    check_length(length)
    if first_start % length:
        raise IntervalError(f"interval start {first_start} is not aligned to {length} s")
    max_gap = _max_gap(length, max_gap)
    imports, exports = _counters(readings)
    result = []
    for k in range(count):
        start = first_start + k * length
        import_wh, import_q = imports.energy(start, start + length, max_gap)
        export_wh, export_q = exports.energy(start, start + length, max_gap)
        result.append(MeterInterval(start, length, import_wh, export_wh, import_q, export_q))
    return result


def interval_totals(readings_by_meter, start, length=DEFAULT_LENGTH, max_gap=None):
    """:class:`IntervalTotals` for the interval at ``start``: ``readings_by_meter`` maps a
    meter (any key) to its ``(t, ei, ee)`` readings around the interval."""
    meters = {}
    for meter, readings in readings_by_meter.items():
        (meters[meter],) = meter_intervals(readings, start, 1, length, max_gap)
    return IntervalTotals(start, length, meters)
