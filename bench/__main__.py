"""Run the benchmarks: `python -m bench [NAME ...]` (NAME: signing, firmware, ingest, chain,
provision, flood, demo, fleet, ...).

Each bench/bench_NAME.py has `run() -> dict`. Results go to out/bench/NAME.json; in
docs/benchmarks.md the table rows and the section of each benchmark run are rewritten
from its JSON, and the other benchmarks' are kept as they were.
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
    "fleet": [
        ("outage.day_outage_drain_min", "<=", 15,
         "a day's spools of 1,000 meters drained, minutes, from the measured rate"),
        ("outage.lost", "<=", 0, "readings lost in the drain"),
        ("outage.duplicates", "<=", 0, "readings stored twice in the drain"),
        ("steady.cpu_share", "<=", 0.05,
         "1,000 meters every 10 s: gateway CPU, share of one core"),
        ("steady.rss_mb", "<=", 150, "the same: resident memory of every gateway process, MB"),
        ("steady.fsyncs_per_reading", "<=", 0.1, "the same: fsyncs per reading"),
    ],
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


HEADER = [
    "# Benchmarks",
    "",
    "Written by `make bench` (`python -m bench`) from the JSON files under `out/bench/`.",
    "Ratios are measured against a baseline in the same run; absolute figures come from",
    "one 2-core machine and move with it.",
    "",
    "| benchmark | target | value | status |",
    "|---|---|---|---|",
]


def _parse_summary(text: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """An existing summary: its table rows and its sections (the lines after "## NAME"),
    each by benchmark name."""
    rows: dict[str, list[str]] = {}
    sections: dict[str, list[str]] = {}
    current = None
    fenced = False  # inside a ``` block (a JSON result): no headings there
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            current = line[3:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.startswith("| ") and not line.startswith(("| benchmark |", "|---")):
            rows.setdefault(line.split("|")[1].strip(), []).append(line)
    for lines in sections.values():  # the blank lines around a section are the writer's
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
    return rows, sections


def _rows(name: str, result: dict) -> list[str]:
    return [f"| {name} | `{key}` {op} {bound} ({what}) | {_value(result, key)} | "
            f"{_check(result, target)} |"
            for target in _targets(name) for key, op, bound, what in [target]]


def _section(name: str, result: dict) -> list[str]:
    lines = []
    doc = _module_doc(name)
    if doc:
        lines += [f"What `bench/bench_{name}.py` measures:", "", doc, ""]
    return lines + ["```json", json.dumps(result, indent=1), "```"]


def write_summary(names: list[str], out: Path = OUT, doc: Path = DOC) -> None:
    """Update ``doc`` for the benchmarks ``names`` (the ones just run) from their JSON
    under ``out``: their table rows and sections are written anew, every other
    benchmark's are kept as they are, so `python -m bench NAME` changes only NAME's.
    Results of other tools summarised here (out/bench/fuzz.json of `make fuzz`: no
    bench module) are refreshed from their JSON on every run."""
    rows, sections = _parse_summary(doc.read_text()) if doc.exists() else ({}, {})
    benches = set(available())
    update = set(names) | {p.stem for p in out.glob("*.json") if p.stem not in benches}
    for name in sorted(update):
        path = out / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        rows[name] = _rows(name, result)
        sections[name] = _section(name, result)
    lines = list(HEADER)
    for name in sorted(rows):
        lines += rows[name]
    for name in sorted(sections):
        lines += ["", f"## {name}", ""] + sections[name]
    doc.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {available()})")
    args = ap.parse_args(argv)
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
    write_summary(names, OUT, DOC)
    print(f"summary: {DOC.relative_to(REPO) if DOC.is_relative_to(REPO) else DOC}")
    if failed:
        print(f"targets not met: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
