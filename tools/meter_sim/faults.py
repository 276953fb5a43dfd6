"""Fault injection for the simulated meter: which requests go wrong, and how.

A fault spec reads ``KIND[=VALUE][:PROBABILITY | @N[,N...]]``:

    crc:0.1              corrupt the reply CRC on 10 % of requests
    no-reply@3,4         do not answer requests 3 and 4 (counted from 1)
    exception=2:0.5      answer half the requests with exception code 2 (default 4)
    wrong-address=9@1    answer request 1 as slave 9 (default: the next address)
    nan=voltage_dV:0.2   a NaN in that field's registers (default power_W; all ones
                         for integer registers, which have no NaN)
    reversed-ct          every request (no trigger): power sign flipped, import and
                         export swapped, as with a CT mounted backwards

Only requests addressed to the simulated slave count. Probabilities are drawn from one
random stream per fault, seeded, so the same seed and request sequence give the same
faults.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NoReturn

from tools.board_config import Meter
from tools.errors import ConfigError

FAULT_KINDS = {
    "no-reply": "no reply at all (the client times out)",
    "crc": "reply with a corrupted CRC",
    "exception": "exception reply, code =VALUE (default 4, server device failure)",
    "wrong-address": "reply from slave address =VALUE (default: the next address)",
    "nan": "NaN in field =VALUE (default power_W); all ones in integer registers",
    "reversed-ct": "power sign flipped and import/export swapped",
}
_TAKES_VALUE = ("exception", "wrong-address", "nan")
DEFAULT_EXCEPTION_CODE = 4


@dataclass(frozen=True)
class Fault:
    """One parsed fault spec; with neither ``probability`` nor ``requests`` it applies to
    every request."""

    kind: str
    value: int | str | None = None
    probability: float | None = None
    requests: frozenset[int] | None = None
    spec: str = ""

    def __str__(self) -> str:
        return self.spec or self.kind


def _fail(spec: str, problem: str) -> NoReturn:
    raise ConfigError(f"fault {spec!r}: {problem}")


def parse_fault(spec: str) -> Fault:
    """Parse ``KIND[=VALUE][:PROBABILITY | @N[,N...]]``; ConfigError naming the problem."""
    head, probability, requests = spec.strip(), None, None
    if "@" in head:
        head, _, numbers = head.partition("@")
        try:
            requests = frozenset(int(n) for n in numbers.split(","))
        except ValueError:
            _fail(spec, f"@{numbers}: expected request numbers like @3 or @1,5,9")
        if not requests or min(requests) < 1:
            _fail(spec, f"@{numbers}: request numbers start at 1")
    elif ":" in head:
        head, _, text = head.partition(":")
        try:
            probability = float(text)
        except ValueError:
            _fail(spec, f"probability {text!r} is not a number in [0, 1]")
        if not 0.0 <= probability <= 1.0:
            _fail(spec, f"probability {text} is not in [0, 1]")
    kind, eq, text = head.partition("=")
    if kind not in FAULT_KINDS:
        _fail(spec, f"{kind!r} is not one of {', '.join(FAULT_KINDS)}")
    value: int | str | None = None
    if eq:
        if kind not in _TAKES_VALUE:
            _fail(spec, f"{kind} takes no =value (only {', '.join(_TAKES_VALUE)} do)")
        if kind == "nan":
            value = text
        else:
            try:
                number = int(text, 0)
            except ValueError:
                _fail(spec, f"={text}: expected an integer")
            if kind == "exception" and not 1 <= number <= 255:
                _fail(spec, f"exception code {number} is not in 1..255")
            if kind == "wrong-address" and not 0 <= number <= 255:
                _fail(spec, f"address {number} is not in 0..255")
            value = number
    return Fault(kind, value, probability, requests, spec.strip())


@dataclass
class ActiveFaults:
    """The faults applied to one request."""

    no_reply: bool = False
    crc: bool = False
    exception_code: int | None = None
    reply_address: int | None = None
    nan_fields: tuple[str, ...] = ()
    reversed_ct: bool = False
    names: list[str] = field(default_factory=list)


class FaultPlan:
    """Decides, request by request, which faults apply (deterministic for a seed)."""

    def __init__(self, faults: Iterable[Fault] = (), seed: int = 0,
                 meter: Meter | None = None, slave: int | None = None):
        self.faults = list(faults)
        for fault in self.faults:
            if fault.kind == "nan" and meter is not None:
                name = fault.value or "power_W"
                if name not in meter.fields:
                    _fail(fault.spec, f"field {name!r} is not one of {meter.id}'s fields: "
                                      f"{', '.join(meter.fields)}")
            if fault.kind == "wrong-address" and slave is not None and fault.value == slave:
                _fail(fault.spec, f"address {slave} is the simulated slave's own address")
        self._slave = slave if slave is not None else 1
        self._rngs = [random.Random(f"{seed}:fault:{i}:{f.kind}")
                      for i, f in enumerate(self.faults)]

    def decide(self, request_number: int) -> ActiveFaults:
        """Faults for the ``request_number``-th request (from 1); call once per request,
        in order, for the probabilities to be reproducible."""
        active = ActiveFaults()
        for fault, rng in zip(self.faults, self._rngs, strict=True):
            if fault.probability is not None:
                hit = rng.random() < fault.probability
            elif fault.requests is not None:
                hit = request_number in fault.requests
            else:
                hit = True
            if not hit:
                continue
            active.names.append(fault.kind)
            if fault.kind == "no-reply":
                active.no_reply = True
            elif fault.kind == "crc":
                active.crc = True
            elif fault.kind == "exception":
                active.exception_code = (fault.value if isinstance(fault.value, int)
                                         else DEFAULT_EXCEPTION_CODE)
            elif fault.kind == "wrong-address":
                active.reply_address = (fault.value if isinstance(fault.value, int)
                                        else self._slave % 247 + 1)
            elif fault.kind == "nan":
                active.nan_fields += (str(fault.value or "power_W"),)
            elif fault.kind == "reversed-ct":
                active.reversed_ct = True
        return active
