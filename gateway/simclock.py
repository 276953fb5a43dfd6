"""One simulated clock for every process of an accelerated run (tests, demos).

``WATTSHARE_SIM_CLOCK="EPOCH0,REAL0,SPEED"`` (unix seconds, unix seconds, a factor > 0):

    simulated unix time = EPOCH0 + (time.time() - REAL0) * SPEED

Every part of Wattshare that reads the wall clock for protocol or settlement purposes
reads it here: the gateway (ingest ``now``, ``GET /t``, the skew and age checks, received
times, status "last seen"), ``wattshare chain run`` (which intervals are due; with the
embedded anvil, the node's clock is moved forward to this time before each transaction),
the meter simulator (``tools.meter_sim``) and the emulated device (``tools/mpvm/device.mjs``
reads the same variable for its RTC and timers). Because every process computes the same
function of the same wall clock, they agree without talking to each other, and a device
whose RTC the gateway sets stays monotonic and in step with its meter's counters.

Unset (or empty): real time, :func:`now` is ``time.time()``.

Make a value with ``python -m gateway.simclock --speed 60 [--start 11:50]`` (prints
``EPOCH0,REAL0,SPEED`` for this moment; ``--start HH:MM`` is the next such UTC time, so
the simulated clock is ahead of the chain's own), e.g.::

    export WATTSHARE_SIM_CLOCK=$(python -m gateway.simclock --speed 60 --start 11:50)
"""

import argparse
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.errors import ConfigError

ENV = "WATTSHARE_SIM_CLOCK"
MAX_SPEED = 1e6


@dataclass(frozen=True)
class SimClock:
    """A parsed ``WATTSHARE_SIM_CLOCK``: simulated time as a function of the wall clock."""

    epoch0: float
    real0: float
    speed: float

    def at(self, real):
        """Simulated unix time at wall-clock time ``real``."""
        return self.epoch0 + (real - self.real0) * self.speed

    def now(self):
        return self.at(time.time())

    def value(self):
        """The environment value that describes this clock."""
        return f"{self.epoch0!r},{self.real0!r},{self.speed!r}"


def parse(text):
    """``"EPOCH0,REAL0,SPEED"`` -> :class:`SimClock`; :class:`ConfigError` naming the
    variable and what is expected."""
    parts = text.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        epoch0, real0, speed = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{ENV}={text!r}: expected EPOCH0,REAL0,SPEED (three numbers: "
                          "simulated unix time at wall-clock unix time REAL0, and the "
                          "speed-up), e.g. from `python -m gateway.simclock --speed 60`"
                          ) from None
    for name, v, given in (("EPOCH0", epoch0, parts[0]), ("REAL0", real0, parts[1])):
        if not 0 <= v < 2**40:
            raise ConfigError(f"{ENV}={text!r}: {name} {given.strip()} is not a unix time "
                              "in seconds")
    if not 0 < speed <= MAX_SPEED:
        raise ConfigError(f"{ENV}={text!r}: SPEED {parts[2].strip()} is not in "
                          f"(0, {MAX_SPEED:g}]")
    return SimClock(epoch0, real0, speed)


_cache = (None, None)  # (env text, parsed clock): the variable is read on every call


def active():
    """The :class:`SimClock` of ``$WATTSHARE_SIM_CLOCK``, or None (real time)."""
    global _cache
    text = os.environ.get(ENV) or None
    if text != _cache[0]:
        _cache = (text, parse(text) if text else None)
    return _cache[1]


def now():
    """Unix time, simulated if ``$WATTSHARE_SIM_CLOCK`` is set, else real."""
    clock = active()
    return time.time() if clock is None else clock.now()


def now_ms():
    return int(now() * 1000)


def speed():
    """Simulated seconds per real second (1.0 when not simulated)."""
    clock = active()
    return 1.0 if clock is None else clock.speed


def start(speed, epoch0=None, real0=None):
    """A :class:`SimClock` running ``speed`` times faster from ``epoch0`` (default: now)."""
    real0 = time.time() if real0 is None else real0
    return parse(f"{real0 if epoch0 is None else epoch0!r},{real0!r},{speed!r}")


def _speed(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= MAX_SPEED:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, {MAX_SPEED:g}]")
    return value


def _moment(text, now=None):
    """'now' -> None; 'HH:MM' -> the next such UTC time (today or tomorrow); else ISO 8601
    (UTC unless an offset is given)."""
    if text == "now":
        return None
    if len(text) == 5 and text[2] == ":" and text.replace(":", "").isdigit():
        hours, minutes = int(text[:2]), int(text[3:])
        if hours < 24 and minutes < 60:
            now = time.time() if now is None else now
            day = int(now) // 86400 * 86400
            moment = day + hours * 3600 + minutes * 60
            return moment if moment >= now else moment + 86400
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'now', HH:MM (the next such time, UTC) or an ISO 8601 time "
            "(e.g. 2025-06-17T12:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m gateway.simclock",
        description="Print a WATTSHARE_SIM_CLOCK value (EPOCH0,REAL0,SPEED) starting now: "
                    "export it to every process of an accelerated run (gateway, chain run, "
                    "meter simulator, emulated devices) so they share one simulated clock.")
    ap.add_argument("--speed", type=_speed, required=True, metavar="X",
                    help="simulated seconds per real second")
    ap.add_argument("--start", type=_moment, default=None, metavar="TIME",
                    help="simulated time now: 'now' (default), HH:MM (the next such time, "
                         "UTC: a simulated clock ahead of the chain's) or ISO 8601, UTC unless "
                         "an offset is given")
    args = ap.parse_args(argv)
    print(start(args.speed, args.start).value())
    return 0


if __name__ == "__main__":
    sys.exit(main())
