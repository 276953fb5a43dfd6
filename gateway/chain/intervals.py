"""Per-interval energy of each meter from its signed readings at interval boundaries.

Intervals are aligned to the Unix epoch: interval ``k`` is ``[k*L, (k+1)*L)`` with ``L`` =
900 s (default) or 1800 s; boundary ``b`` is the time ``b*L`` (interval ``b`` starts there).

The anchor of a boundary
    The meter's first usable reading taken in ``[b*L, b*L + ANCHOR_DELAY)``: usable means
    it carries the import counter (the export counter too, unless the meter has no export
    register: export 0), no fault and a trusted clock. The settlement contract checks
    exactly this of every anchor it is given (``contracts/MeterAnchors.vy``), together with
    the meter's signature over it.

Energy in an interval = counter(anchor of its end) - counter(anchor of its start), import
and export. Boundary values are readings, so consecutive intervals telescope exactly to
the counter difference of the outer anchors, which is what the contract checks: the
intervals of a *window* (two anchors at most an hour apart) settle exactly the signed
difference. Nothing is interpolated.

A boundary without an anchor, or a counter that goes down, is a *gap*: the intervals
next to it are left out for that meter (with the reason), never filled in; the meter's
next window starts afresh (a ``restart`` anchor), so the energy in the gap is never
settled on chain.

:func:`plan_meter` decides one meter's anchors and energies for a run of intervals, from
its readings and its anchor state on chain; it does no I/O.
"""

from bisect import bisect_left
from dataclasses import dataclass, field

from gateway.chain.errors import IntervalError

DEFAULT_LENGTH = 900
ALLOWED_LENGTHS = (900, 1800)
ANCHOR_DELAY = 300  # MeterAnchors.ANCHOR_DELAY
MAX_WINDOW_SECONDS = 3600  # MeterAnchors.MAX_WINDOW_SECONDS
MAX_WH = (1 << 32) - 1  # MeterAnchors.MAX_WH: per meter, per window
SEQ_LIMIT = 1 << 48  # MeterAnchors: sequence numbers an anchor may carry
RESTART_PENDING = 7  # MeterAnchors.anchor_of's `open` after the admin's reset
# CLOCK_UNTRUSTED and every fault flag of docs/protocol.md: such a reading is no anchor
BAD_STATUS = 0x09FF

# why a meter is out of an interval
GAP = "gap"  # no anchor at a boundary
COUNTER_DECREASE = "counter_decrease"  # a counter went down (meter replaced, reset)
OVERFLOW = "overflow"  # more than MAX_WH in one window


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


def max_window(length):
    """Longest window between two anchors, in intervals (4 of 900 s, 2 of 1800 s)."""
    return MAX_WINDOW_SECONDS // check_length(length)


@dataclass(frozen=True)
class Reading:
    """What the planner needs of one stored signed reading."""

    id: int
    seq: int
    t: int
    st: int
    ei: int | None
    ee: int | None

    @property
    def usable(self):
        """Can it anchor a boundary (counters present, no fault, clock trusted)?"""
        return self.ei is not None and not self.st & BAD_STATUS and self.seq < SEQ_LIMIT

    @property
    def counters(self):
        """(import, export) Wh; no export counter (an import-only meter) is export 0."""
        return self.ei, 0 if self.ee is None else self.ee


class Series:
    """One meter's readings, sorted by time: finds the anchor of a boundary."""

    def __init__(self, readings, length=DEFAULT_LENGTH):
        self.length = check_length(length)
        self.readings = sorted(readings, key=lambda r: (r.t, r.seq))
        self._times = [r.t for r in self.readings]

    def anchor(self, boundary):
        """The first usable reading taken in ``[b*L, b*L + ANCHOR_DELAY)``, or None."""
        start = boundary * self.length
        i = bisect_left(self._times, start)
        while i < len(self.readings) and self._times[i] < start + ANCHOR_DELAY:
            if self.readings[i].usable:
                return self.readings[i]
            i += 1
        return None


@dataclass(frozen=True)
class ChainAnchor:
    """A meter's anchor state on chain (``MeterAnchors.anchor_of``)."""

    boundary: int = 0
    seq: int = 0
    ei: int = 0
    ee: int = 0
    open: int = 0  # intervals of its window still to settle (7: restart pending)
    import_left: int = 0
    export_left: int = 0
    gateway_id: int = 0

    @property
    def exists(self):
        return self.boundary != 0 or self.seq != 0

    def refusal(self, reading, boundary):
        """Why the contract would refuse ``reading`` as the next anchor (at ``boundary``)
        of this meter, or None: boundary or sequence number not after this anchor's
        (a gap), a counter below this anchor's (a counter decrease)."""
        if not self.exists:
            return None
        if boundary <= self.boundary or reading.seq <= self.seq:
            return GAP
        if self.open == RESTART_PENDING:
            return None
        ei, ee = reading.counters
        return None if ei >= self.ei and ee >= self.ee else COUNTER_DECREASE


