"""A virtual board: an ESP32 running MicroPython, behind a serial port on this machine.

``python -m tools.virtual_board --folder DIR [--meter-tcp HOST:PORT] [--hwid 12HEX]``
prints the path of its serial port (a pseudo-terminal, ``/dev/pts/N``) on the first
line of its output and runs until it is stopped. The real ``mpremote`` and
:class:`tools.board_link.BoardLink` talk to it as to a USB-connected board::

    mpremote connect /dev/pts/N fs ls :
    mpremote connect /dev/pts/N exec "print(1+1)"

The folder is the board's own storage:

- ``DIR/flash/``: its filesystem (MicroPython's ``/``). An empty folder is a freshly
  flashed board: MicroPython only, and the ``boot.py`` it writes at first start.
- ``DIR/board.json``: its hardware id (``{"hwid": "12 hex digits"}``), fixed the first
  time the board starts (``--hwid``, else random), like the ESP32's MAC address.

The VM is the firmware's (tools/mpvm/board.mjs, the MicroPython WebAssembly port): its
REPL, raw REPL, Ctrl-C (interrupts the running program), Ctrl-D (soft reset: ``boot.py``
and ``main.py`` run again), ``machine.reset()`` (hard reset). Each reset starts a fresh
VM on the same folder. Its meter bus is a TCP connection to the meter simulator
(``--meter-tcp``; without it nothing answers on the bus), its UDP goes to the gateway
named in its ``device.json``, and the firmware finds its ports built in
(``emulated_adapters``) where an ESP32 has ``app.esp32_adapters``.

``--port-link PATH`` also puts its port at a fixed path (a symbolic link to the pty, made
again at each start, as ``/dev/serial/by-id/...`` names a USB board whatever its tty
number): a board powered off and on keeps the port name its users were given.

A rack of virtual boards switched by a relay (the hardware-in-the-loop bench mode's power
command on virtual boards, docs/hil.md)::

    python -m tools.virtual_board relay --rack DIR on board1    # powers DIR/board1 on
    python -m tools.virtual_board relay --rack DIR off board1   # cuts its power (SIGKILL)

Each board of the rack lives in ``DIR/ID`` (its folder as above), its port at
``DIR/ID/serial``; ``DIR/ID/wiring.json`` (``{"meter_tcp": "HOST:PORT"}``, optional,
:func:`wire`) says what its meter bus is connected to. ``on`` starts the board in the
background (its log in ``DIR/ID/board.log``) and returns once its port is there; ``on``
a board that runs does nothing. ``off`` kills the board and its VM at once, like pulling
its supply; ``off`` a board that is off does nothing.

Stopping this process (SIGTERM, SIGINT) or killing it is a power cut; SIGUSR1 presses
the reset button (the VM stops where it is and the board boots again). Ctrl-C stops a
program that awaits (the firmware always does); a statement that computes forever
without awaiting holds the VM, as a busy loop with interrupts off would: only the reset
button stops it. Serial output
nobody reads is kept up to 64 KB, then the oldest is dropped, as from a UART nobody
listens to.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

from tools.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
BOARD_MJS = REPO / "tools" / "mpvm" / "board.mjs"
OUTPUT_KEPT = 64 * 1024  # serial output held for a reader, then the oldest is dropped
PROG = "python -m tools.virtual_board"
TRACE = os.environ.get("WATTSHARE_BOARD_TRACE") == "1"  # serial bytes to stderr


def _trace(direction: str, data: bytes) -> None:
    if TRACE:
        print(f"virtual_board: {direction} {data!r}", file=sys.stderr, flush=True)


def board_identity(folder: Path, hwid: str | None) -> str:
    """The board's hardware id from ``folder/board.json``, written at its first start.

    A board keeps its id: ``hwid`` (12 hex digits) may be given only for a new board or
    if it equals the stored one; ConfigError otherwise.
    """
    if hwid is not None and (len(hwid) != 12 or any(c not in "0123456789abcdef"
                                                     for c in hwid.lower())):
        raise ConfigError(f"--hwid {hwid!r}: expected 12 hex digits (6 bytes)")
    identity = folder / "board.json"
    if identity.exists():
        try:
            stored = json.loads(identity.read_text())["hwid"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{identity}: hwid: unreadable; expected "
                              '{"hwid": "12 hex digits"}') from None
        if hwid is not None and hwid.lower() != stored:
            raise ConfigError(f"--hwid {hwid}: this board's hardware id is {stored} "
                              f"({identity}); a board keeps its id")
        return stored
    folder.mkdir(parents=True, exist_ok=True)
    stored = (hwid or secrets.token_hex(6)).lower()
    tmp = identity.with_suffix(".tmp")
    tmp.write_text(json.dumps({"hwid": stored}) + "\n")
    tmp.replace(identity)
    return stored


class _Life:
    """One VM process: one life of the board from a reset to the next."""

    def __init__(self, folder: Path, hwid: str, meter_tcp: str | None, start: str,
                 rtc_offset: float | None):
        ctl_read, ctl_write = os.pipe()
        cmd = ["node", str(BOARD_MJS), "--flash", str(folder / "flash"), "--hwid", hwid,
               "--control-fd", str(ctl_write), "--start", start]
        if meter_tcp:
            cmd += ["--meter-tcp", meter_tcp]
        if rtc_offset is not None:
            cmd += ["--rtc-offset", repr(rtc_offset)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     pass_fds=(ctl_write,), cwd=REPO)
        os.close(ctl_write)
        self.control = ctl_read
        self.control_text = b""
        self.sent = bytearray()  # every input byte written to this life
        self.unsent = bytearray()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdin.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.stdin = self.proc.stdin.fileno()
        self.stdout = self.proc.stdout.fileno()

    def feed(self, data: bytes) -> None:
        self.unsent += data
        self.write_some()

    def write_some(self) -> None:
        while self.unsent:
            try:
                n = os.write(self.stdin, self.unsent)
            except BlockingIOError:
                return
            except (BrokenPipeError, OSError):
                return  # the life is ending; its control line says what it took
            self.sent += self.unsent[:n]
            del self.unsent[:n]

    def ending(self) -> dict | None:
        """The control line of a life that ended in order, else None."""
        line = self.control_text.split(b"\n", 1)[0]
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None

    def left_over(self, consumed: int) -> bytes:
        """Input this life did not take: it goes to the next one."""
        return bytes(self.sent[consumed:] + self.unsent)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            os.close(self.control)
        except OSError:
            pass


class VirtualBoard:
    """The supervisor: owns the pty, runs one VM life after another."""

    def __init__(self, folder: Path, meter_tcp: str | None = None, hwid: str | None = None,
                 port_link: Path | None = None):
        self.folder = Path(folder)
        self.hwid = board_identity(self.folder, hwid)
        self.meter_tcp = meter_tcp
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # a serial line: no echo, no line editing, bytes as they are
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self._slave)
        self.port_link = port_link
        if port_link is not None:
            tmp = port_link.with_name(port_link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.port)
            tmp.replace(port_link)  # atomic: never a moment with a half-made link
        self._output = bytearray()
        self._rtc_offset: float | None = None
        self._stop = False
        self._button = False
        self.life: _Life | None = None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_button)
        self._start("power-on", b"")
        sel = selectors.DefaultSelector()
        sel.register(self.master, selectors.EVENT_READ, "serial")
        wake_read, wake_write = os.pipe()  # a signal wakes the loop at once
        os.set_blocking(wake_write, False)
        os.set_blocking(wake_read, False)
        signal.set_wakeup_fd(wake_write)
        sel.register(wake_read, selectors.EVENT_READ, "signal")
        self._watch(sel)
        while not self._stop:
            if self._button:
                self._button = False
                self._restart(sel, "power-on", keep_input=False)
            events = sel.select(timeout=0.5 if not self._output else 0.01)
            life = self.life
            for key, _ in events:
                if self.life is not life:
                    break  # a new life started: the other events were the old one's
                if key.data == "serial":
                    self._from_serial()
                elif key.data == "stdout":
                    self._from_vm(sel)
                elif key.data == "control":
                    self._from_control(sel)
                elif key.data == "signal":
                    os.read(wake_read, 512)
            assert self.life is not None
            self.life.write_some()
            self._to_serial()
        if self.life:
            self.life.kill()
        if self.port_link is not None and os.path.realpath(self.port_link) == self.port:
            self.port_link.unlink(missing_ok=True)  # unplugged
        return 0

    def _on_stop(self, signum, frame) -> None:
        self._stop = True

    def _on_button(self, signum, frame) -> None:
        self._button = True

    def _start(self, start: str, left_over: bytes) -> None:
        self.life = _Life(self.folder, self.hwid, self.meter_tcp, start, self._rtc_offset)
        if left_over:
            self.life.feed(left_over)

    def _watch(self, sel) -> None:
        assert self.life is not None
        sel.register(self.life.stdout, selectors.EVENT_READ, "stdout")
        sel.register(self.life.control, selectors.EVENT_READ, "control")

    def _unwatch(self, sel) -> None:
        assert self.life is not None
        for fd in (self.life.stdout, self.life.control):
            try:
                sel.unregister(fd)
            except (KeyError, ValueError):
                pass

    def _restart(self, sel, start: str, keep_input: bool, consumed: int = 0) -> None:
        assert self.life is not None
        self._from_vm(sel, drain=True)
        self._unwatch(sel)
        left_over = self.life.left_over(consumed) if keep_input else b""
        self.life.kill()
        self._start(start, left_over)
        self._watch(sel)

    def _from_serial(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, OSError):
            return
        if data and self.life:
            _trace("in ", data)
            self.life.feed(data)

    def _from_vm(self, sel, drain: bool = False) -> None:
        assert self.life is not None
        while True:
            try:
                data = os.read(self.life.stdout, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                if not drain:
                    self._ended(sel)
                return
            _trace("out", data)
            self._output += data
            if len(self._output) > OUTPUT_KEPT:
                del self._output[:len(self._output) - OUTPUT_KEPT]
            if not drain:
                return

    def _from_control(self, sel) -> None:
        assert self.life is not None
        try:
            data = os.read(self.life.control, 4096)
        except OSError:
            data = b""
        self.life.control_text += data
        if not data or b"\n" in self.life.control_text:
            self._ended(sel)

    def _ended(self, sel) -> None:
        """The life ended: start the next one as it asked, or after a crash, power on."""
        assert self.life is not None
        life = self.life
        try:
            life.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            life.proc.kill()
        tail = os.read(life.control, 4096) if life.proc.returncode is not None else b""
        life.control_text += tail
        end = life.ending()
        if self._stop:
            return
        if end is None:
            code = life.proc.returncode
            print(f"virtual_board: the VM stopped (exit {code}); powering on again",
                  file=sys.stderr, flush=True)
            time.sleep(1.0)
            self._restart(sel, "power-on", keep_input=False)
            return
        _trace("end", life.control_text)
        self._rtc_offset = float(end.get("rtc_offset", 0.0))
        self._restart(sel, str(end["next"]), keep_input=True, consumed=int(end["consumed"]))

    def _to_serial(self) -> None:
        while self._output:
            try:
                n = os.write(self.master, self._output)
            except BlockingIOError:
                return
            except OSError:
                return
            del self._output[:n]


class BoardProcess:
    """``python -m tools.virtual_board`` as a subprocess (tests, benchmarks, demos).

    ``with BoardProcess(folder, meter_tcp) as board: board.port`` ; :meth:`power_cut`
    kills it (SIGKILL), :meth:`reset_button` presses its reset button.
    """

    def __init__(self, folder: Path, meter_tcp: str | None = None, hwid: str | None = None):
        self.folder = Path(folder)
        cmd = [sys.executable, "-m", "tools.virtual_board", "--folder", str(folder)]
        if meter_tcp:
            cmd += ["--meter-tcp", meter_tcp]
        if hwid:
            cmd += ["--hwid", hwid]
        self.log = tempfile.TemporaryFile()  # its stderr (and its VM's)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=REPO)
        assert self.proc.stdout is not None
        self.port = self.proc.stdout.readline().strip()
        if not self.port.startswith("/dev/"):
            self.proc.wait()
            raise ConfigError(f"the virtual board did not start: {self.errors().strip()}")

    def errors(self) -> str:
        """What the board wrote to stderr so far."""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def __enter__(self) -> BoardProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset_button(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def power_cut(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()


# ---- a rack of virtual boards behind a relay ------------------------------------------

WIRING = "wiring.json"  # what the board's meter bus is connected to
POWER_PID = "power.pid"  # the running board's process (a session of its own), while on
PORT_LINK = "serial"  # the board's port, a fixed path
POWER_ON_S = 15.0  # longest wait for a powered board's port


def rack_board(rack: Path, board_id: str) -> Path:
    """The folder of board ``board_id`` in ``rack`` (ConfigError for a name that is not
    a plain folder name)."""
    if not board_id or board_id in (".", "..") or "/" in board_id:
        raise ConfigError(f"relay id {board_id!r}: expected a board's folder name in the rack "
                          f"{rack} (letters, digits, - and _)")
    return Path(rack).resolve() / board_id


def wire(folder: Path, meter_tcp: str | None = None, hwid: str | None = None) -> Path:
    """Wire a rack board: its meter bus to the simulator at ``meter_tcp`` (and, for a new
    board, its hardware id). Its port will be at ``folder/serial``; returns that path."""
    folder = Path(folder)
    board_identity(folder, hwid)
    (folder / WIRING).write_text(json.dumps({"meter_tcp": meter_tcp}) + "\n")
    return folder / PORT_LINK


def _running(folder: Path) -> int | None:
    """The pid of the rack board running in ``folder``, None when it is off."""
    try:
        pid = int((folder / POWER_PID).read_text())
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if state in ("Z", "X") or str(folder).encode() not in cmdline:
        return None  # dead (not reaped yet), or the pid went to another process
    return pid


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` has not finished dying (zombies have)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone while we looked
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def power_on(folder: Path) -> str:
    """Switch a rack board on (nothing if it runs); what happened, for the relay's log."""
    folder = Path(folder)
    link = folder / PORT_LINK
    if _running(folder):
        return f"{folder.name}: already on ({link})"
    wiring = {}
    if (folder / WIRING).exists():
        try:
            wiring = json.loads((folder / WIRING).read_text())
        except ValueError:
            raise ConfigError(f"{folder / WIRING}: unreadable; expected "
                              '{"meter_tcp": "HOST:PORT"}') from None
    cmd = [sys.executable, "-m", "tools.virtual_board", "--folder", str(folder),
           "--port-link", str(link)]
    if wiring.get("meter_tcp"):
        cmd += ["--meter-tcp", str(wiring["meter_tcp"])]
    folder.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    with open(folder / "board.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log, cwd=REPO, start_new_session=True)
    (folder / POWER_PID).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + POWER_ON_S
    while not os.path.exists(link):
        if proc.poll() is not None or time.monotonic() > deadline:
            power_off(folder)
            tail = (folder / "board.log").read_text(errors="replace")[-600:]
            raise ConfigError(f"{folder.name}: the board did not come up: {tail.strip()}")
        time.sleep(0.02)
    return f"{folder.name}: on ({link} -> {os.path.realpath(link)})"


def power_off(folder: Path) -> str:
    """Cut a rack board's power: its process and its VM killed at once (nothing if off)."""
    folder = Path(folder)
    pid = _running(folder)
    if pid is None:
        (folder / POWER_PID).unlink(missing_ok=True)
        return f"{folder.name}: already off"
    try:
        os.killpg(pid, signal.SIGKILL)  # the board and its VM: one process group
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    (folder / POWER_PID).unlink(missing_ok=True)
    (folder / PORT_LINK).unlink(missing_ok=True)  # its USB port goes away with the power
    return f"{folder.name}: off"


def relay_main(argv) -> int:
    ap = argparse.ArgumentParser(
        prog=f"{PROG} relay",
        description="Switch the power of a board in a rack of virtual boards, as a bench's "
                    "relay board does for real ones.")
    ap.add_argument("--rack", required=True, type=Path,
                    help="the rack's folder: one folder per board (DIR/ID)")
    ap.add_argument("state", choices=("on", "off"))
    ap.add_argument("id", help="the board (its folder name in the rack)")
    args = ap.parse_args(argv)
    try:
        folder = rack_board(args.rack, args.id)
        said = power_on(folder) if args.state == "on" else power_off(folder)
    except ConfigError as e:
        print(f"{PROG} relay: error: {e}", file=sys.stderr)
        return 2
    print(f"relay: {said}", flush=True)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["relay"]:
        return relay_main(argv[1:])
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True, type=Path,
                    help="the board's storage (flash/ and board.json); created if absent")
    ap.add_argument("--meter-tcp", metavar="HOST:PORT",
                    help="the meter simulator (python -m tools.meter_sim --tcp ...)")
    ap.add_argument("--hwid", metavar="12HEX",
                    help="hardware id of a new board (default: random); a board keeps its id")
    ap.add_argument("--port-link", metavar="PATH", type=Path,
                    help="also put the port at PATH (a symbolic link, made at each start)")
    args = ap.parse_args(argv)
    try:
        board = VirtualBoard(args.folder, args.meter_tcp, args.hwid, args.port_link)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(board.port, flush=True)
    print(f"virtual_board: {board.port} hwid {board.hwid} folder {args.folder}",
          file=sys.stderr, flush=True)
    return board.run()


if __name__ == "__main__":
    sys.exit(main())
