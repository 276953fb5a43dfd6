"""main.py's console functions on fake adapters, as the virtual board's REPL runs them:
without asyncio.run (the WebAssembly VM has none) commission() drives its coroutine
itself, and refuses adapters that suspend. One JSON line each."""

import asyncio
import json
import sys
import types
from pathlib import Path

import pytest

CORE = str(Path(__file__).resolve().parents[1] / "core")
sys.path.insert(0, CORE)
import app_fakes  # noqa: E402
import main  # noqa: E402
import test_app_meter_poller as poller_tests  # noqa: E402
from wattcore import enrolment, modbus_rtu  # noqa: E402

sys.path.remove(CORE)

BOARD = {"id": "b", "chip": "esp32", "led_kind": "gpio", "uart": 2, "tx": 17, "rx": 16,
         "led": 2, "flash_mb": 4, "de_re": 4}


def _meter_reply(slave, **values):
    regs = poller_tests._sdm_registers(**values)

    def reply(request):
        if request[0] != slave:
            return b""
        if request[1] == 3:
            return poller_tests._crc(bytes((slave, 3, 4)) + (4711).to_bytes(4, "big"))
        count = request[5]
        return poller_tests._crc(bytes((slave, 4, 2 * count)) + regs[:2 * count])

    return reply


class SuspendingClock(app_fakes.FakeClock):
    async def sleep_ms(self, ms):
        await asyncio.sleep(0)  # a real suspension, as a JS Promise would be


def _adapters(tmp_slave=1, meter_slave=1, clock=None, device=(), **values):
    config = app_fakes.MemoryStorage()
    config.files["board.json"] = json.dumps(BOARD).encode()
    config.files["meter.json"] = json.dumps(poller_tests.SDM120).encode()
    config.files["device.json"] = json.dumps({"gateway_host": "gw", "slave": tmp_slave,
                                              "retries": 1, **dict(device)}).encode()
    data = app_fakes.MemoryStorage()
    bus = app_fakes.FakeBus(_meter_reply(meter_slave, **values))
    return types.SimpleNamespace(
        log=lambda msg: None,
        open_storage=lambda folder: config if folder == "config" else data,
        open_meter_bus=lambda board, meter: bus,
        open_clock=lambda: clock or app_fakes.FakeClock(1785318000),
        random_bytes=app_fakes.Lcg(9).bytes,
        hardware_id=lambda: b"\xa4\xc1\x38\xf1\xe2\xd0",
    ), bus


@pytest.fixture
def no_asyncio_run(monkeypatch):
    fake = types.SimpleNamespace(**{k: getattr(asyncio, k) for k in dir(asyncio)
                                    if not k.startswith("_") and k != "run"})
    monkeypatch.setattr(main, "asyncio", fake)


def _one_json_line(capsys):
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_commission_without_asyncio_run(no_asyncio_run, capsys):
    adapters, bus = _adapters()
    main.commission(3, adapters)
    report = _one_json_line(capsys)
    assert (report["polls"], report["ok"], report["no_reply"], report["serial"]) == (3, 3, 0, 4711)
    assert report["power_w"] == 1207 and report["ei_wh"] == 1234500
    assert report["clock_trusted"] and report["model"] == "sdm120ct" and "scan" not in report


def test_commission_scans_for_the_address_that_answers(no_asyncio_run, capsys):
    adapters, bus = _adapters(tmp_slave=1, meter_slave=9)
    main.commission(2, adapters, scan_timeout_ms=5)
    report = _one_json_line(capsys)
    assert (report["ok"], report["no_reply"], report["retries"], report["scan"]) == (0, 4, 2, [9])
    assert bus.sent[-1] == modbus_rtu.read_request(9, 4, 0, 1)
    adapters, _ = _adapters(tmp_slave=1, meter_slave=250)  # nobody on the bus
    main.commission(1, adapters, scan_timeout_ms=5)
    assert _one_json_line(capsys)["scan"] == []


def test_a_reversed_ct_at_a_consumer_site_is_reported_without_a_bus_scan(no_asyncio_run,
                                                                          capsys):
    # the meter answers at its address, with export where the site has none: every poll
    # is refused as a fault, and the report says why instead of scanning 247 addresses
    adapters, bus = _adapters(device={"exports_allowed": False}, p=-1207.0)
    main.commission(3, adapters, scan_timeout_ms=5)
    report = _one_json_line(capsys)
    assert report["ok"] == 0 and "CT_REVERSED" in report["flags"]
    assert report.get("scan") is None and report["no_reply"] == 0
    assert len(bus.sent) == 3  # one read a poll, nothing else on the bus
    adapters, _ = _adapters(device={"exports_allowed": False}, p=1207.0)  # clamped right
    main.commission(2, adapters)
    assert "CT_REVERSED" not in _one_json_line(capsys)["flags"]


def test_an_adapter_that_suspends_is_named(no_asyncio_run):
    adapters, _ = _adapters(clock=SuspendingClock(0))
    with pytest.raises(RuntimeError, match="console: an adapter suspended"):
        main.commission(1, adapters)


def test_identity_and_sign_record(capsys):
    adapters, _ = _adapters()
    main.identity(adapters)
    ident = _one_json_line(capsys)
    assert ident["device_id"] == "5753a4c138f1e2d0" and ident["hwid"] == "a4c138f1e2d0"
    text = '{"installer": "x", "checks": {"a": {"ok": true}}}'
    main.sign_record(text, adapters)
    signed = bytes.fromhex(_one_json_line(capsys)["record"])
    _, fields = enrolment.open_signed(signed, enrolment.decode_record)
    assert fields["rec"] == text and fields["pub"].hex() == ident["public_key"]
    assert fields["t"] == 1785318000
    with pytest.raises(ValueError, match="JSON text of an object"):
        main.sign_record("[1, 2]", adapters)
