"""The bounded fuzz pass of `make test`: every target of tools/fuzz runs under atheris
(libFuzzer) from its seed corpus for a few seconds and must not crash; every input that
once crashed a target replays clean. `make fuzz` runs the same targets for longer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.fuzz import targets
from tools.fuzz.__main__ import fuzz_target

ROOT = Path(__file__).resolve().parents[2]
REGRESSIONS = ROOT / "tools" / "fuzz" / "regressions"
SECONDS_EACH = 1.5  # 15 targets, two at a time: about 17 s of wall time
RUNS_EACH = 200_000  # the time bound ends the fast targets first


@pytest.mark.slow
def test_every_target_survives_a_bounded_fuzz_pass(tmp_path):
    # `make fuzz SECONDS=N` runs this command; here N is small.
    report_path = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", "--seconds", str(SECONDS_EACH * len(targets.TARGETS)),
         "--runs", str(RUNS_EACH), "--jobs", "2", "--json", str(report_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, WATTSHARE_FUZZ_OUT=str(tmp_path / "out")))
    report = json.loads(report_path.read_text())
    results = report["targets"]
    crashed = {name: r for name, r in results.items() if r["crashes"]}
    details = {name: (r.get("error") or (tmp_path / "out" / f"{name}.log").read_text()[-3000:])
               for name, r in crashed.items()}
    assert not crashed and proc.returncode == 0, json.dumps(details, indent=1) + proc.stdout
    assert set(results) == set(targets.TARGETS)
    assert report["total_seconds"] == pytest.approx(sum(r["seconds"] for r in results.values()),
                                                    abs=0.5)
    for name, r in results.items():
        seeds = len(list(targets.seed_folder(name).iterdir()))
        assert seeds >= 1, f"{name}: no seed corpus"
        # each seed ran, and the fuzzer then explored beyond them
        assert r["execs"] > seeds and r["coverage"] > 0 and r["corpus"] >= 1, (name, r)


def _regressions():
    return sorted((p.parent.name, p) for p in REGRESSIONS.glob("*/*") if p.is_file())


def test_every_target_has_seeds_and_every_regression_a_target():
    assert {p.name for p in targets.CORPUS.iterdir()} == set(targets.TARGETS)
    assert _regressions(), "the crashes found so far are kept as regression inputs"
    assert {target for target, _ in _regressions()} <= set(targets.TARGETS)


@pytest.mark.parametrize("target,path", _regressions(), ids=lambda v: getattr(v, "name", v))
def test_inputs_that_once_crashed_replay_clean(target, path):
    targets.TARGETS[target]()(path.read_bytes())


CRASHING_TARGET = """
def target():
    def one(data):
        if data[:2] == b"ok":
            {}[data]  # a KeyError: no parser promises that
    return one
"""


def test_a_crash_is_found_counted_and_written_out(tmp_path):
    # The runner itself, on a target that raises on any input starting with "ok".
    (tmp_path / "crashing_target.py").write_text(CRASHING_TARGET)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "a").write_bytes(b"no")
    (seeds / "b").write_bytes(b"ok then")
    result = fuzz_target("crashing_target:target", runs=100, out=tmp_path / "out",
                         seeds=seeds, env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert result["crashes"] == 1 and result["exit_code"] != 0, result
    (artifact,) = result["artifacts"]
    assert Path(artifact).read_bytes() == b"ok then"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", "--replay", artifact, "crashing_target:target"],
        capture_output=True, text=True, cwd=ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "KeyError" in proc.stderr
