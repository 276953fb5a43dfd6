# The emulated device's adapters, MicroPython side: every port is backed by the
# `hal` JS module that tools/mpvm/device.mjs registers (Node: a TCP stream of raw
# RTU frames to the meter simulator, a dgram UDP socket to the gateway, files in
# a host folder, node:crypto, a clock that may run faster than real time).
# Bytes cross the FFI as hex strings; numbers above 2^31 as floats.
# This file runs inside the VM only (it is not deployed to boards).
import asyncio
from binascii import hexlify, unhexlify

import hal


def log(msg):
    print("wattshare: " + msg)


def _hex(data):
    return hexlify(data).decode()


def _bytes(text):
    return unhexlify(text) if text else b""


def random_bytes(n):
    return _bytes(hal.random_hex(n))


def hardware_id():
    return _bytes(hal.hardware_id())


class Storage:
    # The storage port (app/flash_storage.py lists the methods) on a host folder.
    def __init__(self, folder):
        self._folder = folder
        self.writes = 0

    def read(self, name, offset=0, n=-1):
        text = hal.fs_read(self._folder, name, offset, n)
        return None if text is None else _bytes(text)

    def size(self, name):
        return hal.fs_size(self._folder, name)

    def append(self, name, data):
        self.writes += 1
        hal.fs_append(self._folder, name, _hex(data))

    def write_atomic(self, name, data):
        self.writes += 1
        hal.fs_write_atomic(self._folder, name, _hex(data))

    def remove(self, name):
        hal.fs_remove(self._folder, name)

    def names(self):
        text = hal.fs_names(self._folder)
        return text.split("/") if text else []


def open_storage(folder):
    return Storage(folder)


class MeterBus:
    # UART bytes to and from the meter simulator. Timeouts are real time: the
    # simulated meter answers in real time whatever the clock speed.
    def write(self, frame):
        hal.uart_write(_hex(frame))

    async def read(self, n, timeout_ms):
        return _bytes(await hal.uart_read(n, timeout_ms))

    def flush_input(self):
        hal.uart_flush()


class Udp:
    def send(self, datagram):
        hal.udp_send(_hex(datagram))

    async def recv(self, timeout_ms):
        text = await hal.udp_recv(timeout_ms)
        return None if text is None else _bytes(text)


class Clock:
    # Device time: monotonic and RTC both run at the emulation speed.
    def monotonic_ms(self):
        return int(hal.monotonic_ms())

    async def sleep_ms(self, ms):
        if ms > 0:
            await hal.sleep_ms(ms)
        else:
            await asyncio.sleep_ms(0)

    def time(self):
        return int(hal.rtc_time())

    def set_time(self, unix_seconds):
        hal.rtc_set(float(unix_seconds))

    async def ntp_time(self, host):
        return None  # no NTP in the emulation: the gateway's time is the source


class Network:
    def is_connected(self):
        return True

    async def connect(self, ssid, password, timeout_ms):
        return True


class Watchdog:
    def __init__(self, timeout_ms):
        hal.wdt_start(timeout_ms)

    def feed(self):
        hal.wdt_feed()


class Ports:
    def __init__(self):
        self.bus = MeterBus()
        self.udp = Udp()
        self.clock = Clock()
        self.network = Network()
        self.random_bytes = random_bytes
        self.hardware_id = hardware_id
        self.watchdog = Watchdog


def open_meter_bus(board, meter):
    return MeterBus()


def open_clock():
    return Clock()


def open_ports(board, meter, device):
    # The gateway address comes from the device config, as on a board; the meter
    # simulator's address is the "wire" (device.mjs --meter-tcp).
    hal.udp_open(device["gateway_host"], device["gateway_port"])
    return Ports()
