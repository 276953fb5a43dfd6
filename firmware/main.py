# Wattshare meter firmware entry point: the one place that wires ports to the
# application. On the ESP32, MicroPython runs this file as __main__ after boot.py;
# the emulated device imports it and awaits run(emulated_adapters) instead.
#
# An adapters module provides:
#   log(msg)
#   open_storage(folder) -> storage port ("config": the JSON files, "data": key,
#                                        sequence slots, spool)
#   open_ports(board, meter, device) -> object with .bus .udp .clock .random_bytes
#       .network .hardware_id() .watchdog(timeout_ms)
#
# Console (ESP32 REPL, or the emulated device's --provision / --rekey):
#   import main; main.provision()        prints the device id and public key only
#   import main; main.rekey("REKEY")     new key pair, logged; register it again
import asyncio

from app import config, keystore
from app.coap_uplink import CoapUplink
from app.device_clock import DeviceClock
from app.meter_poller import MeterPoller
from app.reading_signer import ReadingSigner
from app.sampler import Sampler
from app.sequence import SequenceAllocator
from app.spool import Spool
from app.supervisor import Liveness, feed_watchdog, run_all

_WATCHDOG_FEED_MS = 5000
_NETWORK_CHECK_MS = 30000


def _esp32():
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
    adapters = adapters or _esp32()
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
    uplink = CoapUplink(ports.udp, clock, device_clock, spool, ports.random_bytes,
                        device["batch_size"], log)
    liveness = Liveness(clock)
    watchdog = ports.watchdog(device["watchdog_s"] * 1000)
    log("boot: device %s board %s meter %s slave %d gateway %s:%d, %d readings spooled, "
        "next seq %d" % (device_id.hex(), board["id"], meter["id"], device["slave"],
                         device["gateway_host"], device["gateway_port"], len(spool),
                         sequence.peek()))
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


def provision(adapters=None):
    # Prints what the provisioning tool registers: device id and public key, never
    # the private key. Creates the key on first use.
    adapters = adapters or _esp32()
    data = adapters.open_storage("data")
    priv = keystore.load_or_create(data, adapters.random_bytes, adapters.log)
    device_id = keystore.device_id(adapters.hardware_id())
    print("device_id=%s public_key=%s" % (device_id.hex(), keystore.public_key_hex(priv)))


def rekey(confirm, adapters=None):
    # Replaces the device key. The old public key stops verifying: the registry
    # must be updated. Sequence numbers continue (the device id is stable).
    if confirm != "REKEY":
        raise ValueError('rekey: pass "REKEY" to confirm')
    adapters = adapters or _esp32()
    keystore.rekey(adapters.open_storage("data"), adapters.random_bytes, adapters.log)
    provision(adapters)


if __name__ == "__main__":
    asyncio.run(run())
