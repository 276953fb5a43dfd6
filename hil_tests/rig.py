"""The hardware-in-the-loop rig: real parts, driven the way their users drive them.

- :class:`Site`: one community on this machine, shared by a test module's scenarios:
  the real gateway (``wattshare gateway run``, its own process), the embedded anvil with
  the contracts deployed (``wattshare chain deploy``) and ``wattshare chain run``
  settling interval by interval, meter simulators, and devices (:mod:`hil_tests.devices`:
  the real firmware in MicroPython VMs, or boards on a bench) registered through the CLI,
  all on one simulated clock (:mod:`gateway.simclock`) in accelerated time. Scenarios
  look only where users look: ``--json`` CLI outputs, the status API, ``/metrics``, the
  chain's events, balances and proofs, and the devices' console;
- :class:`Link`: a device's network link that can be cut (a UDP relay on loopback),
  which also records what the device sent (for :func:`replay`);
- :class:`ProcessLogs`: every part's log file, printed when a scenario fails;
- :func:`chain_events`: the settlement contract's events, decoded with the contracts'
  ABI (what a community member can read from any node).
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import urllib.request
from pathlib import Path

from tools import gateway_client

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_udp_port() -> int:
    from tools.local_site import free_port

    return free_port(socket.SOCK_DGRAM)


def free_tcp_port() -> int:
    from tools.local_site import free_port

    return free_port(socket.SOCK_STREAM)


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

    def report(self, tail: int = 4000, quiet: bool = False) -> str:
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
        if not quiet:
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


# ---- the site: gateway, chain, meters and devices on one simulated clock -------------------

INTERVAL_S = 900
SPEED = 300.0  # simulated seconds per real second: an interval closes every 3 s
READING_S = 30  # each device reads its meter every 30 simulated seconds
GATEWAY_PASSPHRASE = "local site passphrase"  # tools.local_site.GatewayProcess's
RESIDENT_ACCOUNT = 3  # the PV resident signs its own producer key: an anvil dev account
FUND = 1000 * 10**18  # each member's prepaid settlement balance (token units)


def owner_address(n: int) -> str:
    """A member's account (the PV resident's is an anvil development account)."""
    from eth_account import Account

    return Account.from_key(bytes.fromhex(f"{0xB000 + n:064x}")).address


class Timeout(AssertionError):
    """A bounded wait ran out: the message says what was awaited and what was seen."""


def wait_until(predicate, timeout: float, what: str, seen=None, poll: float = 0.2):
    """Poll ``predicate()`` until it returns something true (returned) or ``timeout`` real
    seconds pass: then :class:`Timeout` naming ``what`` and ``seen()``. A predicate that
    cannot reach a part (OSError: a node or gateway being restarted) counts as not yet."""
    import time

    deadline = time.monotonic() + timeout
    unreachable = None
    while True:
        try:
            value = predicate()
        except OSError as e:
            value, unreachable = None, e
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"; last unreachable: {unreachable}" if unreachable else ""
            if seen is not None:
                try:
                    extra += f"; seen: {seen()}"
                except Exception as e:  # noqa: BLE001 - the timeout is the failure to show
                    extra = f"; (seen failed: {e})"
            raise Timeout(f"waited {timeout:.0f} s for {what}{extra}")
        time.sleep(poll)


class Site:
    """A community on this machine (see the module docstring). ``chain=False``: the
    gateway alone (scenarios about the device-gateway path only)."""

    def __init__(self, folder: Path, *, speed: float | None = None, start: str = "09:00",
                 chain: bool = True, mode: str | None = None):
        import asyncio
        import os
        import threading

        from gateway import simclock, units
        from hil_tests import devices as devmod
        from tools.demo import demo_day
        from tools.local_site import GatewayProcess

        self.folder = Path(folder)
        self.logs = ProcessLogs(self.folder)
        self.procs: dict[str, object] = {}
        # a school day with a high sun, ahead of the chain's own clock (the settlement
        # contract takes no interval from before its deployment)
        self.day = demo_day()
        day_start, _ = units.day_bounds(self.day, units.zone("UTC"))
        hours, minutes = (int(x) for x in start.split(":"))
        # $WATTSHARE_HIL_SPEED: 1 runs in real time, no simulated clock (boards that keep
        # their own time); the default accelerates every part alike
        speed = speed or float(os.environ.get("WATTSHARE_HIL_SPEED", SPEED))
        self.speed = speed
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("WATTSHARE_") or k.startswith("WATTSHARE_BENCH")}
        self.env["PYTHONUNBUFFERED"] = "1"
        if speed == 1:
            self.clock = simclock.start(1.0)
        else:
            self.clock = simclock.start(speed, day_start + hours * 3600 + minutes * 60)
            self.env["WATTSHARE_SIM_CLOCK"] = self.clock.value()
        self.chain = chain
        self.loop = asyncio.new_event_loop()  # the meter simulators
        threading.Thread(target=self.loop.run_forever, name="meters", daemon=True).start()
        self.data = self.folder / "gateway"
        self.gateway = GatewayProcess(self.data, self.env, configure=self._configure)
        self.env = self.gateway.env  # with WATTSHARE_CONFIG
        self.logs.add("gateway", self.data / "gateway.log")
        if chain:
            self.start_chain_run()
        self.site = devmod.Site(self.folder, self.gateway, self.env, self.run)
        self.devices = devmod.maker(self.site, mode)
        self.members: dict[str, dict] = {}  # label -> device, owner, meter index, model
        self._owners = itertools.count(1)  # each member its own account (thread-safe)
        for name in ("gateway status", "chain status") if chain else ("gateway status",):
            self.logs.add_text(name, lambda n=name: self.cli(*n.split(), check=False).stdout)

    # ---- set-up

    def _configure(self, config: Path) -> None:
        """Settings for a fast run, as a technician would edit gateway.toml; then the
        contracts (before the gateway runs: it reads the contract from the file)."""
        import subprocess

        from gateway import config as gwconfig
        from tools import toml_schema

        doc, _ = toml_schema.read(config)
        doc["ingest"] = dict(doc.get("ingest", {}), processes=0)  # one process: 2 cores
        doc["log"] = {"level": "info", "format": "kv"}
        # poll_s is real time, the others simulated: the chain link looks for work 20
        # times a second, builds an interval 5 simulated minutes after its last anchor
        # could arrive, and re-sends a transaction only after a simulated hour
        doc["chain"] = dict(doc.get("chain", {}), poll_s=0.05, grace_s=300,
                            rebroadcast_s=3600, batch_intervals=1)
        text = gwconfig.render(doc)
        gwconfig.parse(text, config)
        config.write_text(text)
        if self.chain:
            env = dict(self.env, WATTSHARE_CONFIG=str(config),
                       WATTSHARE_KEY_PASSPHRASE=GATEWAY_PASSPHRASE)
            proc = subprocess.run([PY, "-m", "tools.cli", "chain", "deploy"], env=env,
                                  cwd=REPO, capture_output=True, text=True, timeout=180)
            if proc.returncode != 0:
                raise RuntimeError(f"wattshare chain deploy failed:\n{proc.stdout}{proc.stderr}")

    def run(self, coro, timeout: float = 30):
        """Run ``coro`` on the meters' event loop; its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_chain_run(self) -> None:
        """``wattshare chain run``: it runs the embedded anvil (restarting it when it
        exits) and publishes its URL in ``anvil.url`` for the other commands."""
        self.start_process("chain run", "chain", "run", "--batch-intervals", "1")
        wait_until(self._node_answers, 90, "chain run to publish its node (anvil.url)",
                   lambda: self.log_tail("chain run"))

    def _node_answers(self) -> bool:
        try:
            rpc(self.rpc_url, "eth_blockNumber", [])
        except (OSError, RuntimeError, ValueError):
            return False
        return True

    @property
    def rpc_url(self) -> str:
        return (self.data / "anvil.url").read_text().strip()

    def start_process(self, name: str, *args: str):
        import subprocess

        log_path = self.folder / f"{name.replace(' ', '-')}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([PY, "-m", "tools.cli", *args], cwd=REPO, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        self.logs.add(name, log_path)
        return proc

    def stop_process(self, name: str, kill: bool = False) -> None:
        import subprocess

        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, name: str, size: int = 1500) -> str:
        try:
            return self.logs.files[name].read_text(errors="replace")[-size:]
        except (KeyError, OSError):
            return "(no log)"

    def meter(self, meter_id: str, profile: str = "household", faults=(), seed: int = 1,
              frozen: bool = False):
        """A meter simulator's (model, slave) on the site's clock (``frozen``: its clock
        stands still: constant values, for exact comparisons)."""
        from tools.meter_sim import (
            FaultPlan,
            ManualClock,
            MeterModel,
            MeterSlave,
            SharedClock,
            get_meter,
            parse_fault,
        )

        meter = get_meter(meter_id)
        clock = ManualClock(self.clock.now()) if frozen else SharedClock(self.clock)
        model = MeterModel(meter, profile, clock, seed=seed)
        plan = FaultPlan([parse_fault(f) for f in faults], seed=seed, meter=meter,
                         slave=meter.default_slave)
        return model, MeterSlave(model, meter.default_slave, plan)

    def add(self, label: str, meter_id: str = "sdm120ct", profile: str = "household", *,
            faults=(), seed: int = 1, frozen: bool = False, owner: str | None = None,
            on_chain: bool = False, **device_json):
        """A member's device with its meter simulator, registered at the gateway with
        ``wattshare device add`` (and on chain with ``community add-meter`` if
        ``on_chain``); not started. ``device_json``: firmware settings."""
        model, slave = self.meter(meter_id, profile, faults, seed, frozen)
        owner = owner or owner_address(next(self._owners))
        device_json.setdefault("interval_s", READING_S)
        dev = self.devices.add(label, meter_id, slave, owner, **device_json)
        dev.model = model
        self.members[label] = {"device": dev, "owner": owner, "index": None}
        self.logs.add_text(f"console of {label}", lambda d=dev: "\n".join(d.output()[-60:]))
        if on_chain:
            self.add_on_chain(label)
        return dev

    def add_many(self, specs: list[tuple[tuple, dict]]) -> list:
        """:meth:`add` for each ``(args, kwargs)``, two at a time (provisioning starts a
        VM per device: two cores)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda spec: self.add(*spec[0], **spec[1]), specs))

    def add_on_chain(self, *labels: str) -> None:
        """``wattshare community add-meter`` for these members."""
        import re

        ids = [self.members[label]["device"].device_id for label in labels]
        out = self.cli("community", "add-meter", "--device", *ids).stdout
        found = dict(re.findall(r"device ([0-9a-f]{16}) .* is meter (\d+)", out))
        for label in labels:
            dev_id = self.members[label]["device"].device_id
            assert dev_id in found, f"add-meter did not name {dev_id}:\n{out}"
            self.members[label]["index"] = int(found[dev_id])

    def resident_owner(self) -> str:
        from eth_account import Account

        from gateway.chain.anvil import Anvil

        return Account.from_key(Anvil(self.data).account_keys()[RESIDENT_ACCOUNT]).address

    # ---- what users see

    def cli(self, *args: str, check: bool = True):
        """A ``wattshare`` command on the gateway (CompletedProcess)."""
        return self.gateway.wattshare(*args, check=check)

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "--json").stdout)

    def status(self) -> dict:
        """The status API (``/status.json``, what ``gateway status --json`` shows)."""
        with urllib.request.urlopen(self.gateway.http_url + "/status.json", timeout=20) as r:
            return json.loads(r.read())

    def device_status(self, label: str) -> dict:
        dev_id = self.members[label]["device"].device_id
        return next(d for d in self.status()["devices"] if d["id"] == dev_id)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {'name{labels}': value}."""
        return gateway_client.metrics(self.gateway.http_url, timeout=20)

    def metric(self, prefix: str, **labels: str) -> float:
        """The sum of the samples of ``prefix`` whose labels include ``labels``."""
        total = 0.0
        for name, value in self.metrics().items():
            if name == prefix or name.startswith(prefix + "{"):
                if all(f'{k}="{v}"' in name for k, v in labels.items()):
                    total += value
        return total

    def readings(self, label: str) -> list[dict]:
        """``wattshare device readings ID --limit 0 --json``: every stored reading of the
        member's device, in the order they arrived."""
        dev_id = self.members[label]["device"].device_id
        return self.cli_json("device", "readings", dev_id, "--limit", "0")

    def quiet_readings(self, label: str, timeout: float = 20) -> tuple[list[dict], dict]:
        """(stored readings, device status) of a member whose device is off, once the
        status's count agrees with the stored readings (a request still in the gateway's
        commit when the device went off lands first)."""
        def agree():
            stored = self.readings(label)
            status = self.device_status(label)
            return (stored, status) if status["readings"] == len(stored) else None

        return wait_until(agree, timeout, f"{label}: the status's count and the stored "
                          "readings to agree", lambda: self.device_status(label))

    def events(self, contract: str = "Settlement") -> list:
        return chain_events(self.rpc_url, self.data, contract)

    def settled(self) -> dict[int, dict]:
        """interval -> the fields of its ``Settled`` event; an interval settled twice
        fails here."""
        out: dict[int, dict] = {}
        for name, fields in self.events():
            if name == "Settled":
                assert fields["interval"] not in out, f"interval {fields['interval']} settled twice"
                out[fields["interval"]] = fields
        return out

    def interval_now(self) -> int:
        return int(self.clock.now()) // INTERVAL_S

    def wait_sim(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass."""
        import time

        time.sleep(seconds / self.speed)

    # ---- the end

    def restore(self) -> None:
        """The gateway and ``chain run`` running again if a scenario left them down (so
        one failure does not cascade into the next scenarios of the site)."""
        if self.gateway.proc.poll() is not None:
            self.gateway.stop()  # closes its log
            self.gateway.start()
        chain_run = self.procs.get("chain run")
        if self.chain and (chain_run is None or chain_run.poll() is not None):
            self.start_chain_run()

    def power_off(self) -> None:
        """Power cut every running device (between scenarios)."""
        for member in self.members.values():
            dev = member["device"]
            if getattr(dev, "running", lambda: True)():
                dev.power_cut()

    def close(self) -> None:
        self.devices.close()
        for name in list(self.procs):
            self.stop_process(name)
        self.gateway.stop()
        for server in self.site.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def settlement_logs(url: str, data_dir: Path) -> list[tuple[str, dict, int]]:
    """(event name, fields, block number) of the Settlement contract, in chain order."""
    from gateway.chain import contracts
    from gateway.chain.deploy import DEPLOYMENT_NAME, Deployment

    d = Deployment.load(Path(data_dir) / DEPLOYMENT_NAME)
    logs = rpc(url, "eth_getLogs", [{"address": d.settlement, "fromBlock": "0x0",
                                     "toBlock": "latest"}])
    out = []
    for log in logs:
        decoded = contracts.decode_log("Settlement", log)
        if decoded is not None:
            out.append((*decoded, int(log["blockNumber"], 16)))
    return out


def settlement_balance(url: str, data_dir: Path, account: str, block: int) -> int:
    """``Settlement.balance_of(account)`` at ``block`` (a member's prepaid balance)."""
    import eth_abi
    from eth_utils import keccak

    from gateway.chain.deploy import DEPLOYMENT_NAME, Deployment

    d = Deployment.load(Path(data_dir) / DEPLOYMENT_NAME)
    data = keccak(text="balance_of(address)")[:4] + eth_abi.encode(["address"], [account])
    out = rpc(url, "eth_call", [{"to": d.settlement, "data": "0x" + data.hex()}, hex(block)])
    return int(out, 16)


class Link:
    """A device's network link to the gateway that can be cut and restored (its Wi-Fi
    down): a UDP relay on loopback that forwards both ways while ``up`` and drops every
    datagram while not. Give ``link.port`` to the device as its gateway port."""

    def __init__(self, site: Site):
        import asyncio

        self.up = True
        self.dropped = 0
        self.captured: list[bytes] = []  # the device's datagrams (the last 200)
        # called (on the meters' loop) with each datagram just forwarded to the gateway
        self.on_forward = None
        gateway = ("127.0.0.1", site.gateway.coap_port)
        link = self

        class Upstream(asyncio.DatagramProtocol):
            def __init__(self, device_addr):
                self.device_addr = device_addr

            def datagram_received(self, data, addr):
                if link.up:
                    link._front.sendto(data, self.device_addr)
                else:
                    link.dropped += 1

        class Front(asyncio.DatagramProtocol):
            def __init__(self):
                self.upstream = {}  # device address -> transport to the gateway

            def datagram_received(self, data, addr):
                if not link.up:
                    link.dropped += 1
                    return
                link.captured = [*link.captured[-199:], data]
                up = self.upstream.get(addr)
                if up is None:
                    asyncio.ensure_future(self._open(addr, data))
                else:
                    self._send(up, data)

            async def _open(self, addr, data):
                loop = asyncio.get_running_loop()
                up, _ = await loop.create_datagram_endpoint(
                    lambda: Upstream(addr), remote_addr=gateway)
                self.upstream[addr] = up
                self._send(up, data)

            @staticmethod
            def _send(up, data):
                up.sendto(data)
                if link.on_forward is not None:
                    link.on_forward(data)

        async def start():
            loop = asyncio.get_running_loop()
            return await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))

        self._front, _ = site.run(start())
        self.port = self._front.get_extra_info("sockname")[1]
        site.site.servers.append(self._front)


def replay(gateway_port: int, datagram: bytes, timeout: float = 5.0):
    """Send ``datagram`` to the gateway from a new socket, as an attacker who recorded
    it would; the decoded CoAP response (``wattcore.coap.Message``)."""
    import socket

    from wattcore import coap

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(datagram, ("127.0.0.1", gateway_port))
        return coap.decode(s.recv(2048))


def posted_readings(datagram: bytes) -> list[bytes]:
    """The signed readings in a device's ``POST /r`` datagram ([] for anything else)."""
    from wattcore import coap, exchange

    m = coap.decode(datagram)
    if m.code != coap.POST or not m.payload:
        return []
    path = [v for n, v in m.options if n == 11]  # Uri-Path
    return exchange.decode_batch(m.payload) if path == [b"r"] else []
