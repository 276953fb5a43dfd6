"""The bench mode of the hardware-in-the-loop suite (``WATTSHARE_HIL=bench``, ``make
hil-bench``): the scenarios' devices are boards on a bench, reached through the board
link on their serial ports (docs/hil.md).

Each board is brought up the way an installer does it, with the real commands:
``wattshare meter deploy --port P`` (the firmware and its configuration), ``wattshare
device invite`` at the gateway (a one-time code), ``wattshare meter provision --port P
--code C`` (configure, check the meter, enrol, first verified reading, signed
commissioning record). Its meter is the scenario's meter simulator, served on the board's
USB-RS485 adapter (``meter_serial``), or, for a virtual board, on the TCP port its meter
bus is wired to (``meter_tcp``). Its power goes through the bench's relay command (run as
``COMMAND off ID`` / ``COMMAND on ID``). Its console (the firmware's ``wattshare: ...``
lines) is read from its serial port while it runs.

The bench is described by a TOML file (``hil-bench.toml`` at the repository's root, or
``$WATTSHARE_BENCH_CONFIG``; format in docs/hil.md and :func:`load_config`); a virtual
rack and its file are made by ``python -m hil_tests.bench_mode virtual-rack DIR``, and
``python -m hil_tests.bench_mode check FILE`` validates a file.

What a bench lacks is a missing capability, and a scenario needing it is skipped with the
reason: a torn write at a chosen flash write, the device's flash read from the host,
another firmware than the one deployed, a power cut without a relay command, accelerated
time (a board keeps real time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway import simclock
from tools import virtual_board
from tools.board_config import get_meter, list_boards, list_meters
from tools.board_link import BoardLink
from tools.errors import BoardLinkError, ConfigError, ToolsError
from tools.toml_schema import Table, display_path, read, show

REPO = Path(__file__).resolve().parent.parent
WATTSHARE = [sys.executable, "-m", "tools.cli"]
ENV_CONFIG = "WATTSHARE_BENCH_CONFIG"
ENV_POWER = "WATTSHARE_BENCH_POWER"  # overrides [bench] power
DEFAULT_CONFIG = REPO / "hil-bench.toml"
DEFAULT_BOARD = "esp32-devkitc-max485"
POWER_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 300.0
QUIET_S = 1.0  # a clean stop waits this long without a console line (half an interval
# at most: the firmware prints a line per reading)
# The settings `meter provision` writes itself; any other device.json setting a scenario
# asks for goes in through the board link afterwards.
PROVISION_SETTINGS = ("interval_s", "exports_allowed")


class BenchError(ToolsError):
    """A bench step failed (a command, the relay, a board); the message says which."""


# ---- the bench configuration ------------------------------------------------------------

@dataclass(frozen=True)
class BoardSpec:
    """One board on the bench."""

    name: str
    port: str  # its console, e.g. /dev/ttyUSB0
    board: str  # boards/<board>.toml
    meter: str  # boards/meters/<meter>.toml
    meter_serial: str | None  # the USB-RS485 (or TTL) adapter on its meter bus
    meter_tcp: tuple[str, int] | None  # a virtual board: its meter bus is this TCP port
    slave: int | None
    relay: str | None  # its channel for the power command


@dataclass(frozen=True)
class BenchConfig:
    path: Path
    power: tuple[str, ...] | None  # the relay command, argv before `off ID` / `on ID`
    gateway_host: str  # this machine as the boards reach it
    wifi: str  # SSID:PASSWORD the boards join ("" for none)
    interval_s: int
    polls: int
    boards: tuple[BoardSpec, ...]

    def describe(self) -> str:
        lines = [f"{display_path(self.path)}: {len(self.boards)} boards, gateway at "
                 f"{self.gateway_host}, power "
                 + (shlex.join(self.power) + " off|on ID" if self.power else
                    "not switchable (no [bench] power: power cuts are skipped)")]
        for b in self.boards:
            meter = b.meter_serial or "tcp {}:{}".format(*b.meter_tcp or ("", ""))
            lines.append(f"  {b.name}: {b.board} on {b.port}, {b.meter} on {meter}"
                         f"{', relay ' + b.relay if b.relay else ''}")
        return "\n".join(lines)


_BENCH_KEYS = ("power", "gateway_host", "wifi", "interval_s", "polls")
_BOARD_KEYS = ("name", "port", "board", "meter", "meter_serial", "meter_tcp", "slave",
               "relay")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


def config_path(environ=None) -> Path:
    """The bench file: ``$WATTSHARE_BENCH_CONFIG``, else ``hil-bench.toml`` at the root."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(ENV_CONFIG) or DEFAULT_CONFIG)


