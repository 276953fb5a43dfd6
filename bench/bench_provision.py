"""The installer's path on a virtual board: from a blank board to the first reading
verified at a real gateway, with the real commands (docs/installer.md).

A gateway process (`wattshare gateway run`), a simulated SDM120CT (household profile) and a
blank virtual board (MicroPython only) on this machine; then `wattshare meter deploy`,
`wattshare device invite` and `wattshare meter provision` run as an installer types them
(readings every 10 s, the default). Results:

- wall_s: from the start of the deploy to the moment provision reports the first reading
  verified at the gateway (target: at most 120 s). Dominated by the copy over the raw REPL
  (the virtual board refuses raw-paste, so mpremote's transport paces its writes at 256
  bytes per 10 ms) and by the firmware's first reading interval.
- deploy_s: `meter deploy` on the blank board (copy + read back; the compiled firmware is
  reused from out/firmware-cache when the sources did not change, as for an installer's
  second board; compiling adds about 2 s); files_copied and bytes_copied: what it copied.
- provision_s: the whole `meter provision`, commissioning record included;
  first_reading_s: from its start to the first verified reading.
- redeploy_s: `meter deploy` again with nothing changed (hashes only).
"""

import re
import subprocess
import tempfile
import time
from pathlib import Path

from tools.local_site import REPO, WATTSHARE, GatewayProcess, Meters
from tools.virtual_board import BoardProcess


def _timed(argv: list[str], env=None, marks: dict | None = None) -> tuple[str, float, dict]:
    """Run a command; (stdout, seconds, when each line matching a mark was printed)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env)
    seen: dict = {}
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        for name, pattern in (marks or {}).items():
            if name not in seen and re.search(pattern, line):
                seen[name] = time.monotonic()
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(argv[2:])} failed:\n{''.join(lines)}{err}")
    return "".join(lines), time.monotonic() - t0, seen


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="wattshare-bench-provision-") as tmp:
        gateway = GatewayProcess(Path(tmp) / "gateway")
        meters = Meters()
        try:
            with BoardProcess(Path(tmp) / "board", meters.start()) as board:
                t0 = time.monotonic()
                out, deploy_s, _ = _timed([*WATTSHARE, "meter", "deploy", "--port",
                                           board.port, "--meter", "sdm120ct"])
                copied = re.search(r"deploy: (\d+) files copied \(([\d.]+) KB\)", out)
                code = gateway.invite("Bench meter")
                _, provision_s, marks = _timed(
                    [*WATTSHARE, "meter", "provision", "--port", board.port, "--gateway",
                     f"127.0.0.1:{gateway.coap_port}", "--gateway-http", gateway.http_url,
                     "--code", code, "--meter", "sdm120ct", "--site", "consumer"],
                    marks={"first": r"^first reading: ", "start": r"^gateway: "})
                wall_s = marks["first"] - t0
                _, redeploy_s, _ = _timed([*WATTSHARE, "meter", "deploy", "--port",
                                           board.port, "--meter", "sdm120ct"])
        finally:
            meters.close()
            gateway.stop()
    return {
        "wall_s": round(wall_s, 1),
        "deploy_s": round(deploy_s, 1),
        "provision_s": round(provision_s, 1),
        "first_reading_s": round(marks["first"] - marks["start"], 1),
        "files_copied": int(copied.group(1)) if copied else None,
        "bytes_copied": round(float(copied.group(2)) * 1024) if copied else None,
        "redeploy_s": round(redeploy_s, 1),
        "interval_s": 10,
        "target_wall_s": 120,
    }
