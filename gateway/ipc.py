"""Child processes of the gateway and the framed pipes to them.

The gateway's ingest processes (:mod:`gateway.app`) are children started as
``python -m gateway.worker KIND FD ...``, connected by a socketpair; messages are
length-prefixed pickles between our own processes only. Processes, not threads: a
thread contending for the GIL made each hand-over wait up to the 5 ms switch interval
and left cores idle. Children die with the gateway (``PR_SET_PDEATHSIG``, plus a
parent watchdog).

Both sides read and write through asyncio (:class:`Channel` in the gateway,
:class:`FrameProtocol` in a child), so a busy peer never blocks either.
"""

import asyncio
import os
import pickle
import socket
import struct
import subprocess
import sys

_HEADER = struct.Struct(">I")


def encode(obj):
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


class FrameProtocol(asyncio.Protocol):
    """Frames from a stream, each unpickled and passed to ``on_message``."""

    def __init__(self, on_message, on_lost):
        self._buffer = bytearray()
        self._on_message = on_message
        self._on_lost = on_lost

    def data_received(self, data):
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                break
            obj = pickle.loads(bytes(buffer[_HEADER.size : end]))
            del buffer[:end]
            self._on_message(obj)

    def connection_lost(self, exc):
        self._on_lost()


class Channel:
    """The event loop's end of a pipe to one child process."""

    def __init__(self, process, transport):
        self.process = process
        self._transport = transport

    @classmethod
    async def start(cls, kind, args, on_message, on_lost, pass_fds=()):
        """Start ``python -m gateway.worker KIND FD *args`` and connect to it; the file
        descriptors ``pass_fds`` are inherited by the child (same numbers)."""
        parent, child = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.worker", kind, str(child.fileno()),
                 str(os.getpid()), *map(str, args)],
                pass_fds=(child.fileno(), *pass_fds), stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        parent.setblocking(False)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(
            lambda: FrameProtocol(on_message, on_lost), parent
        )
        return cls(process, transport)

    def send(self, obj):
        self._transport.write(encode(obj))

    def close(self):
        self._transport.close()

    async def stop(self, timeout=10.0):
        """Close the pipe (the child finishes what it has and exits) and wait for it."""
        self._transport.close()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, self.process.wait), timeout)
        except TimeoutError:
            self.process.kill()
            await loop.run_in_executor(None, self.process.wait)

    def kill(self):
        self._transport.close()
        if self.process.poll() is None:
            self.process.kill()
