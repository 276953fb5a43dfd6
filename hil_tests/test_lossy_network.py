"""A lossy network between the meters and the gateway: zero readings lost, none stored
twice.

The real gateway (``wattshare gateway run``, :class:`tools.local_site.GatewayProcess`),
three emulated devices (the real firmware in the MicroPython VM) with simulated meters,
all on one accelerated clock (:mod:`gateway.simclock`). Between the devices and the
gateway, :mod:`hil_tests.lossy_proxy` drops 30 % of the datagrams in each direction and
duplicates, reorders and delays others, seeded.

What the device sent is what its console printed (``spooled seq=N``); what the gateway
stored is what ``wattshare device readings --json`` and ``device show --json`` say. Every
reading a device spooled up to a checkpoint must be stored exactly once; nothing is
stored that a device did not spool.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from gateway import simclock
from hil_tests.lossy_proxy import Impairment, LossyProxy, ProxyThread
from hil_tests.rig import ProcessLogs
from tools.emulated_device import EmulatedDevice, write_config
from tools.local_site import GatewayProcess
from tools.meter_sim import (
    FaultPlan,
    MeterModel,
    MeterSlave,
    SharedClock,
    get_meter,
    serve_tcp,
)

SIM_START = 1750161600.0  # 2025-06-17 12:00 UTC: the PV meter exports
SPEED = 40.0  # device seconds per real second: four readings a second per device
LOSS = Impairment(loss=0.30, duplicate=0.05, reorder=0.10, delay_ms=(0.0, 15.0),
                  hold_ms=300.0)
SEED = 13
READINGS_PER_DEVICE = 40  # spooled by every device before the checkpoint
OWNER = "0x52908400098527886E0F7030069857D2E4169EE7"
METERS = [  # (meter model, profile, label)
    ("sdm120ct", "pv-producer", "no. 4, rooftop PV"),
    ("sdm630ct", "school", "the school"),
    ("pzem004t-v3", "household", "no. 6"),
]
_SPOOLED = re.compile(r"wattshare: spooled seq=(\d+) t=(\d+)")


def spooled(dev: EmulatedDevice) -> dict[int, int]:
    """seq -> t of every reading the device's console says it spooled."""
    out = {}
    for line in dev.output():
        m = _SPOOLED.search(line)
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out


