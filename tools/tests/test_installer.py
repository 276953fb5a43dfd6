"""The installer's path, end to end, with the real commands as docs/installer.md writes
them: a blank virtual board becomes a commissioned meter whose readings arrive verified at
a real gateway (`wattshare gateway run`); each failure stops with the message that names
the fix and leaves the gateway's registry as it was."""

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import cli, meter_flash
from tools.board_config import PinnedImage, compile_meter, get_meter
from tools.board_link import BoardLink
from tools.local_site import REPO, WATTSHARE, GatewayProcess, Meters, free_port
from tools.meter_deploy import deploy
from tools.virtual_board import BoardProcess

pytestmark = pytest.mark.slow

GUIDE = REPO / "docs" / "installer.md"
# the guide's example values, replaced by this machine's
DOC_PORT = "/dev/ttyUSB0"
DOC_GATEWAY = "--gateway 192.168.1.20"
DOC_CODE = "YSAF-XV2M-F2H1"
DOC_DEVICE = "5753a4c138f1e2d0"
DOC_IMAGE = "ESP32_GENERIC-20251209-v1.27.0.bin"
DOC_PTY = "/dev/pts/3"
DOC_SIM = "127.0.0.1:5020"
DOC_FOLDER = "/tmp/board1"
# every command of the guide, by how it starts; each is run by a test below
GUIDE_COMMANDS = ["wattshare meter flash", "wattshare meter deploy",
                  "wattshare device invite", "wattshare meter provision",
                  "wattshare device show", "python -m tools.meter_sim",
                  "python -m tools.virtual_board", "mpremote connect"]


