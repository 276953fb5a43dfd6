"""CoAP over UDP front end on ``wattcore.coap`` and a UDP socket read by the event loop.

The server side of the RFC 7252 message layer, as much of it as a meter gateway needs,
at a fraction of aiocoap's CPU cost per message (the reason it is the default; see
docs/gateway.md, "CoAP front ends"). Same interface as
:class:`gateway.coap_server.CoapServer`; every request goes to ``handle`` (an async
function :class:`~gateway.ingest.CoapRequest` -> :class:`~gateway.ingest.CoapResponse`).

What it does with a datagram:

- not CoAP (``wattcore.coap.decode`` refuses it, or Uri-Host/Uri-Path/Uri-Query is not
  UTF-8): dropped, ``on_drop()``, logged at most once a minute; if its header is readable
  and says CON, it is also rejected with an RST (RFC 7252 4.2: a message format error);
- request (code 0.01..0.31), CON: answered with a piggybacked ACK (same message id and
  token) once the handler returns; NON: answered with a NON (new message id, same
  token). There are no separate responses: a slow handler (waiting for a COMMIT) just
  answers later, and the client's retransmissions meanwhile are deduplicated;
- an unrecognised critical option (RFC 7252 5.4.1; also a handled critical option with
  a value length out of range, or repeated when it may not be): CON -> 4.02 Bad Option,
  NON -> RST. Proxy-Uri / Proxy-Scheme -> 5.05 Proxying Not Supported (5.7.2);
- Empty CON (ping), or a CON that is no request (a response, a reserved code class):
  RST. Empty ACK/RST: ignored (we never send CON). Anything else (Empty NON, a request
  typed ACK/RST, a NON/ACK/RST response): dropped and counted;
- deduplication (4.5) by (peer address, message id): a CON still in the handler is
  ignored, an answered one gets the same response bytes again without calling the
  handler; a duplicate NON is ignored. Entries live EXCHANGE_LIFETIME (247 s) for CON
  and NON_LIFETIME (145 s) for NON, and at most ``dedup_max_entries`` are kept (the
  oldest go first). Past either bound a retransmission reaches the handler again; that
  is harmless because the writer recognises a reading it already stored (same device,
  seq and bytes) and acknowledges it without storing it twice;
- a handler exception is answered 5.00 and logged (rate-limited): the service stays up.
"""

import asyncio
import collections
import logging
import os
import socket
import sys
import time

from wattcore import coap
from wattcore.errors import DecodeError

from gateway.ingest import CoapRequest, CoapResponse
from gateway.logs import RateLimiter

log = logging.getLogger("wattshare.coap")

# The UDP maximum: a datagram is read whole, so an oversized payload reaches the handler
# and is answered 4.13 instead of being truncated.
MAX_DATAGRAM = 65535
EXCHANGE_LIFETIME_S = coap.EXCHANGE_LIFETIME_MS / 1000.0
NON_LIFETIME_S = coap.NON_LIFETIME_MS / 1000.0
DEDUP_MAX_ENTRIES = 100_000
# The deduplication cache's memory, at most: 8 MiB per ingest process, ~24,000
# exchanges, what ~1,000 meters sending every 10 s start in an EXCHANGE_LIFETIME.
DEDUP_MAX_BYTES = 8 << 20
# What one cache entry costs at most (key, dict slot, queue slot, a response of 60
# bytes, an IPv6 peer): 334 bytes measured with tracemalloc
# (gateway/tests/test_gateway_flood.py); it was ~570 when each entry was a list in a
# dict and a tuple in an arrival queue.
DEDUP_ENTRY_BYTES = 350
# Sources whose datagrams are counted per second, at most; beyond them new sources go
# uncounted until the next second (a flood from many spoofed addresses is what the
# cheap checks after this one are for).
SOURCES_MAX = 4096
# Under pressure, a datagram that is dropped as not CoAP or answered with a client error
# (4.xx: unknown device, malformed, ...) counts this many against its source's rate: a
# source sending garbage or unknown ids is limited after a few a second, an honest meter
# keeps its rate.
REJECT_WEIGHT = 20
READ_BATCH = 64  # datagrams read per wakeup of the event loop, at most
# While paused (pause_reading, the writer's commit window) the socket is not read; past
# this long reading resumes by itself whatever the caller does.
PAUSE_MAX_S = 2.0
# What one resume reads before going back to the event loop, at most (READ_BATCH each).
RESUME_READS = 64
_RECV_SIZE = MAX_DATAGRAM + 1

