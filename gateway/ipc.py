"""Child processes of the gateway and the framed pipes to them.

The gateway's ingest processes (:mod:`gateway.app`) are children started as
``python -m gateway.worker KIND FD ...``, connected by a socketpair; messages are
length-prefixed pickles between our own processes only. Processes, not threads: a
thread contending for the GIL made each hand-over wait up to the 5 ms switch interval
and left cores idle. Children die with the gateway (``PR_SET_PDEATHSIG``, plus a
parent watchdog).

Both sides read and write through asyncio (:class:`Channel` in the gateway,
:class:`FrameProtocol` in a child), so a busy peer never blocks either; blocking
:func:`read_frame` / :func:`write_frame` / :class:`FrameReader` serve simple children.
"""

import asyncio
import os
import pickle
import select
import socket
import struct
import subprocess
import sys

_HEADER = struct.Struct(">I")
MAX_FRAME = 256 << 20


def encode(obj):
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def read_frame(sock):
    """Blocking: the next object from ``sock``, or None at end of stream."""
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    body = _recv_exactly(sock, size)
    if body is None:
        return None
    return pickle.loads(body)


def _recv_exactly(sock, n):
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_frame(sock, obj):
    sock.sendall(encode(obj))


TIMEOUT = object()


class FrameReader:
    """Child side: frames from a blocking socket, with an optional wait limit."""

    def __init__(self, sock):
        self._sock = sock
        self._buffer = bytearray()
        self._eof = False

    def next(self, timeout=None):
        """The next object; :data:`TIMEOUT` if none arrived in ``timeout`` s; None at EOF."""
        while True:
            buffer = self._buffer
            if len(buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer)
                end = _HEADER.size + size
                if len(buffer) >= end:
                    obj = pickle.loads(bytes(buffer[_HEADER.size : end]))
                    del buffer[:end]
                    return obj
            if self._eof:
                return None
            if timeout is not None:
                ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
                if not ready:
                    return TIMEOUT
                timeout = 0.0  # data is there: no more waiting after this read
            data = self._sock.recv(1 << 20)
            if not data:
                self._eof = True
            buffer += data


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
