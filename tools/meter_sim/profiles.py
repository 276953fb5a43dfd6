"""Load profiles: net active power (W, import positive, export negative) as a pure
function of simulated time and a seed.

The simulated clock is read as local solar time (noon = 12:00, 1970-01-01 a Thursday).
Randomness (clouds, appliances) comes from hashing ``(seed, channel, time bucket)``, so a
profile gives the same value for the same ``(t, seed)`` whatever order it is asked in.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

DAY_S = 86400.0


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    power_W: Callable[[float, int], float]  # (t, seed) -> net W, import positive
    exports: bool  # whether this site ever exports


@lru_cache(maxsize=16384)
def _draw(seed: int, channel: str, bucket: int) -> tuple[float, float]:
    rng = random.Random(f"{seed}:{channel}:{bucket}")
    return rng.random(), rng.random()


def noise(seed: int, channel: str, t: float, period: float) -> float:
    """Smooth deterministic noise in [-1, 1], changing over about ``period`` seconds."""
    x = t / period
    k = math.floor(x)
    f = x - k
    f = f * f * (3.0 - 2.0 * f)
    a = 2.0 * _draw(seed, channel, k)[0] - 1.0
    b = 2.0 * _draw(seed, channel, k + 1)[0] - 1.0
    return a + (b - a) * f


def event(seed: int, channel: str, t: float, period: float, probability: float,
          duration: float) -> bool:
    """True while a ``duration``-second event runs; each ``period`` slot holds one event
    with ``probability``, at a deterministic offset in the slot."""
    k = math.floor(t / period)
    happens, offset = _draw(seed, channel, k)
    if happens >= probability:
        return False
    start = k * period + offset * (period - duration)
    return start <= t < start + duration


def hour_of_day(t: float) -> float:
    return (t % DAY_S) / 3600.0


def weekday(t: float) -> int:
    """0 = Monday ... 6 = Sunday."""
    return (math.floor(t / DAY_S) + 3) % 7


def _bell(h: float, mean: float, width: float) -> float:
    return math.exp(-0.5 * ((h - mean) / width) ** 2)


def _ramp(h: float, a: float, b: float) -> float:
    return min(1.0, max(0.0, (h - a) / (b - a)))


def clear_sky(t: float) -> float:
    """Clear-sky PV output as a fraction of peak: 0 at night, a sun curve by day whose
    length and height follow the season (mid-latitude: 16 h in June, 8 h in December)."""
    doy = time.gmtime(t).tm_yday
    season = math.cos(2.0 * math.pi * (doy - 172) / 365.25)  # +1 at the June solstice
    day_length = 12.0 + 4.0 * season
    sunrise = 12.0 - day_length / 2.0
    h = hour_of_day(t) - sunrise
    if not 0.0 < h < day_length:
        return 0.0
    return math.sin(math.pi * h / day_length) ** 1.5 * (0.65 + 0.35 * season)


def pv_output_W(t: float, seed: int, peak_W: float) -> float:
    """PV generation (>= 0): clear sky times cloud cover (a cloudiness per day plus
    passing clouds of a few minutes)."""
    sky = clear_sky(t)
    if sky == 0.0:
        return 0.0
    cloudy_day = 0.5 + 0.5 * noise(seed, "cloud-day", t, DAY_S)
    passing = max(0.0, noise(seed, "cloud", t, 420.0))
    attenuation = 1.0 - 0.35 * cloudy_day - 0.45 * passing
    return peak_W * sky * max(0.1, attenuation)


def household_load_W(t: float, seed: int) -> float:
    """A home: base load and fridge, a morning and a larger evening peak, kettle bursts."""
    h = hour_of_day(t)
    base = 140.0 + 40.0 * noise(seed, "base", t, 1800.0)
    fridge = 90.0 if (t + 173.0 * (seed % 13)) % 2400.0 < 900.0 else 0.0
    peaks = 1100.0 * _bell(h, 7.3, 0.6) + 1600.0 * _bell(h, 19.0, 1.3)
    peaks *= 0.8 + 0.2 * noise(seed, "peaks", t, 600.0)
    activity = max(_bell(h, 7.3, 0.8), _bell(h, 19.0, 1.8), 0.5 * _bell(h, 13.0, 1.5))
    kettle = 2000.0 if event(seed, "kettle", t, 1200.0, 0.1 + 0.5 * activity, 180.0) else 0.0
    return base + fridge + peaks + kettle


def away_by_day_load_W(t: float, seed: int) -> float:
    """A home whose residents are at work 08:00-17:30 on weekdays: only the base load and
    the fridge then; otherwise a home like :func:`household_load_W`."""
    h = hour_of_day(t)
    if weekday(t) < 5 and 8.0 <= h < 17.5:
        base = 140.0 + 40.0 * noise(seed, "base", t, 1800.0)
        fridge = 90.0 if (t + 173.0 * (seed % 13)) % 2400.0 < 900.0 else 0.0
        return base + fridge
    return household_load_W(t, seed)


def school_load_W(t: float, seed: int) -> float:
    """A school: base load always; lessons Monday to Friday 08:00-16:30 and the kitchen
    around noon."""
    base = 550.0 + 120.0 * noise(seed, "base", t, 1800.0)
    if weekday(t) >= 5:
        return base
    h = hour_of_day(t)
    open_ = _ramp(h, 7.0, 8.0) * (1.0 - _ramp(h, 16.0, 17.0))
    lessons = open_ * (7000.0 + 1500.0 * noise(seed, "lessons", t, 900.0))
    kitchen = 3500.0 * _bell(h, 12.0, 0.6) * open_
    return base + lessons + kitchen


_INVERTER_STANDBY_W = 4.0


def _pv_producer(t: float, seed: int) -> float:
    return _INVERTER_STANDBY_W - pv_output_W(t, seed, 3600.0)


def _household(t: float, seed: int) -> float:
    return household_load_W(t, seed)


def _school(t: float, seed: int) -> float:
    return school_load_W(t, seed)


def _pv_household(t: float, seed: int) -> float:
    return household_load_W(t, seed) - pv_output_W(t, seed, 4500.0)


def _pv_away_by_day(t: float, seed: int) -> float:
    return away_by_day_load_W(t, seed) - pv_output_W(t, seed, 5000.0)


_BATTERY_CHARGE_W = 3000.0
_BATTERY_EVENING_EXPORT_W = 2000.0


def _pv_battery(t: float, seed: int) -> float:
    # The battery soaks up the surplus (up to 3 kW) from 09:00 until it is full at 13:30;
    # from 17:00 to 21:00 it covers the home and feeds 2 kW into the street.
    load = household_load_W(t, seed)
    pv = pv_output_W(t, seed, 6000.0)
    h = hour_of_day(t)
    net = load - pv
    if 9.0 <= h < 13.5 and net < 0.0:
        net = min(0.0, net + _BATTERY_CHARGE_W)
    elif 17.0 <= h < 21.0:
        net = -pv - _BATTERY_EVENING_EXPORT_W
    return net


PROFILES = {
    p.name: p
    for p in (
        Profile("pv-producer", "a 3.6 kWp PV system on its own meter: exports by day "
                "following the sun and clouds, a few W of inverter standby import at night",
                _pv_producer, exports=True),
        Profile("household", "a home: imports only, base load, morning and evening peaks, "
                "kettle bursts", _household, exports=False),
        Profile("school", "a school: imports 7-11 kW during school hours on weekdays, "
                "base load at night and at weekends", _school, exports=False),
        Profile("pv-household", "a home with 4.5 kWp PV: exports around noon, imports "
                "mornings and evenings", _pv_household, exports=True),
        Profile("pv-away-by-day", "a home with 5 kWp PV whose residents are at work "
                "08:00-17:30 on weekdays: exports most of its PV by day, imports in the "
                "evening", _pv_away_by_day, exports=True),
        Profile("pv-battery", "a home with 6 kWp PV and a battery that charges from the "
                "surplus until 13:30 and feeds 2 kW into the street from 17:00 to 21:00 "
                "(an evening export)", _pv_battery, exports=True),
    )
}
