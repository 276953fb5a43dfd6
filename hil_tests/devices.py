"""The devices of the hardware-in-the-loop rig, behind one small interface.

A scenario drives a :class:`Device` (start, power cut, clean stop, console output) and
never knows whether it is the real firmware in a MicroPython VM on this machine
(:class:`EmulatedDevice`, ``WATTSHARE_HIL=emulated``, the default) or a board on a bench
(``hil_tests.bench_mode``, ``WATTSHARE_HIL=bench``). A :class:`DeviceMaker` makes them:
it is given the rig's :class:`Site` (gateway, folder, environment with the shared
simulated clock, the loop serving the meter simulators) and, for each device, the
meter simulator's :class:`~tools.meter_sim.MeterSlave` to serve on that device's bus
(a TCP port for a VM, the board's USB-RS485 adapter on a bench). It registers the
device at the gateway the way an installer would, so ``device_id`` is the id the
gateway's CLI shows.

Capabilities say what a device can do beyond the protocol; a scenario needing one a
device lacks is skipped with the reason (only bench devices lack any):

- ``"console"``: ``output()`` holds the firmware's ``wattshare: ...`` console lines;
- ``"torn_write"``: :meth:`EmulatedDevice.power_cut_at_write` cuts the power in the
  middle of the N-th flash write;
- ``"flash"``: the device's flash folder can be read from the host (``storage``);
- ``"firmware_override"``: the device can run another copy of the firmware files
  (``firmware=`` of :meth:`EmulatedDevices.add`), e.g. a deliberately broken one;
- ``"forge"``: the maker can make a device the gateway does not know
  (``register=False``), or one with another device's hardware id (``hwid=``).

Scenarios also give ``gateway_port=`` (a :class:`hil_tests.rig.Link` between the device
and the gateway) and read ``dev.model`` (the meter simulator's model, set by the rig).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from tools import emulated_device as emu
from tools.meter_sim import MeterSlave, serve_tcp

EMULATED_CAPABILITIES = frozenset({"console", "torn_write", "flash", "firmware_override",
                                   "forge"})


@runtime_checkable
class Device(Protocol):
    """One meter device as a scenario sees it."""

    device_id: str  # hex, as the gateway knows it (registered)
    label: str
    capabilities: frozenset[str]

    def start(self) -> None:
        """Power on: the firmware runs (from its flash as it was left)."""

    def power_cut(self) -> None:
        """Abrupt: SIGKILL of the VM, or the bench relay off, wherever the firmware is."""

    def stop(self) -> None:
        """Clean stop (power off after a quiet moment)."""

    def output(self) -> list[str]:
        """Console lines seen so far, over every start."""

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (True) or ``timeout`` real seconds pass."""


@dataclass
class Site:
    """What a :class:`DeviceMaker` needs from the rig."""

    folder: Path  # the devices' own folders go under it
    gateway: object  # tools.local_site.GatewayProcess: .wattshare(), .coap_port
    env: dict[str, str]  # the processes' environment (WATTSHARE_SIM_CLOCK, ...)
    run: Callable  # run(coroutine) -> its result, on the loop serving the meters
    servers: list = field(default_factory=list)  # what to close at the end


class DeviceMaker(Protocol):
    capabilities: frozenset[str]

    def add(self, label: str, meter_id: str, slave: MeterSlave, owner: str,
            gateway_port: int | None = None, **device_json) -> Device:
        """A device whose meter bus reaches ``slave``, provisioned and registered at the
        gateway with ``label`` and ``owner``; not started. ``gateway_port`` (default:
        the gateway's CoAP port) is where it sends; ``device_json``: firmware settings
        (``interval_s``, ``reply_timeout_ms``, ``watchdog_s``, ``exports_allowed``...)."""

    def close(self) -> None:
        """Stop every device it made (power off)."""


class EmulatedDevice:
    """The real firmware in the MicroPython VM (tools.emulated_device), its flash a host
    folder, its meter the simulator on a loopback TCP port."""

    capabilities = EMULATED_CAPABILITIES

    def __init__(self, vm: emu.EmulatedDevice, device_id: str, label: str,
                 device_mjs: Path | None = None):
        self.vm = vm
        self.device_id = device_id
        self.label = label
        self.device_mjs = device_mjs  # another copy of the firmware (None: the repo's)
        self.starts = 0

    @property
    def storage(self) -> Path:
        return self.vm.storage

    def start(self, cut_at_write: int = 0, seed: int = 0) -> None:
        if self.running():
            raise RuntimeError(f"{self.label}: already running")
        self.starts += 1
        if self.device_mjs is None:
            self.vm.start(cut_at_write, seed)
        else:
            _start_with(self.vm, self.device_mjs, cut_at_write, seed)

    def power_cut_at_write(self, n: int, seed: int, timeout: float = 30.0) -> bool:
        """Start, and cut the power in the middle of the ``n``-th flash write (a torn
        append or a temporary file never renamed). True if the cut happened (the
        firmware may not write that many times before ``timeout``: then it is cut
        anyway, between writes)."""
        before = len(self.output())
        self.start(cut_at_write=n, seed=seed)
        try:
            self.vm.wait(timeout)
        except subprocess.TimeoutExpired:
            self.power_cut()
        return any("power cut at storage write" in x for x in self.output()[before:])

    def power_cut(self) -> None:
        self.vm.kill()

    def stop(self) -> None:
        self.vm.stop()

    def running(self) -> bool:
        return self.vm.running()

    def output(self) -> list[str]:
        return self.vm.output()

    def wait_for(self, predicate, timeout: float) -> bool:
        return self.vm.wait_for(predicate, timeout)

    def flash_names(self) -> list[str]:
        """The files in the device's data folder (sequence slots, spool segments)."""
        data = self.storage / "data"
        return sorted(p.name for p in data.iterdir()) if data.exists() else []

    def __repr__(self) -> str:
        return f"<emulated device {self.label!r} {self.device_id}>"


