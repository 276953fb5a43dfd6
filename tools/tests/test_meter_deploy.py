"""`wattshare meter deploy` onto a blank virtual board: everything the first time, then
only what changed (hashes read back from the board), stale firmware files removed, the
device's own data left alone."""

import hashlib
import io
import json
import subprocess
import sys

import pytest

from tools import build_firmware, cli
from tools.board_config import compile_board, compile_meter, get_board, get_meter
from tools.board_link import BoardLink
from tools.meter_deploy import Progress, deploy, firmware_files
from tools.virtual_board import BoardProcess


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("fw") / "firmware"
    build_firmware.build(out, romfs=False, verbose=False)
    return out


def test_deploy_copies_what_changed_and_verifies_it(tmp_path, build):
    wanted = firmware_files(build)
    with BoardProcess(tmp_path / "board") as board:
        # the real command on a blank board: everything is copied
        proc = subprocess.run([sys.executable, "-m", "tools.cli", "meter", "deploy", "--port",
                               board.port, "--meter", "sdm120ct", "--firmware", str(build)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"deploy: {len(wanted) + 2} files copied" in proc.stdout
        assert "  copy lib/wattcore/p256_table.mpy" in proc.stdout  # not a tty: a line per file
        flash = board.folder / "flash"
        for path, data in wanted.items():
            assert (flash / path.lstrip("/")).read_bytes() == data, path
        assert json.loads((flash / "config" / "meter.json").read_text()) == compile_meter(
            get_meter("sdm120ct"))
        assert json.loads((flash / "config" / "board.json").read_text()) == compile_board(
            get_board("esp32-devkitc-max485"))

        with BoardLink(board.port) as link:
            # the device's own files, a damaged module and a module an older firmware had
            link.mkdir("/data")
            link.write_file("/data/key", b"sealed key")
            link.write_file("/config/device.json", b'{"gateway_host": "gw"}')
            link.write_file("/lib/app/config.mpy", b"damaged")
            link.write_file("/lib/app/retired.mpy", b"old module")
            out = io.StringIO()
            result = deploy(link, "esp32-devkitc-max485", "sdm120ct", build, out=out)
            assert (result.files_copied, result.removed) == (1, 1)
            assert result.up_to_date == len(wanted) + 1
            assert link.sha256("/lib/app/config.mpy") == hashlib.sha256(
                wanted["/lib/app/config.mpy"]).hexdigest()
            assert link.sha256("/lib/app/retired.mpy") is None
            assert link.read_file("/data/key") == b"sealed key"
            assert link.read_file("/config/device.json") == b'{"gateway_host": "gw"}'
            # nothing left to do
            again = deploy(link, "esp32-devkitc-max485", "sdm120ct", build, out=io.StringIO())
            assert (again.files_copied, again.removed) == (0, 0)
        assert "1 files copied" in out.getvalue() and "1 removed" in out.getvalue()


def test_a_progress_bar_on_a_terminal(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = Progress(4096, out)
    bar.file("lib/app/x.mpy", 4096)
    bar.advance(1024)
    bar.advance(3072)
    bar.end()
    text = out.getvalue()
    assert "\r  [#######.......................]    1.0/4.0 KB lib/app/x.mpy" in text
    assert text.endswith("4.0/4.0 KB lib/app/x.mpy" + " " * 27 + "\n")


def test_deploy_refuses_a_missing_port(tmp_path, capsys):
    assert cli.main(["meter", "deploy", "--port", str(tmp_path / "ttyUSB0")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wattshare: error: ") and "no such serial port" in err
    assert "Traceback" not in err
