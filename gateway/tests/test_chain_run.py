"""`wattshare chain run` keeps its node alive: the embedded anvil restarted from its state
file after a SIGKILL, a SIGKILL of everything losing no confirmed settlement (the
outbox and the chain agree afterwards, `chain status --json` says so), an external node
retried with a clear message until it answers; the supervisor's back-off; the published
node URL checked without hiding programming errors."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from chain_community import STEP
from eth_account import Account
from gw_testbed import MeterKey
from wattcore import exchange

from gateway import config as gwconfig
from gateway import store
from gateway.chain import node, rpc
from gateway.chain.anvil import Anvil, free_loopback_port
from gateway.chain.errors import ChainIdMismatch
from gateway.verify import Credential, Policy, check_batch
from gateway.writer import GroupStore
from tools.cli import main

L = 900
PASSPHRASE = "correct horse battery"
REPO = Path(__file__).resolve().parents[2]


class _Process:
    """A `wattshare` subprocess whose output lines are collected as they come."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.cli", *argv], cwd=REPO,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.out, self.err = [], []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, x=lines: x.extend(iter(s.readline, "")),
                             daemon=True).start()

    def logs(self, msg):
        """The JSON log records with message ``msg`` so far."""
        out = []
        for line in list(self.err):
            if line.startswith("{"):
                record = json.loads(line)
                if record["msg"] == msg:
                    out.append(record)
        return out

    def wait_for(self, condition, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers catch the last lines
                raise AssertionError(f"exited ({self.proc.returncode}) before {what}:\n"
                                     + "".join(self.out[-20:] + self.err[-20:]))
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}\n"
                                     + "".join(self.out[-20:] + self.err[-20:]))
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _children(pid):
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _gone(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _set_config(path, **chain):
    doc = tomllib.loads(path.read_text())
    doc["chain"].update(chain)
    path.write_text(gwconfig.render(doc))


def _store(db, meter, t_from, t_to, seq0, counters):
    conn = store.open_store(db)
    try:
        signed = [meter.reading(seq0 + i, t=t, ei=counters(t)[0], ee=counters(t)[1], p=0)
                  for i, t in enumerate(range(t_from, t_to + 1, STEP))]
        cred = Credential(meter.device_id, meter.pubkey, 10**6, False)
        for k in range(0, len(signed), 32):
            checked = check_batch(exchange.encode_batch(signed[k:k + 32]), cred,
                                  int(time.time()), Policy(300, 10**9))
            assert checked.reason is None
            GroupStore(conn).commit([("store", 0, meter.device_id, checked.readings, 0)])
    finally:
        conn.close()
    return seq0 + len(signed)


def _confirmed(cfg):
    conn = store.open_store(cfg.db_path)
    try:
        return {k for (k,) in conn.execute(
            "SELECT interval FROM chain_outbox WHERE state = 'confirmed'")}
    finally:
        conn.close()


@pytest.mark.slow
def test_chain_run_restarts_its_node_and_a_kill_of_everything_loses_nothing_confirmed(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WATTSHARE_KEY_PASSPHRASE", PASSPHRASE)
    data = tmp_path / "gw"
    assert main(["gateway", "init", "--data", str(data)]) == 0
    cfgp = data / gwconfig.CONFIG_NAME
    _set_config(cfgp, poll_s=0.1, state_interval_s=1)
    keys = Anvil(tmp_path).account_keys()
    producer, school = MeterKey(), MeterKey()
    for m, label, owner in ((producer, "pv-roof", 3), (school, "school", 4)):
        assert main(["device", "add", "--config", str(cfgp), "--id", m.device_id.hex(),
                     "--pubkey", m.pubkey.hex(), "--model", "SDM120CT", "--owner",
                     Account.from_key(keys[owner]).address, "--label", label]) == 0
    first = int(time.time()) // L - 10
    t0 = first * L
    # the community was set up before the hours replayed below: the node's clock goes
    # back for the set-up, then to now (the state file keeps the blocks)
    with Anvil(data) as live:
        (data / node.URL_FILE).write_text(live.url)
        port = rpc.Web3Chain.connect(live.url, live.chain_id)
        port.request("evm_setTime", [t0 - L])
        assert main(["chain", "deploy", "--config", str(cfgp)]) == 0
        for m in (producer, school):
            assert main(["community", "add-meter", "--config", str(cfgp),
                         "--device", m.device_id.hex()]) == 0
        port.request("evm_setTime", [int(time.time())])
        port.request("evm_mine", [])
    (data / node.URL_FILE).unlink()
    capsys.readouterr()
    cfg = gwconfig.load(cfgp)

    def readings(k_from, k_to, seqs):
        return [_store(cfg.db_path, m, k_from * L, k_to * L, seq, counters)
                for m, seq, counters in zip(
                    (producer, school), seqs,
                    (lambda t: (10, 50 + 12_000 * (t - t0) // 3600),
                     lambda t: (10 + 3_000 * (t - t0) // 3600, 0)), strict=True)]

    seqs = readings(first, first + 2, [1, 1])  # intervals first, first+1
    env = dict(os.environ, WATTSHARE_KEY_PASSPHRASE=PASSPHRASE)
    run = _Process(["chain", "run", "--config", str(cfgp)], env)
    try:
        done = lambda rows: lambda: all(f"intervals {a}-{b}: confirmed\n" in run.out  # noqa: E731
                                        for a, b in rows)
        run.wait_for(done([(first, first + 1)]), "the first intervals confirmed")
        (anvil_pid,) = _children(run.proc.pid)

        # 1. the node is SIGKILLed: chain run restarts it from its state file
        os.kill(anvil_pid, signal.SIGKILL)
        run.wait_for(lambda: run.logs("embedded chain node restarted from its state file"),
                     "the node restarted")
        (exited,) = run.logs("embedded chain node exited; restarting it from its state file")
        assert exited["exit_status"] == -signal.SIGKILL and exited["retry_in_s"] == 1.0
        assert exited["state_file"] == str(data / "anvil-state.json")
        (new_pid,) = _children(run.proc.pid)
        assert new_pid != anvil_pid
        # it goes on: intervals that close later are submitted on the restarted node
        readings(first + 3, first + 5, seqs)
        run.wait_for(done([(first + 2, first + 4)]), "intervals after the restart confirmed")

        # 2. everything is SIGKILLed at once (a power cut): nothing confirmed is lost
        os.kill(run.proc.pid, signal.SIGKILL)
        os.kill(new_pid, signal.SIGKILL)
        run.proc.wait()
        deadline = time.monotonic() + 10
        while not _gone(new_pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        run.stop()
    confirmed = _confirmed(cfg)
    assert confirmed == {first, first + 2}  # the first interval of each submission
    # the node comes back from its state file (here under `chain status`): the outbox
    # and the chain agree
    assert main(["chain", "status", "--config", str(cfgp), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["outbox"] == {"confirmed": 2}
    assert status["agreement"] == {
        "block": status["node"]["block"], "confirmed": 2, "on_chain": 2,
        "missing_on_chain": [], "other_root": [], "on_chain_not_confirmed": [],
        "agree": True}


def test_chain_run_waits_for_an_external_node_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("WATTSHARE_KEY_PASSPHRASE", PASSPHRASE)
    data = tmp_path / "gw"
    assert main(["gateway", "init", "--data", str(data)]) == 0
    url = f"http://127.0.0.1:{free_loopback_port()}"  # nothing there
    cfgp = data / gwconfig.CONFIG_NAME
    _set_config(cfgp, rpc_url=url, poll_s=0.1, contract="0x" + "11" * 20)
    run = _Process(["chain", "run", "--config", str(cfgp)], dict(os.environ))
    try:
        retries = lambda: run.logs("chain node unreachable; retrying")  # noqa: E731
        run.wait_for(lambda: len(retries()) >= 2, "two attempts")
        first, second = retries()[:2]
        assert first["url"] == second["url"] == url
        assert "node unreachable" in first["error"] and url in first["error"]
        assert (first["retry_in_s"], second["retry_in_s"]) == (1.0, 2.0)  # back-off
        assert (first["attempt"], second["attempt"]) == (1, 2)
        run.proc.send_signal(signal.SIGTERM)  # systemd's stop: a clean exit, no traceback
        assert run.proc.wait(10) == 0
        time.sleep(0.2)
        assert not any("Traceback" in line for line in run.err)
    finally:
        run.stop()


def _cfg(tmp_path, url):
    return SimpleNamespace(data_dir=tmp_path, chain=SimpleNamespace(
        rpc_url=url, chain_id=31337, state_interval_s=30))


def test_supervisor_backs_off_then_reconnects(tmp_path, caplog):
    caplog.set_level(logging.INFO, "wattshare.chain")
    port = free_loopback_port()
    now = [1000.0]
    sup = node.Supervisor(_cfg(tmp_path, f"http://127.0.0.1:{port}"), clock=lambda: now[0],
                          backoff_first_s=1, backoff_max_s=4)
    with sup:  # not there at start: no error, a retry planned
        delays = []
        for _ in range(5):
            assert sup.port() is None
            delays.append(sup.wait_s(poll_s=10))
            now[0] += delays[-1]
        assert delays == [1, 2, 4, 4, 4]
        assert all(r.fields["url"].endswith(f":{port}") for r in caplog.records
                   if r.msg == "chain node unreachable; retrying")
        with Anvil(tmp_path / "node", port=port):
            chain = sup.port()
            assert chain is not None and chain.get_block_number() == 0
            sup.ok()
            assert "chain node answers again" in caplog.text
            assert sup.wait_s(poll_s=10) == 10
    with Anvil(tmp_path / "other", port=port, chain_id=1337):
        with pytest.raises(ChainIdMismatch), node.Supervisor(_cfg(tmp_path, f"http://127.0.0.1:{port}")):
            pass  # a wrong chain is a configuration error, not retried


def test_published_url_that_does_not_answer_says_why(tmp_path, monkeypatch):
    assert node._live_url(tmp_path, 31337) == (None, f"{tmp_path / 'anvil.url'}: no node "
                                                     "published")
    port = free_loopback_port()
    (tmp_path / "anvil.url").write_text(f"http://127.0.0.1:{port}\n")
    url, why = node._live_url(tmp_path, 31337)
    assert url is None and "node unreachable" in why and str(port) in why
    with Anvil(tmp_path / "node") as live:
        (tmp_path / "anvil.url").write_text(live.url)
        assert node._live_url(tmp_path, 31337) == (live.url, None)
        assert node._live_url(tmp_path, 1)[1].endswith(
            "wrong node URL or wrong [chain] chain_id")

        def bug(self):
            raise TypeError("a programming error")

        monkeypatch.setattr(rpc.Web3Chain, "check_chain_id", bug)
        with pytest.raises(TypeError):  # not taken for a stale file
            node._live_url(tmp_path, 31337)
