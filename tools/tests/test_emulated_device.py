"""The emulated device's clock options: an accelerated device only with the run's shared
clock ($WATTSHARE_SIM_CLOCK), whose speed it cannot contradict. (That the device's RTC
then stays monotonic and settles energy through a real gateway is
hil_tests/test_live_path.py.)"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _device(tmp_path, *extra, sim_clock=None):
    env = {k: v for k, v in os.environ.items() if k != "WATTSHARE_SIM_CLOCK"}
    if sim_clock is not None:
        env["WATTSHARE_SIM_CLOCK"] = sim_clock
    return subprocess.run(
        [sys.executable, "-m", "tools.emulated_device", "--storage", str(tmp_path / "dev"),
         "--meter", "sdm120ct", *extra], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60)


@pytest.mark.parametrize("extra, sim_clock, message", [
    (["--speed", "60", "--meter-tcp", "127.0.0.1:9"], None,
     "--speed 60 without WATTSHARE_SIM_CLOCK: the gateway would keep real time"),
    (["--speed", "30", "--meter-tcp", "127.0.0.1:9"], "1750161600,{now},60",
     "--speed 30 differs from WATTSHARE_SIM_CLOCK (speed 60)"),
    (["--meter-tcp", "127.0.0.1:9"], "1750161600,60",
     'WATTSHARE_SIM_CLOCK="1750161600,60": expected EPOCH0,REAL0,SPEED'),
    (["--meter-tcp", "127.0.0.1:9"], "1750161600,{now},0", "SPEED 0 is not in (0, 1e6]"),
], ids=["speed-alone", "speed-differs", "malformed", "zero-speed"])
def test_a_clock_the_gateway_would_not_share_is_refused(tmp_path, extra, sim_clock, message):
    value = None if sim_clock is None else sim_clock.format(now=time.time())
    run = _device(tmp_path, *extra, sim_clock=value)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_the_speed_of_the_shared_clock_is_accepted(tmp_path):
    run = _device(tmp_path, "--speed", "60", "--provision",
                  sim_clock=f"1750161600,{time.time()},60")
    assert run.returncode == 0, run.stderr
    assert "device_id=5753a4c138f1e2d0 public_key=04" in run.stdout
