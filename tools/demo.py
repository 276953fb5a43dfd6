"""`make demo`: a street's sunny day, end to end, in accelerated time on this machine.

Ten members (the resident at no. 4 whose rooftop PV exports while they are at work and
who gives 40 % of it to the school, the school, households, and no. 9 whose battery
feeds the street in the evening), each with a simulated CT meter (tools.meter_sim
profiles) read by the real firmware in a MicroPython VM (tools.emulated_device). The
devices sign readings and send them over CoAP to a real gateway (`wattshare gateway
run`); `wattshare chain run` settles every 15-minute interval on the embedded anvil
chain. The simulated day (the next Tuesday from 15 June on, a school day with a high sun,
00:00-24:00 UTC) runs 600 times faster than real time: every process reads one shared
simulated clock (WATTSHARE_SIM_CLOCK, gateway/simclock.py).

Everything is commissioned as a technician and the community would: `gateway init`,
each device's key from its console (`--provision`), `device add`, `chain deploy`,
`community add-meter`, the resident's `community producer-key --static school=4000`,
`community fund`. While the day runs the terminal shows the simulated clock, readings
stored, intervals settled, energy shared and tokens moved, and the community page's
address. At the end: a one-screen summary, sampled readings proven down to the chain
(`wattshare verify --bundle FILE --rpc URL`), and a report in the work folder:
report.json and report.html (the community page's charts in one file that opens
offline). Every figure comes from the gateway (HTTP, CLI) and the chain's events, not
from what the simulation intended.

    python -m tools.demo [--work out/demo] [--street full|small] [--from 00:00 --to 24:00]
                         [--speed 600] [--serve]

Processes are stopped on success, failure and Ctrl-C; the work folder is wiped at the
start of each run (only a folder a demo made), so a second run needs nothing by hand.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from gateway.errors import GatewayError
from tools.errors import ToolsError

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
MARKER = ".wattshare-demo"  # the work folder is wiped only if a demo made it
INTERVAL_S = 900
READING_S = 60  # each device reads its meter once a simulated minute
PASSPHRASE = "demo-only-passphrase"
ANVIL_RESIDENT = 3  # the resident signs its own producer key: an anvil dev account


@dataclass(frozen=True)
class Member:
    label: str
    meter: str  # boards/meters/ id
    profile: str  # tools.meter_sim profile
    seed: int


RESIDENT = Member("no. 4 (PV, away by day)", "sdm120ct", "pv-away-by-day", 4)
SCHOOL = Member("school", "sdm630ct", "school", 20)
EVENING = Member("no. 9 (PV + battery)", "sdm120ct", "pv-battery", 9)
STREETS = {
    "full": [RESIDENT, SCHOOL, EVENING]
    + [Member(f"no. {n}", "sdm120ct" if n % 2 else "pzem004t-v3", "household", n)
       for n in (1, 2, 3, 5, 6, 7, 8)],
    "small": [RESIDENT, SCHOOL, EVENING, Member("no. 1", "pzem004t-v3", "household", 1)],
}
COMMUNITY = {"name": "Rue des Lilas", "timezone": "UTC", "currency": "EUR",
             "retail_per_kwh": 0.25, "feed_in_per_kwh": 0.06, "p2p_per_kwh": 0.15}


def demo_day(today=None) -> str:
    """The simulated day: the first Tuesday from 15 June on that is still ahead. A school
    day with a high sun; and ahead of the chain's clock, because the settlement contract
    takes no interval from before the community was deployed (issue 12)."""
    today = today or datetime.now(UTC).date()
    year = today.year if today < date(today.year, 6, 14) else today.year + 1
    d = date(year, 6, 15)
    return str(d + timedelta(days=(1 - d.weekday()) % 7))


class DemoError(Exception):
    """The demo cannot go on; the message says why and where to look."""


# ---- terminal


class Screen:
    """Progress on one rewritten line on a terminal; plain lines, no ANSI, otherwise."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self._live = False
        self._last_plain = 0.0

    def say(self, text):
        self._end_live()
        print(f"demo: {text}", file=self.stream, flush=True)

    def live(self, text, every_s=5.0):
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\x1b[2K" + text[:width])
            self.stream.flush()
            self._live = True
        elif time.monotonic() - self._last_plain >= every_s:
            print(f"demo: {text}", file=self.stream, flush=True)
            self._last_plain = time.monotonic()

    def bold(self, text):
        return f"\x1b[1m{text}\x1b[0m" if self.tty else text

    def _end_live(self):
        if self._live:
            self.stream.write("\n")
            self._live = False


# ---- processes


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Background processes, each in its own session (a Ctrl-C at the terminal reaches
    the demo, which stops them in order), logs in ``logs/``."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: dict[str, tuple[subprocess.Popen, list, dict | None]] = {}

    def start(self, name, cmd, env=None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "a")  # noqa: SIM115 - closed at exit
        p = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = (p, cmd, env)
        return p

    def exited(self) -> list[tuple[str, int]]:
        return [(n, p.returncode) for n, (p, _, _) in self.procs.items()
                if p.poll() is not None]

    def restart(self, name):
        _, cmd, env = self.procs[name]
        return self.start(name, cmd, env)

    def stop(self, *names, timeout=15.0):
        """SIGTERM (then SIGKILL) the named processes, or all in reverse start order."""
        chosen = names or tuple(reversed(self.procs))
        for n in chosen:
            p = self.procs[n][0]
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in chosen:
            p = self.procs[n][0]
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            # anything the process left in its group (anvil under `chain node`)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for n in chosen:
            self.procs.pop(n, None)

    def log_tail(self, name, size=1500) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"


class Demo:
    def __init__(self, args, screen: Screen):
        self.args = args
        self.screen = screen
        self.work = args.work.resolve()
        self.data = self.work / "gateway"
        self.street = STREETS[args.street]
        self.day = demo_day()
        self.env = dict(os.environ, WATTSHARE_KEY_PASSPHRASE=PASSPHRASE,
                        WATTSHARE_CONFIG=str(self.data / "gateway.toml"),
                        PYTHONUNBUFFERED="1")
        self.env.pop("WATTSHARE_SIM_CLOCK", None)
        self.procs = Procs(self.work / "logs")
        self.devices: dict[str, dict] = {}  # label -> device id, key, storage, owner
        self.timings: dict[str, float] = {}
        self.restarts = 0

    # ---- helpers

    def say(self, text):
        self.screen.say(text)

    def wattshare(self, *args, env=None) -> str:
        proc = subprocess.run([PY, "-m", "tools.cli", *args], cwd=REPO, env=env or self.env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise DemoError(f"wattshare {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc.stdout

    def http(self, path, timeout=20.0):
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()

    def http_json(self, path, timeout=20.0):
        return json.loads(self.http(path, timeout))

    # ---- the run

    def prepare_work(self):
        w = self.work
        if w.exists() and any(w.iterdir()) and not (w / MARKER).exists():
            raise DemoError(f"{w} exists and was not made by the demo: choose another "
                            "--work folder (the demo wipes its folder at each run)")
        shutil.rmtree(w, ignore_errors=True)
        (w / "logs").mkdir(parents=True)
        (w / MARKER).write_text("made by `python -m tools.demo`; wiped at its next run\n")

    def commission(self):
        """Set up as a technician and the community would, before the day starts."""
        self.coap_port, self.http_port = free_port(socket.SOCK_DGRAM), free_port()
        self.say(f"1/6 technician: wattshare gateway init --data {self._rel(self.data)}")
        self.wattshare("gateway", "init", "--data", str(self.data), "--coap-port",
                       str(self.coap_port), "--http-port", str(self.http_port))
        self._configure()
        self.say(f"2/6 installer: provision {len(self.street)} emulated devices (real "
                 "firmware, MicroPython VM) and register them with their owners' labels")
        from eth_account import Account

        from gateway.chain.anvil import Anvil

        keys = Anvil(self.work).account_keys()
        threads = []
        for i, m in enumerate(self.street):
            storage = self.work / "devices" / f"device{i}"
            hwid = f"d0{i:02x}{m.seed:02x}00{0x40 + i:02x}{i:02x}"
            owner = (Account.from_key(keys[ANVIL_RESIDENT]).address if m is RESIDENT
                     else Account.from_key(bytes.fromhex(f"{0xA000 + i:064x}")).address)
            self.devices[m.label] = {"storage": storage, "hwid": hwid, "owner": owner}
            t = threading.Thread(target=self._provision, args=(m,), daemon=True)
            threads.append(t)
        for k in range(0, len(threads), 2):  # two VMs at a time on two cores
            for t in threads[k:k + 2]:
                t.start()
            for t in threads[k:k + 2]:
                t.join()
        for m in self.street:
            d = self.devices[m.label]
            if "id" not in d:
                raise DemoError(f"device of {m.label!r} did not print its key: {d.get('error')}")
            self.wattshare("device", "add", "--id", d["id"], "--pubkey", d["pubkey"],
                           "--model", m.meter, "--owner", d["owner"],
                           "--label", m.label)
            self.say(f"    {m.label:32} {m.meter:12} {m.profile:15} device {d['id']}")

        self.say("3/6 community: wattshare chain deploy (the embedded anvil, state in the "
                 "data folder); add-meter, producer keys, prepaid balances")
        self.wattshare("chain", "deploy")
        # the embedded node stays up for the whole run (every command and `chain run`
        # use it): `wattshare chain node`
        node = self.procs.start("chain-node", [PY, "-m", "tools.cli", "chain", "node"],
                                env=self.env)
        self.rpc_url = self._wait_log("chain-node", r"rpc: (http://\S+)", node, 60).group(1)
        out = self.wattshare("community", "add-meter", "--device",
                             *(self.devices[m.label]["id"] for m in self.street))
        for device, index in re.findall(r"device ([0-9a-f]{16}) .* is meter (\d+)", out):
            for d in self.devices.values():
                if d["id"] == device:
                    d["index"] = int(index)
        self.say(f"    {RESIDENT.label}: community producer-key --static "
                 f"\"{SCHOOL.label}=4000\" (40 % to the school, the rest to the pool)")
        self.wattshare("community", "producer-key", "--meter", RESIDENT.label, "--static",
                       f"{SCHOOL.label}=4000", "--anvil-account", str(ANVIL_RESIDENT))
        self.wattshare("community", "fund", "--account",
                       *(self.devices[m.label]["owner"] for m in self.street),
                       "--amount", str(1000 * 10**18))
        self.say(f"    {len(self.street)} meters on chain, each member prepaid 1000 SUN; "
                 f"chain RPC {self.rpc_url}")

    def _provision(self, m: Member):
        d = self.devices[m.label]
        cmd = [PY, "-m", "tools.emulated_device", *self._device_args(m), "--provision"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env=self.env)
        found = re.search(r"device_id=([0-9a-f]{16}) public_key=([0-9a-f]{130})", proc.stdout)
        if found:
            d["id"], d["pubkey"] = found.groups()
        else:
            d["error"] = (proc.stderr + proc.stdout)[-800:]

    def _device_args(self, m: Member):
        d = self.devices[m.label]
        # watchdog at its longest: under 600 x a simulated 10 min is 1 s of real time
        extra = json.dumps({"watchdog_s": 600, "reply_timeout_ms": 2000})
        return ["--storage", str(d["storage"]), "--meter", m.meter, "--hwid", d["hwid"],
                "--gateway", f"127.0.0.1:{self.coap_port}", "--interval", str(READING_S),
                "--device-json", extra]

    def _configure(self):
        """What the community states (name, local time, tariffs) and settings for a
        fast run, written into gateway.toml as a technician would edit it."""
        from gateway import config as gwconfig
        from tools import toml_schema

        path = self.data / "gateway.toml"
        doc, _ = toml_schema.read(path)
        doc["community"] = dict(COMMUNITY)
        doc["ingest"] = dict(doc.get("ingest", {}), processes=0)  # one process: 2 cores
        doc["log"] = {"level": "warning", "format": "kv"}
        # poll_s is real time, the others simulated: the chain link looks for work 20 times
        # a second (an interval closes every 1.5 s), submits an interval 15 simulated
        # minutes after it ends (1.5 s: a reading retried after a CoAP back-off arrives
        # simulated minutes late), and re-sends a transaction only after 6 s
        doc["chain"] = dict(doc.get("chain", {}), poll_s=0.05, grace_s=900,
                            rebroadcast_s=3600)
        text = gwconfig.render(doc)
        gwconfig.parse(text, path)
        path.write_text(text)

    def run_day(self):
        """Start the shared clock, the meters, the gateway, the chain link and the
        devices; show progress until the window's last interval is settled."""
        from gateway import simclock, units

        tz = units.zone("UTC")
        day_start, _ = units.day_bounds(self.day, tz)
        self.first_s = day_start + self.args.start
        self.end_s = day_start + self.args.end
        lead = 5400  # devices boot, sync their clocks and read before the first boundary
        clock = simclock.start(self.args.speed, epoch0=self.first_s - lead)
        self.env["WATTSHARE_SIM_CLOCK"] = clock.value()
        os.environ["WATTSHARE_SIM_CLOCK"] = clock.value()  # the meters in this process
        self.say(f"4/6 the day: {self.day} {units.clock_time(self.first_s, tz)}-"
                 f"{'24:00' if self.args.end == 86400 else units.clock_time(self.end_s, tz)}"
                 f" UTC at {self.args.speed:g} x (WATTSHARE_SIM_CLOCK={clock.value()})")
        t0 = time.monotonic()
        meter_ports = self._start_meters()
        gw = self.procs.start("gateway", [PY, "-m", "tools.cli", "gateway", "run"], self.env)
        self.procs.start("chain-run", [PY, "-m", "tools.cli", "chain", "run"], self.env)
        # the devices boot meanwhile (they ask the gateway for the time until it answers)
        for i, m in enumerate(self.street):
            self.procs.start(f"device{i}", [PY, "-m", "tools.emulated_device",
                                            *self._device_args(m), "--meter-tcp",
                                            f"127.0.0.1:{meter_ports[m.label]}"], self.env)
        self._wait_http(gw)
        page = f"http://127.0.0.1:{self.http_port}/community?date={self.day}"
        self.say(f"    community page: {self.screen.bold(page)} (technician: "
                 f"http://127.0.0.1:{self.http_port}/)")
        last = self.end_s // INTERVAL_S - 1
        wanted = last - self.first_s // INTERVAL_S + 1
        shared = tokens = None
        gaps = 0
        next_view = 0.0
        settled = 0
        while True:
            self._check_processes()
            now = clock.now()
            st = self.http_json("/status.json", timeout=10)
            chain = st["chain"]
            done = chain["last_confirmed_interval"]
            settled = 0 if done is None else max(0, min(done, last)
                                                 - self.first_s // INTERVAL_S + 1)
            if time.monotonic() >= next_view:
                view = self.http_json(f"/community.json?date={self.day}", timeout=30)
                shared = view["totals"]["text"]["p2p_sent_wh"]
                tokens = view["totals"]["text"]["tokens_paid"]
                gaps = view["totals"]["intervals_with_gaps"]
                next_view = time.monotonic() + 3.0
            self.screen.live(
                f"  sim {units.local_time(now, tz)} | readings {st['readings_total']:,} | "
                f"intervals settled {settled}/{wanted} | shared {shared or '-'} | "
                f"tokens moved {tokens or '-'}"
                + (f" | {gaps} with gaps (the page says why)" if gaps else ""))
            if done is not None and done >= last:
                break
            devices = [n for n in self.procs.procs if n.startswith("device")]
            if devices and now > self.end_s + INTERVAL_S:
                # the day's last boundary has its readings: the meters' work is done, and
                # the chain link gets the machine to itself to catch up
                self.procs.stop(*devices)
            if now > self.end_s + 8 * INTERVAL_S:
                raise DemoError(f"the last interval ({last}) was not settled 2 simulated "
                                f"hours after the day's end; see {self._rel(self.work)}/logs/"
                                f"chain-run.log:\n{self.procs.log_tail('chain-run')}")
            time.sleep(0.5)
        self.timings["simulated_day_wall_s"] = round(time.monotonic() - t0, 1)
        self.screen.live(f"  sim {units.local_time(clock.now(), tz)} | readings "
                         f"{st['readings_total']:,} | intervals settled {settled}/{wanted} | "
                         f"done", every_s=0)
        devices = [n for n in self.procs.procs if n.startswith("device")]
        self.procs.stop("chain-run", *devices)
        self.say(f"    the day ran in {self.timings['simulated_day_wall_s']} s"
                 + (f" ({self.restarts} device restarts)" if self.restarts else ""))

    def _start_meters(self):
        """The street's simulated meters, served over TCP from a thread of this process
        (one asyncio loop for all: fewer processes on a small machine)."""
        import asyncio

        from tools.meter_sim import MeterModel, MeterSlave, get_meter, serve_tcp
        from tools.meter_sim.clock import SharedClock

        clock = SharedClock.from_env()
        ports: dict[str, int] = {}
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        async def serve():
            for m in self.street:
                meter = get_meter(m.meter)
                model = MeterModel(meter, m.profile, clock, seed=m.seed)
                server = await serve_tcp(MeterSlave(model, meter.default_slave), "127.0.0.1", 0)
                ports[m.label] = server.sockets[0].getsockname()[1]
            ready.set()

        def run():
            loop.run_until_complete(serve())
            loop.run_forever()

        threading.Thread(target=run, name="meters", daemon=True).start()
        if not ready.wait(30):
            raise DemoError("the simulated meters did not start")
        return ports

    def _wait_http(self, gw, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if gw.poll() is not None:
                raise DemoError(f"the gateway exited:\n{self.procs.log_tail('gateway')}")
            with contextlib.suppress(OSError):
                if self.http("/healthz", timeout=1) == b"ok\n":
                    return
            time.sleep(0.2)
        raise DemoError("the gateway's web server did not answer within 60 s")

    def _wait_log(self, name, pattern, proc, timeout):
        log = self.procs.logs / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, log.read_text()) if log.exists() else None
            if m:
                return m
            if proc.poll() is not None:
                raise DemoError(f"{name} exited:\n{self.procs.log_tail(name)}")
            time.sleep(0.1)
        raise DemoError(f"{name}: nothing matching {pattern!r} within {timeout:.0f} s")

    def _check_processes(self):
        for name, code in self.procs.exited():
            if name.startswith("device") and self.restarts < 20:
                # a device that stopped (its watchdog, under a loaded machine) reboots, as
                # a real one would; its spool keeps what it had not sent
                self.restarts += 1
                self.procs.restart(name)
                continue
            raise DemoError(f"{name} exited with status {code}:\n{self.procs.log_tail(name)}")

    def report(self):
        """Prove sampled readings, write report.json and report.html, print the summary."""
        from gateway import community, community_page, units
        from gateway.chain import bundle, rpc

        self.say("5/6 anyone: prove sampled readings down to the chain (signature, Merkle "
                 "path, root in contract storage, device key in the registry)")
        view = self.http_json(f"/community.json?date={self.day}", timeout=60)
        settled = [r for r in view["intervals"] if r["state"] == "settled"]
        if not settled:
            raise DemoError("no interval was settled")
        port = rpc.Web3Chain.connect(view["chain"]["rpc"], view["chain"]["chain_id"])
        proofs_dir = self.work / "proofs"
        proofs_dir.mkdir()
        samples, n = [], self.args.proofs
        picks = [settled[round(k * (len(settled) - 1) / max(1, n - 1))] for k in range(n)]
        for k, row in enumerate(picks):
            readings = self.http_json(f"/community/interval/{row['interval']}.json")
            if not readings:
                continue
            r = readings[(k * 7) % len(readings)]
            raw = self.http(f"/community/proof/{r['id']}.json")
            path = proofs_dir / f"reading-{r['id']}.json"
            path.write_bytes(raw)
            check = bundle.verify_bundle(json.loads(raw), port)
            samples.append({"id": r["id"], "name": r["name"], "path": path,
                            "when": units.local_time(r["t"], units.zone("UTC"), True),
                            "ok": check.ok, "warnings": [w.name for w in check.warnings],
                            "base64": base64.b64encode(raw).decode()})
        verified = sum(1 for s in samples if s["ok"])
        # shown: a reading whose meter was settled in its interval, if there is one
        first = next((x for x in samples if x["ok"] and not x["warnings"]), samples[0])
        command = ["verify", "--bundle", str(first["path"]), "--rpc", view["chain"]["rpc"]]
        self.say(f"    $ wattshare verify --bundle {self._rel(first['path'])} --rpc "
                 f"{view['chain']['rpc']}")
        for line in self.wattshare(*command).rstrip().splitlines():
            print(f"      {line}", flush=True)
        self.say(f"    {verified} of {len(samples)} sampled proofs verify"
                 + ("" if verified == len(samples) else ": FAILED"))

        report = community.report_json(view, {"verified": verified, "total": len(samples)})
        (self.work / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        html = community_page.render(view, "inline", proofs=[
            {k: s[k] for k in ("id", "name", "when", "ok", "base64")} for s in samples])
        (self.work / "report.html").write_text(html)
        self.summary(view, samples, verified)
        if verified != len(samples):
            raise DemoError("a sampled proof did not verify (see above)")

    def summary(self, view, samples, verified):
        t = view["totals"]["text"]
        members = view["members"]
        school = next(m for m in members if m["name"] == SCHOOL.label)
        from_resident = next((x["wh"] for x in school["received_from"]
                              if x["name"] == RESIDENT.label), 0)
        from gateway import units

        gaps = view["totals"]["intervals_with_gaps"]
        lines = [
            "",
            self.screen.bold(f"{view['community']['name']}, Tuesday {self.day} (UTC), "
                             f"{len(members)} members"),
            f"  {view['totals']['intervals_settled']} intervals settled on chain"
            + (f", {gaps} with gaps" if gaps else ", no gaps")
            + f"; simulated in {self.timings['simulated_day_wall_s']} s",
            f"  used {t['consumed_wh']}, surplus {t['produced_wh']}: shared between "
            f"neighbours {t['p2p_sent_wh']}, from the grid {t['grid_import_wh']}, to the "
            f"grid {t['grid_export_wh']}, used by its own producer {t['self_supply_wh']}",
            f"  the school received {units.kwh(from_resident)} from {RESIDENT.label}; "
            f"{t['tokens_paid']} paid to producers",
            "",
            f"  {'member':32} {'used':>11} {'surplus':>11} {'shared out':>11} "
            f"{'received':>11} {'tokens +/-':>14}",
        ]
        token = units.Token(view["token"]["symbol"], view["token"]["decimals"])
        for m in members:
            mt = m["text"]
            net = m["tokens_earned"] - m["tokens_paid"]
            lines.append(f"  {m['name'][:32]:32} {mt['consumed_wh']:>11} {mt['produced_wh']:>11}"
                         f" {mt['p2p_sent_wh']:>11} {mt['p2p_received_wh']:>11} "
                         f"{('+' if net > 0 else '') + units.tokens(net, token, 3):>14}")
        lines += [
            "",
            f"  proofs: {verified} of {len(samples)} sampled readings verify against the "
            "chain",
            f"  report: {self._rel(self.work / 'report.html')} (opens offline), "
            f"{self._rel(self.work / 'report.json')}",
            f"  logs, database, chain state, proof bundles: {self._rel(self.work)}/",
        ]
        print("\n".join(lines), flush=True)

    def serve(self):
        page = f"http://127.0.0.1:{self.http_port}/community?date={self.day}"
        self.say(f"6/6 serving the community page at {page} until Ctrl-C")
        while True:
            self._check_processes()
            time.sleep(1)

    def _rel(self, path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(REPO))
        except ValueError:
            return str(path)

    def main(self) -> int:
        started = time.monotonic()
        self.prepare_work()
        try:
            t = time.monotonic()
            self.commission()
            self.timings["setup_s"] = round(time.monotonic() - t, 1)
            self.run_day()
            t = time.monotonic()
            self.report()
            self.timings["report_s"] = round(time.monotonic() - t, 1)
            self.timings["wall_s"] = round(time.monotonic() - started, 1)
            self.timings["meters"] = len(self.street)
            (self.work / "timings.json").write_text(json.dumps(self.timings, indent=1) + "\n")
            if self.args.serve:
                self.serve()
            else:
                self.say("6/6 done; stopping the gateway and the chain node")
            return 0
        finally:
            self.procs.stop()


def _clock_arg(text: str) -> int:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if not m or int(m.group(1)) > 24 or int(m.group(2)) > 59 or (
            int(m.group(1)) == 24 and int(m.group(2))):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HH:MM, 00:00 to 24:00")
    seconds = int(m.group(1)) * 3600 + int(m.group(2)) * 60
    if seconds % INTERVAL_S:
        raise argparse.ArgumentTypeError(f"{text}: on a quarter hour (settlement intervals)")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "out" / "demo",
                    help="work folder, wiped at each run (default out/demo)")
    ap.add_argument("--street", choices=list(STREETS), default="full",
                    help="full: 10 members; small: 4 (the tests' short run)")
    ap.add_argument("--from", dest="start", type=_clock_arg, default=0, metavar="HH:MM",
                    help="start of the simulated window (default 00:00)")
    ap.add_argument("--to", dest="end", type=_clock_arg, default=86400, metavar="HH:MM",
                    help="end of the simulated window (default 24:00)")
    ap.add_argument("--speed", type=float, default=600.0,
                    help="simulated seconds per real second (default 600)")
    ap.add_argument("--proofs", type=int, default=12, help="readings to prove (default 12)")
    ap.add_argument("--serve", action="store_true",
                    help="after the report, keep serving the community page until Ctrl-C")
    args = ap.parse_args(argv)
    if args.end <= args.start:
        ap.error("--to must be after --from")
    if not 1 <= args.speed <= 2000:
        ap.error("--speed: 1 to 2000")
    if not 1 <= args.proofs <= 200:
        ap.error("--proofs: 1 to 200")
    screen = Screen()

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        return Demo(args, screen).main()
    except KeyboardInterrupt:
        screen.say("interrupted: every process it started is stopped")
        return 130
    except DemoError as e:
        screen.say(f"FAILED: {e}")
        return 1
    except (OSError, urllib.error.URLError, ToolsError, GatewayError) as e:
        screen.say(f"FAILED: {e}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
