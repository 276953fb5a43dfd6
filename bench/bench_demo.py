"""`make demo` timed: the full street (10 members) over the whole simulated day, run in
a temporary work folder (the user's out/demo is left alone).

- wall_s: the demo from start to report (set-up, the day, proofs, report), without
  `make setup` (a fresh clone adds it: about 1-3 minutes here, mostly pip and npm);
- simulated_day_wall_s: from starting the shared clock to the day's last interval
  settled on chain (target: under 180 s);
- setup_s, report_s: commissioning (gateway init, device provisioning and registration,
  chain deploy, meters, producer key, prepaid balances) and the proofs and report;
- meters, intervals_settled, intervals_with_gaps, readings, proofs_verified: what the
  run produced, from its report.json and the gateway's status.

    .venv/bin/python -m bench demo
"""

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run():
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "demo"
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "tools.demo", "--work", str(work)],
                              cwd=REPO, capture_output=True, text=True, timeout=1200)
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"the demo failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
        timings = json.loads((work / "timings.json").read_text())
        report = json.loads((work / "report.json").read_text())
    readings = re.findall(r"readings ([\d,]+) \|", proc.stdout)
    gaps = re.search(r"(\d+) intervals settled on chain, (?:(\d+) with gaps|no gaps)",
                     proc.stdout)
    return {
        "wall_s": timings["wall_s"],
        "simulated_day_wall_s": timings["simulated_day_wall_s"],
        "setup_s": timings["setup_s"],
        "report_s": timings["report_s"],
        "process_wall_s": round(elapsed, 1),
        "meters": timings["meters"],
        "intervals_settled": int(gaps.group(1)) if gaps else None,
        "intervals_with_gaps": int(gaps.group(2) or 0) if gaps else None,
        "readings": int(readings[-1].replace(",", "")) if readings else None,
        "proofs_verified": f"{report['proofs']['verified']}/{report['proofs']['total']}",
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
