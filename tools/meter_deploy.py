"""``wattshare meter deploy``: the firmware and its board and meter configuration onto a
board that runs MicroPython.

What goes onto the board::

    /boot.py, /main.py          the entry points (source: MicroPython runs them by name)
    /lib/wattcore/*.mpy         the shared cores, compiled for the ESP32 (mpy-cross)
    /lib/app/*.mpy              the application
    /config/board.json          compiled from boards/<board>.toml
    /config/meter.json          compiled from boards/meters/<meter>.toml

The firmware is compiled from this tree (``tools.build_firmware``, as ``make firmware``;
kept in ``out/firmware-cache`` until a source changes) unless ``--firmware DIR`` names a
build folder. Only what changed is copied: the SHA-256
of every file is read back from the board first; files of an older firmware that the new
one no longer has are removed from ``/lib/wattcore`` and ``/lib/app``; every copied file
is read back and checked after the copy. ``/data`` (the device key, sequence numbers,
readings) and ``/config/device.json`` are never touched.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools import build_firmware
from tools.board_config import compile_board, compile_meter, get_board, get_meter
from tools.board_link import BoardLink
from tools.errors import InstallError

FIRMWARE_DIRS = ("/lib/wattcore", "/lib/app")  # owned by the firmware: stale files go
MPY_VERSION = 6  # .mpy format the firmware is compiled to (MicroPython 1.23 and later)


@dataclass
class DeployResult:
    files_copied: int
    bytes_copied: int
    up_to_date: int
    removed: int
    seconds: float


def firmware_files(build_dir: Path) -> dict[str, bytes]:
    """Board path -> contents of a firmware build folder (``make firmware`` output)."""
    if not (build_dir / "manifest.json").is_file():
        raise InstallError(f"--firmware {build_dir}: no manifest.json; build the firmware "
                           "with `make firmware` (out/firmware)")
    manifest = json.loads((build_dir / "manifest.json").read_text())
    files = {}
    for rel, info in sorted(manifest["files"].items()):
        data = (build_dir / rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise InstallError(f"--firmware {build_dir}: {rel} does not match manifest.json; "
                               "build the firmware again")
        files["/" + rel] = data
    return files


def config_files(board_id: str, meter_id: str | None) -> dict[str, bytes]:
    """The compiled board (and meter) configuration, by board path."""
    files = {"/config/board.json": json.dumps(compile_board(get_board(board_id))).encode()}
    if meter_id:
        files["/config/meter.json"] = json.dumps(compile_meter(get_meter(meter_id))).encode()
    return files


class Progress:
    """A progress bar on a terminal; a line per file elsewhere (logs, CI)."""

    def __init__(self, total: int, out=sys.stdout):
        self.total = max(total, 1)
        self.done = 0
        self.out = out
        self.tty = out.isatty()
        self.name = ""

    def file(self, name: str, size: int) -> None:
        self.name = name
        if not self.tty:
            print(f"  copy {name} ({size / 1024:.1f} KB)", file=self.out, flush=True)

    def advance(self, n: int) -> None:
        self.done += n
        if self.tty:
            width = 30
            filled = width * self.done // self.total
            self.out.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] "
                           f"{self.done / 1024:6.1f}/{self.total / 1024:.1f} KB "
                           f"{self.name[:40]:40}")
            self.out.flush()

    def end(self) -> None:
        if self.tty and self.done:
            self.out.write("\n")


def _check_micropython(link: BoardLink, board_chip: str) -> None:
    mpy, machine = link.call_json(
        "import sys, json\n"
        "print(json.dumps([sys.implementation._mpy, sys.implementation._machine]))")
    if mpy & 0xFF != MPY_VERSION:
        raise InstallError(f"the board's MicroPython reads .mpy version {mpy & 0xFF}, the "
                           f"firmware is version {MPY_VERSION}: flash MicroPython 1.27 "
                           "(wattshare meter flash)")
    chip = "esp32s3" if "ESP32S3" in machine.upper().replace("-", "") else (
        "esp32" if "ESP32" in machine.upper() else None)
    if chip is not None and chip != board_chip:
        raise InstallError(f"the board on the port is an {chip} ({machine}), but --board "
                           f"is for an {board_chip}: choose the matching --board")


def _board_files(link: BoardLink) -> list[str]:
    listing = link.call_json(
        "import os, json\n"
        "def _walk(d, out):\n"
        " try:\n"
        "  entries = list(os.ilistdir(d))\n"
        " except OSError:\n"
        "  return\n"
        " for e in entries:\n"
        "  p = d + '/' + e[0]\n"
        "  if e[1] & 0x4000:\n"
        "   _walk(p, out)\n"
        "  else:\n"
        "   out.append(p)\n"
        "_o = []\n"
        f"for _d in {list(FIRMWARE_DIRS)!r}:\n"
        " _walk(_d, _o)\n"
        "print(json.dumps(_o))\n")
    return [str(p) for p in listing]


def deploy(link: BoardLink, board_id: str, meter_id: str | None,
           firmware: Path | None = None, out=sys.stdout) -> DeployResult:
    """Bring the board's firmware and configuration up to date; what was done."""
    t0 = time.monotonic()
    board = get_board(board_id)
    wanted = config_files(board_id, meter_id)
    wanted.update(firmware_files(firmware or build_firmware.cached_build()))
    wanted.pop("/manifest.json", None)
    _check_micropython(link, board.chip)

    stale = [p for p in _board_files(link) if p not in wanted]
    on_board = link.hashes(wanted)
    todo = {p: d for p, d in wanted.items() if on_board[p] != hashlib.sha256(d).hexdigest()}
    print(f"deploy: {len(wanted)} files for {board.id}"
          f"{' + ' + meter_id if meter_id else ''}: {len(todo)} to copy, "
          f"{len(wanted) - len(todo)} up to date, {len(stale)} to remove", file=out, flush=True)

    progress = Progress(sum(len(d) for d in todo.values()), out)
    for folder in sorted({p.rsplit("/", 1)[0] for p in todo if p.count("/") > 1}):
        link.mkdir(folder)
    for path, data in todo.items():
        progress.file(path.lstrip("/"), len(data))
        link.write_file(path, data, progress=progress.advance)
    progress.end()
    for path in stale:
        link.remove(path)

    back = link.hashes(todo) if todo else {}
    bad = [p for p, d in todo.items() if back[p] != hashlib.sha256(d).hexdigest()]
    if bad:
        raise InstallError(f"verification failed: {', '.join(bad)} differ on the board after "
                           "the copy; run the deploy again (a loose cable?)")
    result = DeployResult(files_copied=len(todo), bytes_copied=sum(map(len, todo.values())),
                          up_to_date=len(wanted) - len(todo), removed=len(stale),
                          seconds=time.monotonic() - t0)
    print(f"deploy: {result.files_copied} files copied ({result.bytes_copied / 1024:.1f} KB), "
          f"{result.up_to_date} up to date, {result.removed} removed; all "
          f"{len(wanted)} verified on the board in {result.seconds:.1f} s", file=out)
    return result
