# Wattshare meter firmware entry point: the one place that wires ports to the
# application. On the ESP32, MicroPython runs this file as __main__ after boot.py;
# the emulated device imports it and awaits run(emulated_adapters) instead.
#
# An adapters module provides:
#   log(msg)
#   open_storage(folder) -> storage port ("config": the JSON files, "data": key,
#                                        sequence slots, spool, enrolled)
#   open_ports(board, meter, device) -> object with .bus .udp .clock .random_bytes
#       .network .hardware_id() .watchdog(timeout_ms)
#   open_meter_bus(board, meter), open_clock(), random_bytes(n), hardware_id()
# It is `emulated_adapters` where that module exists (the emulated device and the
# virtual board provide it), else app.esp32_adapters.
#
# Console (ESP32 REPL over USB, the installer's tools; each prints one JSON line):
#   import main; main.identity()          device id, public key, hardware id
#   import main; main.commission(10)      10 live polls: link quality, power,
#                                         counters; a bus scan when nothing answers
#   import main; main.sign_record(text)   the installer's record signed by the device
#   import main; main.provision()         device_id=... public_key=... (one line)
#   import main; main.rekey("REKEY")      new key pair, logged; register it again
import asyncio
import json

from app import config, keystore
from app.coap_uplink import CoapUplink
from app.device_clock import DeviceClock
from app.enroller import Enroller
from app.meter_poller import MeterPoller
from app.reading_signer import ReadingSigner
from app.sampler import Sampler
from app.sequence import SequenceAllocator
from app.spool import Spool
from app.supervisor import Liveness, feed_watchdog, run_all
from wattcore import enrolment, p256, reading

_WATCHDOG_FEED_MS = 5000
_NETWORK_CHECK_MS = 30000
_TRUSTED_AFTER = 1704067200  # 2024-01-01: an RTC behind this was never set (cold: 2000)
_SCAN_LAST = 247
_SCAN_TIMEOUT_MS = 80


def _adapters():
    try:
        import emulated_adapters

        return emulated_adapters
    except ImportError:
        from app import esp32_adapters

        return esp32_adapters


async def _keep_connected(network, device, clock, liveness, log):
    while True:
        if not network.is_connected():
            ok = await network.connect(device["wifi_ssid"], device["wifi_password"], 20000)
            log("network: %s" % ("connected" if ok else "not connected, retrying"))
        liveness.beat("network", _NETWORK_CHECK_MS + 60000)
        await clock.sleep_ms(_NETWORK_CHECK_MS)


async def _ntp(clock, device_clock, host, log):
    t = await clock.ntp_time(host)
    if t:
        device_clock.set(t, "ntp")
    else:
        log("clock: NTP %s gave no time; waiting for the gateway's" % host)


async def run(adapters=None):
    adapters = adapters or _adapters()
    log = adapters.log
    board, meter, device = config.load(adapters.open_storage("config"))
    data = adapters.open_storage("data")
    ports = adapters.open_ports(board, meter, device)
    clock = ports.clock
    priv = keystore.load_or_create(data, ports.random_bytes, log)
    device_id = keystore.device_id(ports.hardware_id())
    spool = Spool(data, device["spool_segments"], log)
    sequence = SequenceAllocator(data, floor=spool.max_seq + 1, log=log)
    device_clock = DeviceClock(clock, log)
    poller = MeterPoller(ports.bus, clock, meter, device["slave"], device["ct_rating_A"],
                         device["retries"], device["reply_timeout_ms"],
                         device["exports_allowed"])
    signer = ReadingSigner(priv, device_id, meter["model"])
    sampler = Sampler(poller, sequence, spool, signer, clock, device_clock,
                      device["interval_s"] * 1000, log)
    enroller = None
    if device["enrol_code"]:
        enroller = Enroller(data, device["enrol_code"], priv, device_id, meter["model"], log)
    uplink = CoapUplink(ports.udp, clock, device_clock, spool, ports.random_bytes,
                        device["batch_size"], log, enroller)
    liveness = Liveness(clock)
    watchdog = ports.watchdog(device["watchdog_s"] * 1000)
    log("boot: device %s board %s meter %s slave %d gateway %s:%d, %d readings spooled, "
        "next seq %d%s" % (device_id.hex(), board["id"], meter["id"], device["slave"],
                           device["gateway_host"], device["gateway_port"], len(spool),
                           sequence.peek(),
                           "" if enroller is None else ", enrolled" if enroller.done
                           else ", enrolling first"))
    if not ports.network.is_connected():
        await ports.network.connect(device["wifi_ssid"], device["wifi_password"], 20000)
    if device["ntp_host"]:
        await _ntp(clock, device_clock, device["ntp_host"], log)
    await run_all([
        ("sampler", lambda: sampler.run(liveness)),
        ("uplink", lambda: uplink.run(liveness, sampler.take_new)),
        ("network", lambda: _keep_connected(ports.network, device, clock, liveness, log)),
        ("watchdog", lambda: feed_watchdog(watchdog, liveness, clock, _WATCHDOG_FEED_MS, log)),
    ], clock, log)


def _console(obj):
    print(json.dumps(obj))


