"""The chain node a command talks to: ``[chain] rpc_url`` or the embedded anvil.

With ``rpc_url = "anvil"`` the node lives in the data folder (state file
``anvil-state.json``). A running ``wattshare chain run`` writes its node URL to
``DATA_DIR/anvil.url``; other commands use that node while it answers, else start anvil
from the state file for the length of the command (and stop it, dumping the state).
"""

import contextlib
from pathlib import Path

from gateway import simclock
from gateway.chain import rpc
from gateway.chain.anvil import Anvil

URL_FILE = "anvil.url"


def _live_url(data_dir, chain_id):
    path = Path(data_dir) / URL_FILE
    try:
        url = path.read_text().strip()
    except OSError:
        return None
    try:
        rpc.Web3Chain(url, chain_id, request_timeout=1.0).check_chain_id()
    except Exception:  # noqa: BLE001 - a stale file: the node is gone
        return None
    return url


@contextlib.contextmanager
def chain_port(cfg, keep_url=False):
    """Yield a connected :class:`rpc.Web3Chain` for ``cfg`` (chain id checked).

    ``keep_url``: publish the embedded node's URL for other commands while it runs.
    """
    chain = cfg.chain
    if chain.rpc_url != "anvil":
        yield rpc.Web3Chain.connect(chain.rpc_url, chain.chain_id)
        return
    url = _live_url(cfg.data_dir, chain.chain_id)
    if url is not None:
        yield rpc.Web3Chain.connect(url, chain.chain_id)
        return
    node = Anvil(cfg.data_dir, chain_id=chain.chain_id)
    url_file = Path(cfg.data_dir) / URL_FILE
    with node:
        if keep_url:
            url_file.write_text(node.url + "\n")
        try:
            port = rpc.Web3Chain.connect(node.url, chain.chain_id)
            port.anvil = node
            yield port
        finally:
            if keep_url:
                url_file.unlink(missing_ok=True)


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
