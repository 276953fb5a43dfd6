"""The virtual board: MicroPython's VM behind a pty, driven by the real mpremote and by
the board link exactly as a USB-connected ESP32 would be."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from tools.board_link import BoardLink
from tools.errors import BoardError, BoardLinkError, ConfigError
from tools.virtual_board import BoardProcess, board_identity

MPREMOTE = str(Path(sys.executable).parent / "mpremote")
LOOPING_MAIN = b"""import asyncio
print("main: started")
async def run():
    n = 0
    while True:
        with open("/ticks.txt", "w") as f:  # plain open(): written back by the board
            f.write(str(n))
        n += 1
        await asyncio.sleep_ms(100)
asyncio.run(run())
"""
COUNTING_BOOT = b"""try:
    n = int(open("/boots.txt").read())
except OSError:
    n = 0
open("/boots.txt", "w").write(str(n + 1))
"""


def mpremote(port, *args, timeout=30):
    proc = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def board(tmp_path):
    with BoardProcess(tmp_path / "board", hwid="a4c138f1e2d9") as b:
        yield b


def test_mpremote_exec_on_a_blank_virtual_board(board):
    out = mpremote(board.port, "exec", "print(1+1)", "+", "fs", "ls", ":")
    # freshly flashed: MicroPython's own boot.py and nothing else
    assert out.split() == ["2", "ls", ":", "139", "boot.py"]
    assert json.loads((board.folder / "board.json").read_text()) == {"hwid": "a4c138f1e2d9"}


def test_files_copied_with_mpremote_live_in_the_folder_and_survive_a_power_cut(board, tmp_path):
    src = tmp_path / "hello.py"
    src.write_text("print('hello from flash')\n")
    mpremote(board.port, "fs", "mkdir", ":lib", "+", "fs", "cp", str(src), ":lib/hello.py")
    assert (board.folder / "flash" / "lib" / "hello.py").read_text() == src.read_text()
    board.power_cut()
    with BoardProcess(board.folder) as again:
        out = mpremote(again.port, "exec", "import hello", "+", "fs", "rm", ":lib/hello.py")
        assert out == "hello from flash\nrm :lib/hello.py\n"
        assert not (board.folder / "flash" / "lib" / "hello.py").exists()


def test_the_hardware_id_belongs_to_the_board(tmp_path):
    folder = tmp_path / "b"
    first = board_identity(folder, None)
    assert re.fullmatch(r"[0-9a-f]{12}", first)
    assert board_identity(folder, None) == first
    assert board_identity(folder, first.upper()) == first
    with pytest.raises(ConfigError, match="a board keeps its id"):
        board_identity(folder, "0123456789ab")
    with pytest.raises(ConfigError, match="12 hex digits"):
        board_identity(tmp_path / "c", "xyz")


def test_ctrl_c_interrupts_the_program_and_resets_run_boot_and_main(board, tmp_path):
    with BoardLink(board.port) as link:
        link.write_file("/main.py", LOOPING_MAIN)
        link.write_file("/boot.py", COUNTING_BOOT)
        link.hard_reset()  # boots: boot.py, then main.py runs until interrupted
        out = link.read_output(10, until=re.compile("main: started"))
        assert "rst:0xc (SW_CPU_RESET)" in out and "main: started" in out
        time.sleep(0.5)
        # the next command interrupts main.py (Ctrl-C), as on a board
        ticks = int(link.exec("print(open('/ticks.txt').read())"))
        assert ticks >= 2
        assert link.exec("print(open('/ticks.txt').read())") == f"{ticks}\n"  # stopped
        assert link.exec("print(open('/boots.txt').read())") == "1\n"
        link.soft_reset()  # raw REPL: boot.py runs again, main.py does not
        assert link.exec("print(open('/boots.txt').read())") == "2\n"
        assert link.exec("import machine\nprint(machine.reset_cause())") == "5\n"
    assert (board.folder / "flash" / "ticks.txt").read_text() == str(ticks)
    # mpremote's own reset and soft-reset commands ("resume": no soft reset of its own)
    read_boots = ("resume", "exec", "print(open('/boots.txt').read())")
    mpremote(board.port, "soft-reset")
    assert mpremote(board.port, *read_boots) == "3\n"
    mpremote(board.port, "reset")  # mpremote soft-resets before its command: two boots
    time.sleep(1.0)
    assert mpremote(board.port, *read_boots) == "5\n"


def test_raw_paste_is_refused_so_mpremote_uses_the_raw_repl(board):
    with serial.Serial(board.port, timeout=2) as s:
        s.write(b"\r\x03\r\x01")
        assert s.read_until(b"raw REPL; CTRL-B to exit\r\n>").endswith(b">")
        s.write(b"\x05A\x01")
        assert s.read(2) == b"R\x00"
        s.write(b"print(6*7)\x04")
        assert s.read_until(b"\x04>") == b"OK42\r\n\x04\x04>"


def test_asyncio_run_completes_before_the_command_ends(board):
    # The VM cannot block in asyncio.run: the board awaits the coroutine after the
    # command's statements and before the command's end (documented in board_rom/_board.py)
    code = ("import asyncio\n"
            "async def work():\n"
            "    await asyncio.sleep_ms(300)\n"
            "    print('coroutine done')\n"
            "asyncio.run(work())\n"
            "print('statement done')\n")
    with BoardLink(board.port) as link:
        assert link.exec(code) == "statement done\ncoroutine done\n"
        with pytest.raises(BoardError, match=r"(?s)line 3, in fail.*ValueError: bad"):
            link.exec("import asyncio\nasync def fail():\n    raise ValueError('bad')\n"
                      "asyncio.run(fail())\n")


def test_board_link_files_hashes_and_errors(board):
    data = bytes(range(256)) * 40  # several chunks
    with BoardLink(board.port) as link:
        assert link.exec("print(1+1)") == "2\n"
        link.mkdir("/a/b")
        link.write_file("/a/b/blob.bin", data)
        link.write_file("/a/small.txt", b"x")
        assert link.read_file("/a/b/blob.bin") == data
        import hashlib
        assert link.sha256("/a/b/blob.bin") == hashlib.sha256(data).hexdigest()
        assert link.hashes(["/a/small.txt", "/missing"]) == {
            "/a/small.txt": hashlib.sha256(b"x").hexdigest(), "/missing": None}
        assert [(e.name, e.size, e.is_dir) for e in link.ls("/a")] == [
            ("b", 0, True), ("small.txt", 1, False)]
        link.remove("/a/small.txt")
        link.remove("/a/small.txt")  # absent: no error
        assert [e.name for e in link.ls("/a")] == ["b"]
        logged = "import json\nprint('a log line')\nprint(json.dumps([1, 2]))"
        assert link.call_json(logged) == [1, 2]
        with pytest.raises(BoardError, match=r"ZeroDivisionError"):
            link.exec("1/0")
        with pytest.raises(BoardError, match=r"ENOENT"):
            link.read_file("/missing")
        with pytest.raises(BoardLinkError, match="expected a JSON line"):
            link.call_json("print('not json')")
        assert link.exec("print('still answering')") == "still answering\n"
    assert (board.folder / "flash" / "a" / "b" / "blob.bin").read_bytes() == data


def test_board_link_refuses_a_missing_or_busy_port(board, tmp_path):
    with pytest.raises(BoardLinkError, match="no such serial port"):
        BoardLink(str(tmp_path / "ttyUSB9"))
    with serial.Serial(board.port, exclusive=True):
        with pytest.raises(BoardLinkError, match="busy"):
            BoardLink(board.port)
