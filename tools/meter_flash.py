"""``wattshare meter flash``: MicroPython onto a blank ESP32, with esptool.

The installer downloads the MicroPython image from micropython.org (the board's page,
listed in ``boards/micropython/images.toml``) and passes it with ``--image``. Before
anything touches the board the image is checked: it must exist, be an ESP image built
for the board's chip (the chip id in its header), fit the board's flash, and match a
pinned entry (size and SHA-256). The serial port must exist and be free. Then esptool
(pinned 5.6, its current command names) erases the flash and writes the image at the
board's offset (``[flash]`` in ``boards/<id>.toml``: 0x1000 on the ESP32, 0x0 on the
ESP32-S3) at the board's baud rate.

This step needs a real ESP32 in its bootloader: it cannot run on a virtual board (which
starts with MicroPython already on it). Its tests check the composed esptool command and
every refusal.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import serial

from tools.board_config import Board, PinnedImage, get_board, load_images
from tools.errors import InstallError

_IMAGE_MAGIC = 0xE9  # first byte of an ESP image (here: the second-stage bootloader)


def image_chip(data: bytes) -> str | None:
    """The chip an ESP image is built for (from the chip id in its extended header)."""
    from esptool.targets import CHIP_DEFS

    if len(data) < 24 or data[0] != _IMAGE_MAGIC:
        return None
    chip_id = int.from_bytes(data[12:14], "little")
    for name, target in CHIP_DEFS.items():
        if getattr(target, "IMAGE_CHIP_ID", None) == chip_id:
            return name
    return f"unknown chip id {chip_id}"


def check_image(image: Path, board: Board, pinned: list[PinnedImage]) -> PinnedImage:
    """The pinned entry ``image`` matches; InstallError saying what is wrong otherwise."""
    ours = [p for p in pinned if p.chip == board.chip]
    where = "; ".join(f"{p.file} from {p.page}" for p in ours) or (
        f"none is pinned for {board.chip} yet: see boards/micropython/images.toml")
    if not image.is_file():
        raise InstallError(f"--image {image}: no such file; download the MicroPython image "
                           f"for {board.name} ({where})")
    data = image.read_bytes()
    chip = image_chip(data)
    if chip is None:
        raise InstallError(f"--image {image}: not an ESP32 firmware image (no ESP image "
                           f"header); download the .bin file ({where})")
    if chip != board.chip:
        raise InstallError(f"--image {image}: built for {chip}, but board {board.id} has "
                           f"an {board.chip} ({board.path.name}: chip); download the image "
                           f"for {board.chip} ({where})")
    if len(data) > board.flash_mb * 1024 * 1024 - board.flashing.offset:
        raise InstallError(f"--image {image}: {len(data)} bytes do not fit the board's "
                           f"{board.flash_mb} MB flash")
    digest = hashlib.sha256(data).hexdigest()
    for p in ours:
        if p.sha256 == digest and p.bytes == len(data):
            return p
    raise InstallError(f"--image {image}: unknown image (SHA-256 {digest[:16]}..., "
                       f"{len(data)} bytes) is not in boards/micropython/images.toml; "
                       f"use {where}")


def check_port(port: str) -> None:
    """The port exists and nothing else has it open; InstallError otherwise."""
    if not os.path.exists(port):
        raise InstallError(f"--port {port}: no such serial port; plug the board in (a data "
                           "cable) and check its port (ls /dev/ttyUSB* /dev/ttyACM*)")
    try:
        ser = serial.Serial(port, exclusive=True)
    except serial.SerialException as e:
        raise InstallError(f"--port {port}: the port is busy ({e}); close the other "
                           "program using it (mpremote, a serial monitor)") from None
    try:
        ser.close()
    except (OSError, serial.SerialException):
        pass  # a port without modem lines (a pty)


def esptool_command(board: Board, image: Path, port: str) -> list[str]:
    """The esptool call that erases the flash and writes MicroPython on ``board``."""
    return [sys.executable, "-m", "esptool", "--chip", board.chip, "--port", port,
            "--baud", str(board.flashing.baud), "write-flash", "--erase-all",
            f"0x{board.flashing.offset:x}", str(image)]


def _explain(output: str, board: Board) -> str:
    if "Wrong --chip" in output or "This chip is" in output:
        return (f"the board on the port is not an {board.chip}: choose the --board that "
                "matches it (wattshare meter flash --help lists them)")
    if "Failed to connect" in output or "No serial data received" in output:
        return ("esptool could not talk to the bootloader: hold BOOT, press and release "
                "EN, release BOOT, then run the command again; check the cable carries data")
    return "see esptool's output above"


def flash(port: str, board_id: str, image: Path, dry_run: bool = False,
          run: Callable[..., subprocess.CompletedProcess] | None = None,
          pinned: list[PinnedImage] | None = None) -> list[str]:
    """Check everything, then run esptool (unless ``dry_run``); the esptool command."""
    board = get_board(board_id)
    entry = check_image(Path(image), board, load_images() if pinned is None else pinned)
    cmd = esptool_command(board, Path(image), port)
    print(f"image: {entry.file} (MicroPython {entry.micropython} for {entry.chip}, "
          f"{entry.bytes} bytes, SHA-256 ok; from {entry.page})")
    if dry_run:
        print("would run: " + " ".join(cmd[2:]))
        return cmd
    check_port(port)
    print("running: " + " ".join(cmd[2:]), flush=True)
    proc = (run or subprocess.run)(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(proc.stdout, end="")
    if proc.returncode != 0:
        raise InstallError(f"esptool failed (exit {proc.returncode}): "
                           f"{_explain(proc.stdout or '', board)}")
    print(f"MicroPython {entry.micropython} is on the board; next: wattshare meter deploy "
          f"--port {port} --board {board.id} --meter METER")
    return cmd
