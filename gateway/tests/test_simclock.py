"""The shared simulated clock ($WATTSHARE_SIM_CLOCK): its formula and errors, the
gateway's time under it (GET /t, status), and the embedded anvil's clock moved forward
by the chain link. The whole accelerated path (device, meter, gateway, chain) runs in
hil_tests/test_live_path.py."""

import argparse
import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from wattcore import exchange

from gateway import simclock
from gateway.errors import ConfigError
from gateway.ingest import GET, CoapRequest, Ingest
from gateway.metrics import GatewayMetrics


def test_simulated_time_is_epoch0_plus_scaled_wall_clock(monkeypatch):
    monkeypatch.setenv(simclock.ENV, "1750161600,1000,60")
    clock = simclock.active()
    assert clock == simclock.SimClock(1750161600.0, 1000.0, 60.0)
    assert clock.at(1000) == 1750161600
    assert clock.at(1010.5) == 1750161600 + 630
    before = time.time()
    t = simclock.now()
    after = time.time()
    assert clock.at(before) <= t <= clock.at(after)
    assert simclock.speed() == 60.0
    assert simclock.parse(clock.value()) == clock


def test_unset_or_empty_means_real_time(monkeypatch):
    monkeypatch.delenv(simclock.ENV, raising=False)
    assert simclock.active() is None and simclock.speed() == 1.0
    assert abs(simclock.now() - time.time()) < 1.0
    monkeypatch.setenv(simclock.ENV, "")
    assert simclock.active() is None


@pytest.mark.parametrize("value, message", [
    ("60", "expected EPOCH0,REAL0,SPEED"),
    ("1,2,3,4", "expected EPOCH0,REAL0,SPEED"),
    ("a,b,c", "expected EPOCH0,REAL0,SPEED"),
    ("1750161600,1000,0", "SPEED 0 is not in (0, 1e+06]"),
    ("1750161600,1000,-2", "SPEED -2 is not in"),
    ("-5,1000,2", "EPOCH0 -5 is not a unix time"),
    ("1750161600,1e13,2", "REAL0 1e13 is not a unix time"),
])
def test_a_malformed_value_is_refused_naming_the_variable(monkeypatch, value, message):
    monkeypatch.setenv(simclock.ENV, value)
    with pytest.raises(ConfigError) as e:
        simclock.now()
    assert str(e.value).startswith(f"WATTSHARE_SIM_CLOCK={value!r}: ")
    assert message in str(e.value)


def test_start_at_a_time_of_day_is_the_next_one():
    noon = datetime(2025, 6, 17, 12, 0, tzinfo=UTC).timestamp()
    assert simclock._moment("11:50", now=noon) == noon + 86400 - 600  # tomorrow
    assert simclock._moment("12:30", now=noon) == noon + 1800  # later today
    assert simclock._moment("12:00", now=noon) == noon
    assert simclock._moment("now") is None
    with pytest.raises(argparse.ArgumentTypeError, match="is not 'now', HH:MM"):
        simclock._moment("25:00")


def test_the_command_prints_a_value_starting_now():
    start = datetime(2025, 6, 17, 12, 0, tzinfo=UTC).timestamp()
    before = time.time()
    out = subprocess.run([sys.executable, "-m", "gateway.simclock", "--speed", "60",
                          "--start", "2025-06-17T12:00"], capture_output=True, text=True,
                         check=True).stdout
    clock = simclock.parse(out.strip())
    assert clock.epoch0 == start and clock.speed == 60.0
    assert before <= clock.real0 <= time.time()
    bad = subprocess.run([sys.executable, "-m", "gateway.simclock", "--speed", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "argument --speed: 0 is not in (0, 1e+06]" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_gateway_answers_get_t_with_simulated_time(monkeypatch):
    epoch0 = 1750161600.0
    monkeypatch.setenv(simclock.ENV, f"{epoch0},{time.time()},100")
    ingest = Ingest(policy=None, writer=None, metrics=GatewayMetrics())
    get_t = CoapRequest(GET, (exchange.PATH_TIME,), None, b"")
    response = asyncio.run(ingest.handle(get_t))
    assert response.code == exchange.CONTENT
    t = exchange.decode_response(response.payload)["time"]
    assert epoch0 <= t <= simclock.now() < epoch0 + 3600  # 2025, not today's date
    monkeypatch.delenv(simclock.ENV)
    response = asyncio.run(ingest.handle(get_t))
    assert abs(exchange.decode_response(response.payload)["time"] - time.time()) < 2


def test_the_embedded_node_clock_follows_simulated_time_forward_only(monkeypatch, tmp_path):
    from gateway.chain import node as chain_node
    from gateway.chain import rpc
    from gateway.chain.anvil import Anvil

    with Anvil(tmp_path) as anvil:
        port = rpc.Web3Chain.connect(anvil.url, anvil.chain_id)

        def mine():
            port.request("evm_mine", [])
            return int(port.get_block_header("latest")["timestamp"], 16)

        real = mine()
        monkeypatch.delenv(simclock.ENV, raising=False)
        assert chain_node.follow_sim_clock(port) is None  # real time: nothing to do
        ahead = real + 30 * 86400  # a month ahead, at 1000x
        monkeypatch.setenv(simclock.ENV, f"{ahead},{time.time()},1000")
        target = chain_node.follow_sim_clock(port)
        assert target is not None and target >= ahead
        stamp = mine()
        assert target <= stamp <= simclock.now() + 1
        # a simulated time behind the chain's never moves its clock back
        monkeypatch.setenv(simclock.ENV, f"{real - 86400},{time.time()},1")
        assert chain_node.follow_sim_clock(port) is None
        assert mine() >= stamp