_CON, _NON, _ACK, _RST = coap.CON, coap.NON, coap.ACK, coap.RST
_URI_PATH = coap.OPT_URI_PATH
_CONTENT_FORMAT = coap.OPT_CONTENT_FORMAT
_BLOCK1 = coap.OPT_BLOCK1
# Critical options understood (read or safely ignored), with the value lengths RFC 7252
# 5.10 and RFC 7959 2.1 allow. Uri-Path and Uri-Query repeat; the others may not.
_CRITICAL_LENGTHS = {
    coap.OPT_URI_HOST: (1, 255),
    coap.OPT_URI_PORT: (0, 2),
    coap.OPT_URI_PATH: (0, 255),
    coap.OPT_URI_QUERY: (0, 255),
    coap.OPT_ACCEPT: (0, 2),
    coap.OPT_BLOCK2: (0, 3),
    coap.OPT_BLOCK1: (0, 3),
}
_REPEATABLE = (coap.OPT_URI_PATH, coap.OPT_URI_QUERY)
_TEXT = (coap.OPT_URI_HOST, coap.OPT_URI_QUERY)  # UTF-8 strings, like Uri-Path

# Outcomes of reading a request's options, besides a CoapRequest.
_UNPARSABLE = "unparsable"
_MISSING = object()


def _create_task(coro):
    return asyncio.get_running_loop().create_task(coro)


_current_task = asyncio.current_task


