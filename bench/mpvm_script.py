"""Run a benchmark script in the MicroPython VM (tools/mpvm/*.mjs) and read its result."""

import json
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_mpvm_script(name: str, *args: object) -> dict:
    """`node tools/mpvm/NAME ARGS...`; its last stdout line is a JSON object."""
    script = REPO / "tools" / "mpvm" / name
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found on PATH (needed for the MicroPython VM)")
    proc = subprocess.run([node, str(script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
