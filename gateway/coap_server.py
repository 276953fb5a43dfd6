"""CoAP over UDP front end on aiocoap: translates messages to and from the handler.

The alternative to :mod:`gateway.coap_lean` (the default), chosen with
``[coap] front_end = "aiocoap"``; docs/gateway.md lists where the two differ.

aiocoap does the CoAP work (parsing, deduplication of CON retransmissions by message
id, ACKs, dropping unparsable datagrams); every request, whatever its path, goes to one
root resource that calls :meth:`gateway.ingest.Ingest.handle`. Blockwise assembly is
off: a meter sends one datagram per batch, so a Block1 request is answered 4.13.
"""

import logging

import aiocoap
import aiocoap.interfaces
import aiocoap.resource
from aiocoap.numbers.codes import Code

from gateway.coap_lean import set_receive_buffer
from gateway.ingest import CoapRequest, CoapResponse
from gateway.logs import RateLimiter

log = logging.getLogger("wattshare.coap")

# aiocoap reads datagrams into a 4096-byte buffer and would silently truncate a larger
# one; read up to the UDP maximum so oversized payloads are seen whole and answered 4.13.
_RECV_MAX = 65535


class RootResource(aiocoap.resource.Resource):
    """Hands every request to ``handle`` (an async function CoapRequest -> CoapResponse)."""

    def __init__(self, handle):
        super().__init__()
        self._handle = handle

    async def needs_blockwise_assembly(self, request):
        return False

    async def render(self, request):
        opt = request.opt
        cf = opt.content_format
        remote = request.remote
        sockaddr = getattr(remote, "sockaddr", None)
        peer = str(sockaddr[0]) if sockaddr else str(getattr(remote, "hostinfo", ""))
        req = CoapRequest(
            method=int(request.code),
            path=tuple(opt.uri_path),
            content_format=None if cf is None else int(cf),
            payload=bytes(request.payload),
            peer=peer,
            blockwise=opt.block1 is not None,
        )
        try:
            response = await self._handle(req)
        except Exception:  # supervisor: a handler bug must not take the service down
            log.exception("handler failed", extra={"fields": {"peer": peer}})
            response = CoapResponse(int(Code.INTERNAL_SERVER_ERROR), b"")
        return to_message(response)


def to_message(response):
    message = aiocoap.Message(code=Code(response.code), payload=response.payload)
    if response.payload:
        message.opt.content_format = response.content_format
    if response.max_age is not None:
        message.opt.max_age = response.max_age
    if response.size1 is not None:
        message.opt.size1 = response.size1
    return message


class _CountUnparsable(logging.Filter):
    # aiocoap drops an unparsable datagram with this log message and tells no one else.
    def __init__(self, on_drop):
        super().__init__()
        self._on_drop = on_drop

    def filter(self, record):
        if record.msg == "Ignoring unparsable message from %s":
            self._on_drop()
        return True


class CoapServer:
    """A listening aiocoap server context bound to ``(bind, port)``.

    ``on_drop()`` is called for every datagram dropped because it is not valid CoAP.
    """

    def __init__(self, handle, bind, port, receive_buffer_bytes=4 << 20, on_drop=None):
        self._root = RootResource(handle)
        self._bind = (bind, port)
        self._rcvbuf = receive_buffer_bytes
        self._on_drop = on_drop or (lambda: None)
        self._drop_filter = _CountUnparsable(self._on_drop)
        self._limiter = RateLimiter(window=60.0, global_max=10)
        self.context = None
        self.port = None

    async def start(self):
        coap_log = logging.getLogger("coap-server")
        coap_log.filters.insert(0, self._drop_filter)  # count before any rate limiting
        self.context = await aiocoap.Context.create_server_context(
            self._root, bind=self._bind, transports=["udp6"], loggername="coap-server"
        )
        sock = self._tune_socket()
        self.port = sock.getsockname()[1] if sock is not None else self._bind[1]

    def _guard(self, messages):
        # aiocoap 0.4.17 lets some decode errors (e.g. invalid UTF-8 in Uri-Path) escape
        # into the event loop's exception handler, unlimited. Catch them here: a bad
        # datagram is dropped, counted and logged at most once a minute.
        received = messages.datagram_msg_received

        def guarded(data, ancdata, flags, address):
            try:
                received(data, ancdata, flags, address)
            except Exception as e:  # noqa: BLE001 - supervisor: what aiocoap lets escape
                self._on_drop()
                suppressed = self._limiter.allow(type(e).__name__)
                if suppressed is not None:
                    log.warning("dropped a datagram aiocoap could not handle", extra={
                        "fields": {"peer": str(address[0]), "error": repr(e)[:200],
                                   "suppressed": suppressed}})

        messages.datagram_msg_received = guarded

    def _tune_socket(self):
        for interface in self.context.request_interfaces:
            messages = getattr(getattr(interface, "token_interface", None), "message_interface",
                               None)
            transport = getattr(messages, "transport", None)
            if transport is None:
                continue
            sock = transport.get_extra_info("socket")
            transport.max_size = _RECV_MAX
            self._guard(messages)
            set_receive_buffer(sock, self._rcvbuf)
            return sock
        log.warning("could not reach aiocoap's UDP socket to tune it")
        return None

    async def close(self):
        if self.context is not None:
            await self.context.shutdown()
            self.context = None
        coap_log = logging.getLogger("coap-server")
        if self._drop_filter in coap_log.filters:
            coap_log.removeFilter(self._drop_filter)
