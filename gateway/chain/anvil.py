"""The embedded local chain: an anvil node (Foundry) run by the gateway.

The default Wattshare set-up needs no external chain: the gateway starts anvil on a free
loopback port, with a fixed chain id and deterministic accounts, and keeps the chain in
its data folder::

    with Anvil(data_dir) as node:
        chain = Web3Chain(node.url, node.chain_id)
        ...

State: one file, ``anvil-state.json``, written only by the gateway (:func:`checkpoint`):
``anvil_dumpState`` over RPC, then write a temporary file, fsync, rename over the old
one, fsync the folder. So the file is always a complete state, never a torn one. anvil
itself never writes it (its own ``--dump-state``/``--state-interval`` write the file in
place, and a SIGKILL or power cut during that write leaves a file anvil cannot load).
anvil loads it at start (``--load-state``); the blocks keep their hashes.
``--preserve-historical-states`` (on by default here) keeps the state of earlier blocks
in the dump, so ``eth_getProof`` at a historical block still answers after a restart.

When the state is written: by :meth:`Anvil.stop` (before SIGTERM), every
``state_interval`` seconds while blocks are being added (a background thread), and on
demand (:meth:`Anvil.checkpoint`; the outbox asks for one before it counts a submission
as confirmed, so a confirmed settlement is on disk). A SIGKILL of the node or a power
cut loses at most the blocks since the last checkpoint.

One process runs the node of a data folder at a time (``anvil.lock``, held while it
runs); other processes use its URL (``anvil.url``, see :mod:`gateway.chain.node`).

Shutdown: :meth:`Anvil.stop` writes the state, sends SIGTERM and waits (then SIGKILL
after a bound). It is also called at Python exit (``atexit``), and on Linux anvil is
started with ``PR_SET_PDEATHSIG = SIGTERM``, so it does not outlive a gateway process
that dies from a signal without running ``atexit`` (the state is then the last
checkpoint's). Start the node from a long-lived thread: the death signal fires when the
*thread* that started it ends.

The mnemonic is anvil's well-known development mnemonic by default: its keys are public,
fine for a local chain and nowhere else.
"""

import atexit
import contextlib
import ctypes
import fcntl
import gzip
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from gateway.chain.errors import AnvilError, AnvilInUse, AnvilNotInstalled

log = logging.getLogger("wattshare.chain")

DEFAULT_CHAIN_ID = 31337
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"
DEFAULT_ACCOUNTS = 10
DEFAULT_BALANCE_ETH = 10_000
# Osaka: the P256VERIFY precompile (EIP-7951) the meter anchors need, and the 2^24 gas cap
# per transaction (EIP-7825), which anvil applies only with --enable-tx-gas-limit (always
# on here, as on a public chain). Pinning the fork keeps the header format (and the state
# file) the same when a newer anvil changes its default ("latest").
DEFAULT_HARDFORK = "osaka"
STATE_NAME = "anvil-state.json"
LOG_NAME = "anvil.log"
NODE_LOCK_NAME = "anvil.lock"  # held by the process that runs the node
STATE_LOCK_NAME = "anvil-state.lock"  # held while a checkpoint writes the state file
ENV_ANVIL = "WATTSHARE_ANVIL"  # path to an anvil binary, overrides the npm one
CHECKPOINT_TIMEOUT = 120.0  # s: a large state (historical states kept) dumps slowly

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
    # (thread) dies, so anvil does not outlive the gateway.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _rpc(url, method, params, timeout):
    """One JSON-RPC request with the standard library (no web3 import here)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            answer = json.loads(reply.read())
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        raise AnvilError(f"{url}: {method}: {e}") from e
    if not isinstance(answer, dict) or "result" not in answer:
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise AnvilError(f"{url}: {method}: {error!r}")
    return answer["result"]


def head_block(url, timeout=5.0):
    """The node's latest block number."""
    return int(_rpc(url, "eth_blockNumber", [], timeout), 16)