def load_config(path=None, environ=None) -> BenchConfig:
    """The validated bench file; ConfigError naming the file, the key and what is
    allowed. ``$WATTSHARE_BENCH_POWER`` replaces ``[bench] power``."""
    environ = os.environ if environ is None else environ
    path = Path(path) if path is not None else config_path(environ)
    doc, where = read(path, missing_hint=(
        f" (the bench file: write it as docs/hil.md shows, or point ${ENV_CONFIG} or "
        "make hil-bench BENCH=... at yours; python -m hil_tests.bench_mode virtual-rack "
        "DIR makes one for virtual boards)"))
    top = Table(doc, where, "", ("bench", "board"))
    bench = top.table("bench", _BENCH_KEYS) if top.has("bench") else Table({}, where, "bench",
                                                                            _BENCH_KEYS)
    power_text = environ.get(ENV_POWER) or bench.text("power", 500, "")
    try:
        power = tuple(shlex.split(power_text)) or None
    except ValueError as e:
        bench.fail("power", f"not a command line ({e})", power_text)
    gateway_host = bench.text("gateway_host", 255, "127.0.0.1")
    wifi = bench.text("wifi", 200, "")
    if wifi and ":" not in wifi:
        bench.fail("wifi", "must be SSID:PASSWORD")
    interval_s = bench.integer("interval_s", 1, 3600) if bench.has("interval_s") else 10
    polls = bench.integer("polls", 1, 100) if bench.has("polls") else 10

    items = top.raw("board") if top.has("board") else None
    if not isinstance(items, list) or not items:
        top.fail("board", "at least one [[board]] table (one per board on the bench)")
    boards_known = sorted(b.id for b in list_boards())
    meters_known = sorted(m.id for m in list_meters())
    boards: list[BoardSpec] = []
    used: dict[str, str] = {}
    for i, item in enumerate(items):
        t = Table(item, where, f"board[{i}]", _BOARD_KEYS, value=item)
        name = t.text("name", 32)
        if not _NAME.fullmatch(name):
            t.fail("name", "must be 1-32 letters, digits, - or _, starting with a letter "
                           "or digit")
        if any(b.name == name for b in boards):
            t.fail("name", "must be unique: another [[board]] has this name")
        port = t.text("port", 255)
        board = t.text("board", 64, DEFAULT_BOARD)
        if board not in boards_known:
            t.fail("board", f"must be one of {', '.join(boards_known)} (boards/*.toml)")
        meter = t.text("meter", 64)
        if meter not in meters_known:
            t.fail("meter", f"must be one of {', '.join(meters_known)} (boards/meters/)")
        if t.has("meter_serial") == t.has("meter_tcp"):
            t.fail("meter_serial", "exactly one of meter_serial (the serial adapter on the "
                                   "board's meter bus) or meter_tcp (a virtual board's "
                                   "meter bus) is required")
        meter_serial = t.text("meter_serial", 255) if t.has("meter_serial") else None
        meter_tcp = None
        if t.has("meter_tcp"):
            host, sep, number = t.text("meter_tcp", 300).rpartition(":")
            if not sep or not host or not number.isdigit() or not 0 < int(number) < 65536:
                t.fail("meter_tcp", "must be HOST:PORT (e.g. 127.0.0.1:5021)")
            meter_tcp = (host.strip("[]"), int(number))
        for key, value in (("port", port), ("meter_serial", meter_serial)):
            if value is None:
                continue
            if value in used:
                t.fail(key, f"already used as {used[value]}: each board needs its own port "
                            "and its own meter adapter")
            used[value] = f"board[{i}].{key}"
        slave = t.integer("slave", 1, 247) if t.has("slave") else None
        relay = t.text("relay", 64) if t.has("relay") else None
        if power and relay is None:
            t.fail("relay", "missing (required: [bench] power is set, so each board names "
                            "its relay channel)")
        boards.append(BoardSpec(name, port, board, meter, meter_serial, meter_tcp, slave,
                                relay))
    return BenchConfig(Path(path), power, gateway_host, wifi, interval_s, polls,
                       tuple(boards))


