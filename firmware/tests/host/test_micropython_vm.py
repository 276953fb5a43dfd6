"""The shared core tests, run again inside a real MicroPython VM.

firmware/tests/core/ runs under CPython through pytest and, here, inside the
MicroPython 1.27 WebAssembly port under Node (tools/mpvm/run_core_tests.mjs).
A core test failing in MicroPython fails this test, and so `make test`.
"""

import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CORE_TESTS = REPO / "firmware" / "tests" / "core"


def _count_core_tests() -> int:
    n = 0
    for path in CORE_TESTS.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        n += sum(
            1
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        )
    return n


def test_core_tests_pass_in_micropython_vm():
    proc = subprocess.run(
        ["node", str(REPO / "tools" / "mpvm" / "run_core_tests.mjs")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout)
    print(proc.stderr)
    m = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.M)
    assert m, "no summary line from the MicroPython runner"
    passed, failed = int(m.group(1)), int(m.group(2))
    assert "MicroPython v1.27" in proc.stdout
    assert failed == 0 and proc.returncode == 0, proc.stdout[-4000:]
    # every shared test function ran in the VM (none lost to an import error)
    assert passed == _count_core_tests()
