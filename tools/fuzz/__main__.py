"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers in :mod:`tools.fuzz.targets`.

::

    python -m tools.fuzz --seconds 600            # every target, 600 s in all; out/bench/fuzz.json
    python -m tools.fuzz --runs 2000 cbor cose    # a bounded pass of two targets
    python -m tools.fuzz --replay FILE TARGET     # run one input, e.g. a crash artifact

Each target runs in its own process (libFuzzer owns the process it runs in), starting
from its seed corpus in tools/fuzz/corpus/TARGET (kept in the repository) and adding what
it finds to out/fuzz/corpus/TARGET. A crash (an exception the parser does not promise, or
a broken property) is written to out/fuzz/crashes/ and counted; turn it into a
regression test, then fix it.
"""

import argparse
import concurrent.futures
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tools.fuzz.targets import INSTRUMENTED, TARGETS, scratch_root, seed_folder

# make fuzz: SECONDS in all (default 600), every target, figures to out/bench/fuzz.json

# libFuzzer's status lines: "#1234  NEW  cov: 56 ft: 78 corp: 9/10b ..."
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.M)
_EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)", re.M)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
# What one input may take before libFuzzer calls it a hang (a crash).
INPUT_TIMEOUT_S = 10
MAX_INPUT_BYTES = 16384


def build(target):
    """The target's input function: a name of :data:`TARGETS`, or ``module:function``
    (a target kept elsewhere, e.g. by a test)."""
    if ":" in target:
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)()
    return TARGETS[target]()


def run_child(target, libfuzzer_args):
    """In the child process: instrument, build the target, hand over to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        one = build(target)
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()  # never returns: libFuzzer exits the process


def fuzz_target(target, seconds=None, runs=None, out=None, extra=(), seeds=None, env=None):
    """Fuzz one target in a child process; returns its figures (a dict)."""
    out = Path(out or scratch_root())
    seeds = seed_folder(target) if seeds is None else seeds
    corpus = out / "corpus" / target
    crashes = out / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    args = [f"-timeout={INPUT_TIMEOUT_S}", f"-max_len={MAX_INPUT_BYTES}",
            "-print_final_stats=1", f"-artifact_prefix={crashes}/{target}-", *extra]
    if seconds is not None:
        args.append(f"-max_total_time={max(1, int(seconds))}")
    if runs is not None:
        args.append(f"-runs={runs}")
    # New inputs go to the first folder; the seeds in the repository are only read.
    args += [str(corpus), str(seeds)]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", "--child", target, "--", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        env=dict(os.environ, PYTHONHASHSEED="0", **(env or {})),
    )
    elapsed = time.monotonic() - started
    log = proc.stdout
    (out / f"{target}.log").write_text(log)
    statuses = _STATUS.findall(log)
    executed = _EXECUTED.search(log)
    artifacts = _ARTIFACT.findall(log)
    result = {
        "execs": int(executed.group(1)) if executed else (int(statuses[-1][0]) if statuses
                                                          else 0),
        "coverage": int(statuses[-1][1]) if statuses else 0,
        "features": int(statuses[-1][2]) if statuses else 0,
        "corpus": int(statuses[-1][3]) if statuses else 0,
        "crashes": len(artifacts),
        "seconds": round(elapsed, 1),
        "exit_code": proc.returncode,
    }
    if artifacts:
        result["artifacts"] = artifacts
    if proc.returncode != 0 and not artifacts:
        # libFuzzer exited without writing an input: the target itself failed to start.
        result["crashes"] = 1
        result["error"] = log.strip().splitlines()[-20:]
    return result


def fuzz_all(targets, seconds_each=None, runs=None, jobs=2, out=None):
    """Fuzz ``targets`` for ``seconds_each`` and/or ``runs`` inputs each (whichever ends
    first), ``jobs`` at a time; returns ``{target: figures}``."""
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {t: pool.submit(fuzz_target, t, seconds_each, runs, out) for t in targets}
        return {t: f.result() for t, f in futures.items()}


def replay(path, target):
    """Run one input through ``target`` in this process (no instrumentation); raises
    what the target raises."""
    build(target)(Path(path).read_bytes())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        target, rest = argv[1], argv[3:]
        run_child(target, rest)
        return 0
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help=f"targets (default: all): {', '.join(TARGETS)}")
    p.add_argument("--seconds", type=float, help="fuzzing time in all, shared evenly")
    p.add_argument("--runs", type=int, help="inputs per target, at most")
    p.add_argument("--jobs", type=int, default=2, help="targets fuzzed at once")
    p.add_argument("--json", type=Path, help="write the figures here (e.g. out/bench/fuzz.json)")
    p.add_argument("--replay", type=Path, metavar="FILE", help="run one input of one target")
    args = p.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS and ":" not in t]
    if unknown:
        p.error(f"unknown target {', '.join(unknown)}; targets: {', '.join(TARGETS)}")
    if args.replay is not None:
        if len(args.targets) != 1:
            p.error("--replay FILE needs exactly one TARGET")
        replay(args.replay, args.targets[0])
        print(f"{args.replay}: no crash in {args.targets[0]}")
        return 0
    if args.seconds is None and args.runs is None:
        p.error("give --seconds N (in all) or --runs N (per target)")
    targets = args.targets or list(TARGETS)
    started = time.monotonic()
    each = None if args.seconds is None else args.seconds / len(targets)
    results = fuzz_all(targets, each, args.runs, args.jobs)
    report = {
        "targets": results,
        "total_seconds": round(sum(r["seconds"] for r in results.values()), 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "total_execs": sum(r["execs"] for r in results.values()),
        "total_crashes": sum(r["crashes"] for r in results.values()),
        "atheris": _atheris_version(),
    }
    for name, r in results.items():
        print(f"{name:14} {r['execs']:>10} execs  cov {r['coverage']:>5}  ft {r['features']:>6}"
              f"  corpus {r['corpus']:>5}  crashes {r['crashes']}  {r['seconds']:>6.1f} s")
        for artifact in r.get("artifacts", []):
            print(f"  crash: {artifact} (replay: python -m tools.fuzz --replay {artifact} "
                  f"{name})")
    print(f"total: {report['total_execs']} execs, {report['total_crashes']} crashes, "
          f"{report['total_seconds']} s of fuzzing in {report['wall_seconds']} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if report["total_crashes"] else 0


def _atheris_version():
    from importlib import metadata

    try:
        return metadata.version("atheris")
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
