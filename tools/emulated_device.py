"""The emulated meter: the real firmware in the MicroPython VM, on the host.

``python -m tools.emulated_device`` writes the device's config folder (the board and
meter JSON compiled from ``boards/`` by :mod:`tools.board_config`, and ``device.json``)
into ``--storage DIR`` and runs ``node tools/mpvm/device.mjs`` on it. The storage folder
keeps the key, the sequence slots and the spool between runs, so killing the process is
a power cut and starting it again is the reboot::

    python -m tools.meter_sim --meter sdm120ct --profile household --tcp 127.0.0.1:5020
    python -m tools.emulated_device --storage /tmp/meter1 --meter sdm120ct --provision
    python -m tools.emulated_device --storage /tmp/meter1 --meter sdm120ct \\
        --meter-tcp 127.0.0.1:5020 --gateway 127.0.0.1:5683

Accelerated time: export ``WATTSHARE_SIM_CLOCK`` (:mod:`gateway.simclock`) to the device,
the meter simulator, the gateway and ``wattshare chain run`` alike; they then share one
simulated clock (docs/firmware.md).

:class:`EmulatedDevice` does the same from Python (the hardware-in-the-loop tests).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tools.board_config import compile_board, compile_meter, get_board, get_meter
from tools.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DEVICE_MJS = REPO / "tools" / "mpvm" / "device.mjs"
DEFAULT_BOARD = "esp32-devkitc-max485"


def write_config(storage: Path, meter_id: str, device: dict, board_id: str = DEFAULT_BOARD,
                 ct_rating_A: int | None = None) -> None:
    """Write ``storage/config/{board,meter,device}.json`` as a build would for a board."""
    folder = Path(storage) / "config"
    folder.mkdir(parents=True, exist_ok=True)
    meter = compile_meter(get_meter(meter_id), ct_rating_A)
    (folder / "board.json").write_text(json.dumps(compile_board(get_board(board_id))))
    (folder / "meter.json").write_text(json.dumps(meter))
    (folder / "device.json").write_text(json.dumps(device))


def device_command(storage: Path, meter_tcp: str | None = None, speed: float | None = None,
                   hwid: str | None = None, cut_at_write: int = 0, seed: int = 0,
                   mode: str | None = None, mode_args: tuple = ()) -> list[str]:
    """The ``node tools/mpvm/device.mjs`` argv. ``speed`` is only checked against
    ``$WATTSHARE_SIM_CLOCK`` by the device (the clock's speed is the one used)."""
    cmd = ["node", str(DEVICE_MJS), "--storage", str(storage)]
    if speed is not None:
        cmd += ["--speed", repr(float(speed))]
    if meter_tcp:
        cmd += ["--meter-tcp", meter_tcp]
    if hwid:
        cmd += ["--hwid", hwid]
    if cut_at_write:
        cmd += ["--cut-at-write", str(cut_at_write), "--seed", str(seed)]
    if mode:
        cmd.append(f"--{mode}")
        cmd.extend(str(a) for a in mode_args)
    return cmd


class EmulatedDevice:
    """One emulated meter process on a storage folder; ``lines`` collects its output.

    ``env``: the process environment (default: this process's), e.g. with the run's
    ``WATTSHARE_SIM_CLOCK``."""

    def __init__(self, storage: Path, meter_tcp: str, hwid: str = "a4c138f1e2d0",
                 env: dict[str, str] | None = None):
        self.storage = Path(storage)
        self.meter_tcp = meter_tcp
        self.hwid = hwid
        self.env = env
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def provision(self) -> tuple[bytes, bytes]:
        """(device id, public key) as the provisioning tool reads them from the console."""
        out = subprocess.run(device_command(self.storage, hwid=self.hwid, mode="provision"),
                             capture_output=True, text=True, timeout=60, check=True,
                             env=self.env).stdout
        for line in out.splitlines():
            if line.startswith("device_id="):
                fields = dict(part.split("=", 1) for part in line.split())
                return bytes.fromhex(fields["device_id"]), bytes.fromhex(fields["public_key"])
        raise RuntimeError(f"no provisioning line in the device output:\n{out}")

    def console(self, mode: str, *mode_args) -> dict:
        """Run one console function of main.py (``identity``, ``commission``,
        ``sign-record``) and return the one JSON line it printed."""
        out = subprocess.run(
            device_command(self.storage, self.meter_tcp, None, self.hwid, mode=mode,
                           mode_args=mode_args),
            capture_output=True, text=True, timeout=120, cwd=REPO, env=self.env)
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"no JSON line from the device console ({mode}):\n"
                           f"{out.stdout}{out.stderr}")

    def start(self, cut_at_write: int = 0, seed: int = 0) -> EmulatedDevice:
        self.proc = subprocess.Popen(
            device_command(self.storage, self.meter_tcp, None, self.hwid, cut_at_write, seed),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=self.env)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        """SIGKILL: a power cut at whatever point the firmware is."""
        return self._stop(signal.SIGKILL)

    def stop(self) -> int:
        return self._stop(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader:
            self._reader.join(5)
        return code

    def _stop(self, sig: int) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(30)

    def wait_for(self, predicate, timeout: float, poll: float = 0.02) -> bool:
        """Wait until ``predicate()`` is true or the process ended; True if it became true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if not self.running():
                return bool(predicate())
            time.sleep(poll)
        return bool(predicate())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.emulated_device", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True, type=Path, help="the device's flash folder")
    ap.add_argument("--meter", help="meter id from boards/meters/ (writes the config folder)")
    ap.add_argument("--board", default=DEFAULT_BOARD, help="board id from boards/")
    ap.add_argument("--meter-tcp", metavar="HOST:PORT", help="the meter simulator")
    ap.add_argument("--gateway", metavar="HOST:PORT", default="127.0.0.1:5683")
    ap.add_argument("--speed", type=float, default=None,
                    help="device seconds per real second: only with $WATTSHARE_SIM_CLOCK, "
                         "whose speed it must match (every process of the run shares that "
                         "clock: docs/firmware.md)")
    ap.add_argument("--interval", type=int, default=10, help="seconds between readings")
    ap.add_argument("--ct-rating", type=int, help="CT rating in A (default: the meter's)")
    ap.add_argument("--hwid", default="a4c138f1e2d0", help="6-byte hardware id, hex")
    ap.add_argument("--device-json", help="extra device.json keys, as a JSON object")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--provision", action="store_true", help="print device id, public key")
    mode.add_argument("--rekey", action="store_true", help="replace the device key (logged)")
    args = ap.parse_args(argv)
    if args.meter:
        host, _, port = args.gateway.rpartition(":")
        device = {"gateway_host": host, "gateway_port": int(port), "interval_s": args.interval}
        if args.ct_rating:
            device["ct_rating_A"] = args.ct_rating
        if args.device_json:
            device.update(json.loads(args.device_json))
        try:
            write_config(args.storage, args.meter, device, args.board)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    mode_name = "provision" if args.provision else "rekey" if args.rekey else None
    if mode_name is None and not args.meter_tcp:
        ap.error("--meter-tcp is required to run the device")
    cmd = device_command(args.storage, args.meter_tcp, args.speed, args.hwid, mode=mode_name)
    os.execvp(cmd[0], cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