class Site:
    """The scenario's parts; :meth:`close` stops what was started, in reverse."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.logs = ProcessLogs(tmp)
        self.clock = simclock.start(SPEED, SIM_START)
        self.env = dict(os.environ, **{simclock.ENV: self.clock.value()})
        self.gateway: GatewayProcess | None = None
        self.proxy_thread: ProxyThread | None = None
        self.proxy: LossyProxy | None = None
        self.devices: list[EmulatedDevice] = []
        self.servers: list = []

    def start(self) -> None:
        self.gateway = GatewayProcess(self.tmp / "gateway", env=self.env)
        self.logs.add("gateway", self.tmp / "gateway" / "gateway.log")
        self.proxy_thread = ProxyThread(LossyProxy(("127.0.0.1", self.gateway.coap_port),
                                                   LOSS, seed=SEED))
        self.proxy = self.proxy_thread.start()
        self.logs.add_text("lossy proxy", self.proxy.summary)
        for n, (meter_id, profile, label) in enumerate(METERS):
            self.devices.append(self._device(n, meter_id, profile, label))

    def _meter(self, meter_id: str, profile: str, seed: int) -> str:
        meter = get_meter(meter_id)
        model = MeterModel(meter, profile, SharedClock(self.clock), seed=seed)
        slave = MeterSlave(model, meter.default_slave, FaultPlan())

        async def serve():
            return await serve_tcp(slave, "127.0.0.1", 0)

        server = self.proxy_thread.run(serve())
        self.servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    def _device(self, n: int, meter_id: str, profile: str, label: str) -> EmulatedDevice:
        """A device provisioned on its flash folder, registered with ``wattshare device
        add`` (its id and key as the provisioning console prints them), not started."""
        hwid = f"a4c1380100{n:02x}"
        storage = self.tmp / hwid
        host, port = self.proxy.address
        write_config(storage, meter_id, {"gateway_host": host, "gateway_port": port,
                                         "interval_s": 10})
        dev = EmulatedDevice(storage, self._meter(meter_id, profile, seed=n + 1), hwid,
                             self.env)
        device_id, public_key = dev.provision()
        dev.device_id = device_id.hex()
        dev.label = label
        self.gateway.wattshare("device", "add", "--id", dev.device_id, "--pubkey",
                               public_key.hex(), "--model", meter_id, "--owner", OWNER,
                               "--label", label)
        self.logs.add_text(f"device {label} console", lambda: "\n".join(dev.output()))
        return dev

    def stored_count(self, dev: EmulatedDevice) -> int:
        """Readings stored for the device, from the status API (cheap enough to poll)."""
        url = f"{self.gateway.http_url}/api/devices/{dev.device_id}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())["state"]["readings"]

    def close(self) -> None:
        for dev in self.devices:
            if dev.running():
                dev.kill()
        if self.proxy_thread is not None:
            for server in self.servers:
                self.proxy_thread.loop.call_soon_threadsafe(server.close)
            self.proxy_thread.close()
        if self.gateway is not None:
            self.gateway.stop()


@pytest.fixture
def site():
    tmp = Path(tempfile.mkdtemp(prefix="wattshare-lossy-"))
    s = Site(tmp)
    try:
        s.start()
        yield s
    except BaseException:
        s.logs.report()
        raise
    finally:
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)


def stored_rows(site: Site, dev: EmulatedDevice) -> list[dict]:
    """Every reading the gateway stored for the device (``wattshare device readings``)."""
    return json.loads(site.gateway.wattshare("device", "readings", dev.device_id,
                                             "--limit", "0", "--json").stdout)


def stored_seqs(site: Site, dev: EmulatedDevice) -> list[int]:
    return [r["seq"] for r in stored_rows(site, dev)]


def wait_until(predicate, timeout: float, what: str, site: Site) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    if predicate():
        return
    site.logs.report()
    raise AssertionError(f"{what}: not within {timeout:g} s (proxy: {site.proxy.summary()})")


def test_lossy_network_loses_nothing_and_stores_nothing_twice(site):
    for dev in site.devices:
        dev.start()

    # 1. every device spools its readings while the network loses 30 % of the datagrams
    wait_until(lambda: all(len(spooled(d)) >= READINGS_PER_DEVICE for d in site.devices),
               60, f"each device spooled {READINGS_PER_DEVICE} readings", site)
    checkpoint = {d.device_id: max(spooled(d)) for d in site.devices}

    # 2. the gateway gets them all, through retransmissions, whatever was lost (seqs
    # count from 0: checkpoint + 1 readings; the status API's count is cheap to poll)
    def enough_stored():
        return all(site.stored_count(d) > checkpoint[d.device_id] for d in site.devices)

    def all_stored():
        return all(set(range(checkpoint[d.device_id] + 1)) <= set(stored_seqs(site, d))
                   for d in site.devices)

    wait_until(enough_stored, 90, "the gateway stored as many readings as were spooled "
               "by the checkpoint", site)
    wait_until(all_stored, 60, "the gateway stored every reading up to the checkpoint", site)
    for dev in site.devices:
        dev.stop()
    stats = site.proxy_thread.stats()

    # 3. what the gateway shows, against what each device printed
    try:
        for dev in site.devices:
            sent = spooled(dev)
            rows = stored_rows(site, dev)
            seqs = [r["seq"] for r in rows]
            duplicated = sorted({s for s in seqs if seqs.count(s) > 1})
            assert not duplicated, f"{dev.label}: stored twice: {duplicated}"
            missing = sorted(s for s in sent if s <= checkpoint[dev.device_id]
                             and s not in set(seqs))
            assert not missing, f"{dev.label}: spooled, never stored: {missing}"
            unknown = sorted(set(seqs) - set(sent))
            assert not unknown, f"{dev.label}: stored, never spooled: {unknown}"
            assert all(r["t"] == sent[r["seq"]] for r in rows), dev.label
            shown = json.loads(site.gateway.wattshare("device", "show", dev.device_id,
                                                      "--json").stdout)
            assert shown["state"]["readings"] == len(rows) >= READINGS_PER_DEVICE
            assert shown["state"]["last_seq"] == max(seqs)
            assert shown["last_reading"]["signature_valid"]
            assert not shown["state"]["rejects"], shown["state"]

        # the network was as bad as it says, in both directions. The decisions are the
        # seed's, datagram after datagram: with SEED, any first 80..600 datagrams of a
        # direction lose 27..37 % and include duplicates and held-back ones. Whether a
        # held datagram is overtaken within hold_ms is timing (a reply is overtaken only
        # by the answer to a retransmission): overtaken ones are counted over both ways.
        for direction in ("up", "down"):
            got = stats[direction]
            assert got["received"] >= 80, stats
            assert 0.25 <= got["dropped"] / got["received"] <= 0.4, stats
            for kind in ("duplicated", "held", "delayed"):
                assert got[kind] > 0, (direction, kind, stats)
        assert stats["up"]["reordered"] + stats["down"]["reordered"] > 0, stats
    except AssertionError:
        site.logs.report()
        raise
    with urllib.request.urlopen(f"{site.gateway.http_url}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    duplicates = re.search(r"^wattshare_readings_duplicate_total (\S+)", metrics, re.M)
    unanswered = sum("uplink: no response" in line for d in site.devices for line in d.output())
    print(f"lossy network: proxy {site.proxy.summary()}; the devices saw {unanswered} "
          f"exchanges fail; the gateway counted "
          f"{duplicates.group(1) if duplicates else '?'} duplicate readings")
