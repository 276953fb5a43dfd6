"""The bench mode, run: two virtual boards on pseudo-terminals (the code path of a real
serial port) in a rack switched by the virtual relay, made with the command docs/hil.md
gives, are deployed and provisioned by the bench adapter with the installer's real
commands against a real gateway; their readings arrive verified; a power cut through the
relay command, with readings held in the board's flash spool (the gateway away), loses no
reading and reuses no sequence number. Everything is checked through the gateway's CLI
(``--json``), never its tables. One board's meter is served on a serial port wired to
its bus (a bench's USB-RS485 adapter, ``meter_serial``), the other's on TCP.

Under ``make hil-bench`` (``WATTSHARE_HIL=bench``) the same tests run on the first two
boards of the bench file.

The bench file's validation, the relay, and ``make hil-bench`` 's refusal of a missing
bench file are tested here too (fast)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from hil_tests import bench_mode
from hil_tests.bench_mode import BenchDevices, load_config
from tools import virtual_board
from tools.errors import ConfigError
from tools.local_site import WATTSHARE, GatewayProcess
from tools.meter_sim import FaultPlan, MeterModel, MeterSlave, SimClock, get_meter

REPO = Path(__file__).resolve().parent.parent
OWNER = "0x52908400098527886E0F7030069857D2E4169EE7"
RACK_INTERVAL_S = 1  # seconds between readings on the virtual rack's boards
DOC = REPO / "docs" / "hil.md"
DOC_RACK = "out/hil-rack"
DOC_BENCH = "hil-bench.toml"
# every command of docs/hil.md, by how it starts; each is run by a test below
DOC_COMMANDS = ["python -m hil_tests.bench_mode check", "make hil-bench-virtual",
                "python -m hil_tests.bench_mode virtual-rack",
                "python -m tools.virtual_board relay", "mpremote connect",
                "make hil-bench BENCH="]


def doc_commands() -> list[str]:
    """The commands in docs/hil.md's sh blocks."""
    return [" ".join(line.split()) for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(),
                                                           re.S)
            for line in block.splitlines() if line.strip()]


def doc(start: str, **values: str) -> list[str]:
    """The one doc command that begins with ``start``, example values replaced, as argv."""
    found = [c for c in doc_commands() if c.startswith(start)]
    assert len(found) == 1, f"docs/hil.md: {len(found)} commands start with {start!r}"
    text = found[0]
    for old, new in values.items():
        assert old in text, f"docs/hil.md: {old!r} not in {text!r}"
        text = text.replace(old, new)
    argv = shlex.split(text)
    if argv[:2] == ["python", "-m"]:
        return [sys.executable, *argv[1:]]
    if argv[0] == "mpremote":
        return [str(Path(sys.executable).parent / "mpremote"), *argv[1:]]
    return argv


def doc_toml() -> str:
    """The example bench file of docs/hil.md."""
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    return blocks[0]


def run(*argv: str, env=None, timeout=120) -> subprocess.CompletedProcess:
    argv = (sys.executable, *argv) if argv[0].startswith("-") else argv
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)


def meter_slave(meter_id: str, seed: int) -> MeterSlave:
    meter = get_meter(meter_id)
    model = MeterModel(meter, "household", SimClock(time.time(), 1.0), seed=seed)
    plan = FaultPlan([], seed=seed, meter=meter, slave=meter.default_slave)
    return MeterSlave(model, meter.default_slave, plan)


