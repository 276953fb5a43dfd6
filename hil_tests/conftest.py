"""Fixtures of the hardware-in-the-loop suite: the same tests run against emulated
devices (default) or real boards on a bench.

``WATTSHARE_HIL=emulated`` (default): each device is the real firmware in the
MicroPython VM (``tools.emulated_device``), its meter the simulator over TCP, its flash a
temporary folder; power cuts are process kills.

``WATTSHARE_HIL=bench``: real ESP32 boards flashed with ``make firmware`` and
provisioned, pointed at this machine's gateway endpoint. Environment:

- ``WATTSHARE_BENCH_GATEWAY_PORT``: UDP port the boards send to (bound on 0.0.0.0);
- ``WATTSHARE_BENCH_DEVICES``: ``ID:PUBKEY:SERIAL`` entries separated by commas: device
  id and public key hex (``main.provision()``), and the USB-RS485 adapter on which the
  meter simulator serves that board's meter bus (``tools.meter_sim --serial``);
- ``WATTSHARE_BENCH_POWER``: a command run with ``off ID`` / ``on ID`` to cut and
  restore a board's power (a relay board).

The bench backend is described, not implemented: nothing here could be tried without the
hardware, so ``Rig.device`` raises ``NotImplementedError`` naming what is missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from gateway import simclock
from hil_tests.coap_endpoint import Background, start_endpoint
from tools.emulated_device import EmulatedDevice, write_config
from tools.meter_sim import (
    FaultPlan,
    ManualClock,
    MeterModel,
    MeterSlave,
    SharedClock,
    get_meter,
    parse_fault,
    serve_tcp,
)

MODE = os.environ.get("WATTSHARE_HIL", "emulated")
SIM_START = 1750161600.0  # 2025-06-17 12:00 UTC: the sun is up for PV profiles
SPEED = 50.0  # device seconds per real second


class Rig:
    """A gateway endpoint plus meters and devices, all on loopback."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.speed = SPEED
        self.clock = simclock.start(SPEED, SIM_START)  # shared with the devices
        self.env = dict(os.environ, **{simclock.ENV: self.clock.value()})
        self.bg = Background()
        self.endpoint, self.gateway_port = self.bg.run(start_endpoint(self.sim_time))
        self.devices: list[EmulatedDevice] = []
        self.servers: list = []
        self._next_hwid = 0x100

    def sim_time(self) -> float:
        return self.clock.now()

    def meter(self, meter_id: str, profile: str = "household", faults=(), seed: int = 1,
              frozen: bool = False) -> tuple[MeterModel, int]:
        """A simulated meter on a TCP port; ``frozen`` stops its clock (constant values)."""
        meter = get_meter(meter_id)
        clock = ManualClock(SIM_START) if frozen else SharedClock(self.clock)
        model = MeterModel(meter, profile, clock, seed=seed)
        plan = FaultPlan([parse_fault(f) for f in faults], seed=seed, meter=meter,
                         slave=meter.default_slave)

        async def serve():
            server = await serve_tcp(MeterSlave(model, meter.default_slave, plan), "127.0.0.1", 0)
            return server, server.sockets[0].getsockname()[1]

        server, port = self.bg.run(serve())
        self.servers.append(server)
        return model, port

    def device(self, meter_id: str, meter_port: int, **device_json) -> EmulatedDevice:
        """A provisioned, registered device (not started) on its own flash folder."""
        if MODE != "emulated":
            raise NotImplementedError(
                "bench devices: flash and provision the boards, set WATTSHARE_BENCH_DEVICES "
                "and WATTSHARE_BENCH_POWER (see hil_tests/conftest.py); not implemented here")
        self._next_hwid += 1
        hwid = f"a4c138{self._next_hwid:06x}"
        storage = self.tmp / hwid
        config = {"gateway_host": "127.0.0.1", "gateway_port": self.gateway_port,
                  "reply_timeout_ms": 150}
        config.update(device_json)
        write_config(storage, meter_id, config)
        dev = EmulatedDevice(storage, f"127.0.0.1:{meter_port}", hwid, self.env)
        dev.device_id, public_key = dev.provision()
        self.endpoint.register(dev.device_id, public_key)
        self.devices.append(dev)
        return dev

    def close(self):
        for dev in self.devices:
            if dev.running():
                dev.kill()
        for server in self.servers:
            self.bg.loop.call_soon_threadsafe(server.close)
        self.bg.close()


@pytest.fixture
def rig():
    tmp = Path(tempfile.mkdtemp(prefix="wattshare-hil-"))
    r = Rig(tmp)
    try:
        yield r
    finally:
        r.close()
        shutil.rmtree(tmp, ignore_errors=True)


def spooled_seqs(lines: list[str]) -> list[int]:
    """Sequence numbers the device reported as stored in its spool (append returned)."""
    out = []
    for line in lines:
        if line.startswith("wattshare: spooled seq="):
            out.append(int(line.split("seq=")[1].split()[0]))
    return out