class LeanCoapServer(asyncio.DatagramProtocol):
    """A CoAP server on one UDP socket bound to ``(bind, port)``.

    ``on_drop()`` is called for every datagram dropped unanswered because it is not
    valid CoAP or nothing a server can answer. ``port`` is the bound port after
    :meth:`start`.

    :meth:`start` reads the socket itself (``loop.add_reader``), up to ``READ_BATCH``
    datagrams per wakeup, and answers with ``socket.sendto``: asyncio's datagram
    transport wakes the loop once per datagram, which cost more CPU than all the CoAP
    work here (docs/gateway.md). The class is also a plain DatagramProtocol
    (:meth:`connection_made` + :meth:`datagram_received`), which is how the tests drive it.
    """

    def __init__(self, handle, bind, port, receive_buffer_bytes=4 << 20, on_drop=None,
                 dedup_max_entries=DEDUP_MAX_ENTRIES, drain_s=2.0, clock=time.monotonic,
                 sock=None, begin=None, finish=None, max_per_source=0, on_limit=None,
                 dedup_max_bytes=DEDUP_MAX_BYTES):
        self._handle = handle
        # A two-step handler (gateway.ingest.Ingest.begin/finish): begin(request) answers
        # at once what needs no waiting, without a task per request (cheap rejects under
        # a flood); else returns what finish() completes in a task.
        self._begin = begin
        self._finish = finish
        self._max_per_source = max_per_source
        self._on_limit = on_limit or (lambda: None)
        self._sources = {}  # source address -> datagrams in the current second
        self._sources_second = None
        # True while the socket holds more than one wakeup reads (READ_BATCH): a flood,
        # or a burst; then rejects weigh more against their source's rate.
        self.under_pressure = False
        self._given_sock = sock  # a bound socket to serve instead of binding one
        self._bind = (bind, port)
        self._rcvbuf = receive_buffer_bytes
        self._on_drop = on_drop or (lambda: None)
        self._max_entries = min(dedup_max_entries, dedup_max_bytes // DEDUP_ENTRY_BYTES)
        self._drain_s = drain_s
        self._clock = clock
        self._limiter = RateLimiter(window=60.0, global_max=10)
        self._sock = None  # after start()
        self._paused = None  # while paused: the timer that resumes reading regardless
        self._transport = None  # when driven as a DatagramProtocol
        self._sendto = None  # (bytes, address) -> None
        self._tasks = set()
        # (address, port << 16 | message id) -> response bytes, or None while in the
        # handler. Expiry: per message type a queue of [expires, keys] buckets, one per
        # second of arrival (an entry lives its lifetime and at most one second more).
        self._recent = {}
        self._expiry = {_CON: collections.deque(), _NON: collections.deque()}
        self._next_mid = int.from_bytes(os.urandom(2), "big")
        self.port = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self):
        sock = self._given_sock or bind_udp(*self._bind, self._rcvbuf)
        try:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._read_ready)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._sendto = self._send_datagram
        self.port = sock.getsockname()[1]

    def pause_reading(self, paused):
        """Stop reading the socket (``paused``), or read what came meanwhile and go on.

        The writer pauses reading while a small group of readings waits for its commit
        window (:class:`gateway.writer.ReadingWriter`): the datagrams wait in the
        socket's receive buffer instead of waking the event loop one by one, and are
        read in one go when the window ends, so they join its COMMIT. Not paused while
        under pressure (a burst or a flood: the buffer must not fill), and never for
        more than PAUSE_MAX_S. Only with the socket read by :meth:`start`."""
        if self._sock is None:
            return
        loop = asyncio.get_running_loop()
        if paused:
            if self._paused is None and not self.under_pressure:
                loop.remove_reader(self._sock.fileno())
                self._paused = loop.call_later(PAUSE_MAX_S, self.pause_reading, False)
            return
        if self._paused is None:
            return
        self._paused.cancel()
        self._paused = None
        for _ in range(RESUME_READS):
            self._read_ready()
            if not self.under_pressure or self._sock is None:
                break
        if self._sock is not None:
            loop.add_reader(self._sock.fileno(), self._read_ready)

    @property
    def paused(self):
        return self._paused is not None

    async def close(self):
        """Stop reading, give requests in the handler ``drain_s`` to be answered, then
        cancel the rest and close the socket."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        elif self._transport is not None:
            pause = getattr(self._transport, "pause_reading", None)  # uvloop's UDP has none
            if pause is not None:
                pause()
        else:
            return
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._drain_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._sendto = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._recent.clear()
        for queue in self._expiry.values():
            queue.clear()
        self._sources.clear()

    def connection_made(self, transport):
        self._transport = transport
        self._sendto = transport.sendto

    def error_received(self, exc):
        # ICMP errors for earlier sends (e.g. port unreachable): nothing to do.
        log.debug("socket error", extra={"fields": {"error": repr(exc)}})

    # -- socket ----------------------------------------------------------------------

    def _read_ready(self):
        recvfrom = self._sock.recvfrom
        received = self.datagram_received
        for _ in range(READ_BATCH):
            try:
                data, addr = recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                self.under_pressure = False  # the socket was drained
                return
            except OSError as e:
                self._log_once("receive", "receive failed", e)
                return
            try:
                received(data, addr)
            except Exception as e:  # noqa: BLE001 - supervisor: one datagram must not stop the others
                self._on_drop()
                self._log_once("datagram", "datagram handling failed", e, trace=True)
        self.under_pressure = True  # more were waiting than one wakeup reads

    def _send_datagram(self, data, addr):
        try:
            self._sock.sendto(data, addr)
        except OSError as e:  # send buffer full, unreachable, ...: UDP, the client retries
            self._log_once("send", "could not send a response", e)

    def _log_once(self, key, message, error, trace=False):
        # trace: a fault of ours, logged with its traceback
        suppressed = self._limiter.allow(key)
        if suppressed is not None:
            log.warning(message, exc_info=error if trace else None,
                        extra={"fields": {"error": repr(error)[:200], "suppressed": suppressed}})

    # -- datagrams -------------------------------------------------------------------

    def datagram_received(self, data, addr):
        now = self._clock()
        if self._max_per_source:
            # The cheapest check first: a source over its rate costs a dict lookup.
            second = int(now)
            sources = self._sources
            if second != self._sources_second:
                self._sources_second = second
                sources.clear()
            source = addr[0]
            count = sources.get(source)
            if count is None:
                if len(sources) < SOURCES_MAX:
                    sources[source] = 1
            elif count >= self._max_per_source:
                self._on_limit()
                return
            else:
                sources[source] = count + 1
        try:
            msg = coap.decode(data, MAX_DATAGRAM)
        except DecodeError as e:
            self._drop(addr, e)
            if len(data) >= 4 and data[0] >> 4 == 4:  # a CON of version 1: reject it (4.2)
                self._sendto(coap.encode(_RST, 0, (data[2] << 8) | data[3]), addr)
            return
        code = msg.code
        mtype = msg.mtype
        if code == 0 or code >= 32 or mtype >= _ACK:
            self._not_a_request(msg, addr)
            return
        key = (addr[0], addr[1] << 16 | msg.mid)
        recent = self._recent
        self._expire(now)
        cached = recent.get(key, _MISSING)
        if cached is not _MISSING:  # a duplicate
            if mtype == _CON and cached is not None:
                self._sendto(cached, addr)
            return
        request = self._request(msg, addr)
        if request is _UNPARSABLE:
            if mtype == _CON:
                self._sendto(coap.encode(_RST, 0, msg.mid), addr)
            return
        self._remember(key, mtype, now)
        if type(request) is int:  # refused here: 4.02 or 5.05
            if request == coap.BAD_OPTION and mtype == _NON:
                self._sendto(coap.encode(_RST, 0, msg.mid), addr)
                return
            self._send(CoapResponse(request, b""), msg, addr, key)
            return
        if self._begin is not None:
            try:
                result = self._begin(request)
            except Exception:  # noqa: BLE001 - supervisor: a handler bug must not take the service down
                self._handler_failed(request)
                result = CoapResponse(coap.INTERNAL_SERVER_ERROR, b"")
            if type(result) is CoapResponse:  # answered without waiting
                self._send(result, msg, addr, key)
                return
            waiting = self._finish(result)
        else:
            waiting = self._handle(request)
        # The task removes itself from _tasks when done (cheaper than a done callback).
        self._tasks.add(_create_task(self._respond(waiting, request, msg, addr, key)))

    def _expire(self, now):
        recent = self._recent
        for queue in self._expiry.values():
            while queue and queue[0][0] <= now:
                for key in queue.popleft()[1]:
                    del recent[key]

    def _remember(self, key, mtype, now):
        self._recent[key] = None
        queue = self._expiry[mtype]
        expires = int(now) + 1 + (EXCHANGE_LIFETIME_S if mtype == _CON else NON_LIFETIME_S)
        if queue and queue[-1][0] == expires:
            queue[-1][1].append(key)
        else:
            queue.append([expires, collections.deque((key,))])
        if len(self._recent) > self._max_entries:
            self._forget_oldest()

    @property
    def dedup_entries(self):
        """Exchanges remembered for deduplication."""
        return len(self._recent)

    def _not_a_request(self, msg, addr):
        if msg.mtype == _CON:
            # Ping, or a response / reserved code class we cannot process: reject (4.2).
            self._sendto(coap.encode(_RST, 0, msg.mid), addr)
        elif msg.code == 0 and msg.mtype != _NON:
            pass  # an Empty ACK or RST: nothing of ours is waiting for one
        else:
            self._drop(addr, None)

    def _request(self, msg, addr):
        """CoapRequest, or an int response code to refuse it with, or _UNPARSABLE."""
        path = []
        content_format = None
        blockwise = False
        seen = None
        try:
            for number, value in msg.options:
                if number == _URI_PATH:
                    if len(value) > 255:
                        return coap.BAD_OPTION
                    path.append(value.decode("utf-8"))
                elif number == _CONTENT_FORMAT:
                    # Elective: a second one, or a value over 2 bytes, is ignored (5.4.5, 5.4.3).
                    if content_format is None and len(value) <= 2:
                        content_format = int.from_bytes(value, "big")
                elif number & 1:  # critical
                    if number == coap.OPT_PROXY_URI or number == coap.OPT_PROXY_SCHEME:
                        return coap.PROXYING_NOT_SUPPORTED
                    lengths = _CRITICAL_LENGTHS.get(number)
                    if lengths is None or not lengths[0] <= len(value) <= lengths[1]:
                        return coap.BAD_OPTION
                    if number not in _REPEATABLE:
                        seen = seen or set()
                        if number in seen:
                            return coap.BAD_OPTION
                        seen.add(number)
                    if number in _TEXT:
                        value.decode("utf-8")
                    if number == _BLOCK1:
                        blockwise = True
                # Elective options (Observe, ETag, Size1, No-Response, ...) are ignored.
        except UnicodeDecodeError as e:
            self._drop(addr, e)
            return _UNPARSABLE
        return CoapRequest(msg.code, tuple(path), content_format, msg.payload, addr[0],
                           blockwise)

    async def _respond(self, waiting, request, msg, addr, key):
        try:
            response = await waiting
        except Exception:  # noqa: BLE001 - supervisor: a handler bug must not take the service down
            self._handler_failed(request)
            response = CoapResponse(coap.INTERNAL_SERVER_ERROR, b"")
        finally:
            self._tasks.discard(_current_task())
        self._send(response, msg, addr, key)

    def _handler_failed(self, request):
        suppressed = self._limiter.allow("handler")
        if suppressed is not None:
            log.exception("handler failed", extra={"fields": {
                "peer": request.peer, "suppressed": suppressed}})

    def _strike(self, source):
        # Under pressure, a dropped or refused datagram weighs REJECT_WEIGHT against its
        # source's rate (a client trying many bad requests on a quiet gateway is answered).
        if not self.under_pressure:
            return
        count = self._sources.get(source)
        if count is not None:
            self._sources[source] = count + REJECT_WEIGHT - 1

    def _send(self, response, msg, addr, key):
        if msg.mtype == _CON:
            mtype, mid = _ACK, msg.mid
        else:
            mtype, mid = _NON, self._next_mid
            self._next_mid = (mid + 1) & 0xFFFF
        try:
            data = encode_response(response, mtype, mid, msg.token)
            if response.code >> 5 == 4:  # a client error
                self._strike(addr[0])
        except Exception as e:  # noqa: BLE001 - supervisor: a handler bug (no such code, not a CoapResponse, ...) is answered 5.00
            suppressed = self._limiter.allow("encode")
            if suppressed is not None:
                log.error("response not encodable", exc_info=True, extra={"fields": {
                    "error": repr(e)[:200], "suppressed": suppressed}})
            data = coap.encode(mtype, coap.INTERNAL_SERVER_ERROR, mid, msg.token)
        if msg.mtype == _CON and key in self._recent:  # (not if evicted meanwhile)
            self._recent[key] = data
        if self._sendto is not None:  # None once closed
            self._sendto(data, addr)

    def _forget_oldest(self):
        # The entry that arrived first: the front bucket of the queue whose front bucket
        # came first (a CON bucket expires EXCHANGE_LIFETIME after it came, a NON one
        # NON_LIFETIME after).
        con, non = self._expiry[_CON], self._expiry[_NON]
        if not non or (con and con[0][0] - EXCHANGE_LIFETIME_S <= non[0][0] - NON_LIFETIME_S):
            queue = con
        else:
            queue = non
        keys = queue[0][1]
        del self._recent[keys.popleft()]
        if not keys:
            queue.popleft()

    def _drop(self, addr, error):
        self._on_drop()
        self._strike(addr[0])
        suppressed = self._limiter.allow("drop")
        if suppressed is not None:
            log.warning("dropped a datagram that is not a CoAP request", extra={"fields": {
                "peer": str(addr[0]), "error": repr(error)[:200] if error else "not a request",
                "suppressed": suppressed}})


_CBOR_FORMAT = coap.uint_option(60)
# Linux doubles the SO_RCVBUF asked for (the kernel's bookkeeping) and reports that.
_RCVBUF_REPORTED = 2 if sys.platform.startswith("linux") else 1


def bind_udp(host, port, receive_buffer_bytes=None, reuse_port=False):
    """A bound, non-blocking UDP socket; "::" also takes IPv4, as with aiocoap."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if receive_buffer_bytes is not None:
            set_receive_buffer(sock, receive_buffer_bytes)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_receive_buffer(sock, wanted):
    """Ask for a ``wanted``-byte receive buffer on ``sock``; warn when the kernel caps it
    (``net.core.rmem_max``): a burst of meters would then lose datagrams. Returns the
    usable size granted."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // _RCVBUF_REPORTED
    if granted < wanted:
        log.warning(
            "receive buffer smaller than configured",
            extra={"fields": {"wanted": wanted, "granted": granted,
                              "hint": "raise net.core.rmem_max (docs/gateway.md)"}},
        )
    return granted


def encode_response(response, mtype, mid, token):
    """The CoAP message for a :class:`CoapResponse`: Content-Format when there is a
    payload, Max-Age and Size1 when set."""
    options = []
    if response.payload:
        cf = response.content_format
        options.append((coap.OPT_CONTENT_FORMAT, _CBOR_FORMAT if cf == 60 else
                        coap.uint_option(cf)))
    if response.max_age is not None:
        options.append((coap.OPT_MAX_AGE, coap.uint_option(response.max_age)))
    if response.size1 is not None:
        options.append((coap.OPT_SIZE1, coap.uint_option(response.size1)))
    return coap.encode(mtype, response.code, mid, token, options, response.payload,
                       max_size=MAX_DATAGRAM)
