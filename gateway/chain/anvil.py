"""The embedded local chain: an anvil node (Foundry) run by the gateway.

The default Wattshare set-up needs no external chain: the gateway starts anvil on a free
loopback port, with a fixed chain id and deterministic accounts, and keeps the chain in
its data folder::

    with Anvil(data_dir) as node:
        chain = Web3Chain(node.url, node.chain_id)
        ...

State: anvil 1.7.1 ``--state PATH`` (= ``--load-state`` + ``--dump-state``) loads
``PATH`` if it exists and writes it when anvil exits on SIGTERM/SIGINT, so blocks,
contracts and storage survive a restart with the same block hashes.
``--preserve-historical-states`` (on by default here) also keeps the state of earlier
blocks, so ``eth_getProof`` at a historical block still answers after a restart.
A SIGKILL or power cut loses everything since the last dump: ``state_interval`` makes
anvil dump every N seconds as well.

Shutdown: :meth:`Anvil.stop` sends SIGTERM and waits (then SIGKILL after a bound).
It is also called at Python exit (``atexit``), and on Linux anvil is started with
``PR_SET_PDEATHSIG = SIGTERM``, so it gets a SIGTERM (and dumps its state) even when the
gateway process dies from a signal without running ``atexit``. Start the node from a
long-lived thread: the death signal fires when the *thread* that started it ends.

The mnemonic is anvil's well-known development mnemonic by default: its keys are public,
fine for a local chain and nowhere else.
"""

import atexit
import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.chain.errors import AnvilError, AnvilNotInstalled

DEFAULT_CHAIN_ID = 31337
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"
DEFAULT_ACCOUNTS = 10
DEFAULT_BALANCE_ETH = 10_000
# vyper 0.4.3 compiles for prague by default; pinning it keeps the header format (and
# the state file) the same when a newer anvil changes its default ("latest").
DEFAULT_HARDFORK = "prague"
STATE_NAME = "anvil-state.json"
LOG_NAME = "anvil.log"
ENV_ANVIL = "WATTSHARE_ANVIL"  # path to an anvil binary, overrides the npm one

_REPO_ROOT = Path(__file__).resolve().parents[2]
_NPM_PLATFORMS = {"x86_64": "linux-amd64", "amd64": "linux-amd64",
                  "aarch64": "linux-arm64", "arm64": "linux-arm64"}
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3


def default_binary():
    """Path of the anvil binary: ``$WATTSHARE_ANVIL``, else the one npm installed."""
    if os.environ.get(ENV_ANVIL):
        return Path(os.environ[ENV_ANVIL])
    arch = _NPM_PLATFORMS.get(platform.machine().lower(), "linux-amd64")
    return _REPO_ROOT / "node_modules" / "@foundry-rs" / ("anvil-" + arch) / "bin" / "anvil"


def free_loopback_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_prctl = _load_prctl()  # loaded here, not in the forked child (no dlopen after fork)