def guide_commands() -> list[str]:
    """The commands in the guide's sh blocks (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def guide(start: str, **values: str) -> list[str]:
    """The one guide command that begins with ``start``, example values replaced, as argv."""
    found = [c for c in guide_commands() if c.startswith(start)]
    assert len(found) == 1, f"docs/installer.md: {len(found)} commands start with {start!r}"
    text = found[0]
    for old, new in values.items():
        assert old in text, f"docs/installer.md: {old!r} not in {text!r}"
        text = text.replace(old, new)
    argv = shlex.split(text)
    if argv[0] == "wattshare":
        return [*WATTSHARE, *argv[1:]]
    if argv[:2] == ["python", "-m"]:
        return [sys.executable, *argv[1:]]
    return [str(Path(sys.executable).parent / argv[0]), *argv[1:]]


def run(argv, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    gateway = GatewayProcess(tmp_path_factory.mktemp("gateway"))
    meters = Meters()
    yield gateway, meters
    meters.close()
    gateway.stop()


@pytest.fixture(scope="module")
def deployed(site, tmp_path_factory):
    """A blank virtual board after the guide's `meter deploy` (its output), powered off;
    a pristine copy of its flash for the failure tests' boards."""
    gateway, meters = site
    folder = tmp_path_factory.mktemp("board") / "bakery"
    with BoardProcess(folder, meters.start(), hwid="a4c138f1e2d0") as board:
        with BoardLink(board.port) as link:  # blank: MicroPython's own boot.py only
            assert [e.name for e in link.ls("/")] == ["boot.py"]
        proc = run(guide("wattshare meter deploy", **{DOC_PORT: board.port}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pristine = tmp_path_factory.mktemp("pristine") / "flash"
    shutil.copytree(folder / "flash", pristine)
    return folder, pristine, proc.stdout


def board_like(deployed, tmp_path, hwid: str, meter_tcp: str | None) -> BoardProcess:
    """Another board with the deployed firmware (a copy of the flash, its own hwid)."""
    folder = tmp_path / hwid
    shutil.copytree(deployed[1], folder / "flash")
    return BoardProcess(folder, meter_tcp, hwid=hwid)


def provision(gateway, port, code, *extra, timeout=240):
    argv = guide("wattshare meter provision", **{
        DOC_PORT: port, DOC_CODE: code,
        DOC_GATEWAY: f"--gateway 127.0.0.1:{gateway.coap_port} --gateway-http "
                     f"{gateway.http_url}"})
    return run([*argv, *extra], timeout=timeout)


def test_deploy_copies_only_what_changed(deployed, tmp_path):
    folder, pristine, deploy_out = deployed
    wanted = {p.relative_to(pristine).as_posix() for p in pristine.rglob("*") if p.is_file()}
    assert f"deploy: {len(wanted)} files copied" in deploy_out  # blank: everything
    assert "  copy lib/wattcore/p256_table.mpy" in deploy_out  # not a terminal: a line each
    assert json.loads((pristine / "config" / "meter.json").read_text()) == compile_meter(
        get_meter("sdm120ct"))
    with board_like(deployed, tmp_path, "a4c138000009", None) as board:
        with BoardLink(board.port) as link:
            # the device's own files, a damaged module and a module an older firmware had
            link.mkdir("/data")
            link.write_file("/data/key", b"sealed key")
            link.write_file("/config/device.json", b'{"gateway_host": "gw"}')
            link.write_file("/lib/app/config.mpy", b"damaged")
            link.write_file("/lib/app/retired.mpy", b"old module")
            out = io.StringIO()
            result = deploy(link, "esp32-devkitc-max485", "sdm120ct", out=out)
            assert (result.files_copied, result.removed) == (1, 1), out.getvalue()
            assert result.up_to_date == len(wanted) - 1
            good = (pristine / "lib" / "app" / "config.mpy").read_bytes()
            assert link.sha256("/lib/app/config.mpy") == hashlib.sha256(good).hexdigest()
            assert link.sha256("/lib/app/retired.mpy") is None
            assert link.read_file("/data/key") == b"sealed key"
            assert link.read_file("/config/device.json") == b'{"gateway_host": "gw"}'
    assert "1 files copied" in out.getvalue() and "1 removed" in out.getvalue()


def test_blank_board_to_commissioned_meter(site, deployed, tmp_path):
    gateway, meters = site
    folder, _, deploy_out = deployed
    assert "deploy: 0 files for" not in deploy_out and "verified on the board" in deploy_out
    printed = run(guide("wattshare device invite"), env=gateway.env)  # on the gateway
    assert printed.returncode == 0 and "works once" in printed.stdout, printed.stderr
    code = re.search(r"code: +(\S+)", printed.stdout).group(1)
    with BoardProcess(folder, meters.start()) as board:  # the same board, powered again
        proc = provision(gateway, board.port, code)
        assert proc.returncode == 0, proc.stdout + proc.stderr + board.errors()
        assert "commissioned: 5753a4c138f1e2d0 enrolled" in proc.stdout
        assert code not in proc.stdout + proc.stderr + gateway.log_text()  # never logged

        shown = run(guide("wattshare device show", **{DOC_DEVICE: "5753a4c138f1e2d0"}),
                    env=gateway.env)
        assert "enrolled:    yes" in shown.stdout and "signed by the device" in shown.stdout
        report = gateway.device("5753a4c138f1e2d0")
        assert report["enrolled"] and report["label"] == "Bakery, Rue Haute 12"
        record = report["commissioning"]
        assert record["signature_valid"] and record["record"]["installer"] == "A. Installer"
        checks = record["record"]["checks"]
        assert set(checks) == {"modbus_link", "live_reading", "ct_orientation",
                               "gateway_verified", "clock"}
        assert all(c["ok"] for c in checks.values()), checks
        assert checks["modbus_link"]["polls"] == 10 and checks["ct_orientation"]["checked"]
        assert record["record"]["public_key"] == report["pubkey"]
        # the same code on another board: used
        before = gateway.devices()
        with board_like(deployed, tmp_path, "a4c138000002", meters.start()) as other:
            proc = provision(gateway, other.port, code)
        assert proc.returncode == 1
        assert "the gateway refused the code (4.03 code-used): this code has already " \
               "enrolled another meter: ask the technician for a new code" in proc.stderr
        assert gateway.devices() == before

        # the meter went back to metering: its readings keep arriving, verified
        first = report["last_reading"]["seq"]
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            last = gateway.device("5753a4c138f1e2d0")["last_reading"]
            if last["seq"] > first:
                break
            time.sleep(1)
        assert last["seq"] > first and last["signature_valid"] and last["p_w"] > 0


@pytest.mark.parametrize("case", ["reversed CT", "wrong Modbus address", "meter not connected",
                                  "gateway unreachable", "wrong code", "expired code"])
def test_a_failed_step_names_the_fix_and_leaves_the_registry_unchanged(
        site, deployed, tmp_path, case):
    gateway, meters = site
    expected = {
        "reversed CT": "the CT is reversed: the meter sees",
        "wrong Modbus address": "wrong Modbus address: no meter answers at address 1, but "
                                "one answers at address 7: run the command again with "
                                "--slave 7",
        "meter not connected": "no reply from the meter (nothing answered at address 1, nor "
                               "anywhere on the bus): check the RS-485 wiring (A to A, B to "
                               "B: swap A and B if unsure), the 120 ohm termination",
        "gateway unreachable": "the gateway is unreachable: nothing answers on CoAP",
        "wrong code": "the gateway refused the code (4.03 code-wrong): the gateway has no "
                      "invite with this code",
        "expired code": "the gateway refused the code (4.03 code-expired): the code has "
                        "expired: ask the technician for a new code",
    }[case]
    meter = {"reversed CT": meters.start(faults=("reversed-ct",)),
             "wrong Modbus address": meters.start(slave=7),
             "meter not connected": None}.get(case, meters.start())
    if case == "wrong code":
        code = DOC_CODE  # well formed, never issued
    elif case == "expired code":
        # issued an hour ago for 30 minutes (the gateway's clock set back for the invite)
        past = dict(gateway.env, WATTSHARE_SIM_CLOCK=f"{time.time() - 3600},{time.time()},1")
        code = gateway.invite("Garage", "--expires", "30m", env=past)
    else:
        code = gateway.invite(f"Meter {case}")
    before = gateway.devices()
    hwid = hashlib.sha256(case.encode()).hexdigest()[:12]
    if case == "gateway unreachable":
        # checked before anything else: the guide's port need not even exist
        assert not os.path.exists(DOC_PORT)
        proc = run(guide("wattshare meter provision", **{
            DOC_CODE: code, DOC_GATEWAY: f"--gateway 127.0.0.1:{free_port()} --gateway-http "
                                         f"http://127.0.0.1:{free_port(1)}"}))
    else:
        with board_like(deployed, tmp_path, hwid, meter) as board:
            extra = ["--scan-timeout", "20"] if case == "meter not connected" else []
            proc = provision(gateway, board.port, code, *extra)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("wattshare: error: " + expected), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert expected.split(":")[0].split(" (")[0] in GUIDE.read_text()  # the guide explains it
    assert gateway.devices() == before
    if case in ("reversed CT", "wrong Modbus address", "meter not connected"):
        # a meter that failed its checks was never given the code
        device_json = json.loads((tmp_path / hwid / "flash" / "config" / "device.json")
                                 .read_text())
        assert "enrol_code" not in device_json


def test_the_guide_flash_command(tmp_path, monkeypatch, capsys):
    # No ESP32 here: the guide's command runs up to esptool, whose call is captured.
    image = tmp_path / DOC_IMAGE
    head = bytes([0xE9, 3, 2, 0x20]) + bytes(10)  # an ESP image header, chip id 0 (ESP32)
    image.write_bytes(head + bytes(4096 - len(head)))
    pinned = [PinnedImage(DOC_IMAGE, "esp32", "1.27.0", 4096,
                          hashlib.sha256(image.read_bytes()).hexdigest(),
                          "https://micropython.org/download/ESP32_GENERIC/",
                          "https://micropython.org/resources/firmware/" + DOC_IMAGE)]
    monkeypatch.setattr(meter_flash, "load_images", lambda: pinned)
    ran = []
    monkeypatch.setattr(meter_flash.subprocess, "run", lambda cmd, **kw: ran.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "Hash of data verified.\n"))
    monkeypatch.setattr(meter_flash, "check_port", lambda port: None)
    argv = guide("wattshare meter flash", **{DOC_IMAGE: str(image)})
    assert cli.main(argv[len(WATTSHARE):]) == 0
    assert ran == [[sys.executable, "-m", "esptool", "--chip", "esp32", "--port", DOC_PORT,
                    "--baud", "460800", "write-flash", "--erase-all", "0x1000", str(image)]]


def test_the_guide_virtual_board_commands(tmp_path):
    port = free_port(1)
    sim = subprocess.Popen(guide("python -m tools.meter_sim", **{DOC_SIM: f"127.0.0.1:{port}"}),
                           stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert "meter_sim:" in sim.stdout.readline()
        argv = guide("python -m tools.virtual_board", **{
            DOC_FOLDER: str(tmp_path / "board1"), DOC_SIM: f"127.0.0.1:{port}"})
        board = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, cwd=REPO)
        try:
            pty = board.stdout.readline().strip()
            assert re.fullmatch(r"/dev/pts/\d+", pty)
            proc = run(guide("mpremote connect", **{DOC_PTY: pty}))
            assert proc.returncode == 0 and proc.stdout == "2\n", proc.stderr
        finally:
            board.terminate()
            board.wait(10)
    finally:
        sim.terminate()
        sim.wait(10)
    assert (tmp_path / "board1" / "flash" / "boot.py").exists()


def test_every_command_of_the_guide_is_run_by_a_test():
    commands = guide_commands()
    for c in commands:
        assert any(c.startswith(start) for start in GUIDE_COMMANDS), (
            f"docs/installer.md: {c!r} is run by no test")
    for start in GUIDE_COMMANDS:
        assert sum(c.startswith(start) for c in commands) == 1, start
