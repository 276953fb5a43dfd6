"""One link to a MicroPython board over its serial console, on mpremote's transport.

Every tool that talks to a board goes through :class:`BoardLink`: ``wattshare meter
deploy`` and ``meter provision``, and the hardware-in-the-loop rig's bench mode. The
wire protocol is MicroPython's raw REPL as ``mpremote`` speaks it
(:class:`mpremote.transport_serial.SerialTransport`: raw-paste where the board offers
it, else the plain raw REPL); this module adds file transfer in larger chunks, hashes
read back from the board, one error tree and output-watching for a running firmware::

    with BoardLink("/dev/ttyUSB0") as link:        # or a virtual board's /dev/pts/N
        link.exec("print(1+1)")                    # -> "2\\n"
        link.call_json("import main; main.identity()")
        link.write_file("/config/device.json", b"{...}")
        link.sha256("/config/device.json")         # -> hex digest, None if absent

Errors: :class:`tools.errors.BoardLinkError` when the link fails (no such port, port
busy, no REPL answering, timeout), :class:`tools.errors.BoardError` when code run on the
board raised (its traceback text is the message).
"""

from __future__ import annotations

import binascii
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import serial
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from tools.errors import BoardError, BoardLinkError

EXEC_TIMEOUT_S = 10.0  # longest silence while a command runs, unless told otherwise
WRITE_CHUNK = 3072  # file bytes per command (4 KB of base64)
READ_CHUNK = 1536


class Entry(NamedTuple):
    """One directory entry on the board."""

    name: str
    size: int
    is_dir: bool


def _quote(path: str) -> str:
    return repr(path)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\r\n", "\n")


class _Console:
    """The serial port as SerialTransport uses it, with bytes read ahead given back."""

    def __init__(self, ser):
        self._ser = ser
        self._ahead = b""

    def unread(self, data: bytes) -> None:
        self._ahead = data + self._ahead

    def read(self, n: int = 1) -> bytes:
        if self._ahead:
            data, self._ahead = self._ahead[:n], self._ahead[n:]
            if len(data) < n and self._ser.in_waiting:
                data += self._ser.read(min(n - len(data), self._ser.in_waiting))
            return data
        return self._ser.read(n)

    @property
    def in_waiting(self) -> int:
        return len(self._ahead) + self._ser.in_waiting

    def inWaiting(self) -> int:  # noqa: N802 - pyserial's old name, used by mpremote
        return self.in_waiting

    def __getattr__(self, name):
        return getattr(self._ser, name)

    def __setattr__(self, name, value):
        if name in ("rts", "dtr"):
            setattr(self._ser, name, value)
        else:
            object.__setattr__(self, name, value)


