"""The gateway's CoAP request handler, independent of any CoAP library.

:meth:`Ingest.handle` takes a :class:`CoapRequest` (method, Uri-Path, Content-Format,
payload) and returns a :class:`CoapResponse` (code, CBOR payload, Max-Age, Size1). A
front end (:mod:`gateway.coap_lean` on ``wattcore.coap``, the default, or
:mod:`gateway.coap_server` on aiocoap) only translates messages. Resources
(``wattcore.exchange``):

- ``POST /r``: a batch of signed readings of one device. Checked by
  :mod:`gateway.verify` (stateless, in this process), stored by
  :mod:`gateway.writer` (stateful checks, group commit). The response comes after the
  COMMIT: ``ack`` = seq of the last reading of the stored prefix, ``rejected``/
  ``reason`` = the reading that stopped the batch.
- ``GET /t``: the gateway's time.
- ``POST /e``, ``POST /c``: enrolment requests and commissioning records, handled by
  :mod:`gateway.enrolment` and :mod:`gateway.commissioning` (added to :attr:`Ingest.routes`
  by the app; counted in their own metrics).

Every reject is answered with its code, counted per reason (metrics and the
``rejects`` table) and logged at most once per device (or peer) per minute.
"""

import logging
import time
from typing import NamedTuple

from wattcore import exchange

from gateway import simclock, verify
from gateway.errors import StorageError
from gateway.logs import RateLimiter

log = logging.getLogger("wattshare.ingest")

GET = 1
POST = 2


class CoapRequest(NamedTuple):
    method: int  # CoAP request code: 1 GET, 2 POST, 3 PUT, 4 DELETE, ...
    path: tuple  # Uri-Path segments
    content_format: int | None
    payload: bytes
    peer: str = ""  # source IP address (no port), for logs and log rate limiting
    blockwise: bool = False  # the request carried a Block1 option


class CoapResponse(NamedTuple):
    code: int
    payload: bytes
    max_age: int | None = None
    size1: int | None = None
    content_format: int = exchange.CONTENT_FORMAT_CBOR


class _Routed:
    # A request for one of Ingest.routes: Ingest.finish awaits its handler's answer.
    __slots__ = ("request", "answer", "started")

    def __init__(self, request, answer):
        self.request = request
        self.answer = answer
        self.started = None


class _Pending:
    # A POST /r whose verified readings are with the writer: Ingest.finish answers it.
    __slots__ = ("request", "now", "check", "credential", "future", "started")

    def __init__(self, request, now, check, credential, future):
        self.request = request
        self.now = now
        self.check = check
        self.credential = credential
        self.future = future
        self.started = None


def code_text(code):
    """CoAP code as "c.dd" (e.g. 0x84 -> "4.04")."""
    return f"{code >> 5}.{code & 0x1F:02d}"


