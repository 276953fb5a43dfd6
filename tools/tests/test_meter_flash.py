"""`wattshare meter flash`: no ESP32 here, so these tests check the esptool command it
composes (accepted by the pinned esptool) and every refusal before anything is written."""

import hashlib
import os
import subprocess
import sys

import pytest
import serial

from tools import cli, meter_flash
from tools.board_config import PinnedImage, get_board, load_images
from tools.errors import InstallError

CHIP_ID = {"esp32": 0, "esp32s3": 9}  # the ESP image header's chip id (esptool targets)


def fake_image(path, chip="esp32", size=4096):
    """An ESP image header for ``chip`` (the bootloader's), padded to ``size`` bytes."""
    head = bytes([0xE9, 3, 2, 0x20]) + bytes(8) + CHIP_ID[chip].to_bytes(2, "little")
    path.write_bytes(head + bytes(size - len(head)))
    return path


def pin(path, chip="esp32"):
    data = path.read_bytes()
    return PinnedImage(file=path.name, chip=chip, micropython="1.27.0", bytes=len(data),
                       sha256=hashlib.sha256(data).hexdigest(),
                       page="https://micropython.org/download/ESP32_GENERIC/",
                       url=f"https://micropython.org/resources/firmware/{path.name}")


@pytest.fixture
def pty_port():
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_the_composed_esptool_call_uses_the_board_definition(tmp_path):
    image = tmp_path / "mp.bin"
    devkitc = get_board("esp32-devkitc-max485")
    assert meter_flash.esptool_command(devkitc, image, "/dev/ttyUSB0") == [
        sys.executable, "-m", "esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0",
        "--baud", "460800", "write-flash", "--erase-all", "0x1000", str(image)]
    s3 = meter_flash.esptool_command(get_board("esp32-s3-devkitc"), image, "/dev/ttyACM0")
    assert s3[3:5] == ["--chip", "esp32s3"] and s3[-2:] == ["0x0", str(image)]


def test_the_pinned_esptool_accepts_the_composed_call(tmp_path):
    # esptool parses every option, then fails only at the port (no board here)
    image = fake_image(tmp_path / "mp.bin")
    cmd = meter_flash.esptool_command(get_board("esp32-devkitc-max485"), image,
                                      str(tmp_path / "ttyUSB0"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Could not open" in proc.stdout + proc.stderr
    assert "No such option" not in proc.stdout + proc.stderr


def test_a_pinned_image_for_the_right_chip_is_flashed(tmp_path, pty_port, capsys):
    image = fake_image(tmp_path / "ESP32_GENERIC-test.bin")
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="Hash of data verified.\n")

    cmd = meter_flash.flash(pty_port, "esp32-devkitc-max485", image, run=run,
                            pinned=[pin(image)])
    assert calls == [cmd] and cmd[-2:] == ["0x1000", str(image)]
    out = capsys.readouterr().out
    assert "SHA-256 ok" in out and "next: wattshare meter deploy" in out


def test_esptool_failures_are_explained(tmp_path, pty_port):
    image = fake_image(tmp_path / "mp.bin")

    def wrong_chip(cmd, **kwargs):
        return subprocess.CompletedProcess(
            cmd, 2, stdout="A fatal error occurred: This chip is ESP32-S3, not ESP32. "
                           "Wrong --chip argument?\n")

    with pytest.raises(InstallError, match="not an esp32: choose the --board"):
        meter_flash.flash(pty_port, "esp32-devkitc-max485", image, run=wrong_chip,
                          pinned=[pin(image)])


@pytest.mark.parametrize("case, expected", [
    ("missing file", "no such file; download the MicroPython image"),
    ("not an image", "not an ESP32 firmware image"),
    ("wrong chip", "built for esp32s3, but board esp32-devkitc-max485 has an esp32"),
    ("unknown image", "unknown image .* is not in boards/micropython/images.toml; use "
                      "ESP32_GENERIC-20251209-v1.27.0.bin from "
                      "https://micropython.org/download/ESP32_GENERIC/"),
    ("too big", "do not fit the board's 4 MB flash"),
])
def test_images_are_refused_before_anything_runs(tmp_path, pty_port, case, expected):
    image = tmp_path / "mp.bin"
    if case == "not an image":
        image.write_bytes(b"<html>404 not found</html>")
    elif case == "wrong chip":
        fake_image(image, chip="esp32s3")
    elif case == "unknown image":
        fake_image(image)
    elif case == "too big":
        fake_image(image, size=4 * 1024 * 1024)
    pinned = load_images() if case == "unknown image" else [pin(fake_image(tmp_path / "ok.bin"))]

    def run(cmd, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("esptool ran")

    with pytest.raises(InstallError, match=expected):
        meter_flash.flash(pty_port, "esp32-devkitc-max485", image, run=run, pinned=pinned)


def test_a_busy_or_missing_port_is_refused(tmp_path, pty_port):
    image = fake_image(tmp_path / "mp.bin")

    def run(cmd, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("esptool ran")

    with serial.Serial(pty_port, exclusive=True):
        with pytest.raises(InstallError, match="the port is busy"):
            meter_flash.flash(pty_port, "esp32-devkitc-max485", image, run=run,
                              pinned=[pin(image)])
    with pytest.raises(InstallError, match="no such serial port"):
        meter_flash.flash(str(tmp_path / "ttyUSB7"), "esp32-devkitc-max485", image, run=run,
                          pinned=[pin(image)])


def test_the_command_line_reports_a_refusal_in_one_line(tmp_path, capsys):
    code = cli.main(["meter", "flash", "--port", "/dev/ttyUSB0", "--image",
                     str(tmp_path / "ESP32_GENERIC-20251209-v1.27.0.bin")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("wattshare: error: --image ") and "no such file" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_the_pinned_list_names_where_each_image_comes_from():
    images = load_images()
    assert {i.chip for i in images} <= {"esp32", "esp32s3"}
    for i in images:
        assert i.url.startswith("https://micropython.org/resources/firmware/")
        assert i.url.endswith("/" + i.file) and i.page.startswith("https://micropython.org/")
        assert len(i.sha256) == 64 and i.bytes > 1_000_000