def _start_with(vm: emu.EmulatedDevice, device_mjs: Path, cut_at_write: int, seed: int):
    """``vm.start`` with another copy of ``tools/mpvm/device.mjs`` (and the firmware
    files next to it)."""
    cmd = emu.device_command(vm.storage, vm.meter_tcp, None, vm.hwid, cut_at_write, seed)
    cmd[1] = str(device_mjs)
    vm.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=device_mjs.parent.parent.parent, env=vm.env)
    vm._reader = threading.Thread(target=vm._read, args=(vm.proc,), daemon=True)
    vm._reader.start()


def firmware_copy(folder: Path, patch: Callable[[Path], None] | None = None) -> Path:
    """A copy of the emulated device's files (``firmware/`` and ``tools/mpvm/``, the
    repository's ``node_modules`` linked) under ``folder``, laid out as the repository
    is, with ``patch(firmware_folder)`` applied to the firmware; returns the copy's
    ``device.mjs`` for :meth:`EmulatedDevices.add` (``firmware=``)."""
    folder = Path(folder)
    root = emu.REPO
    ignore = shutil.ignore_patterns("__pycache__", "tests", "*.pyc")
    shutil.copytree(root / "firmware", folder / "firmware", ignore=ignore)
    shutil.copytree(root / "tools" / "mpvm", folder / "tools" / "mpvm", ignore=ignore)
    os.symlink(root / "node_modules", folder / "node_modules")
    if patch is not None:
        patch(folder / "firmware")
    return folder / "tools" / "mpvm" / "device.mjs"


class EmulatedDevices:
    """Makes :class:`EmulatedDevice` s: each provisioned from its console
    (``--provision``: the key never leaves the device) and registered with
    ``wattshare device add``, as docs/firmware.md does."""

    capabilities = EMULATED_CAPABILITIES

    def __init__(self, site: Site):
        self.site = site
        self.devices: list[EmulatedDevice] = []
        self._next = 0
        self._lock = threading.Lock()  # devices may be made from several threads

    def add(self, label: str, meter_id: str, slave: MeterSlave, owner: str,
            gateway_port: int | None = None, firmware: Path | None = None,
            register: bool = True, hwid: str | None = None,
            **device_json) -> EmulatedDevice:
        """See :meth:`DeviceMaker.add`. ``firmware``: a ``device.mjs`` from
        :func:`firmware_copy`; ``register=False`` leaves the device unknown to the
        gateway; ``hwid`` (12 hex digits) gives it another device's hardware id, so its
        device id (a forger with its own key)."""
        with self._lock:
            self._next += 1
            n = self._next
        hwid = hwid or f"a4c1{os.getpid() % 0xFFFF:04x}{n:04x}"
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "device"
        storage = self.site.folder / "devices" / f"{n:02d}-{slug}"
        server = self.site.run(serve_tcp(slave, "127.0.0.1", 0))
        self.site.servers.append(server)
        meter_tcp = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        port = self.site.gateway.coap_port if gateway_port is None else gateway_port
        # reply_timeout_ms is the meter bus's, in real milliseconds (the emulated UART
        # is not accelerated): loopback TCP answers in well under 150 ms, and a meter
        # that never answers costs 3 x 150 ms per poll, within the watchdog's
        # 600 simulated seconds
        config = {"gateway_host": "127.0.0.1", "gateway_port": port, "interval_s": 10,
                  "reply_timeout_ms": 150, "watchdog_s": 600}
        config.update(device_json)
        emu.write_config(storage, meter_id, config)
        vm = emu.EmulatedDevice(storage, meter_tcp, hwid, self.site.env)
        device_id, public_key = vm.provision()
        if register:
            self.site.gateway.wattshare(
                "device", "add", "--id", device_id.hex(), "--pubkey", public_key.hex(),
                "--model", meter_id, "--owner", owner, "--label", label)
        dev = EmulatedDevice(vm, device_id.hex(), label, firmware)
        dev.public_key = public_key.hex()
        dev.hwid = hwid
        self.devices.append(dev)
        return dev

    def close(self) -> None:
        for dev in self.devices:
            if dev.running():
                dev.power_cut()


def spooled(lines: list[str]) -> list[tuple[int, int]]:
    """(sequence number, device time) of each reading the firmware said it stored in its
    spool (``wattshare: spooled seq=N t=T``), in the order it said so."""
    out = []
    for line in lines:
        m = re.match(r"wattshare: spooled seq=(\d+) t=(\d+)", line)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return out


def console_json(lines: list[str]) -> list[dict]:
    """The JSON objects a console printed, one per line."""
    out = []
    for line in lines:
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def maker(site: Site, mode: str | None = None) -> DeviceMaker:
    """The device maker of ``WATTSHARE_HIL`` (``emulated``, the default, or ``bench``)."""
    mode = mode or os.environ.get("WATTSHARE_HIL", "emulated")
    if mode == "emulated":
        return EmulatedDevices(site)
    if mode == "bench":
        from hil_tests import bench_mode

        return bench_mode.BenchDevices(site)
    raise ValueError(f"WATTSHARE_HIL={mode!r}: expected 'emulated' or 'bench'")