# ---- power: the relay command --------------------------------------------------------------

class Relay:
    """The bench's power switch: ``COMMAND off ID`` / ``COMMAND on ID``."""

    def __init__(self, command: tuple[str, ...], log: Callable[[str], None] = print):
        self.command = command
        self.log = log

    def switch(self, state: str, relay: str) -> None:
        argv = [*self.command, state, relay]
        if argv[:2] == ["python", "-m"]:
            argv[0] = sys.executable  # this environment's Python, as a user's shell finds it
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                                  timeout=POWER_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"power command {shlex.join(argv)}: {e}") from None
        if proc.returncode != 0:
            raise BenchError(f"power command {shlex.join(argv)} failed (exit "
                             f"{proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
        self.log(f"bench: {shlex.join(argv)}: {proc.stdout.strip()}")


# ---- a board's console ---------------------------------------------------------------------

class Console:
    """The board's console lines, read from its serial port in a thread while it is open.

    The port may go away (a power cut of a USB-powered board) and come back: the reader
    waits for it and opens it again. :meth:`pause` closes it for the board link."""

    def __init__(self, port: str, baud: int = 115200):
        self.port = port
        self.baud = baud
        self.lines: list[str] = []
        self._partial = b""
        self._lock = threading.Lock()
        self._run = threading.Event()
        self._thread: threading.Thread | None = None

    def resume(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._run.set()
            self._thread = threading.Thread(target=self._read, daemon=True,
                                            name=f"console {self.port}")
            self._thread.start()

    def pause(self) -> None:
        """Stop reading and close the port (the board link needs it alone)."""
        self._run.clear()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._flush_partial()

    def _read(self) -> None:
        import serial

        while self._run.is_set():
            try:
                ser = serial.Serial(self.port, self.baud, timeout=0.1, exclusive=True)
            except (OSError, serial.SerialException):
                time.sleep(0.1)  # unplugged (powered off) or being reset: wait for it
                continue
            try:
                while self._run.is_set():
                    data = ser.read(4096)
                    if data:
                        self._take(data)
            except (OSError, serial.SerialException):
                self._flush_partial()  # the port went away with the power
            finally:
                try:
                    ser.close()
                except (OSError, serial.SerialException):
                    pass

    def _take(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        if complete:
            with self._lock:
                self.lines += [x.decode("utf-8", "replace").rstrip("\r") for x in complete]

    def _flush_partial(self) -> None:
        if self._partial:
            with self._lock:
                self.lines.append(self._partial.decode("utf-8", "replace").rstrip("\r"))
            self._partial = b""

    def output(self) -> list[str]:
        with self._lock:
            return list(self.lines)


# ---- a board as a device -------------------------------------------------------------------

class BenchDevice:
    """A provisioned board on the bench, as the rig's Device interface drives it."""

    def __init__(self, spec: BoardSpec, relay: Relay | None, device_id: str, label: str,
                 capabilities: frozenset[str], interval_s: int = 10):
        self.spec = spec
        self.interval_s = interval_s
        self.relay = relay
        self.device_id = device_id
        self.label = label
        self.capabilities = capabilities
        self.console = Console(spec.port)
        self.powered = True  # provisioning leaves it powered, at its REPL
        self.running_firmware = False

    def start(self) -> None:
        """Power on, the firmware runs: the relay switches it on; a board that has power
        (at its REPL after provisioning, or without a relay) is reset."""
        if self.running_firmware:
            raise RuntimeError(f"{self.label}: already running")
        if self.powered or self.relay is None:
            with self.link() as link:
                link.hard_reset()
        else:
            assert self.spec.relay is not None
            self.relay.switch("on", self.spec.relay)
            self.powered = True
        self.running_firmware = True
        self.console.resume()

    def power_cut(self) -> None:
        """The relay off, wherever the firmware is."""
        if self.relay is None:
            import pytest

            pytest.skip(f"{self.label}: a power cut needs the bench's relay command "
                        "([bench] power or $WATTSHARE_BENCH_POWER)")
        assert self.spec.relay is not None
        self.relay.switch("off", self.spec.relay)
        self.powered = False
        self.running_firmware = False
        self.console.pause()

    def stop(self) -> None:
        """A clean stop: once the console has been quiet a moment, the power goes off
        (without a relay: the firmware is interrupted and the board waits at its REPL)."""
        if not self.running_firmware:
            return
        quiet = min(QUIET_S, self.interval_s / 2)
        deadline = time.monotonic() + 10 * quiet
        seen = len(self.output())
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = len(self.output())
            if now == seen:
                break
            seen = now
        if self.relay is not None and self.spec.relay is not None:
            self.relay.switch("off", self.spec.relay)
            self.powered = False
            self.console.pause()
        else:
            with self.link():
                pass  # opening the link interrupts the firmware (Ctrl-C)
        self.running_firmware = False

    def running(self) -> bool:
        return self.running_firmware

    def output(self) -> list[str]:
        return self.console.output()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return bool(predicate())

    def link(self) -> _Linked:
        """The board link on the board's port (the console reader steps aside):
        ``with dev.link() as link: link.ls("/data")``. Opening it interrupts the
        firmware; it runs again after ``link.hard_reset()``."""
        return _Linked(self)

    def __repr__(self) -> str:
        return f"<bench board {self.spec.name} {self.device_id} {self.label!r}>"


class _Linked:
    def __init__(self, dev: BenchDevice):
        self.dev = dev
        self.link: BoardLink | None = None

    def __enter__(self) -> BoardLink:
        self.dev.console.pause()
        deadline = time.monotonic() + 15
        while True:  # a board just powered on takes a moment to show its port
            try:
                self.link = BoardLink(self.dev.spec.port)
                return self.link
            except BoardLinkError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        assert self.link is not None
        try:
            running = not self.link.transport.in_raw_repl  # after link.hard_reset()
        except BoardLinkError:
            running = False  # closed: the board went away
        self.link.close()
        if running:  # the firmware runs again: keep reading its console
            self.dev.console.resume()


# ---- making bench devices for the rig --------------------------------------------------

def _plain_env(env: dict | None = None) -> dict:
    """The environment for the installer's commands: a board keeps real time, so no
    simulated clock."""
    env = dict(os.environ if env is None else env)
    env.pop(simclock.ENV, None)
    return env


def _run(argv: list[str], what: str, env: dict | None = None,
         log: Callable[[str], None] = print) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=_plain_env(env),
                          timeout=COMMAND_TIMEOUT_S)
    shown = shlex.join(["wattshare", *argv[len(WATTSHARE):]])
    if "--code" in argv:  # the one-time code stays out of the logs
        shown = shown.replace(argv[argv.index("--code") + 1], "CODE")
    log(f"bench: {shown}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise BenchError(f"{what}: `{shown}` failed (exit {proc.returncode}):\n"
                         f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def _wait_for_port(spec: BoardSpec, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(spec.port):  # a USB port shows a moment after power on
        if time.monotonic() > deadline:
            raise BenchError(f"{spec.name}: its port {spec.port} is not there: is the board "
                             "plugged in and powered (its relay on)?")
        time.sleep(0.1)


def simulated_time(env: dict) -> str | None:
    """How the simulated clock in ``env`` differs from real time (None: it does not)."""
    value = env.get(simclock.ENV)
    if not value:
        return None
    epoch0, real0, speed = (float(x) for x in value.split(","))
    if speed != 1:
        return f"runs the gateway's clock at {speed:g}x"
    if abs(epoch0 - real0) > 60:
        day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch0))
        return f"runs the gateway's clock from another time ({day} at its start)"
    return None


class BenchDevices:
    """Makes :class:`BenchDevice` s from the boards of the bench file, for the rig
    (``hil_tests.devices.maker`` in bench mode): see ``DeviceMaker`` there."""

    def __init__(self, site, config: BenchConfig | None = None,
                 log: Callable[[str], None] | None = None):
        self.site = site
        self.config = config or load_config()
        self.log_path = Path(site.folder) / "bench.log"
        self._log_lock = threading.Lock()
        self.log = log or self._log
        self.relay = Relay(self.config.power, self.log) if self.config.power else None
        self.capabilities = frozenset({"console", "board_link"}
                                      | ({"power_cut"} if self.relay else set()))
        self.devices: list[BenchDevice] = []
        self._taken: set[str] = set()
        self._pick = threading.Lock()

    def _log(self, text: str) -> None:
        with self._log_lock, open(self.log_path, "a") as f:
            f.write(text.rstrip("\n") + "\n")

    def _board_for(self, meter_id: str) -> BoardSpec:
        import pytest

        with self._pick:
            for spec in self.config.boards:
                if spec.meter == meter_id and spec.name not in self._taken:
                    self._taken.add(spec.name)
                    return spec
        have = ", ".join(f"{b.name} ({b.meter})" for b in self.config.boards)
        pytest.skip(f"the bench ({display_path(self.config.path)}) has no free board with a "
                    f"{meter_id} meter for this scenario (its boards: {have})")
        raise AssertionError  # not reached

    def add(self, label: str, meter_id: str, slave, owner: str,
            gateway_port: int | None = None, **device_json) -> BenchDevice:
        """A board with ``meter_id``, its bus served by ``slave``, deployed and
        provisioned with the installer's commands; not started (at its REPL)."""
        import pytest

        differs = simulated_time(self.site.env)
        if differs:
            pytest.skip(f"bench boards keep real time (RTC, NTP); this scenario {differs}")
        if device_json.pop("register", True) is False or device_json.pop("firmware", None):
            pytest.skip("a bench board is installed as an installer does it: it cannot be "
                        "left unregistered nor run another firmware than the deployed one")
        spec = self._board_for(meter_id)
        self._serve_meter(spec, slave)
        if self.relay is not None and spec.relay is not None:
            self.relay.switch("on", spec.relay)
        _wait_for_port(spec)
        gateway = self.site.gateway
        _run([*WATTSHARE, "meter", "deploy", "--port", spec.port, "--board", spec.board,
              "--meter", spec.meter], f"{spec.name}: deploy", log=self.log)
        invite = gateway.wattshare("device", "invite", "--label", label, "--owner", owner,
                                   "--meter", meter_id, "--json", env=_plain_env(gateway.env))
        code = json.loads(invite.stdout)["code"]
        interval = int(device_json.get("interval_s", self.config.interval_s))
        # the site type follows the scenario's meter: exports allowed (the firmware's
        # default) is a producer; a site that never exports gets its CT direction checked
        site = "producer" if device_json.get("exports_allowed", True) else "consumer"
        argv = [*WATTSHARE, "meter", "provision", "--port", spec.port,
                "--gateway", f"{self.config.gateway_host}:{gateway.coap_port}",
                "--gateway-http", gateway.http_url, "--code", code, "--meter", meter_id,
                "--site", site, "--interval", str(interval), "--polls",
                str(self.config.polls), "--installer", "hil bench"]
        if spec.slave:
            argv += ["--slave", str(spec.slave)]
        if self.config.wifi:
            argv += ["--wifi", self.config.wifi]
        out = _run(argv, f"{spec.name}: provision", log=self.log)
        found = re.search(r"commissioned: ([0-9a-f]{16}) enrolled", out)
        if not found:
            raise BenchError(f"{spec.name}: provision printed no device id:\n{out}")
        dev = BenchDevice(spec, self.relay, found.group(1), label, self.capabilities,
                          interval)
        self.devices.append(dev)
        settings = {k: v for k, v in device_json.items() if k not in PROVISION_SETTINGS}
        if gateway_port is not None and gateway_port != gateway.coap_port:
            settings["gateway_port"] = gateway_port
        with dev.link() as link:  # stops the firmware: the device is made, not started
            if settings:
                config = json.loads(link.read_file("/config/device.json"))
                config.update(settings)
                link.write_file("/config/device.json", json.dumps(config).encode())
        return dev

    def _serve_meter(self, spec: BoardSpec, slave) -> None:
        from tools.meter_sim.transports import serve_serial, serve_tcp

        if spec.meter_serial:
            served = self.site.run(serve_serial(slave, spec.meter_serial,
                                                get_meter(spec.meter).serial))
        else:
            assert spec.meter_tcp is not None
            served = self.site.run(serve_tcp(slave, *spec.meter_tcp))
        self.site.servers.append(served)

    def close(self) -> None:
        """Every board off (its console closed)."""
        for dev in self.devices:
            dev.console.pause()
        if self.relay is None:
            return
        for spec in self.config.boards:
            if spec.relay is not None and spec.name in self._taken:
                try:
                    self.relay.switch("off", spec.relay)
                except BenchError as e:
                    self.log(str(e))


# ---- a rack of virtual boards -----------------------------------------------------------

RACK_METERS = ("sdm120ct", "sdm120ct", "sdm630ct", "pzem004t-v3")  # a virtual rack's boards


def free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def virtual_rack(folder: Path, meters: list[str], interval_s: int = 10,
                 polls: int = 10) -> Path:
    """Wire a rack of virtual boards in ``folder`` (one per meter model given, powered
    off) and write its bench file ``folder/bench.toml``; returns the file's path."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    power = shlex.join(["python", "-m", "tools.virtual_board", "relay", "--rack",
                        str(folder)])
    lines = ["# A rack of virtual boards (python -m hil_tests.bench_mode virtual-rack):",
             "# each board runs the firmware's MicroPython VM behind a pseudo-terminal.",
             "[bench]", f"power = {show(power)}", 'gateway_host = "127.0.0.1"',
             f"interval_s = {interval_s}", f"polls = {polls}"]
    for i, meter in enumerate(meters, 1):
        name = f"board{i}"
        virtual_board.power_off(folder / name)  # left on by an earlier run: rewired off
        meter_tcp = f"127.0.0.1:{free_tcp_port()}"
        port = virtual_board.wire(folder / name, meter_tcp)
        lines += ["", "[[board]]", f'name = "{name}"', f"port = {show(str(port))}",
                  f"meter = {show(meter)}", f"meter_tcp = {show(meter_tcp)}",
                  f'relay = "{name}"']
    path = folder / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil_tests.bench_mode",
                                 description="The hardware-in-the-loop bench (docs/hil.md).")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate a bench file and say what it describes")
    p.add_argument("file", nargs="?", type=Path,
                   help=f"the bench file (default ${ENV_CONFIG}, else hil-bench.toml)")
    p = sub.add_parser("virtual-rack",
                       help="wire a rack of virtual boards in DIR and write DIR/bench.toml")
    p.add_argument("folder", type=Path)
    p.add_argument("--meters", default=",".join(RACK_METERS), metavar="ID,ID",
                   help=f"one board per meter model (default {','.join(RACK_METERS)})")
    p.add_argument("--interval", type=int, default=10, metavar="S",
                   help="seconds between readings (default 10)")
    args = ap.parse_args(argv)
    try:
        if args.command == "check":
            print(load_config(args.file).describe())
        else:
            meters = [m for m in args.meters.split(",") if m]
            known = {m.id for m in list_meters()}
            bad = [m for m in meters if m not in known]
            if bad or not meters:
                raise ConfigError(f"--meters {args.meters}: one or more of "
                                  f"{', '.join(sorted(known))}, separated by commas")
            path = virtual_rack(args.folder, meters, interval_s=args.interval)
            print(f"bench file: {path}")
            print(load_config(path).describe())
    except ToolsError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
