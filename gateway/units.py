"""What a person reads: energy in kWh, tokens with the token's symbol and decimals,
times and settlement intervals in the community's local time, money at its tariffs.

One place for these conversions: the CLI, the status page, the community page, the
grid operator's CSV and the demo's report all format through here. Everything is exact
until the last step: energy stays integer Wh and tokens integer token units (the
token's smallest unit) until a figure is shown.
"""

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import ConfigError


def kwh(wh, signed=False):
    """Integer Wh as kWh with sensible decimals: every Wh below 10 kWh (``0.079 kWh``),
    then 10 Wh (``12.35 kWh``), then 100 Wh (``1234.6 kWh``). ``None`` -> ``-``."""
    if wh is None:
        return "-"
    value = wh / 1000
    size = abs(value)
    places = 3 if size < 10 else 2 if size < 1000 else 1
    sign = "+" if signed and wh > 0 else ""
    return f"{sign}{value:.{places}f} kWh"


def token_amount(units, decimals, places=6):
    """Integer token units as a decimal string in whole tokens, exact up to ``places``
    decimals and rounded half up beyond (integer arithmetic, no float): 11850000000000000
    units of an 18-decimal token -> ``0.01185``. Trailing zeros are dropped."""
    if units is None:
        return "-"
    negative = units < 0
    units = abs(int(units))
    shown = min(places, decimals)
    scale = 10 ** (decimals - shown)
    q, r = divmod(units, scale)
    if 2 * r >= scale and scale > 1:
        q += 1
    whole, frac = divmod(q, 10**shown)
    text = str(whole)
    if shown:
        digits = str(frac).rjust(shown, "0").rstrip("0")
        if digits:
            text += "." + digits
    if q == 0 and units:  # not zero, but below what is shown
        smallest = "0." + "0" * (shown - 1) + "1" if shown else "1"
        return ("-" if negative else "") + "<" + smallest
    return ("-" if negative and q else "") + text


def tokens(units, token, places=6):
    """Token units with the token's symbol: ``0.01185 SUN``. ``token``: a :class:`Token`."""
    if units is None:
        return "-"
    return f"{token_amount(units, token.decimals, places)} {token.symbol}"


class Token:
    """Symbol and decimals of the community token (read from the token contract)."""

    __slots__ = ("symbol", "decimals", "address")

    def __init__(self, symbol, decimals, address=None):
        self.symbol, self.decimals, self.address = symbol, decimals, address

    def format(self, units, places=6):
        return tokens(units, self, places)

    def as_json(self):
        return {"symbol": self.symbol, "decimals": self.decimals, "address": self.address}


def money(amount, currency):
    """An amount of the community's currency (a float from the tariffs): ``3.42 EUR``."""
    return f"{amount:.2f} {currency}"


# ---- local time


def zone(name):
    """The time zone ``name`` (IANA, e.g. ``Europe/Paris``; ``""`` = this machine's local
    time zone). :class:`ConfigError` naming the zone if it is unknown."""
    if not name:
        return None  # datetime.astimezone() with no argument: the system's local zone
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"time zone {name!r} is unknown (an IANA name such as "
                          "\"Europe/Paris\" or \"UTC\", or \"\" for this machine's)") from None


def localize(t, tz):
    """Unix seconds -> an aware datetime in ``tz`` (None = the system's zone)."""
    return datetime.fromtimestamp(t, UTC).astimezone(tz)


def local_time(t, tz, seconds=False):
    """``2025-06-17 12:15 CEST`` (``None`` -> ``never``)."""
    if t is None:
        return "never"
    fmt = "%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z"
    return localize(t, tz).strftime(fmt)


def clock_time(t, tz):
    """``12:15`` (the day is said elsewhere)."""
    return localize(t, tz).strftime("%H:%M")


def interval_span(interval, length, tz, with_date=True):
    """Settlement interval ``interval`` (``length`` s) as local start-end:
    ``2025-06-17 12:00-12:15 CEST``."""
    start, end = interval * length, (interval + 1) * length
    a, b = localize(start, tz), localize(end, tz)
    text = f"{a:%H:%M}-{b:%H:%M}"
    if with_date:
        text = f"{a:%Y-%m-%d} {text} {a:%Z}"
    return text


def day_bounds(day, tz):
    """(start, end) unix seconds of the local calendar day ``day`` (``YYYY-MM-DD`` or a
    date); the end is the next local midnight (a DST day is 23 or 25 h long)."""
    if isinstance(day, str):
        try:
            day = datetime.strptime(day, "%Y-%m-%d").date()
        except ValueError:
            raise ConfigError(f"date {day!r}: expected YYYY-MM-DD") from None
    start = datetime(day.year, day.month, day.day)
    end = start + timedelta(days=1)
    if tz is None:
        return int(time.mktime(start.timetuple())), int(time.mktime(end.timetuple()))
    return (int(start.replace(tzinfo=tz).timestamp()), int(end.replace(tzinfo=tz).timestamp()))


def local_day(t, tz):
    """The local calendar date (``YYYY-MM-DD``) of unix time ``t``."""
    return localize(t, tz).strftime("%Y-%m-%d")


def day_intervals(day, length, tz):
    """(first, last) settlement intervals of a local day (inclusive)."""
    start, end = day_bounds(day, tz)
    return start // length, (end - 1) // length


def ago(seconds):
    """``42 s ago``, ``7 min ago``, ``3 h ago``, ``2 days ago``."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 2 * 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"
