"""The embedded anvil node: start, deterministic accounts, state across restarts,
shutdown on SIGTERM / interpreter exit, clear errors. Real anvil on loopback."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from chain_testbed import deploy, read_counter, read_root, set_root
from eth_account import Account

from gateway.chain import anvil as anvil_mod
from gateway.chain import proof, rpc
from gateway.chain.anvil import DEFAULT_CHAIN_ID, Anvil, default_binary
from gateway.chain.errors import AnvilError, AnvilNotInstalled

GATEWAY = "0x" + "5a" * 20
ROOT = bytes(range(32))


def _wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


def _gone(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # exited; a zombie waits for a reaper that may be absent


def test_anvil_starts_on_loopback_with_fixed_chain_id_and_accounts(tmp_path):
    with Anvil(tmp_path) as node:
        assert node.url.startswith("http://127.0.0.1:")
        chain = rpc.Web3Chain.connect(node.url, DEFAULT_CHAIN_ID)
        accounts = chain.request("eth_accounts", [])
        expected = [Account.from_key(k).address.lower() for k in node.account_keys()]
        assert [a.lower() for a in accounts] == expected
        # anvil's well-known first development account
        assert expected[0] == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        assert chain.get_block_number() == 0
        pid = node.pid
    assert node.port is None and not node.running()
    _wait_until(lambda: _gone(pid), 5, "anvil exits after the context")


def test_state_survives_restart(tmp_path):
    with Anvil(tmp_path) as node:
        key = node.account_keys()[0]
        chain = rpc.Web3Chain.connect(node.url, node.chain_id)
        contract = deploy(chain, key)
        receipt = set_root(chain, key, contract, 7, GATEWAY, ROOT)
        header = chain.get_block_header(receipt.block_number)
        code = chain.request("eth_getCode", [contract, "latest"])

        node.restart()
        chain = rpc.Web3Chain.connect(node.url, node.chain_id)
        assert chain.get_block_number() == receipt.block_number
        assert chain.get_block_header(receipt.block_number) == header  # same hashes
        assert chain.request("eth_getCode", [contract, "latest"]) == code
        assert read_root(chain, contract, 7, GATEWAY) == ROOT
        assert read_counter(chain, contract) == 1
        # historical state kept (--preserve-historical-states): a proof at the old block
        proven = proof.proven_storage(
            chain, contract, proof.vyper_hashmap_slot(2, 7, GATEWAY), receipt.block_number,
            block_hash=receipt.block_hash)
        assert proven.word == ROOT
        # the account nonce carried over: a new transaction lands
        set_root(chain, key, contract, 8, GATEWAY, ROOT)
        assert read_counter(chain, contract) == 2
    assert (tmp_path / "anvil-state.json").stat().st_size > 0


_CHILD = textwrap.dedent("""
    import sys
    import urllib.request
    from gateway.chain.anvil import Anvil
    node = Anvil(sys.argv[1]).start()
    def mine(n):
        body = b'{"jsonrpc":"2.0","id":1,"method":"anvil_mine","params":["%s"]}' % hex(n).encode()
        urllib.request.urlopen(urllib.request.Request(
            node.url, body, {"Content-Type": "application/json"}), timeout=5).read()
    mine(5)
    node.checkpoint()
    mine(2)  # not in the state file until the next checkpoint
    print(node.pid, flush=True)
    if sys.argv[2] == "exit":
        sys.exit(0)  # no stop(): the atexit hook must do it
    sys.stdin.read()  # wait for SIGTERM (default action: die without atexit)
