"""`make demo` runs end to end: live firmware in MicroPython VMs, the gateway, anvil."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end():
    proc = subprocess.run([sys.executable, "-m", "tools.demo", "--seconds", "8"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "0 bad" in out and " good," in out  # live readings re-verified
    assert "kind=p2p, producer=1, consumer=2" in out  # resident -> school settled
    assert "VALID: the reading is signed by its meter and anchored on chain" in out
