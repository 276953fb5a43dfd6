"""Structured logging (JSON lines or key=value) and a rate limiter for noisy sources.

Log a fact with fields::

    log.info("reading rejected", extra={"fields": {"device": "...", "reason": "..."}})

Bad input is counted always but logged at most once per source per window
(:class:`RateLimiter`), so a misbehaving meter or a flood of garbage cannot fill the
disk. aiocoap's own per-datagram warnings go through :class:`RateLimitFilter`.
"""

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record):
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record):
        parts = [
            "ts=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level=" + record.levelname.lower(),
            "logger=" + record.name,
            "msg=" + json.dumps(record.getMessage()),
        ]
        for key, value in (getattr(record, "fields", None) or {}).items():
            text = str(value)
            if not text or any(c in text for c in ' "='):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level="info", fmt="json", stream=None):
    """Route every logger to one handler on ``stream`` (stderr: journald picks it up)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    coap = logging.getLogger("coap-server")
    for old in [f for f in coap.filters if isinstance(f, RateLimitFilter)]:
        coap.removeFilter(old)
    coap.addFilter(RateLimitFilter())
    coap.setLevel(max(root.level, logging.INFO))


class RateLimiter:
    """At most one event per key per ``window`` seconds, plus a global cap per window.

    :meth:`allow` returns None when the event must not be logged, else the number of
    events of that key suppressed since the last one logged.
    """

    def __init__(self, window=60.0, global_max=100, max_keys=10000, clock=time.monotonic):
        self.window = window
        self.global_max = global_max
        self.max_keys = max_keys
        self.clock = clock
        self._keys = {}  # key -> [window start, suppressed]
        self._global_start = None
        self._global_count = 0

    def allow(self, key):
        now = self.clock()
        if self._global_start is None or now - self._global_start >= self.window:
            self._global_start, self._global_count = now, 0
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.window:
            entry[1] += 1
            return None
        if self._global_count >= self.global_max:
            if entry is not None:
                entry[1] += 1
            return None
        if entry is None and len(self._keys) >= self.max_keys:
            self._keys = {k: e for k, e in self._keys.items() if now - e[0] < self.window}
            if len(self._keys) >= self.max_keys:
                return None
        suppressed = entry[1] if entry is not None else 0
        self._keys[key] = [now, 0]
        self._global_count += 1
        return suppressed


class RateLimitFilter(logging.Filter):
    """Lets each message template through at most once per window (for aiocoap's logs)."""

    def __init__(self, window=60.0):
        super().__init__()
        self._limiter = RateLimiter(window=window, global_max=50)

    def filter(self, record):
        if record.levelno >= logging.ERROR:
            return True
        suppressed = self._limiter.allow(record.msg)
        if suppressed is None:
            return False
        if suppressed:
            record.fields = dict(getattr(record, "fields", None) or {}, suppressed=suppressed)
        return True
