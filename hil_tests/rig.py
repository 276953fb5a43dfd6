"""The hardware-in-the-loop rig: real parts, driven the way their users drive them.

Building blocks shared by the scenarios (``hil_tests/conftest.py`` puts them together):

- :class:`ProcessLogs`: every part's log file, printed when a scenario fails;
- :func:`chain_events`: the settlement contract's events, decoded with the contracts'
  ABI (what a community member can read from any node).
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessLogs:
    """Named log files of a scenario's parts; :meth:`report` prints their tails (on
    failure), and the folder they are in."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.files: dict[str, Path] = {}
        self.extra: dict[str, object] = {}  # name -> callable returning text

    def add(self, name: str, path: Path) -> Path:
        self.files[name] = Path(path)
        return Path(path)

    def add_text(self, name: str, produce) -> None:
        self.extra[name] = produce

    def report(self, tail: int = 4000) -> str:
        parts = [f"==== logs of every part are in {self.folder} ===="]
        for name, path in self.files.items():
            try:
                data = path.read_text(errors="replace")
            except OSError as e:
                data = f"(unreadable: {e})"
            cut = data[-tail:]
            parts.append(f"---- {name} ({path}, last {len(cut)} of {len(data)} chars)\n{cut}")
        for name, produce in self.extra.items():
            try:
                text = str(produce())
            except Exception as e:  # noqa: BLE001 - a report must not hide the failure
                text = f"(failed: {type(e).__name__}: {e})"
            parts.append(f"---- {name}\n{text[-tail:]}")
        text = "\n".join(parts)
        print(text, file=sys.stderr)
        return text


def rpc(url: str, method: str, params: list):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer = json.loads(reply.read())
    if answer.get("error"):
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def chain_events(url: str, data_dir: Path, contract: str = "Settlement") -> list:
    """[(event name, fields)] of the community's ``contract`` (``Settlement``,
    ``MeterRegistry``, ``CommunityToken``) since its deployment, in chain order."""
    from gateway.chain import contracts
    from gateway.chain.deploy import DEPLOYMENT_NAME, Deployment

    d = Deployment.load(Path(data_dir) / DEPLOYMENT_NAME)
    address = {"Settlement": d.settlement, "MeterRegistry": d.registry,
               "CommunityToken": d.token}[contract]
    logs = rpc(url, "eth_getLogs", [{"address": address, "fromBlock": "0x0",
                                     "toBlock": "latest"}])
    out = []
    for log in logs:
        decoded = contracts.decode_log(contract, log)
        if decoded is not None:
            out.append(decoded)
    return out