""")


@pytest.mark.parametrize("how", ["sigterm", "exit"])
def test_gateway_process_end_stops_anvil_and_keeps_state(tmp_path, how):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), how],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        anvil_pid = int(child.stdout.readline())
        if how == "sigterm":
            child.send_signal(signal.SIGTERM)
        assert child.wait(10) == (-signal.SIGTERM if how == "sigterm" else 0)
        _wait_until(lambda: _gone(anvil_pid), 10, "anvil exits with its parent")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with Anvil(tmp_path) as node:
        head = rpc.Web3Chain.connect(node.url, node.chain_id).get_block_number()
    # a clean exit writes the state; a parent killed by a signal leaves the last
    # checkpoint (anvil itself never writes the file: it is always whole)
    assert head == (5 if how == "sigterm" else 7)


def test_block_time_mines_on_an_interval(tmp_path):
    with Anvil(tmp_path, block_time=1) as node:
        chain = rpc.Web3Chain.connect(node.url, node.chain_id)
        _wait_until(lambda: chain.get_block_number() >= 2, 10, "blocks mined without txs")


def test_command_line_options(tmp_path):
    node = Anvil(tmp_path, chain_id=1337, block_time=2, state_interval=30)
    argv = node.command(40000)
    joined = " ".join(argv)
    assert "--host 127.0.0.1 --port 40000" in joined
    assert "--chain-id 1337" in joined and "--block-time 2" in joined
    assert "--preserve-historical-states" in argv
    assert "--load-state" not in argv  # a fresh chain: nothing to load
    # anvil never writes the state file itself (its writes are not atomic): the
    # gateway's checkpoints do, every state_interval seconds among others
    assert not {"--state", "--dump-state", "--state-interval"} & set(argv)
    (tmp_path / "anvil-state.json").write_text("{}")
    assert "--load-state %s" % (tmp_path / "anvil-state.json") in " ".join(node.command(1))
    assert "--block-time" not in Anvil(tmp_path).command(40000)  # instant mining
    with pytest.raises(ValueError, match="block_time"):
        Anvil(tmp_path, block_time=0)
    with pytest.raises(ValueError, match="state_interval"):
        Anvil(tmp_path, state_interval=0)


def test_missing_binary_says_run_make_setup(tmp_path):
    with pytest.raises(AnvilNotInstalled, match="make setup") as e:
        Anvil(tmp_path, binary=tmp_path / "no-anvil").start()
    assert str(tmp_path / "no-anvil") in str(e.value)
    assert default_binary().name == "anvil"


def test_corrupt_state_file_is_reported(tmp_path):
    (tmp_path / "anvil-state.json").write_text("{not json")
    with pytest.raises(AnvilError, match="exited with status") as e:
        Anvil(tmp_path).start()
    assert "anvil-state.json" in str(e.value)


def test_stop_is_idempotent(tmp_path):
    node = Anvil(tmp_path)
    assert node.stop() is None
    node.start()
    assert node.start() is node  # already running
    assert node.stop() == 0
    assert node.stop() is None


def test_node_that_never_answers_is_stopped_after_the_startup_bound(tmp_path):
    silent = tmp_path / "silent-anvil"
    silent.write_text("#!/bin/sh\nexec sleep 30\n")
    silent.chmod(0o755)
    node = Anvil(tmp_path, binary=silent, startup_timeout=0.5)
    with pytest.raises(AnvilError, match="did not answer"):
        node.start()
    assert not node.running() and node.port is None


def _kill(node):
    pid = node.pid
    os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: node.exit_status() is not None, 5, f"anvil {pid} dies")


def _mine(chain, n):
    chain.request("anvil_mine", [hex(n)])


def test_checkpoint_is_what_a_sigkill_leaves(tmp_path):
    with Anvil(tmp_path) as node:
        chain = rpc.Web3Chain.connect(node.url, node.chain_id)
        _mine(chain, 3)
        assert node.checkpoint() == 3
        header = chain.get_block_header(3)
        _mine(chain, 2)  # after the checkpoint: lost with the node
        _kill(node)
        node.restart()
        chain = rpc.Web3Chain.connect(node.url, node.chain_id)
        assert chain.get_block_number() == 3
        assert chain.get_block_header(3) == header  # the same chain, not a new one
    assert json.loads((tmp_path / "anvil-state.json").read_bytes())["block"]["number"] == "0x3"


def test_a_failed_checkpoint_leaves_the_previous_state_whole(tmp_path, monkeypatch):
    with Anvil(tmp_path) as node:
        chain = rpc.Web3Chain.connect(node.url, node.chain_id)
        _mine(chain, 2)
        node.checkpoint()
        before = (tmp_path / "anvil-state.json").read_bytes()
        _mine(chain, 2)

        def disk_full(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(anvil_mod.os, "replace", disk_full)
        with pytest.raises(AnvilError, match="No space left") as e:
            node.checkpoint()
        assert isinstance(e.value.__cause__, OSError)  # the cause is kept
        assert (tmp_path / "anvil-state.json").read_bytes() == before
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
        monkeypatch.undo()
        (tmp_path / ".anvil-state.json.1.2.tmp").write_bytes(b'{"bl')  # killed mid-write
        node.checkpoint()
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
        _mine(chain, 1)  # after the last checkpoint
        _kill(node)
        node.restart()
        assert rpc.Web3Chain.connect(node.url, node.chain_id).get_block_number() == 4


def test_state_interval_writes_the_state_while_blocks_come(tmp_path):
    with Anvil(tmp_path, state_interval=0.2) as node:
        chain = rpc.Web3Chain.connect(node.url, node.chain_id)
        _mine(chain, 4)
        _wait_until(lambda: node.checkpointed_block == 4, 5, "a checkpoint of block 4")
        _kill(node)
        node.restart()
        assert rpc.Web3Chain.connect(node.url, node.chain_id).get_block_number() == 4


def test_one_process_runs_the_node_of_a_data_folder(tmp_path):
    with Anvil(tmp_path) as node:
        with pytest.raises(AnvilError, match=f"another process \\(pid {os.getpid()}\\)"):
            Anvil(tmp_path).start()
        port = node.port
        _kill(node)
        node.restart()  # the folder stays ours across a restart, on the same port
        assert node.port == port
    with Anvil(tmp_path):  # released at stop
        pass
