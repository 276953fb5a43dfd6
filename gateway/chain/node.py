"""The chain node a command talks to: ``[chain] rpc_url`` or the embedded anvil.

With ``rpc_url = "anvil"`` the node lives in the data folder (state file
``anvil-state.json``, see :mod:`gateway.chain.anvil`). ``wattshare chain run`` runs it
under a :class:`Supervisor` and writes its URL to ``DATA_DIR/anvil.url``; other commands
use that node while it answers (:func:`chain_port`), else start anvil from the state file
for the length of the command (and stop it, writing the state). A command that sent
transactions writes the node's state before it returns, so what it reports as done is
on disk.
"""

import contextlib
import logging
import os
import time
from pathlib import Path

from gateway import simclock
from gateway.chain import anvil, rpc
from gateway.chain.anvil import Anvil
from gateway.chain.errors import (
    AnvilError,
    AnvilInUse,
    AnvilNotInstalled,
    ChainError,
    ChainIdMismatch,
    RpcError,
)

log = logging.getLogger("wattshare.chain")

URL_FILE = "anvil.url"
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
STALL_S = 60.0  # an embedded node alive but failing this long is restarted
# not retried: waiting does not fix them (install anvil, stop the other process, fix
# the URL or chain id)
_FATAL = (AnvilNotInstalled, AnvilInUse, ChainIdMismatch)


def _live_url(data_dir, chain_id):
    """(URL, None) if ``DATA_DIR/anvil.url`` names a node that answers with
    ``chain_id``; else (None, why not)."""
    path = Path(data_dir) / URL_FILE
    try:
        url = path.read_text().strip()
    except FileNotFoundError:
        return None, f"{path}: no node published"
    except OSError as e:
        return None, f"{path}: {e}"
    try:
        rpc.Web3Chain(url, chain_id, request_timeout=1.0).check_chain_id()
    except RpcError as e:  # the node is gone, or another chain took its port: stale file
        return None, f"{path}: {e}"
    except ValueError as e:  # something answered, but not a chain id
        return None, f"{path}: {url}: not an Ethereum JSON-RPC node ({e})"
    return url, None