async def _printed(coro):
    # the console line is printed by the coroutine itself: on the virtual board
    # asyncio.run returns at once and the board awaits the coroutine before the
    # command ends (tools/mpvm/board_rom/_board.py), so nothing may wait for its value
    _console(await coro)


def _run(coro):
    # asyncio.run on a board (the virtual board's included); the WebAssembly VM of the
    # emulated device has none, and its REPL cannot wait for JavaScript: there the
    # adapters complete without suspending.
    run = getattr(asyncio, "run", None)
    if run is not None:
        return run(coro)
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    coro.close()
    raise RuntimeError("console: an adapter suspended; the console needs synchronous ports")


def _key(adapters):
    return keystore.load_or_create(adapters.open_storage("data"), adapters.random_bytes,
                                   adapters.log)


def identity(adapters=None):
    # {"device_id", "public_key", "hwid"}; creates the key on first use
    adapters = adapters or _adapters()
    priv = _key(adapters)
    hwid = adapters.hardware_id()
    _console({"device_id": keystore.device_id(hwid).hex(),
              "public_key": keystore.public_key_hex(priv), "hwid": bytes(hwid).hex()})


async def commission_async(polls, adapters, scan_timeout_ms=_SCAN_TIMEOUT_MS):
    # `polls` live polls through the configured MeterPoller -> the commissioning report
    # (see commission); the scan runs only when no poll got an answer at `slave`.
    board, meter, device = config.load(adapters.open_storage("config"))
    clock = adapters.open_clock()
    poller = MeterPoller(adapters.open_meter_bus(board, meter), clock, meter, device["slave"],
                         device["ct_rating_A"], device["retries"], device["reply_timeout_ms"],
                         device["exports_allowed"])
    ok = 0
    flags = 0
    values = {}
    for _ in range(polls):
        got, st = await poller.poll()
        flags |= st
        if got:
            ok += 1
            values = got
    report = {"polls": polls, "ok": ok, "model": meter["id"], "model_code": meter["model"],
              "slave": device["slave"], "ct_rating_A": device["ct_rating_A"],
              "power_w": values.get("p"), "ei_wh": values.get("ei"), "ee_wh": values.get("ee"),
              "serial": None, "flags": reading.flag_names(flags),
              "clock_trusted": clock.time() >= _TRUSTED_AFTER}
    report.update(poller.link)
    if ok:
        report["serial"] = await poller.serial_number()
    # a meter that answered with values the device refuses (a reversed CT at a consumer's
    # site, a value out of range) is at its address: no scan, its flags say what is wrong
    link = poller.link
    failed = link["crc_errors"] + link["no_reply"] + link["exceptions"] + link["wrong_address"]
    answered = ok or link["exceptions"] or link["crc_errors"] or poller.requests > failed
    if not answered:
        # the model's default address first, then every address; one meter per bus: the
        # first that answers is the suggestion
        report["scan"] = []
        for slave in [meter["slave"]] + list(range(1, _SCAN_LAST + 1)):
            if slave != device["slave"] and await poller.answers(slave, scan_timeout_ms):
                report["scan"] = [slave]
                break
    return report


def commission(polls=10, adapters=None, scan_timeout_ms=_SCAN_TIMEOUT_MS):
    # One JSON line: {"polls", "ok", "retries", "crc_errors", "no_reply", "exceptions",
    # "wrong_address", "power_w", "ei_wh", "ee_wh", "serial", "model", "model_code",
    # "slave", "ct_rating_A", "flags", "clock_trusted"[, "scan"]}. "scan" (when no poll
    # got an answer at "slave"): the address that answered instead, [] if none.
    adapters = adapters or _adapters()
    _run(_printed(commission_async(polls, adapters, scan_timeout_ms)))


def sign_record(text, adapters=None):
    # The installer's commissioning record (JSON text of an object) signed by the
    # device key with its id, public key and clock: {"record": hex COSE_Sign1}.
    adapters = adapters or _adapters()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError("sign_record: the record must be the JSON text of an object")
    priv = _key(adapters)
    dev = keystore.device_id(adapters.hardware_id())
    signed = enrolment.sign_record(dev, p256.public_key(priv), int(adapters.open_clock().time()),
                                   text, lambda tbs: p256.sign(priv, tbs))
    _console({"record": signed.hex()})


def provision(adapters=None):
    # Prints what the provisioning tool registers: device id and public key, never
    # the private key. Creates the key on first use.
    adapters = adapters or _adapters()
    priv = _key(adapters)
    device_id = keystore.device_id(adapters.hardware_id())
    print("device_id=%s public_key=%s" % (device_id.hex(), keystore.public_key_hex(priv)))


def rekey(confirm, adapters=None):
    # Replaces the device key. The old public key stops verifying: the registry
    # must be updated. Sequence numbers continue (the device id is stable).
    if confirm != "REKEY":
        raise ValueError('rekey: pass "REKEY" to confirm')
    adapters = adapters or _adapters()
    keystore.rekey(adapters.open_storage("data"), adapters.random_bytes, adapters.log)
    provision(adapters)


if __name__ == "__main__":
    asyncio.run(run())