@dataclass(frozen=True)
class Anchor:
    """A signed reading to give the contract: the anchor of ``boundary``; ``restart``: it
    starts a new window (the energy since the meter's previous anchor is not settled);
    ``before``: the interval before whose entries the contract must have it (the start
    of the window it opens or starts)."""

    boundary: int
    reading: Reading
    restart: bool
    before: int


@dataclass
class MeterPlan:
    """One meter over a run of intervals: the anchors to submit (in order), its energy
    per interval {interval: (import Wh, export Wh)}, and the intervals it is out of
    {interval: reason}."""

    anchors: list = field(default_factory=list)
    energy: dict = field(default_factory=dict)
    gaps: dict = field(default_factory=dict)


def _split(series, b, e, start, stop, seq):
    """Energies of intervals b .. e-1 from counters ``start`` at b and ``stop`` at e, with
    the anchors of the boundaries in between; None if one is missing or the counters go
    down (then the window cannot be split)."""
    counters = [start]
    for j in range(b + 1, e):
        r = series.anchor(j)
        if r is None or r.seq <= seq:
            return None
        seq = r.seq
        counters.append(r.counters)
    counters.append(stop)
    for (i0, e0), (i1, e1) in zip(counters, counters[1:], strict=False):
        if i1 < i0 or e1 < e0:
            return None
    return {b + k: (counters[k + 1][0] - counters[k][0], counters[k + 1][1] - counters[k][1])
            for k in range(e - b)}


def plan_meter(series, chain, first, end, window):
    """Plan one meter for intervals ``first`` .. ``end - 1``.

    ``series``: its :class:`Series`; ``chain``: its :class:`ChainAnchor`; ``window``: the
    longest window in intervals. Windows are as long as they can be (up to ``window``
    intervals, every boundary inside with an anchor, counters never going down) and lie
    inside the run, so the run's anchors and energies settle them in full. A window the
    chain holds open from ``first`` (a submission that got its anchors in, then failed)
    is settled as it is, if its readings still split it.
    """
    plan = MeterPlan()
    last = chain  # the contract's view after the anchors planned so far
    current = None  # (boundary, counters) to open the next window from
    b = first
    if chain.exists and chain.open not in (0, RESTART_PENDING) \
            and chain.boundary - chain.open == first and chain.boundary <= end:
        start = (chain.ei - chain.import_left, chain.ee - chain.export_left)
        split = _split(series, first, chain.boundary, start, (chain.ei, chain.ee), 0)
        if split is not None:
            plan.energy.update(split)
            current = (chain.boundary, (chain.ei, chain.ee))
            b = chain.boundary
    elif chain.exists and chain.open == 0 and first <= chain.boundary < end:
        current = (chain.boundary, (chain.ei, chain.ee))
    while b < end:
        if current is None or current[0] != b:
            reading = series.anchor(b)
            why = GAP if reading is None else last.refusal(reading, b)
            if why is not None:
                plan.gaps[b] = why
                b += 1
                continue
            plan.anchors.append(Anchor(b, reading, restart=True, before=b))
            last = ChainAnchor(b, reading.seq, *reading.counters)
            current = (b, reading.counters)
        # the window from b: as far as anchors go, counters never going down
        counters = [current[1]]
        seq = last.seq
        e = b
        reason = GAP
        while e < min(b + window, end):
            nxt = series.anchor(e + 1)
            if nxt is None:
                break
            ei, ee = nxt.counters
            if ei < counters[-1][0] or ee < counters[-1][1] or nxt.seq <= seq:
                reason = COUNTER_DECREASE
                break
            e += 1
            counters.append((ei, ee))
            seq = nxt.seq
        if e > b and (counters[-1][0] - counters[0][0] > MAX_WH
                      or counters[-1][1] - counters[0][1] > MAX_WH):
            e, reason = b, OVERFLOW
        if e == b:
            plan.gaps[b] = reason
            current = None
            b += 1
            continue
        end_reading = series.anchor(e)
        plan.anchors.append(Anchor(e, end_reading, restart=False, before=b))
        for j in range(b, e):
            (i0, e0), (i1, e1) = counters[j - b], counters[j - b + 1]
            plan.energy[j] = (i1 - i0, e1 - e0)
        last = ChainAnchor(e, end_reading.seq, *end_reading.counters)
        current = (e, end_reading.counters)
        b = e
    return plan
