"""Run the benchmarks: `python -m bench [NAME ...]` (NAME: signing, firmware, ingest, chain,
provision, flood, demo).

Each bench/bench_NAME.py has `run() -> dict`. Results go to out/bench/NAME.json and
docs/benchmarks.md is rewritten from every JSON file present under out/bench/.
Figures are ratios measured in one run where possible; absolute times depend on
the machine.
"""

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "out" / "bench"
DOC = REPO / "docs" / "benchmarks.md"

# What each benchmark must show (the targets from the issues), for the summary.
TARGETS = {
    "signing": ("speedup", ">=", 3.0, "table method vs plain double-and-add in the MicroPython VM"),
    "firmware": ("peak_heap_above_idle_bytes", "<", 48 * 1024, "heap above idle during a cycle"),
    "ingest": ("ratio_per_core_at_8", ">=", 0.5, "readings/s per core at 8/msg vs verify limit"),
    "chain": [
        ("gas_per_reading_steady", "<=", 250,
         "gas per reading at 256 meters, device signatures checked on chain, settled"),
        ("gas_per_reading_by_meters.10", "<=", 250, "the same at 10 meters"),
    ],
    "provision": ("wall_s", "<=", 120, "blank virtual board to first verified reading, s"),
    "flood": ("one_source_p50_ms", "<", 100, "honest meter's p50 under a 60k/s flood (was 412 ms)"),
    "demo": ("simulated_day_wall_s", "<", 180, "make demo: the simulated day, wall seconds"),
}


def available() -> list[str]:
    return sorted(p.stem[len("bench_") :] for p in (REPO / "bench").glob("bench_*.py"))


def _targets(name: str) -> list[tuple]:
    """A benchmark's targets: (key, op, bound, what); a key may name a nested value
    ("a.b" is result["a"]["b"])."""
    t = TARGETS.get(name, [])
    return t if isinstance(t, list) else [t]


def _value(result: dict, key: str):
    value: object = result
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _check(result: dict, target: tuple) -> str:
    key, op, bound, _ = target
    v = _value(result, key)
    if not isinstance(v, (int, float)):
        return "not measured"
    ok = {">=": v >= bound, "<": v < bound, "<=": v <= bound}[op]
    return "met" if ok else "NOT met"


def _meets(name: str, result: dict) -> str:
    statuses = [_check(result, t) for t in _targets(name)]
    if not statuses:
        return ""
    for bad in ("NOT met", "not measured"):
        if bad in statuses:
            return bad
    return "met"


def _module_doc(name: str) -> str:
    """The benchmark module's docstring (what its figures mean), or "" if it has none."""
    try:
        module = importlib.import_module(f"bench.bench_{name}")
    except ImportError:
        return ""
    return (module.__doc__ or "").strip()


def write_summary() -> None:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`) from the JSON files under `out/bench/`.",
        "Ratios are measured against a baseline in the same run; absolute figures come from",
        "one 2-core machine and move with it.",
        "",
        "| benchmark | target | value | status |",
        "|---|---|---|---|",
    ]
    details = []
    for path in sorted(OUT.glob("*.json")):
        name = path.stem
        result = json.loads(path.read_text())
        for target in _targets(name):
            key, op, bound, what = target
            lines.append(f"| {name} | `{key}` {op} {bound} ({what}) | "
                         f"{_value(result, key)} | {_check(result, target)} |")
        details += ["", f"## {name}", ""]
        doc = _module_doc(name)
        if doc:
            details += [f"What `bench/bench_{name}.py` measures:", "", doc, ""]
        details += ["```json", json.dumps(result, indent=1), "```"]
    DOC.write_text("\n".join(lines + details) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {available()})")
    args = ap.parse_args()
    names = args.names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        print(f"bench {name}: running ...", flush=True)
        t0 = time.monotonic()
        result = importlib.import_module(f"bench.bench_{name}").run()
        result.setdefault("host", f"{platform.machine()} Python {platform.python_version()}")
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        status = _meets(name, result)
        print(f"bench {name}: {time.monotonic() - t0:.1f} s -> out/bench/{name}.json {status}")
        if status == "NOT met":
            failed.append(name)
    write_summary()
    print(f"summary: {DOC.relative_to(REPO)}")
    if failed:
        print(f"targets not met: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