class Ingest:
    """Handles CoAP requests for one gateway.

    ``policy``: a :class:`gateway.verify.Policy`; ``writer``: a started
    :class:`gateway.writer.ReadingWriter`; ``credentials``: device id ->
    :class:`gateway.verify.Credential` (replace with :meth:`set_credentials`).
    """

    def __init__(self, policy, writer, metrics, max_pending=20000, overload_max_age=5,
                 clock=simclock.now, log_limiter=None):
        self.policy = policy
        self.writer = writer
        self.metrics = metrics
        self.max_pending = max_pending
        self.overload_max_age = overload_max_age
        self.clock = clock
        self.credentials = {}
        # more resources: Uri-Path tuple -> async handler(request, now) -> CoapResponse
        # (gateway.app adds POST /e and /c: gateway.enrolment, gateway.commissioning)
        self.routes = {}
        self._limiter = log_limiter or RateLimiter(window=60.0)
        self._plain_rejects = {}  # (reason, max_batch) -> (now, response payload)

    def set_credentials(self, credentials):
        self.credentials = credentials

    async def handle(self, request):
        """The response to ``request`` (:meth:`begin`, then :meth:`finish` if needed)."""
        result = self.begin(request)
        if type(result) is CoapResponse:
            return result
        return await self.finish(result)

    def begin(self, request):
        """Everything about ``request`` that needs no waiting, at once: its
        :class:`CoapResponse` (``GET /t``, and every reject decided from the request and
        the registry, such as an unknown device: a flood of those costs no task), or a
        pending store for :meth:`finish` (the answer comes after the COMMIT)."""
        started = time.perf_counter()
        try:
            result = self._route(request)
        except Exception as e:  # noqa: BLE001 - supervisor: a fault of ours is 5.00 (logged with its traceback), the service goes on
            result = self._internal(request, e)
        if type(result) is CoapResponse:
            self._count(result, started)
        else:
            result.started = started
        return result

    async def finish(self, pending):
        """The response to a request :meth:`begin` handed over: after the COMMIT."""
        request = pending.request
        try:
            if type(pending) is _Routed:
                response = await pending.answer
            else:
                response = await self._stored(pending)
        except StorageError as e:
            response = self._reject(request, "storage", str(e), self._now(),
                                    max_age=self.overload_max_age)
        except Exception as e:  # noqa: BLE001 - supervisor: a fault of ours is 5.00 (logged with its traceback), the service goes on
            response = self._internal(request, e)
        self._count(response, pending.started)
        return response

    def _internal(self, request, error):
        if self._limiter.allow("internal error") is not None:
            log.error("request handling failed", exc_info=error)
        return self._reject(request, "internal", f"{type(error).__name__}: {error}",
                            self._now())

    def _count(self, response, started):
        self.metrics.responses.inc(label_value=code_text(response.code))
        self.metrics.latency.observe(time.perf_counter() - started)

    def _now(self):
        return int(self.clock())

    def _route(self, request):
        now = self._now()
        if request.path == (exchange.PATH_READINGS,):
            if request.method != POST:
                return self._reject(request, "method", "use POST on /r", now)
            return self._post_readings(request, now)
        if request.path == (exchange.PATH_TIME,):
            if request.method != GET:
                return self._reject(request, "method", "use GET on /t", now)
            return CoapResponse(exchange.CONTENT, exchange.encode_response(now))
        route = self.routes.get(request.path)
        if route is not None:
            return _Routed(request, route(request, now))  # finish() awaits it
        path = "/".join(request.path)
        return self._reject(request, "not-found", f"no resource /{path}", now)

    def _post_readings(self, request, now):
        received_ms = int(self.clock() * 1000)
        payload = request.payload
        count = verify.batch_length(payload)
        if request.blockwise or len(payload) > exchange.MAX_PAYLOAD or (
            count is not None and count > exchange.MAX_BATCH
        ):
            return self._reject(
                request, "too-large",
                f"{len(payload)} bytes, {count} readings (limits {exchange.MAX_PAYLOAD} "
                f"bytes, {exchange.MAX_BATCH} readings, no blockwise)",
                now, size1=exchange.MAX_PAYLOAD, max_batch=exchange.MAX_BATCH,
            )
        if request.content_format != exchange.CONTENT_FORMAT_CBOR:
            return self._reject(
                request, "content-format",
                f"Content-Format {request.content_format}, "
                f"expected {exchange.CONTENT_FORMAT_CBOR}",
                now,
            )
        if self.writer.pending_rows >= self.max_pending:
            return self._reject(request, "busy", "backlog full", now,
                                max_age=self.overload_max_age)
        hint = verify.peek_device_id(payload)
        credential = self.credentials.get(hint) if hint is not None else None
        # An unknown device: check_batch stops at its first reading, before any signature,
        # and the reject is answered here, without a task (the cheap answer to a flood).
        check = verify.check_batch(payload, credential, now, self.policy)
        if check.readings:
            future = self.writer.submit(check.device_id, check.readings, received_ms)
            return _Pending(request, now, check, credential, future)
        return self._answer(request, now, check, credential, None)

    async def _stored(self, pending):
        outcome = await pending.future
        self.metrics.accepted.inc(outcome.new)
        if outcome.duplicates:
            self.metrics.duplicates.inc(outcome.duplicates)
        return self._answer(pending.request, pending.now, pending.check, pending.credential,
                            outcome)

    def _answer(self, request, now, check, credential, outcome):
        readings = check.readings
        if outcome is not None and outcome.reason is not None:
            stored = outcome.stored
            return self._reject(
                request, outcome.reason, outcome.detail, now, credential=credential,
                ack=readings[stored - 1].seq if stored else None,
                rejected=readings[stored].seq,
            )
        ack = readings[-1].seq if readings else None
        if check.reason is not None:
            return self._reject(
                request, check.reason, check.detail, now, credential=credential, ack=ack,
                rejected=check.rejected_seq,
                device_id=check.device_id,
            )
        return CoapResponse(exchange.CHANGED, exchange.encode_response(now, ack=ack))

    def _reject(self, request, reason, detail, now, credential=None, ack=None, rejected=None,
                max_age=None, size1=None, max_batch=None, device_id=None):
        code = verify.REASONS[reason]
        self.metrics.rejected.inc(label_value=reason)
        # Attribute the reject to a registered device only: ids in unverified
        # requests are chosen by the sender and would grow the table without bound.
        registered = credential.device_id if credential is not None else None
        self.writer.count_reject(registered, reason)
        key = registered.hex() if registered else "peer " + request.peer
        suppressed = self._limiter.allow(key)
        if suppressed is not None:
            fields = {
                "reason": reason,
                "code": code_text(code),
                "device": (registered or device_id or b"").hex(),
                "peer": request.peer,
                "detail": detail,
            }
            if ack is not None:
                fields["ack"] = ack
            if rejected is not None:
                fields["rejected"] = rejected
            if suppressed:
                fields["suppressed"] = suppressed
            log.warning("request rejected", extra={"fields": fields})
        if ack is None and rejected is None:  # the same bytes for everyone this second
            cached = self._plain_rejects.get((reason, max_batch))
            if cached is None or cached[0] != now:
                cached = (now, exchange.encode_response(now, reason=reason,
                                                        max_batch=max_batch))
                self._plain_rejects[(reason, max_batch)] = cached
            payload = cached[1]
        else:
            payload = exchange.encode_response(now, ack=ack, rejected=rejected, reason=reason,
                                               max_batch=max_batch)
        return CoapResponse(code, payload, max_age=max_age, size1=size1)