class BoardLink:
    """A raw-REPL link to the board on serial ``port`` (closed by :meth:`close` or ``with``).

    Opening interrupts whatever the board runs (Ctrl-C) and enters the raw REPL, then,
    as mpremote does, soft-resets it: a clean interpreter (boot.py runs, main.py does
    not; modules imported before are gone). ``soft_reset=False`` keeps the interpreter.
    """

    def __init__(self, port: str, baud: int = 115200, soft_reset: bool = True):
        self.port = port
        self.baud = baud
        self._transport: SerialTransport | None = None
        self._open()
        self._enter_raw(soft_reset)

    # -- connection ---------------------------------------------------------------------

    def _open(self) -> None:
        if not os.path.exists(self.port):
            raise BoardLinkError(f"{self.port}: no such serial port; is the board plugged "
                                 "in (and is this its port)?")
        try:
            self._transport = SerialTransport(self.port, baudrate=self.baud)
            self._console = _Console(self._transport.serial)
            self._transport.serial = self._console
        except TransportError as e:
            raise BoardLinkError(f"{self.port}: the port is busy ({e}): close the other "
                                 "program using it (mpremote, a serial monitor)") from None
        except (OSError, serial.SerialException) as e:
            raise BoardLinkError(f"{self.port}: cannot open the serial port: {e}") from None

    @property
    def transport(self) -> SerialTransport:
        if self._transport is None:
            raise BoardLinkError(f"{self.port}: the link is closed")
        return self._transport

    def _enter_raw(self, soft_reset: bool) -> None:
        try:
            self.transport.enter_raw_repl(soft_reset=soft_reset)
        except (TransportError, OSError, serial.SerialException) as e:
            raise BoardLinkError(
                f"{self.port}: no MicroPython REPL answered ({e}); is MicroPython flashed "
                "(wattshare meter flash) and is this the board's console port?") from None

    def _ensure_raw(self) -> None:
        if not self.transport.in_raw_repl:
            self._enter_raw(False)

    def __enter__(self) -> BoardLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Leave the raw REPL (to the friendly REPL) and close the port."""
        transport, self._transport = self._transport, None
        if transport is None:
            return
        try:
            if transport.in_raw_repl:
                transport.exit_raw_repl()
        except (OSError, serial.SerialException):
            pass
        try:
            transport.close()
        except (OSError, serial.SerialException):
            pass  # a pty has no RTS/DTR lines; a board that went away

    # -- running code -------------------------------------------------------------------

    def exec(self, code: str, timeout: float = EXEC_TIMEOUT_S,
             on_output: Callable[[bytes], None] | None = None) -> str:
        """Run ``code`` in the raw REPL; its printed output (``\\n`` line ends).

        ``timeout``: the longest silence allowed while it runs. BoardError with the
        board's traceback if it raised.
        """
        self._ensure_raw()
        try:
            self.transport.exec_raw_no_follow(code)
            out, err = self._follow(timeout, on_output)
        except (TransportError, OSError, serial.SerialException) as e:
            raise BoardLinkError(f"{self.port}: the board stopped answering ({e})") from None
        if err:
            raise BoardError(_text(err).strip())
        return _text(out)

    def _follow(self, timeout: float, on_output: Callable[[bytes], None] | None):
        # What SerialTransport.follow does (output, Ctrl-D, error text, Ctrl-D), reading
        # what has arrived at once rather than a byte per call: the board's output is
        # not paced, and a byte per call costs seconds for a file.
        ser = self._console
        parts: list[bytes] = [b""]
        last = time.monotonic()
        while len(parts) < 3:
            n = ser.in_waiting
            if not n:
                if time.monotonic() - last > timeout:
                    raise BoardLinkError(f"{self.port}: no answer from the board for "
                                         f"{timeout:g} s while it ran a command")
                time.sleep(0.002)
                continue
            last = time.monotonic()
            data = ser.read(n)
            while data and len(parts) < 3:
                head, eof, data = data.partition(b"\x04")
                parts[-1] += head
                if on_output and len(parts) == 1 and head:
                    on_output(head)
                if eof:
                    parts.append(b"")
            ser.unread(data)  # the prompt of the next command
        return parts[0], parts[1]

    def call_json(self, code: str, timeout: float = EXEC_TIMEOUT_S):
        """Run ``code``, which prints one JSON line last; that line, parsed.

        Lines printed before it (the firmware's log lines) are ignored.
        """
        out = self.exec(code, timeout=timeout)
        lines = [line for line in out.split("\n") if line.strip()]
        if not lines:
            raise BoardLinkError(f"{self.port}: {code!r} printed nothing; expected a JSON line")
        try:
            return json.loads(lines[-1])
        except ValueError:
            raise BoardLinkError(f"{self.port}: {code!r} printed {lines[-1]!r}; expected a "
                                 "JSON line (is the firmware deployed and up to date?)") from None

    # -- files --------------------------------------------------------------------------

    def ls(self, path: str = "/") -> list[Entry]:
        """The entries of a folder on the board, sorted by name."""
        listing = self.call_json(
            "import os, json\n"
            f"_p = {_quote(path)}\n"
            "_e = []\n"
            "for _i in os.ilistdir(_p):\n"
            " _s = os.stat(_p.rstrip('/') + '/' + _i[0])\n"
            " _e.append([_i[0], _s[6], _s[0] & 0x4000 != 0])\n"
            "print(json.dumps(_e))\n")
        return sorted(Entry(str(n), 0 if d else int(s), bool(d)) for n, s, d in listing)

    def read_file(self, path: str) -> bytes:
        """The contents of a file on the board."""
        out = self.exec(
            "import binascii\n"
            f"with open({_quote(path)}, 'rb') as _f:\n"
            " while True:\n"
            f"  _b = _f.read({READ_CHUNK})\n"
            "  if not _b:\n"
            "   break\n"
            "  print(binascii.b2a_base64(_b).decode().strip())\n")
        return b"".join(binascii.a2b_base64(line) for line in out.split("\n") if line)

    def write_file(self, path: str, data: bytes,
                   progress: Callable[[int], None] | None = None) -> None:
        """Write ``data`` to ``path`` on the board (the folder must exist).

        The file is written under a temporary name and renamed when complete, so a
        transfer cut short leaves the old file. ``progress(n)`` after each chunk of n bytes.
        """
        tmp = path + ".part"
        if len(data) <= WRITE_CHUNK:  # one command
            encoded = binascii.b2a_base64(data, newline=False)
            self.exec("import binascii, os\n"
                      f"with open({_quote(tmp)}, 'wb') as _f:\n"
                      f" _f.write(binascii.a2b_base64({encoded!r}))\n"
                      f"os.rename({_quote(tmp)}, {_quote(path)})\n")
            if progress:
                progress(len(data))
            return
        self.exec("import binascii\n"
                  f"_f = open({_quote(tmp)}, 'wb')\n"
                  "_w = lambda b: _f.write(binascii.a2b_base64(b))\n")
        try:
            for i in range(0, len(data), WRITE_CHUNK):
                chunk = data[i:i + WRITE_CHUNK]
                self.exec(f"_w({binascii.b2a_base64(chunk, newline=False)!r})")
                if progress:
                    progress(len(chunk))
            self.exec(f"import os\n_f.close()\nos.rename({_quote(tmp)}, {_quote(path)})")
        except BoardError:
            self.exec(f"import os\n_f.close()\nos.remove({_quote(tmp)})")
            raise

    def sha256(self, path: str) -> str | None:
        """SHA-256 (hex) of a file on the board, None if it does not exist."""
        return self.hashes([path])[path]

    def hashes(self, paths: Iterable[str]) -> dict[str, str | None]:
        """SHA-256 (hex) of each file, read back from the board in one command; None
        for a file that does not exist."""
        paths = list(paths)
        return self.call_json(
            "import hashlib, binascii, json\n"
            "def _h(p):\n"
            " try:\n"
            "  f = open(p, 'rb')\n"
            " except OSError:\n"
            "  return None\n"
            " h = hashlib.sha256()\n"
            " b = bytearray(1024)\n"
            " while True:\n"
            "  n = f.readinto(b)\n"
            "  if not n:\n"
            "   break\n"
            "  h.update(b[:n])\n"
            " f.close()\n"
            " return binascii.hexlify(h.digest()).decode()\n"
            f"print(json.dumps({{p: _h(p) for p in {paths!r}}}))\n", timeout=30)

    def mkdir(self, path: str) -> None:
        """Create a folder and its missing parents (no error if it exists)."""
        self.exec("import os\n"
                  "_d = ''\n"
                  f"for _p in {_quote(path)}.strip('/').split('/'):\n"
                  " _d += '/' + _p\n"
                  " try:\n"
                  "  os.mkdir(_d)\n"
                  " except OSError:\n"
                  "  pass\n")

    def remove(self, path: str) -> None:
        """Delete a file (no error if it does not exist)."""
        self.exec(f"import os\ntry:\n os.remove({_quote(path)})\nexcept OSError:\n pass\n")

    # -- resets and the running firmware ------------------------------------------------

    def soft_reset(self) -> None:
        """Soft reset from the raw REPL: a fresh interpreter, boot.py runs, main.py not."""
        self._enter_raw(True)

    def hard_reset(self, reopen_s: float = 10.0) -> None:
        """Reset the board (``machine.reset()``): it boots and runs main.py.

        The link stays open, out of the raw REPL, reading the board's console
        (:meth:`read_output`); the next command interrupts the firmware again. A board
        whose USB port goes away while it resets (native USB) is opened again.
        """
        self._ensure_raw()
        try:
            self.transport.exec_raw_no_follow("import machine\nmachine.reset()")
        except (TransportError, OSError, serial.SerialException):
            pass  # the board may reset before it acknowledges
        self.transport.in_raw_repl = False
        time.sleep(0.2)
        if os.path.exists(self.port):
            return
        deadline = time.monotonic() + reopen_s
        self.close()
        while time.monotonic() < deadline:
            if os.path.exists(self.port):
                self._open()
                return
            time.sleep(0.1)
        raise BoardLinkError(f"{self.port}: the port did not come back after the reset")

    def read_output(self, timeout: float, until: re.Pattern | None = None) -> str:
        """The board's console output (``\\n`` line ends) for up to ``timeout`` seconds,
        or until the text read so far matches ``until``."""
        ser = self._console
        deadline = time.monotonic() + timeout
        data = b""
        try:
            while time.monotonic() < deadline:
                n = ser.in_waiting
                if n:
                    data += ser.read(n)
                    if until is not None and until.search(_text(data)):
                        break
                else:
                    time.sleep(0.02)
        except (OSError, serial.SerialException) as e:
            raise BoardLinkError(f"{self.port}: reading the console failed: {e}") from None
        return _text(data)