def _die_with_parent():
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when the parent
    # (thread) dies, so anvil dumps its state even if the gateway is killed.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class Anvil:
    """A local anvil node with its state in ``data_dir``; a context manager.

    ``block_time=None`` mines a block per transaction at once; a number of seconds mines
    on that interval instead. ``startup_timeout`` bounds the wait for the RPC to answer.
    """

    def __init__(self, data_dir, *, chain_id=DEFAULT_CHAIN_ID, mnemonic=DEFAULT_MNEMONIC,
                 accounts=DEFAULT_ACCOUNTS, balance_eth=DEFAULT_BALANCE_ETH,
                 hardfork=DEFAULT_HARDFORK, block_time=None,
                 state_interval=None, preserve_history=True, port=None, binary=None,
                 startup_timeout=15.0, stop_timeout=10.0):
        if block_time is not None and not (isinstance(block_time, int) and block_time > 0):
            raise ValueError("block_time must be None (instant mining) or an integer > 0 s, "
                             f"not {block_time!r}")
        if state_interval is not None and not (
                isinstance(state_interval, int) and state_interval > 0):
            raise ValueError(
                f"state_interval must be None or an integer > 0 s, not {state_interval!r}")
        self.data_dir = Path(data_dir)
        self.chain_id = chain_id
        self.mnemonic = mnemonic
        self.accounts = accounts
        self.balance_eth = balance_eth
        self.hardfork = hardfork
        self.block_time = block_time
        self.state_interval = state_interval
        self.preserve_history = preserve_history
        self.binary = Path(binary) if binary is not None else default_binary()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.state_path = self.data_dir / STATE_NAME
        self.log_path = self.data_dir / LOG_NAME
        self._fixed_port = port
        self.port = None
        self._process = None
        self._lock = threading.RLock()  # start() stops on failure

    @property
    def url(self):
        """The node's JSON-RPC URL (only while running)."""
        if self.port is None:
            raise AnvilError("anvil is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return None if self._process is None else self._process.pid

    def running(self):
        return self._process is not None and self._process.poll() is None

    def command(self, port):
        """The anvil argv for ``port`` (loopback only)."""
        argv = [str(self.binary), "--host", "127.0.0.1", "--port", str(port),
                "--chain-id", str(self.chain_id), "--mnemonic", self.mnemonic,
                "--accounts", str(self.accounts), "--balance", str(self.balance_eth),
                "--hardfork", self.hardfork,
                "--state", str(self.state_path), "--silent"]
        if self.preserve_history:
            argv.append("--preserve-historical-states")
        if self.state_interval is not None:
            argv += ["--state-interval", str(self.state_interval)]
        if self.block_time is not None:
            argv += ["--block-time", str(self.block_time)]
        return argv

    def account_keys(self):
        """The private keys (bytes) of the deterministic accounts, in anvil's order."""
        from eth_account import Account

        Account.enable_unaudited_hdwallet_features()
        return [Account.from_mnemonic(self.mnemonic,
                                      account_path=f"m/44'/60'/0'/0/{i}").key
                for i in range(self.accounts)]

    def start(self):
        """Start anvil and wait until its RPC answers with the configured chain id."""
        with self._lock:
            if self.running():
                return self
            if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
                raise AnvilNotInstalled(
                    f"{self.binary}: anvil binary not found or not executable"
                    f" (run make setup, or set {ENV_ANVIL})")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            last_error = None
            for _ in range(1 if self._fixed_port else _PORT_ATTEMPTS):
                port = self._fixed_port or free_loopback_port()
                try:
                    self._spawn(port)
                    break
                except AnvilError as e:  # the port may have been taken in between
                    last_error = e
                    if "Address already in use" not in str(e):
                        raise
            else:
                raise last_error
            atexit.register(self.stop)
            return self

    def _spawn(self, port):
        with open(self.log_path, "ab") as log:
            log.write(b"--- %s start port %d\n" % (time.strftime("%FT%T").encode(), port))
            log.flush()
            process = subprocess.Popen(
                self.command(port), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # a terminal's Ctrl-C goes to the gateway, not here
                preexec_fn=_die_with_parent)
        self._process, self.port = process, port
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if process.poll() is not None:
                self._process, self.port = None, None
                raise AnvilError(f"anvil exited with status {process.returncode} at start-up"
                                 f" (port {port}): {self._log_tail()}")
            chain_id = self._probe_chain_id(port)
            if chain_id is not None:
                if chain_id != self.chain_id:
                    self.stop()
                    raise AnvilError(f"anvil on port {port} answers chain id {chain_id},"
                                     f" expected {self.chain_id}")
                return
            if time.monotonic() > deadline:
                self.stop()
                raise AnvilError(f"anvil did not answer on 127.0.0.1:{port} within"
                                 f" {self.startup_timeout:.0f} s: {self._log_tail()}")
            time.sleep(0.05)

    @staticmethod
    def _probe_chain_id(port):
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId",
                           "params": []}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}", body,
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=1.0) as reply:
                return int(json.loads(reply.read())["result"], 16)
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            return None

    def _log_tail(self, size=600):
        try:
            data = self.log_path.read_bytes()[-size:]
        except OSError:
            return "(no log)"
        return f"{self.log_path}: ...{data.decode('utf-8', 'replace').strip()}"

    def stop(self):
        """SIGTERM anvil (it writes its state file), wait, SIGKILL after ``stop_timeout``.

        Returns anvil's exit status, or None if it was not running.
        """
        with self._lock:
            process, self._process, self.port = self._process, None, None
            atexit.unregister(self.stop)
            if process is None:
                return None
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    raise AnvilError(f"anvil (pid {process.pid}) ignored SIGTERM for"
                                     f" {self.stop_timeout:.0f} s and was killed; its state"
                                     f" file may be stale: {self.state_path}") from None
            return process.returncode

    def restart(self):
        """Stop (dumping the state) and start again from the state file."""
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