def _publish(path, url):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(url + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def _saved_after(port, save, state_file):
    """Yield ``port``; afterwards, if it sent transactions, call ``save()`` (write the
    embedded node's state). On an error in the body, the save is tried and its own
    failure only logged, so the body's error is the one reported."""
    try:
        yield port
    except BaseException:
        if port.sent:
            try:
                save()
            except ChainError as e:
                log.warning("chain state not written", extra={"fields": {"error": str(e)}})
        raise
    if port.sent:
        try:
            save()
        except ChainError as e:
            raise AnvilError(
                f"the transactions were sent, but the chain state could not be written to"
                f" {state_file} ({e}); if the node stopped before writing it they are"
                " lost: check with `wattshare chain status` and run the command again"
            ) from e


@contextlib.contextmanager
def chain_port(cfg):
    """Yield a connected :class:`rpc.Web3Chain` for ``cfg`` (chain id checked).

    The embedded node: the one ``chain run`` publishes if it answers, else one started
    here from the state file and stopped at the end.
    """
    chain = cfg.chain
    if chain.rpc_url != "anvil":
        yield rpc.Web3Chain.connect(chain.rpc_url, chain.chain_id)
        return
    url, why = _live_url(cfg.data_dir, chain.chain_id)
    if url is not None:
        port = rpc.Web3Chain.connect(url, chain.chain_id)
        with _saved_after(port, lambda: anvil.checkpoint(url, cfg.data_dir),
                          Path(cfg.data_dir) / anvil.STATE_NAME):
            yield port
        return
    log.debug("starting the embedded chain node", extra={"fields": {"why": why}})
    with Anvil(cfg.data_dir, chain_id=chain.chain_id) as node:
        port = rpc.Web3Chain.connect(node.url, chain.chain_id)
        port.anvil = node
        with _saved_after(port, node.checkpoint, node.state_path):
            yield port


class Supervisor:
    """The node ``wattshare chain run`` talks to, kept alive.

    Embedded (``rpc_url = "anvil"``): the node another process publishes in
    ``anvil.url`` if one answers; else this supervisor runs the anvil process itself
    (state written every ``[chain] state_interval_s`` while blocks come, and before a
    submission counts as confirmed: :meth:`durable`) and publishes its URL. When its
    process exits (killed, crashed) or stops answering for ``stall_s``, it is restarted
    from its state file with back-off (``backoff_first_s`` doubling up to
    ``backoff_max_s``), on the same port if it is free. External URL (or a published node
    that went away): reconnected with the same back-off. Each failure is logged with the
    URL, the cause and when the next attempt comes.

    Not retried (waiting does not fix them), raised: anvil not installed, the data
    folder's node run by another process, a node serving another chain id.

    The caller's loop::

        with Supervisor(cfg) as sup:
            port = sup.port()          # None while waiting for the next attempt
            ... ok: sup.ok()   failed with a ChainError e: sup.failed(e)
            sleep(sup.wait_s(poll_s))
    """

    def __init__(self, cfg, *, publish_url=True, backoff_first_s=BACKOFF_FIRST_S,
                 backoff_max_s=BACKOFF_MAX_S, stall_s=STALL_S, clock=time.monotonic):
        self.cfg = cfg
        self.chain = cfg.chain
        self.data_dir = Path(cfg.data_dir)
        self.embedded = cfg.chain.rpc_url == "anvil"
        self.publish_url = publish_url and self.embedded
        self.url_file = self.data_dir / URL_FILE
        self.node = (Anvil(cfg.data_dir, chain_id=cfg.chain.chain_id,
                           state_interval=cfg.chain.state_interval_s)
                     if self.embedded else None)
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.stall_s = stall_s
        self._clock = clock
        self._port = None
        self._borrowed = None  # URL of a node another process runs and publishes
        self._borrowed_durable = -1
        self._failures = 0  # consecutive
        self._failing_since = None
        self._retry_at = 0.0
        self._restart_needed = False
        self._started = False  # our own node was started once
        self.restarts = 0  # restarts of our own node (attempts)
        self.last_error = None  # the ChainError of the last failure

    @property
    def url(self):
        if not self.embedded:
            return self.chain.rpc_url
        if self._borrowed is not None:
            return self._borrowed
        return self.node.url if self.node.running() else f"anvil ({self.data_dir})"

    def _owns_node(self):
        return self.embedded and self._borrowed is None

    # ---- lifetime

    def __enter__(self):
        try:
            if self.embedded:
                self._attach()
            else:
                self._connect(self.chain.rpc_url)
        except _FATAL:
            raise
        except ChainError as e:  # the node may come later, or start at the next try
            self._failed(e)
        return self

    def __exit__(self, *exc):
        if self.embedded:
            if self.node.running():
                try:
                    if self.publish_url and \
                            self.url_file.read_text().strip() == self.node.url:
                        self.url_file.unlink()
                except OSError:
                    pass  # not ours any more: nothing to withdraw
            self.node.stop()  # writes the state; releases the data folder
        return False

    def _attach(self):
        """Embedded: use the published node if one answers, else run ours."""
        if not self.node.running():
            url, _ = _live_url(self.data_dir, self.chain.chain_id)
            if url is not None:
                if url != self._borrowed:
                    log.info("using the chain node another process runs", extra={"fields": {
                        "url": url, "published_in": str(self.url_file)}})
                self._borrowed = url
                self._connect(url)
                return
        self._borrowed = None
        if not self._started:
            self.node.start()
            self._started = True
        elif self._restart_needed or not self.node.running():
            was = self.node.exit_status()
            self.restarts += 1
            self.node.restart()
            self._restart_needed = False
            log.warning("embedded chain node restarted from its state file", extra={
                "fields": {"url": self.node.url, "block": anvil.head_block(self.node.url),
                           "state_file": str(self.node.state_path), "exit_status": was,
                           "restarts": self.restarts}})
        try:
            self._connect(self.node.url)
        except ChainError:
            self.node.stop()
            raise
        if self.publish_url:
            _publish(self.url_file, self.node.url)

    def _connect(self, url):
        self._port = rpc.Web3Chain.connect(url, self.chain.chain_id)

    # ---- the loop's side

    def port(self):
        """The connected port, or None while waiting for the next attempt (a restart of
        the embedded node, or a reconnect, is made here when it is due)."""
        if self._owns_node() and self._port is not None and not self.node.running():
            self.failed(RpcError(f"{self._port.url}: the embedded anvil exited with status"
                                 f" {self.node.exit_status()}"))
        if self._port is not None:
            return self._port
        if self._clock() < self._retry_at:
            return None
        try:
            if self.embedded:
                self._attach()
            else:
                self._connect(self.chain.rpc_url)
        except _FATAL:
            raise
        except ChainError as e:
            self._failed(e)
            return None
        return self._port

    def ok(self):
        """A step went through: the node is healthy again."""
        if self._failures:
            log.info("chain node answers again", extra={"fields": {
                "url": self.url, "after_failures": self._failures}})
        self._failures = 0
        self._failing_since = None

    def failed(self, error):
        """A step failed with ``error`` (a :class:`ChainError`): decide what to do next."""
        if isinstance(error, ChainIdMismatch):
            raise error
        self._port = None
        self._failed(error)
        if self.embedded and self._borrowed is not None:
            self._borrowed = None  # look again: published anew, or ours to run

    def _failed(self, error):
        self.last_error = error
        self._failures += 1
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        delay = min(self.backoff_first_s * 2 ** (self._failures - 1), self.backoff_max_s)
        self._retry_at = now + delay
        fields = {"url": self.url, "error": str(error), "retry_in_s": round(delay, 1),
                  "attempt": self._failures}
        if not self._owns_node():
            log.warning("chain node unreachable; retrying", extra={"fields": fields})
            return
        status = self.node.exit_status()
        fields["state_file"] = str(self.node.state_path)
        if status is not None:
            fields["exit_status"] = status
            fields["log"] = self.node.log_tail(300)
            log.error("embedded chain node exited; restarting it from its state file",
                      extra={"fields": fields})
        elif not self.node.running():
            log.error("embedded chain node not running; starting it again",
                      extra={"fields": fields})
        elif now - self._failing_since >= self.stall_s:
            self._restart_needed = True
            self._port = None
            log.error("embedded chain node does not answer; restarting it",
                      extra={"fields": fields})
        else:
            log.warning("embedded chain node error; retrying", extra={"fields": fields})

    def wait_s(self, poll_s):
        """How long the loop may sleep: ``poll_s``, or less to meet the next attempt."""
        if self._port is not None:
            return poll_s
        return max(0.0, min(poll_s, self._retry_at - self._clock()))

    def durable(self, block):
        """Make sure the node's state holding ``block`` is on disk (the embedded node: a
        checkpoint unless one already covers it; an external node: its own business)."""
        if not self.embedded:
            return
        if self._borrowed is None:
            self.node.ensure_checkpoint(block)
        elif block > self._borrowed_durable:
            self._borrowed_durable = anvil.checkpoint(self._borrowed, self.data_dir)


def live_port(cfg, request_timeout=5.0):
    """A connected port to the configured node if it answers now, else None; never starts
    a node (for readers such as the community page: with the embedded anvil, the node
    runs while ``wattshare chain run`` does). :class:`ChainError` if a configured
    remote node fails."""
    chain = cfg.chain
    if chain.rpc_url == "anvil":
        url, _ = _live_url(cfg.data_dir, chain.chain_id)
        if url is None:
            return None
    else:
        url = chain.rpc_url
    return rpc.Web3Chain.connect(url, chain.chain_id, request_timeout)


def anvil_dev_key(index=0):
    """Private key of anvil's deterministic development account ``index`` (public!)."""
    return Anvil(".").account_keys()[index] if index < 10 else None


def follow_sim_clock(port):
    """Embedded anvil under ``$WATTSHARE_SIM_CLOCK`` (:mod:`gateway.simclock`): move the
    node's clock forward to the simulated time, so the next block (and the gas estimate
    before it) sees the intervals the simulated clock has closed. Never moves it back:
    block times only grow. Returns the simulated time set, or None (nothing to do)."""
    clock = simclock.active()
    if clock is None:
        return None
    target = int(clock.now())
    latest = int(port.get_block_header("latest")["timestamp"], 16)
    if target <= latest:
        return None
    port.request("evm_setTime", [target])
    return target