@contextlib.contextmanager
def _flock(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(path, data):
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file, whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def checkpoint(url, data_dir, *, preserve_history=True, timeout=CHECKPOINT_TIMEOUT):
    """Write the state of the node at ``url`` to ``data_dir/anvil-state.json``, atomically.

    Any process may call it (``chain run``'s node, or a command using that node's URL);
    checkpoints are serialised by ``anvil-state.lock``, so a later one never leaves an
    older state behind. Returns a block number the written state holds at least (the
    head just before the dump). Raises :class:`AnvilError` with the cause.
    """
    data_dir = Path(data_dir)
    path = data_dir / STATE_NAME
    with _flock(data_dir / STATE_LOCK_NAME):
        for leftover in data_dir.glob(f".{STATE_NAME}.*.tmp"):  # a writer killed mid-write
            leftover.unlink(missing_ok=True)
        head = head_block(url, timeout)
        raw = _rpc(url, "anvil_dumpState", [preserve_history], timeout)
        try:
            state = gzip.decompress(bytes.fromhex(raw.removeprefix("0x")))
        except (AttributeError, ValueError, OSError, EOFError, zlib.error) as e:
            raise AnvilError(f"{url}: anvil_dumpState returned no gzip state: {e}") from e
        try:
            _write_atomically(path, state)
        except OSError as e:
            raise AnvilError(f"{path}: cannot write the chain state: {e}") from e
    return head


class Anvil:
    """A local anvil node with its state in ``data_dir``; a context manager.

    ``block_time=None`` mines a block per transaction at once; a number of seconds mines
    on that interval instead. ``state_interval``: write the state every that many
    seconds while new blocks come (None: only at stop and on :meth:`checkpoint`).
    ``startup_timeout`` bounds the wait for the RPC to answer.
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
                isinstance(state_interval, (int, float)) and state_interval > 0):
            raise ValueError(
                f"state_interval must be None or a number > 0 s, not {state_interval!r}")
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
        self._last_port = None  # a restart tries the same port first (a stable URL)
        self.port = None
        self._process = None
        self._node_lock = None  # fd holding anvil.lock while this object runs the node
        self._ticker = None
        self._ticker_stop = threading.Event()
        self.checkpointed_block = None  # what the state file holds at least (this run)
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

    def exit_status(self):
        """anvil's exit status if it was started and has exited by itself, else None."""
        return None if self._process is None else self._process.poll()

    def command(self, port):
        """The anvil argv for ``port`` (loopback only)."""
        argv = [str(self.binary), "--host", "127.0.0.1", "--port", str(port),
                "--chain-id", str(self.chain_id), "--mnemonic", self.mnemonic,
                "--accounts", str(self.accounts), "--balance", str(self.balance_eth),
                "--hardfork", self.hardfork, "--enable-tx-gas-limit", "--silent"]
        if self.state_path.exists():
            argv += ["--load-state", str(self.state_path)]
        if self.preserve_history:
            argv.append("--preserve-historical-states")
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

    def _take_node_lock(self):
        if self._node_lock is not None:
            return
        path = self.data_dir / NODE_LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise AnvilInUse(
                f"{self.data_dir}: the embedded chain node is run by another process (pid"
                f" {holder}); use its URL (anvil.url) or stop that process first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._node_lock = fd

    def _release_node_lock(self):
        fd, self._node_lock = self._node_lock, None
        if fd is not None:
            os.close(fd)

    def start(self):
        """Start anvil from the state file and wait until its RPC answers with the
        configured chain id."""
        with self._lock:
            if self.running():
                return self
            if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
                raise AnvilNotInstalled(
                    f"{self.binary}: anvil binary not found or not executable"
                    f" (run make setup-gateway CHAIN=1 on a gateway, make setup on a"
                    f" developer machine, or set {ENV_ANVIL})")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._stop_ticker()  # a crashed run's
            self._take_node_lock()
            loaded = self.state_path.exists()
            try:
                self._start_process()
                # the state file holds what was loaded (a fresh chain: nothing yet)
                self.checkpointed_block = head_block(self.url) if loaded else None
            except BaseException:
                self._halt()
                self._release_node_lock()
                raise
            if self.state_interval is not None:
                self._ticker_stop = threading.Event()
                self._ticker = threading.Thread(target=self._tick, name="anvil-state",
                                                args=(self._ticker_stop,), daemon=True)
                self._ticker.start()
            atexit.register(self.stop)
            return self

    def _start_process(self):
        if self._fixed_port:
            ports = [self._fixed_port]
        else:
            ports = [self._last_port] if self._last_port else []
            ports += [None] * _PORT_ATTEMPTS
        last_error = None
        for port in ports:
            try:
                self._spawn(port or free_loopback_port())
                return
            except AnvilError as e:  # the port may have been taken in between
                last_error = e
                if "Address already in use" not in str(e):
                    raise
        raise last_error

    def _spawn(self, port):
        with open(self.log_path, "ab") as log_file:
            log_file.write(b"--- %s start port %d\n" % (time.strftime("%FT%T").encode(),
                                                         port))
            log_file.flush()
            process = subprocess.Popen(
                self.command(port), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # a terminal's Ctrl-C goes to the gateway, not here
                preexec_fn=_die_with_parent)
        self._process, self.port = process, port
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if process.poll() is not None:
                self._process, self.port = None, None
                raise AnvilError(f"anvil exited with status {process.returncode} at start-up"
                                 f" (port {port}): {self.log_tail()}")
            chain_id = self._probe_chain_id(port)
            if chain_id is not None:
                if chain_id != self.chain_id:
                    self._halt()
                    raise AnvilError(f"anvil on port {port} answers chain id {chain_id},"
                                     f" expected {self.chain_id}")
                self._last_port = port
                return
            if time.monotonic() > deadline:
                self._halt()
                raise AnvilError(f"anvil did not answer on 127.0.0.1:{port} within"
                                 f" {self.startup_timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.05)

    @staticmethod
    def _probe_chain_id(port):
        try:
            return int(_rpc(f"http://127.0.0.1:{port}", "eth_chainId", [], 1.0), 16)
        except (AnvilError, TypeError, ValueError):  # not up yet, or not answering JSON-RPC
            return None

    def log_tail(self, size=600):
        """The end of ``anvil.log`` (for error messages)."""
        try:
            data = self.log_path.read_bytes()[-size:]
        except OSError as e:
            return f"(no log: {e})"
        return f"{self.log_path}: ...{data.decode('utf-8', 'replace').strip()}"

    def checkpoint(self):
        """Write the node's state to the state file now (see :func:`checkpoint`).

        Returns the block number the file holds at least. (No ``self._lock`` here: the
        state thread calls it while :meth:`stop` may hold the lock and wait for it.)"""
        head = checkpoint(self.url, self.data_dir, preserve_history=self.preserve_history)
        done = self.checkpointed_block
        if done is None or head > done:
            self.checkpointed_block = head
        return head

    def ensure_checkpoint(self, block):
        """Make sure the state file holds ``block``: write it unless a checkpoint of this
        run already covers it. Returns the block number the file holds at least."""
        done = self.checkpointed_block
        if done is not None and done >= block:
            return done
        return self.checkpoint()

    def _tick(self, stop):
        # the state_interval writer: only when blocks were added since the last one
        while not stop.wait(self.state_interval):
            try:
                done = self.checkpointed_block
                if done is None or head_block(self.url) > done:
                    self.checkpoint()
            except AnvilError as e:  # the node died or the disk is full: say so, go on
                if stop.is_set():
                    return  # stopping: stop() writes the state itself
                log.warning("chain state not written", extra={"fields": {
                    "state_file": str(self.state_path), "error": str(e)}})

    def _stop_ticker(self):
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            self._ticker_stop.set()
            if ticker is not threading.current_thread():
                ticker.join()

    def _halt(self):
        """SIGTERM the process (SIGKILL after ``stop_timeout``); keeps the node lock."""
        process, self._process, self.port = self._process, None, None
        self._stop_ticker()
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
                                 f" {self.stop_timeout:.0f} s and was killed") from None
        return process.returncode

    def stop(self):
        """Write the state (:meth:`checkpoint`, unless the file holds the head already),
        SIGTERM anvil, wait, SIGKILL after ``stop_timeout``; release the data folder.

        Returns anvil's exit status, or None if it was not running. A failed checkpoint
        is logged (the state file keeps the previous checkpoint) and the node stopped.
        """
        with self._lock:
            atexit.unregister(self.stop)
            try:
                if self.running():
                    try:
                        done = self.checkpointed_block
                        if done is None or head_block(self.url) > done:
                            self.checkpoint()
                    except AnvilError as e:
                        log.warning("chain state not written at stop", extra={"fields": {
                            "state_file": str(self.state_path), "error": str(e)}})
                return self._halt()
            finally:
                self._release_node_lock()

    def restart(self):
        """Start again from the state file; after a crash, or to stop first (writing the
        state). The data folder stays locked in between."""
        with self._lock:
            if self.running():
                try:
                    self.checkpoint()
                except AnvilError as e:
                    log.warning("chain state not written at restart", extra={"fields": {
                        "state_file": str(self.state_path), "error": str(e)}})
            self._halt()
            return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