class Loop:
    """The event loop serving the meter simulators, in a thread (as the rig's)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self, servers):
        for server in servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class SerialLine:
    """A serial adapter with a wire to a virtual board's meter bus: a pty pair (``path``
    is the adapter's port, as ``/dev/ttyUSB1`` on a bench) whose other end is joined to
    the TCP port the board's bus is wired to. The simulator served on ``path`` then
    answers the board through a serial port, as on a bench."""

    def __init__(self, loop: Loop, host: str, port: int):
        import tty

        self.master, self._tty = os.openpty()
        tty.setraw(self._tty)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._tty)
        self.carried = 0  # bytes from the board to the adapter
        self._loop = loop.loop
        self._writer = None
        self.server = loop.run(asyncio.start_server(self._connected, host, port))
        self._loop.call_soon_threadsafe(self._loop.add_reader, self.master, self._from_adapter)

    async def _connected(self, reader, writer):
        self._writer = writer
        while data := await reader.read(4096):
            self.carried += len(data)
            os.write(self.master, data)

    def _from_adapter(self):
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        if self._writer is not None:
            self._writer.write(data)

    def close(self):
        self._loop.remove_reader(self.master)
        self.server.close()
        os.close(self.master)
        os.close(self._tty)


def make_rack(folder: Path) -> Path:
    """A rack of two virtual boards, made with docs/hil.md's command; its bench file."""
    made = run(*doc("python -m hil_tests.bench_mode virtual-rack", **{DOC_RACK: str(folder)}),
               "--interval", str(RACK_INTERVAL_S))
    assert made.returncode == 0, made.stderr
    return folder / "bench.toml"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The bench adapter on a real gateway: in bench mode (make hil-bench) on the boards of
    the bench file; otherwise (make test) on a rack of virtual boards made here."""
    folder = tmp_path_factory.mktemp("bench")
    loop = Loop()
    lines: list[SerialLine] = []
    if os.environ.get("WATTSHARE_HIL") == "bench":
        config = load_config()
    else:
        # board1's meter on TCP, as a virtual board takes it; board2's on a serial port
        # wired to its bus, as a bench's USB-RS485 adapter (meter_serial)
        path = make_rack(folder / "rack")
        wired = load_config(path, environ={}).boards[1].meter_tcp
        lines.append(SerialLine(loop, *wired))
        text = path.read_text().replace(f'meter_tcp = "{wired[0]}:{wired[1]}"',
                                        f'meter_serial = "{lines[0].path}"')
        path.write_text(text)
        config = load_config(path, environ={})
        assert config.boards[1].meter_serial == lines[0].path
    env = bench_mode._plain_env()
    gateway = GatewayProcess(folder / "gateway", env=env)
    site = SimpleNamespace(folder=folder, gateway=gateway, env=env, run=loop.run, servers=[])
    maker = BenchDevices(site, config)
    try:
        yield SimpleNamespace(maker=maker, gateway=gateway, config=config, site=site,
                              wait_s=max(60, 8 * config.interval_s), lines=lines)
    finally:
        maker.close()
        for line in lines:
            loop.loop.call_soon_threadsafe(line.close)
        loop.close(site.servers)
        gateway.stop()


@pytest.fixture(scope="module")
def boards(bench):
    """Two boards of the bench (the rack's two), installed side by side as two installers
    would, and started."""
    specs = bench.config.boards[:2]
    labels = ["Bench bakery", "Bench school"]
    slaves = [meter_slave(spec.meter, i + 1) for i, spec in enumerate(specs)]
    with ThreadPoolExecutor(2) as pool:
        # households that never export: provision checks their CT's direction
        made = list(pool.map(lambda i: bench.maker.add(labels[i], specs[i].meter, slaves[i],
                                                       OWNER, exports_allowed=False),
                             range(len(specs))))
    for dev, slave in zip(made, slaves, strict=True):
        dev.slave = slave
        dev.start()
    return made


def wattshare_json(gateway, *args):
    return json.loads(gateway.wattshare(*args, "--json").stdout)


def gateway_seqs(gateway, device_id: str) -> list[int]:
    """The sequence numbers the gateway stored for a device, in arrival order."""
    rows = wattshare_json(gateway, "device", "readings", device_id, "--limit", "0")
    return [r["seq"] for r in rows]


def spooled(lines: list[str]) -> list[int]:
    return [int(x.split("seq=")[1].split()[0]) for x in lines
            if x.startswith("wattshare: spooled seq=")]


@pytest.mark.slow
def test_two_boards_deployed_and_provisioned_with_the_installer_commands(bench, boards):
    log = (bench.site.folder / "bench.log").read_text()
    for dev in boards:
        port = dev.spec.port
        # the real commands, on the board's serial port (a pty behind the rack's link)
        assert f"bench: wattshare meter deploy --port {port} --board {dev.spec.board} " \
               f"--meter {dev.spec.meter}" in log
        assert f"bench: wattshare meter provision --port {port} --gateway " \
               f"{bench.config.gateway_host}:{bench.gateway.coap_port}" in log
        assert "--code CODE" in log  # the one-time code itself stays out of the log
        assert dev.slave.stats["replies"] >= bench.config.polls  # its meter answered it
    for line in bench.lines:  # the meter served on a serial port carried the board's polls
        assert line.carried > 0
    assert log.count("verified on the board") == len(boards)  # every copied file checked
    registry = {d["id"]: d for d in wattshare_json(bench.gateway, "device", "list")}
    assert {d.device_id for d in boards} <= set(registry)
    for dev in boards:
        shown = wattshare_json(bench.gateway, "device", "show", dev.device_id)
        assert shown["enrolled"] and shown["label"] == dev.label
        record = shown["commissioning"]
        assert record["signature_valid"] and record["record"]["installer"] == "hil bench"
        checks = record["record"]["checks"]
        assert all(c["ok"] for c in checks.values())
        # a meter with an export register shows the CT's direction (a PZEM has none)
        has_sign = "export_Wh" in get_meter(dev.spec.meter).fields
        assert checks["ct_orientation"]["checked"] == has_sign


@pytest.mark.slow
def test_readings_of_both_boards_arrive_verified_at_the_gateway(bench, boards):
    first = {d.device_id: max(gateway_seqs(bench.gateway, d.device_id)) for d in boards}

    def arrived(dev):
        return len([s for s in gateway_seqs(bench.gateway, dev.device_id)
                    if s > first[dev.device_id]]) >= 3

    for dev in boards:
        assert dev.wait_for(lambda dev=dev: arrived(dev), bench.wait_s), dev.output()[-20:]
        last = wattshare_json(bench.gateway, "device", "show", dev.device_id)["last_reading"]
        assert last["signature_valid"] and last["p_w"] > 0
        # the console, read from the board's serial port, tells what it stored
        assert set(spooled(dev.output())) & set(gateway_seqs(bench.gateway, dev.device_id))


@pytest.mark.slow
def test_the_board_link_reads_a_running_board_and_puts_it_back_to_work(bench, boards):
    dev = boards[-1]
    with dev.link() as link:  # the console steps aside; the firmware is interrupted
        data = {e.name for e in link.ls("/data")}
        config = json.loads(link.read_file("/config/device.json"))
        link.hard_reset()  # back to metering
    assert {"key", "seq.0", "enrolled"} <= data  # its key, sequence slots, enrolment
    assert config["gateway_port"] == bench.gateway.coap_port
    assert config["interval_s"] == bench.config.interval_s
    newest = max(gateway_seqs(bench.gateway, dev.device_id))
    assert dev.wait_for(lambda: max(gateway_seqs(bench.gateway, dev.device_id)) > newest,
                        bench.wait_s), dev.output()[-10:]


def gateway_down(gateway) -> None:
    gateway.stop()


def gateway_up(gateway) -> None:
    """``wattshare gateway run`` again on the same folder and ports."""
    gateway.log = open(gateway.folder / "gateway.log", "ab")  # noqa: SIM115 - stop() closes
    gateway.proc = subprocess.Popen([*WATTSHARE, "gateway", "run"], env=gateway.env,
                                    stdout=gateway.log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 30
    while not gateway.healthy():
        assert gateway.proc.poll() is None and time.monotonic() < deadline, \
            gateway.log_text()[-2000:]
        time.sleep(0.1)


@pytest.mark.slow
def test_power_cut_through_the_relay_command_loses_nothing_and_reuses_no_number(bench, boards):
    dev = boards[0]
    interval = bench.config.interval_s
    assert dev.wait_for(lambda: len(spooled(dev.output())) >= 2, bench.wait_s), \
        dev.output()[-20:]
    # the gateway goes away first, so the board holds readings in its flash spool when
    # its power is cut
    gateway_down(bench.gateway)
    try:
        held = len(spooled(dev.output())) + 3
        assert dev.wait_for(lambda: len(spooled(dev.output())) >= held, bench.wait_s)
        dev.power_cut()  # `python -m tools.virtual_board relay --rack DIR off board1`
        if dev.spec.meter_tcp:  # a virtual board: its port goes, as a USB board's does
            assert not os.path.exists(dev.spec.port)
        before = spooled(dev.output())
        unsent = set(before) - set(gateway_seqs(bench.gateway, dev.device_id))
        assert len(unsent) >= 3, unsent  # in the spool at the cut
    finally:
        gateway_up(bench.gateway)
    stored = gateway_seqs(bench.gateway, dev.device_id)
    time.sleep(2 * interval)
    assert gateway_seqs(bench.gateway, dev.device_id) == stored  # it really is off

    dev.start()  # relay on: the board boots into the firmware
    assert dev.wait_for(lambda: len(spooled(dev.output())) >= len(before) + 3, bench.wait_s), \
        dev.output()[-20:]
    after = spooled(dev.output())[len(before):]
    assert min(after) > max(before), "a sequence number was reused after the power cut"
    # while it runs, its spool drains: what it held at the cut, and what it stored since
    everything = spooled(dev.output())
    assert dev.wait_for(lambda: set(everything) <= set(gateway_seqs(bench.gateway,
                                                                    dev.device_id)),
                        bench.wait_s), sorted(set(everything) - set(gateway_seqs(
                            bench.gateway, dev.device_id)))
    dev.stop()  # clean: a quiet moment, then the relay off
    seqs = gateway_seqs(bench.gateway, dev.device_id)
    assert len(seqs) == len(set(seqs)), "a reading stored twice"
    assert unsent <= set(seqs)
    assert not any("ALARM 4.09" in x for x in dev.output())  # no seq with other bytes
    status = wattshare_json(bench.gateway, "gateway", "status")
    device = next(d for d in status["devices"] if d["id"] == dev.device_id)
    assert device["rejects"] == {}, device  # nothing refused (a reused number: 4.09)


# ---- the bench file, the relay, make hil-bench (fast) ------------------------------------

GOOD = """
[bench]
power = "relayctl --board 2"
gateway_host = "192.168.4.1"
wifi = "bench:secret"

[[board]]
name = "bakery"
port = "/dev/ttyUSB0"
meter = "sdm120ct"
meter_serial = "/dev/ttyUSB1"
relay = "1"

[[board]]
name = "garage"
port = "/dev/ttyUSB2"
board = "esp32-s3-devkitc"
meter = "pzem004t-v3"
meter_serial = "/dev/ttyUSB3"
slave = 1
relay = "2"
"""


def test_a_bench_file_describes_the_boards(tmp_path):
    path = tmp_path / "hil-bench.toml"
    path.write_text(GOOD)
    config = load_config(path, environ={})
    assert config.power == ("relayctl", "--board", "2")
    assert [(b.name, b.port, b.board, b.meter, b.meter_serial, b.relay)
            for b in config.boards] == [
        ("bakery", "/dev/ttyUSB0", "esp32-devkitc-max485", "sdm120ct", "/dev/ttyUSB1", "1"),
        ("garage", "/dev/ttyUSB2", "esp32-s3-devkitc", "pzem004t-v3", "/dev/ttyUSB3", "2")]
    # the relay command from the environment wins (WATTSHARE_BENCH_POWER)
    assert load_config(path, environ={"WATTSHARE_BENCH_POWER": "usbrelay -x"}).power == (
        "usbrelay", "-x")


@pytest.mark.parametrize("change, message", [
    (("", 'name = "bakery"\nname = "x"'), "not valid TOML"),
    (('meter = "sdm120ct"', 'meter = "sdm999"'),
     "board[0].meter = \"sdm999\": must be one of pzem004t-v3, sdm120ct, sdm630ct"),
    (('meter_serial = "/dev/ttyUSB1"', 'meter_serial = "/dev/ttyUSB2"'),
     "board[1].port = \"/dev/ttyUSB2\": already used as board[0].meter_serial"),
    (('relay = "1"\n', ""), "board[0].relay: missing (required: [bench] power is set"),
    (('meter_serial = "/dev/ttyUSB1"', 'meter_tcp = "nowhere"'),
     "board[0].meter_tcp = \"nowhere\": must be HOST:PORT"),
    (('meter_serial = "/dev/ttyUSB1"', ""), "board[0].meter_serial: exactly one of"),
    (('slave = 1', 'slave = 300'), "board[1].slave = 300: must be an integer 1..247"),
    (('gateway_host', 'gatway_host'), "bench.gatway_host: unknown key; allowed keys:"),
    (('name = "garage"', 'name = "bakery"'), "board[1].name = \"bakery\": must be unique"),
])
def test_a_wrong_bench_file_is_refused_naming_the_file_and_key(tmp_path, change, message):
    path = tmp_path / "hil-bench.toml"
    old, new = change
    assert old in GOOD
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value), str(caught.value)


def test_no_bench_file_no_boards(tmp_path):
    path = tmp_path / "hil-bench.toml"
    with pytest.raises(ConfigError, match=f"{path}: no such file .the bench file: write it"):
        load_config(path, environ={})
    path.write_text("[bench]\n")
    with pytest.raises(ConfigError, match=r"board: at least one \[\[board\]\] table"):
        load_config(path, environ={})


def test_what_a_bench_lacks_is_skipped_with_the_reason(tmp_path):
    path = tmp_path / "hil-bench.toml"
    path.write_text(GOOD.replace('power = "relayctl --board 2"', ""))
    site = SimpleNamespace(folder=tmp_path, gateway=None, env={}, run=None, servers=[])
    maker = BenchDevices(site, load_config(path, environ={}))
    # no relay command: no power cut; and never a torn write at a chosen flash write
    assert maker.capabilities == {"console", "board_link"}
    with pytest.raises(pytest.skip.Exception, match="no free board with a sdm630ct meter"):
        maker.add("Workshop", "sdm630ct", None, OWNER)
    dev = bench_mode.BenchDevice(maker.config.boards[0], None, "00" * 8, "Bakery",
                                 maker.capabilities)
    with pytest.raises(pytest.skip.Exception, match="a power cut needs the bench's relay"):
        dev.power_cut()
    fast = SimpleNamespace(folder=tmp_path, gateway=None, run=None, servers=[],
                           env={"WATTSHARE_SIM_CLOCK": "1750161600,1765000000,50"})
    with pytest.raises(pytest.skip.Exception, match="keep real time .* at 50x"):
        BenchDevices(fast, maker.config).add("Bakery", "sdm120ct", None, OWNER)
    fast.env = {"WATTSHARE_SIM_CLOCK": f"1813050000,{time.time()},1"}
    with pytest.raises(pytest.skip.Exception, match="another time .2027-06-15 09:00 UTC"):
        BenchDevices(fast, maker.config).add("Bakery", "sdm120ct", None, OWNER)


def test_the_virtual_relay_switches_a_rack_board(tmp_path):
    rack = tmp_path / "rack"
    path = make_rack(rack)
    config = load_config(path, environ={})
    off = doc("python -m tools.virtual_board relay", **{DOC_RACK: str(rack)})
    on = [*off[:-2], "on", off[-1]]
    port = rack / "board1" / "serial"
    assert config.boards[0].port == str(port) and config.power[-1] == str(rack)
    try:
        assert run(*on).returncode == 0
        assert os.path.realpath(port).startswith("/dev/pts/")
        proc = run(*doc("mpremote connect", **{DOC_RACK: str(rack)}))
        assert proc.returncode == 0 and proc.stdout == "2\n", proc.stderr
        assert "already on" in run(*on).stdout  # a relay that is on
        pid = int((rack / "board1" / "power.pid").read_text())
        assert run(*off).returncode == 0
        assert not port.exists() and virtual_board._running(rack / "board1") is None
        assert not Path(f"/proc/{pid}").exists() or " Z " in Path(f"/proc/{pid}/stat").read_text()
        assert "already off" in run(*off).stdout
        assert run(*on).returncode == 0  # the same board again, its flash kept
        assert (rack / "board1" / "flash" / "boot.py").exists() and port.exists()
    finally:
        run(*off)
    wrong = run(*off[:-1], "../elsewhere")
    assert wrong.returncode == 2 and "relay id '../elsewhere'" in wrong.stderr


def test_the_doc_bench_file_and_its_errors(tmp_path):
    path = tmp_path / DOC_BENCH
    path.write_text(doc_toml())
    proc = run(*doc("python -m hil_tests.bench_mode check", **{DOC_BENCH: str(path)}))
    assert proc.returncode == 0, proc.stderr
    assert "2 boards, gateway at 192.168.4.1, power /usr/local/bin/bench-power off|on ID" \
        in proc.stdout
    assert "garage: esp32-devkitc-max485 on /dev/ttyUSB2, pzem004t-v3 on /dev/ttyUSB3, " \
        "relay 2" in proc.stdout
    # the two errors the doc shows, as they are printed
    shown = re.findall(r"^(hil-bench.toml: .*)$", DOC.read_text(), re.M)
    assert len(shown) == 2
    bad_meter = doc_toml().replace('meter = "pzem004t-v3"', 'meter = "sdm999"')
    no_relay = doc_toml().replace('relay = "1"', "")
    for text, message in zip((bad_meter, no_relay), shown, strict=True):
        path.write_text(text)
        proc = run(*doc("python -m hil_tests.bench_mode check", **{DOC_BENCH: str(path)}))
        assert proc.returncode == 2
        assert proc.stderr == f"bench: error: {tmp_path}/{message}\n"


@pytest.mark.slow
def test_make_hil_bench_virtual_runs_the_suite_in_bench_mode(tmp_path):
    # the fast tests of this file, in bench mode on a rack: the make chain end to end
    # (the rack's slow scenarios are the ones above, run in-process)
    rack = tmp_path / "rack"
    argv = [*doc("make hil-bench-virtual"), "--no-print-directory", f"RACK={rack}",
            "HIL_TESTS=hil_tests/test_bench_mode.py", "PYTEST_ARGS=-m 'not slow' -q"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"bench file: {rack}/bench.toml" in proc.stdout
    assert f"board2: esp32-devkitc-max485 on {rack}/board2/serial" in proc.stdout
    assert f"WATTSHARE_HIL=bench WATTSHARE_BENCH_CONFIG={rack}/bench.toml" in proc.stdout
    assert re.search(r"\d+ passed, \d+ deselected", proc.stdout), proc.stdout[-2000:]


def test_make_hil_bench_refuses_a_missing_bench_file(tmp_path):
    missing = tmp_path / "nowhere.toml"
    argv = doc("make hil-bench BENCH=", **{DOC_BENCH: str(missing)})
    proc = subprocess.run([*argv, "--no-print-directory"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert f"bench: error: {missing}: no such file" in proc.stderr, proc.stderr


def test_every_command_of_the_doc_is_run_by_a_test():
    commands = doc_commands()
    for c in commands:
        assert any(c.startswith(start) for start in DOC_COMMANDS), (
            f"docs/hil.md: {c!r} is run by no test")
    for start in DOC_COMMANDS:
        assert sum(c.startswith(start) for c in commands) == 1, start
