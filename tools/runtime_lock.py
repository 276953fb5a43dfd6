"""requirements-gateway.lock: the pins of requirements.lock that the runtime needs.

``make setup-gateway`` (a gateway on a Raspberry Pi) installs the project's runtime
dependencies (``[project] dependencies`` of pyproject.toml) and what they depend on, at
the versions requirements.lock pins, and nothing of the ``dev`` extra (test and type-check
tools). This module derives that list from the installed distributions' metadata::

    python -m tools.runtime_lock            # rewrite requirements-gateway.lock
    python -m tools.runtime_lock --check    # exit 1 if it is out of date

``native_packages()`` lists the runtime packages that are not pure Python: each must
publish an aarch64 wheel for CPython 3.11 (checked by hand when one is added: see
docs/gateway.md).
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from tools.toml_schema import read as read_toml

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
GATEWAY_LOCK = REPO / "requirements-gateway.lock"
HEADER = ("# The runtime pins of requirements.lock (no test or type-check tools), for a gateway:\n"
          "# `make setup-gateway`. Written by `python -m tools.runtime_lock`; do not edit.\n")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_key(name)] = f"{name}=={version}"
    return pins


def runtime_closure() -> dict[str, str]:
    """Distribution key -> installed version, for the runtime dependencies and theirs."""
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    env["extra"] = ""
    pyproject, _ = read_toml(REPO / "pyproject.toml")
    wanted = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    seen: dict[str, str] = {}
    while wanted:
        req = wanted.pop()
        if _key(req.name) in seen or (req.marker and not req.marker.evaluate(env)):
            continue
        dist = distribution(req.name)
        seen[_key(req.name)] = dist.version
        wanted += [Requirement(r) for r in dist.requires or []]
    return seen


def gateway_lock_text() -> str:
    closure = runtime_closure()
    pins = _lock(LOCK)
    lines = [pin for key, pin in pins.items() if key in closure]
    return HEADER + "\n".join(lines) + "\n"


def native_packages() -> list[str]:
    """Runtime distributions installed from a platform wheel (not pure Python)."""
    native = []
    for key in runtime_closure():
        wheel = distribution(key).read_text("WHEEL") or ""
        if "Root-Is-Purelib: false" in wheel:
            native.append(key)
    return sorted(native)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.runtime_lock", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check the file is up to date")
    args = ap.parse_args(argv)
    text = gateway_lock_text()
    if args.check:
        if GATEWAY_LOCK.read_text() != text:
            print(f"{GATEWAY_LOCK.name} is out of date: python -m tools.runtime_lock",
                  file=sys.stderr)
            return 1
        return 0
    GATEWAY_LOCK.write_text(text)
    print(f"{GATEWAY_LOCK.name}: {text.count('==')} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
