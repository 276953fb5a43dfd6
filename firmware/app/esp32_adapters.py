# The ESP32 adapters: the ports of the application on real hardware. Kept small:
# the logic is in the app modules, tested on the host; this file only touches
# machine, network, socket and the flash filesystem. (Not runnable on the host:
# it is type-checked against micropython-esp32-stubs by tools/check_firmware.py.)
import asyncio
import os
import socket
import time

import machine
import network

from app.flash_storage import FlashStorage

_POLL_MS = 2
_RTC_UNSET = 0


def log(msg):
    print("wattshare: " + msg)


def random_bytes(n):
    return os.urandom(n)  # the ESP32's hardware RNG (RF noise while Wi-Fi is on)


def hardware_id():
    return machine.unique_id()[:6]  # the base MAC on the ESP32


def open_storage(folder):
    return FlashStorage("/" + folder)


class MeterBus:
    # machine.UART on an RS-485 transceiver. de_re: the driver-enable pin (DE and
    # /RE tied), raised around each send and dropped only after the UART has
    # shifted out the last stop bit, or None for an auto-direction transceiver.
    def __init__(self, board, meter):
        parity = {"N": None, "E": 0, "O": 1}[meter["parity"]]
        self._uart = machine.UART(board["uart"], baudrate=meter["baud"], bits=8, parity=parity,
                                  stop=meter["stop_bits"], tx=board["tx"], rx=board["rx"],
                                  timeout=0, rxbuf=512)
        self._de = None
        if board["de_re"] is not None:
            self._de = machine.Pin(board["de_re"], machine.Pin.OUT, value=0)
        # one character time, the turnaround margin after the last stop bit
        self._char_us = 11 * 1000000 // meter["baud"] + 1

    def write(self, frame):
        if self._de is not None:
            self._de.value(1)
        self._uart.write(frame)
        self._uart.flush()  # returns when the last byte has left the shift register
        if self._de is not None:
            time.sleep_us(self._char_us)
            self._de.value(0)

    async def read(self, n, timeout_ms):
        buf = b""
        start = time.ticks_ms()
        while len(buf) < n and time.ticks_diff(time.ticks_ms(), start) < timeout_ms:
            if self._uart.any():
                buf += self._uart.read(n - len(buf)) or b""
            else:
                await asyncio.sleep_ms(_POLL_MS)
        return buf

    def flush_input(self):
        while self._uart.any():
            self._uart.read()


class Udp:
    def __init__(self, host, port):
        self._host = host
        self._port = port
        self._addr = None  # resolved once Wi-Fi is up
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def send(self, datagram):
        try:
            if self._addr is None:
                self._addr = socket.getaddrinfo(self._host, self._port)[0][-1]
            self._sock.sendto(datagram, self._addr)
        except OSError as e:  # no route while Wi-Fi reconnects: CoAP retransmits
            log("udp: send failed: %s" % e)

    async def recv(self, timeout_ms):
        start = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), start) < timeout_ms:
            try:
                data, addr = self._sock.recvfrom(1280)
            except OSError:
                await asyncio.sleep_ms(10)
                continue
            if addr == self._addr:
                return data
        return None


class Clock:
    # monotonic_ms: ticks_ms unwrapped (it wraps after 2^30 ms); the loops call it
    # every few seconds, far more often than a wrap.
    def __init__(self):
        self._last = time.ticks_ms()
        self._ms = 0
        self._rtc = machine.RTC()

    def monotonic_ms(self):
        now = time.ticks_ms()
        self._ms += time.ticks_diff(now, self._last)
        self._last = now
        return self._ms

    async def sleep_ms(self, ms):
        await asyncio.sleep_ms(ms)

    def time(self):
        return time.time() + 946684800 if time.gmtime(0)[0] == 2000 else time.time()

    def set_time(self, unix_seconds):
        tm = time.gmtime(unix_seconds - (946684800 if time.gmtime(0)[0] == 2000 else 0))
        self._rtc.datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], 0))

    async def ntp_time(self, host):
        try:
            import ntptime

            ntptime.host = host
            ntptime.settime()  # blocks up to ~1 s; only at start
            return self.time()
        except (OSError, ImportError) as e:
            log("clock: NTP failed: %s" % e)
            return None


class Network:
    def __init__(self):
        self._wlan = network.WLAN(network.WLAN.IF_STA)
        self._wlan.active(True)

    def is_connected(self):
        return self._wlan.isconnected()

    async def connect(self, ssid, password, timeout_ms):
        if not ssid:
            return False
        self._wlan.connect(ssid, password)
        start = time.ticks_ms()
        while not self._wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
                return False
            await asyncio.sleep_ms(200)
        return True


class Watchdog:
    def __init__(self, timeout_ms):
        self._wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        self._wdt.feed()


class Ports:
    def __init__(self, board, meter, device):
        self.network = Network()
        self.bus = MeterBus(board, meter)
        self.udp = Udp(device["gateway_host"], device["gateway_port"])
        self.clock = Clock()
        self.random_bytes = random_bytes
        self.hardware_id = hardware_id
        self.watchdog = Watchdog


def open_ports(board, meter, device):
    return Ports(board, meter, device)


def open_meter_bus(board, meter):
    # the console's commissioning polls: the bus without Wi-Fi or a socket
    return MeterBus(board, meter)


def open_clock():
    return Clock()
