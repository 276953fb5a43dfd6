"""The chain node restarted in the middle of an interval: first the embedded anvil alone
is killed (``wattshare chain run`` restarts it from its state file), then ``chain run``
and its node together (a power cut of the chain side; started again as the service
would be). Every interval settles, each exactly once, none skipped, and ``wattshare
chain status --json`` finds the outbox and the chain in agreement."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hil_tests.rig import INTERVAL_S, settlement_logs, wait_until


def anvil_pid(parent: int) -> int | None:
    """The anvil process ``chain run`` (pid ``parent``) runs, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"anvil" in cmdline:
            return int(entry.name)
    return None


def mid_interval(site) -> None:
    """Wait for the middle third of the current interval (simulated time)."""
    wait_until(lambda: INTERVAL_S // 3 < site.clock.now() % INTERVAL_S < 2 * INTERVAL_S // 3,
               INTERVAL_S / site.speed + 5, "the middle of an interval")


def test_chain_node_restarted_mid_interval_settles_each_interval_once(chain_site):
    site = chain_site
    dev = site.add("roof", "sdm120ct", "pv-household", seed=50, on_chain=True)
    dev.start()

    def settled_with_meter():
        return sorted(k for k, s in site.settled().items() if s["meters"] == 1)

    wait_until(lambda: len(settled_with_meter()) >= 1, 90, "a first interval settled",
               site.settled)

    # the node alone, killed mid-interval: chain run restarts it from its state
    mid_interval(site)
    killed_in = site.interval_now()
    chain_run = site.procs["chain run"]
    pid = anvil_pid(chain_run.pid)
    assert pid is not None, "no anvil under chain run"
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: (anvil_pid(chain_run.pid) or pid) != pid, 60,
               "chain run to restart its node", lambda: site.log_tail("chain run"))
    wait_until(lambda: max(settled_with_meter(), default=0) >= killed_in + 1, 90,
               "intervals settled after the node's restart", site.settled)

    # chain run and its node killed together mid-interval, then started again
    mid_interval(site)
    killed_in = site.interval_now()
    site.stop_process("chain run", kill=True)
    site.wait_sim(INTERVAL_S / 3)
    site.start_chain_run()
    wait_until(lambda: max(settled_with_meter(), default=0) >= killed_in + 1, 90,
               "intervals settled after chain run's restart", site.settled)
    dev.stop()

    settled = settled_with_meter()  # site.settled() fails on an interval settled twice
    assert settled == list(range(settled[0], settled[-1] + 1)), f"skipped: {settled}"
    submitted = [(f["gateway"], f["first_interval"])
                 for name, f, _ in settlement_logs(site.rpc_url, site.data)
                 if name == "Submitted"]
    assert len(submitted) == len(set(submitted)), "an interval submitted twice"
    status = site.cli_json("chain", "status")
    agreement = status["agreement"]
    assert agreement.get("agree") is True, agreement
    assert "embedded chain node" in site.log_tail("chain run", 100_000)
