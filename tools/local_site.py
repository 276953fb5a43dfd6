"""An installation site on this machine: a real gateway process, simulated meters and
virtual boards, for the installer's tests and benchmark (and for trying the path by hand).

- :class:`GatewayProcess`: ``wattshare gateway init`` in a folder, then ``wattshare gateway
  run`` on free loopback ports; ``wattshare`` commands run against it with
  ``$WATTSHARE_CONFIG`` set, as on the gateway itself.
- :class:`Meters`: meter simulators (``tools.meter_sim``) on TCP ports, in a background
  event loop, with the simulator's faults (``reversed-ct``, another Modbus address, ...).
- virtual boards: :class:`tools.virtual_board.BoardProcess`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WATTSHARE = [sys.executable, "-m", "tools.cli"]


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port nothing holds now, below the kernel's ephemeral range: a port from that
    range can be handed to any other process's socket (a load generator opens
    thousands) between this check and the server's bind."""
    import random

    lo, _ = _ephemeral_range()
    pick = random.SystemRandom()
    for _ in range(500):
        port = pick.randrange(10000, lo) if lo > 11000 else 0
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))  # noqa: S104 - checks the port for any address
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port below the ephemeral range")


class GatewayProcess:
    """A gateway on loopback: CoAP on ``coap_port``, HTTP (status, API) on ``http_port``."""

    def __init__(self, folder: Path, env: dict | None = None, configure=None):
        """``configure(config_path)``, if given, edits gateway.toml between ``gateway
        init`` and ``gateway run``."""
        self.folder = Path(folder)
        self.coap_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        self.config = self.folder / "gateway.toml"
        self.env = dict(os.environ if env is None else env, WATTSHARE_CONFIG=str(self.config),
                        WATTSHARE_KEY_PASSPHRASE="local site passphrase")
        self.wattshare("gateway", "init", "--data", str(self.folder), "--coap-port",
                       str(self.coap_port), "--http-port", str(self.http_port))
        if configure is not None:
            configure(self.config)
        self.start()

    def start(self) -> None:
        """``wattshare gateway run`` (again, after :meth:`stop` or :meth:`kill`); returns
        once its web server answers."""
        self.log = open(self.folder / "gateway.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*WATTSHARE, "gateway", "run"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the gateway did not start:\n" + self.log_text())
            time.sleep(0.1)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def wattshare(self, *args: str, env: dict | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
        """Run a ``wattshare`` command on the gateway (its config in $WATTSHARE_CONFIG)."""
        proc = subprocess.run([*WATTSHARE, *args], env=env or self.env, capture_output=True,
                              text=True, timeout=120, cwd=REPO)
        if check and proc.returncode != 0:
            raise RuntimeError(f"wattshare {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def invite(self, label: str, *extra: str, env: dict | None = None) -> str:
        """A one-time code (``wattshare device invite --json``)."""
        out = self.wattshare("device", "invite", "--label", label, "--owner",
                             "0x52908400098527886E0F7030069857D2E4169EE7", *extra, "--json",
                             env=env).stdout
        return json.loads(out)["code"]

    def devices(self) -> list[dict]:
        """The registry, as ``wattshare device list --json`` shows it."""
        return json.loads(self.wattshare("device", "list", "--json").stdout)

    def device(self, device_id: str) -> dict:
        return json.loads(self.wattshare("device", "show", device_id, "--json").stdout)

    def log_text(self) -> str:
        return (self.folder / "gateway.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the gateway dies wherever it is (a power cut of the gateway)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Meters:
    """Simulated meters on loopback TCP ports (raw RTU frames), in one background loop."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list = []

    def start(self, meter_id: str = "sdm120ct", profile: str = "household",
              faults: tuple[str, ...] = (), slave: int | None = None, seed: int = 1) -> str:
        """A simulated meter; its ``HOST:PORT`` for ``--meter-tcp``."""
        from tools.meter_sim import (
            FaultPlan,
            MeterModel,
            MeterSlave,
            SimClock,
            get_meter,
            parse_fault,
            serve_tcp,
        )

        meter = get_meter(meter_id)
        address = slave or meter.default_slave
        model = MeterModel(meter, profile, SimClock(time.time(), 1.0), seed=seed)
        plan = FaultPlan([parse_fault(f) for f in faults], seed=seed, meter=meter,
                         slave=address)

        async def serve():
            return await serve_tcp(MeterSlave(model, address, plan), "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(30)
        self.servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
