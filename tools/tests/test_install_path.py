"""The installer's path with the real parts: a gateway (`python -m gateway run`), the meter
simulator and the firmware in the MicroPython VM (tools.emulated_device), all on one
simulated clock ($WATTSHARE_SIM_CLOCK, 120 x), driven through the `wattshare` CLI and the
device's console functions.

- installing in the "wrong" order (device running before it is registered) loses no
  reading: 4.03 keeps everything, and once registered every spooled reading is stored;
- enrolment with a one-time code: the device registers itself with the invite's values
  and its readings follow; the same code again, or a wrong one, is refused on both sides,
  counted, and the code never appears in the gateway's log;
- commissioning through the console: live polls, a bus scan that finds the address the
  meter answers at, and a device-signed record the gateway keeps and shows.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from wattcore import enrolment

from gateway import config as gwconfig
from gateway import simclock, store
from tools import coap_client
from tools.emulated_device import EmulatedDevice, write_config
from tools.meter_sim import ManualClock, MeterModel, get_meter

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
SPEED = 120.0  # a device's 10-minute back-off is 5 s
OWNER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def _free(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    def __init__(self, folder: Path):
        self.folder = folder
        self.env = dict(os.environ, WATTSHARE_SIM_CLOCK=simclock.start(SPEED).value())
        self.coap_port = _free(socket.SOCK_DGRAM)
        self.http_port = _free(socket.SOCK_STREAM)
        self.meter_port = _free(socket.SOCK_STREAM)
        self.config = folder / "gateway.toml"
        self.config.write_text(gwconfig.render({
            "gateway": {"data_dir": "."},
            "coap": {"bind": "127.0.0.1", "port": self.coap_port},
            "http": {"bind": "127.0.0.1", "port": self.http_port},
            "ingest": {"processes": 0}, "log": {"format": "kv"}}))
        store.open_store(folder / gwconfig.DB_NAME).close()
        self.gateway_log = folder / "gateway.log"
        self.procs = [
            self._start([PY, "-m", "gateway", "run", "--config", str(self.config)],
                        self.gateway_log),
            self._start([PY, "-m", "tools.meter_sim", "--meter", "sdm120ct", "--profile",
                         "household", "--tcp", f"127.0.0.1:{self.meter_port}"],
                        folder / "meter.log"),
        ]
        self.devices: list[EmulatedDevice] = []
        self._hwid = 0x10
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.http("/healthz")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the gateway did not start:\n{self.gateway_log.read_text()}")

    def _start(self, cmd, log):
        return subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log.open("w"),
                                stderr=subprocess.STDOUT)

    def wattshare(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "tools.cli", *args, "--config", str(self.config)],
                              cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=60)

    def http(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=5) as r:
            return r.read().decode()

    def device(self, **device_json) -> EmulatedDevice:
        self._hwid += 1
        hwid = f"a4c138f1e2{self._hwid:02x}"
        storage = self.folder / hwid
        config = {"gateway_host": "127.0.0.1", "gateway_port": self.coap_port,
                  "reply_timeout_ms": 150}
        config.update(device_json)
        write_config(storage, "sdm120ct", config)
        dev = EmulatedDevice(storage, f"127.0.0.1:{self.meter_port}", hwid, env=self.env)
        self.devices.append(dev)
        return dev

    def stored(self, device_id: bytes) -> list[int]:
        """Sequence numbers the gateway holds for the device (its database, read-only)."""
        conn = sqlite3.connect(f"file:{self.folder / gwconfig.DB_NAME}?mode=ro", uri=True)
        try:
            return [s for (s,) in conn.execute(
                "SELECT seq FROM readings WHERE device = ? ORDER BY seq", (device_id,))]
        finally:
            conn.close()

    def close(self):
        for dev in self.devices:
            if dev.running():
                dev.kill()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("install"))
    try:
        yield s
    finally:
        s.close()


def _id(dev) -> bytes:
    """The device id: "WS" + the hardware id (docs/protocol.md section 2)."""
    return bytes.fromhex("5753" + dev.hwid)


def _spooled(dev) -> list[int]:
    return [int(x.split("seq=")[1].split()[0]) for x in dev.output()
            if x.startswith("wattshare: spooled seq=")]


def _said(dev, text) -> bool:
    return any(text in line for line in dev.output())


def test_a_device_started_before_it_is_registered_loses_no_reading(site):
    dev = site.device()
    dev.start()
    assert dev.wait_for(lambda: _said(dev, "4.03 unknown-device"), 30), dev.output()
    assert dev.wait_for(lambda: len(_spooled(dev)) >= 15, 30)
    identity = dev.console("identity")  # while it runs: the key file is there already
    added = site.wattshare("device", "add", "--id", identity["device_id"], "--pubkey",
                           identity["public_key"], "--model", "sdm120ct", "--owner", OWNER,
                           "--label", "late")
    assert added.returncode == 0, added.stderr
    waiting = len(_spooled(dev))
    # the device retries after its 10-minute back-off (5 s here) and sends everything
    assert dev.wait_for(lambda: len(site.stored(_id(dev))) >= waiting + 5, 30), \
        dev.output()[-20:]
    dev.stop()
    spooled = _spooled(dev)
    stored = set(site.stored(_id(dev)))
    # every reading up to the newest stored one is stored (the newest few may still be
    # in the spool, waiting for the next send), none was quarantined
    assert {seq for seq in spooled if seq <= max(stored)} == stored
    assert len(stored) >= waiting + 5 >= 20
    assert not _said(dev, "quarantined") and not _said(dev, "rejected seq")


def test_enrolment_with_a_one_time_code(site):
    made = site.wattshare("device", "invite", "--label", "Bakery roof", "--owner", OWNER,
                          "--expires", "2h", "--meter", "sdm120ct", "--ct-rating", "63",
                          "--json")
    assert made.returncode == 0, made.stderr
    code = json.loads(made.stdout)["code"]
    good = site.device(enrol_code=code)
    good.start()
    assert good.wait_for(lambda: _said(good, "enrolment: enrolled at the gateway"), 30), \
        good.output()
    assert good.wait_for(lambda: len(site.stored(_id(good))) >= 3, 30)
    again = site.device(enrol_code=code)  # a second board with the same code
    wrong = site.device(enrol_code=enrolment.format_code(
        enrolment.code_from_random(lambda n: b"\x5a" * n)))
    again.start()
    wrong.start()
    assert again.wait_for(lambda: _said(again, "enrolment: REFUSED 4.03 code-used"), 30)
    assert wrong.wait_for(lambda: _said(wrong, "enrolment: REFUSED 4.03 code-wrong"), 30)
    assert wrong.wait_for(lambda: len(_spooled(wrong)) >= 3, 30)  # readings are kept
    for dev in (good, again, wrong):
        dev.stop()
    shown = json.loads(site.wattshare("device", "show", _id(good).hex(), "--json").stdout)
    assert shown["enrolled"] and (shown["label"], shown["ct_rating_a"], shown["model"]) == (
        "Bakery roof", 63.0, "SDM120CT")
    assert shown["last_reading"]["signature_valid"]
    for dev in (again, wrong):
        report = json.loads(site.http(f"/api/devices/{_id(dev).hex()}"))
        assert not report["registered"]
        assert not dev.storage.joinpath("data", "enrolled").exists()
    metrics = site.http("/metrics")
    for outcome in ("enrolled", "code-used", "code-wrong"):
        assert f'wattshare_enrolment_requests_total{{outcome="{outcome}"}}' in metrics
    log = site.gateway_log.read_text()
    assert "device enrolled" in log and "enrolment refused" in log
    normal = enrolment.parse_code(code)
    for form in (code, normal, code.lower(), normal.lower()):
        assert form not in log
    for dev in (good, again, wrong):  # the device does not print it either
        assert not any(normal in line or code in line for line in dev.output())


def test_commissioning_through_the_console(site):
    dev = site.device(slave=2)  # the simulated meter answers at 1
    identity = dev.console("identity")
    added = site.wattshare("device", "add", "--id", identity["device_id"], "--pubkey",
                           identity["public_key"], "--model", "SDM120CT", "--owner", OWNER,
                           "--label", "shed")
    assert added.returncode == 0, added.stderr
    lost = dev.console("commission", 2, "--scan-timeout", 60)
    assert (lost["ok"], lost["no_reply"], lost["slave"], lost["scan"]) == (0, 6, 2, [1])
    write_config(dev.storage, "sdm120ct", {"gateway_host": "127.0.0.1",
                                           "gateway_port": site.coap_port, "slave": 1})
    found = dev.console("commission", 3)
    assert (found["ok"], found["no_reply"], found["crc_errors"], found["retries"]) == (3, 0, 0, 0)
    assert found["power_w"] > 0 and found["ei_wh"] > 0 and "scan" not in found
    simulated = MeterModel(get_meter("sdm120ct"), "household", ManualClock(0.0), seed=0)
    assert found["serial"] == simulated.serial_number  # read with its own function (03)
    record = {"installer": "A. Fitter", "model": found["model"], "serial": found["serial"],
              "checks": {"modbus": {"ok": True, "polls": 3, "crc_errors": 0},
                         "ct_orientation": {"ok": True, "power_w": found["power_w"]}}}
    signed = bytes.fromhex(dev.console("sign-record", json.dumps(record))["record"])
    answer = coap_client.request("127.0.0.1", site.coap_port, "POST", "c", signed)
    assert (answer.code, answer.reason) == ("2.04", None)
    forged = signed[:-1] + bytes([signed[-1] ^ 1])
    answer = coap_client.request("127.0.0.1", site.coap_port, "POST", "c", forged)
    assert (answer.code, answer.reason) == ("4.01", "bad-signature")
    shown = site.wattshare("device", "show", identity["device_id"])
    assert "commissioning: " in shown.stdout and "by A. Fitter, signed by the device" in \
        shown.stdout
    report = json.loads(site.http(f"/api/devices/{identity['device_id']}"))
    assert report["commissioning"]["record"] == record
    assert report["commissioning"]["signature_valid"]


def test_an_unreachable_gateway_is_named():
    port = _free(socket.SOCK_DGRAM)
    with pytest.raises(coap_client.GatewayUnreachable, match=f"127.0.0.1:{port}"):
        coap_client.request("127.0.0.1", port, "GET", "t", ack_timeout_s=0.05,
                            max_retransmit=1)
