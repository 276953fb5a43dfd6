"""Simulated clocks: callables returning simulated unix time in seconds.

The meter model reads time only through such a callable, so tests can step time by hand
and an emulated device can run the simulation faster than real time. ``SharedClock`` is
the one clock of an accelerated run (``$WATTSHARE_SIM_CLOCK``, :mod:`gateway.simclock`)
that the gateway, the chain link and the emulated devices read too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway import simclock


class SimClock:
    """Simulated time running ``speed`` times faster than ``monotonic``, from ``start``."""

    def __init__(self, start: float, speed: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic):
        if not speed > 0:
            raise ValueError(f"speed {speed!r}: must be > 0")
        self.start = float(start)
        self.speed = float(speed)
        self._monotonic = monotonic
        self._origin = monotonic()

    def __call__(self) -> float:
        return self.start + (self._monotonic() - self._origin) * self.speed


class ManualClock:
    """Simulated time that moves only when told to (tests, lock-step emulation)."""

    def __init__(self, t: float = 0.0):
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (>= 0); return the new time."""
        if seconds < 0:
            raise ValueError(f"advance({seconds!r}): time never goes backwards")
        self.t += seconds
        return self.t


class SharedClock:
    """The shared simulated clock ``EPOCH0 + (time.time() - REAL0) * SPEED`` of
    ``$WATTSHARE_SIM_CLOCK``: every process of a run computes the same time from it."""

    def __init__(self, spec: simclock.SimClock):
        self.spec = spec
        self.speed = spec.speed

    @classmethod
    def from_env(cls) -> SharedClock | None:
        """The clock of ``$WATTSHARE_SIM_CLOCK``, or None when it is not set; a malformed
        value raises :class:`gateway.errors.ConfigError` naming it."""
        spec = simclock.active()
        return None if spec is None else cls(spec)

    def __call__(self) -> float:
        return self.spec.now()
