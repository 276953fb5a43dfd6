"""Byte-stream transports for a MeterSlave: TCP (raw RTU frames, no MBAP header), a
pseudo-terminal pair, or a real serial port. Each feeds received bytes to a
RequestParser and writes back the slave's replies; they hold no protocol logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty

from tools.board_config import SerialSettings
from tools.meter_sim.rtu_slave import MeterSlave, RequestParser

log = logging.getLogger("tools.meter_sim")

_READ_SIZE = 4096


def _replies(slave: MeterSlave, parser: RequestParser, data: bytes) -> list[bytes]:
    replies = []
    for frame in parser.feed(data):
        reply = slave.handle(frame)
        if reply is not None:
            replies.append(reply)
    return replies


async def serve_tcp(slave: MeterSlave, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Serve RTU frames over TCP (each connection gets its own frame reassembly). Port 0
    picks a free port: read it from ``server.sockets[0].getsockname()``."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        parser = RequestParser()
        try:
            while data := await reader.read(_READ_SIZE):
                for reply in _replies(slave, parser, data):
                    writer.write(reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(connection, host, port)


class PtyEndpoint:
    """A pseudo-terminal pair: the simulator holds the master, a client opens ``path``
    (the slave side, e.g. /dev/pts/5) like a serial port."""

    def __init__(self, slave: MeterSlave):
        self._slave = slave
        self._parser = RequestParser()
        self._master, self._tty = os.openpty()
        tty.setraw(self._tty)  # no echo, no line editing, 8-bit clean
        self.path = os.ttyname(self._tty)
        os.set_blocking(self._master, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._master, self._readable)

    def _readable(self):
        try:
            data = os.read(self._master, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: no process has the slave side open
            log.debug("pty read: %s", exc)
            return
        for reply in _replies(self._slave, self._parser, data):
            try:
                os.write(self._master, reply)
            except BlockingIOError:  # nobody reads the other side: drop, like a bus
                log.info("pty: reply dropped, the other side does not read")

    def close(self):
        if self._master < 0:
            return
        self._loop.remove_reader(self._master)
        os.close(self._master)
        os.close(self._tty)
        self._master = self._tty = -1


async def serve_pty(slave: MeterSlave) -> PtyEndpoint:
    """Open a pty pair served by ``slave``; the client side is ``endpoint.path``."""
    return PtyEndpoint(slave)


class SerialEndpoint:
    """A real serial port (e.g. a USB-RS485 adapter) with the meter's line settings."""

    def __init__(self, slave: MeterSlave, port: str, settings: SerialSettings):
        import serial  # pyserial, only needed for real ports

        self._slave = slave
        self._parser = RequestParser()
        self.path = port
        self._serial = serial.Serial(port, baudrate=settings.baud, bytesize=8,
                                     parity=settings.parity, stopbits=settings.stop_bits,
                                     timeout=0, exclusive=True)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._serial.fileno(), self._readable)

    def _readable(self):
        data = self._serial.read(_READ_SIZE)
        for reply in _replies(self._slave, self._parser, data):
            self._serial.write(reply)

    def close(self):
        if self._serial.is_open:
            self._loop.remove_reader(self._serial.fileno())
            self._serial.close()


async def serve_serial(slave: MeterSlave, port: str, settings: SerialSettings) -> SerialEndpoint:
    """Serve ``slave`` on serial ``port`` (raises OSError if it cannot be opened)."""
    return SerialEndpoint(slave, port, settings)
