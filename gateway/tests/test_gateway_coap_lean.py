"""The lean CoAP front end (gateway.coap_lean): the RFC 7252 message layer on its own,
fed datagrams directly (a fake transport records what it sends), then over a socket in
a running gateway. Messages are built and read with aiocoap (the independent
implementation) where the point is interoperability, with wattcore.coap otherwise."""

import asyncio
import logging
import socket
import sqlite3

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from gw_testbed import (
    MeterKey,
    RawUdp,
    coap_datagram,
    register,
    running_gateway,
    stored,
    write_config,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wattcore import coap, exchange
from wattcore.errors import DecodeError

from gateway.coap_lean import (
    EXCHANGE_LIFETIME_S,
    NON_LIFETIME_S,
    LeanCoapServer,
)
from gateway.ingest import CoapResponse

PEER = ("192.0.2.7", 40000)
TIME_MAP = exchange.encode_response(1_700_000_000)


class FakeTransport:
    def __init__(self):
        self.sent = []  # (bytes, address)
        self.closing = False

    def sendto(self, data, addr):
        self.sent.append((data, addr))

    def is_closing(self):
        return self.closing

    def pause_reading(self):
        pass

    def close(self):
        self.closing = True


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Bench:
    """A LeanCoapServer on a fake transport with a recording handler."""

    def __init__(self, respond=None, **kw):
        self.requests = []
        self.drops = 0
        self.transport = FakeTransport()
        self.clock = FakeClock()
        self.gate = None  # an asyncio.Event the handler waits for, when set
        self._respond = respond or (lambda req: CoapResponse(exchange.CONTENT, TIME_MAP))
        self.server = LeanCoapServer(self.handle, "127.0.0.1", 0, on_drop=self.count_drop,
                                     clock=self.clock, **kw)
        self.server.connection_made(self.transport)

    async def handle(self, request):
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        return self._respond(request)

    def count_drop(self):
        self.drops += 1

    async def feed(self, data, addr=PEER):
        """Deliver one datagram, let the handler run; returns the messages sent for it."""
        before = len(self.transport.sent)
        self.server.datagram_received(data, addr)
        for _ in range(5):
            await asyncio.sleep(0)
        return [raw for raw, _ in self.transport.sent[before:]]


def run(coro):
    return asyncio.run(coro)


def request(mtype=coap.CON, code=coap.GET, mid=0x1234, token=b"tk", options=None, payload=b""):
    opts = [(coap.OPT_URI_PATH, b"t")] if options is None else options
    return coap.encode(mtype, code, mid, token, opts, payload, max_size=65535)


def only(sent):
    assert len(sent) == 1, sent
    return coap.decode(sent[0], 65535)


# -- the message layer ----------------------------------------------------------------


def test_con_request_gets_a_piggybacked_ack_with_its_message_id_and_token():
    async def scenario():
        bench = Bench()
        reply = only(await bench.feed(request(mid=0xBEEF, token=b"\x01\x02\x03")))
        assert (reply.mtype, reply.code, reply.mid, reply.token) == (
            coap.ACK, exchange.CONTENT, 0xBEEF, b"\x01\x02\x03")
        assert reply.options == [(coap.OPT_CONTENT_FORMAT, b"\x3c")]
        assert exchange.decode_response(reply.payload) == {"time": 1_700_000_000}
        (req,) = bench.requests
        assert (req.method, req.path, req.content_format, req.payload, req.peer,
                req.blockwise) == (coap.GET, ("t",), None, b"", "192.0.2.7", False)

    run(scenario())


def test_request_fields_reach_the_handler():
    async def scenario():
        bench = Bench()
        options = [(coap.OPT_URI_HOST, b"gw.local"), (coap.OPT_URI_PATH, b"r"),
                   (coap.OPT_URI_PATH, "ä".encode()), (coap.OPT_CONTENT_FORMAT, b"\x3c"),
                   (coap.OPT_URI_QUERY, b"x=1"), (coap.OPT_BLOCK1, b"\x0e"),
                   (coap.OPT_SIZE1, b"\x10"), (coap.OPT_OBSERVE, b""), (65000, b"elective")]
        await bench.feed(request(code=coap.POST, options=options, payload=b"\x80"))
        (req,) = bench.requests
        assert (req.method, req.path, req.content_format, req.payload, req.blockwise) == (
            coap.POST, ("r", "ä"), 60, b"\x80", True)
        # Content-Format longer than 2 bytes is an out-of-range elective option: ignored.
        await bench.feed(request(code=coap.POST, mid=2, options=[
            (coap.OPT_URI_PATH, b"r"), (coap.OPT_CONTENT_FORMAT, b"\x00\x00\x3c")]))
        assert bench.requests[1].content_format is None

    run(scenario())


def test_response_options_max_age_size1_and_content_format_only_with_a_payload():
    responses = iter([
        CoapResponse(coap.SERVICE_UNAVAILABLE, b"\xa1\x02\x01", max_age=7),
        CoapResponse(coap.REQUEST_ENTITY_TOO_LARGE, b"\xa1\x02\x01", size1=5632),
        CoapResponse(coap.CHANGED, b""),
    ])

    async def scenario():
        bench = Bench(respond=lambda req: next(responses))
        sent = []
        for mid in (1, 2, 3):
            sent += await bench.feed(request(mid=mid))
        # Read with aiocoap, the independent implementation.
        first, second, third = (Message.decode(raw) for raw in sent)
        assert (first.code, first.opt.max_age, first.opt.content_format) == (
            Code.SERVICE_UNAVAILABLE, 7, 60)
        assert first.payload == b"\xa1\x02\x01"
        assert (second.code, second.opt.size1) == (Code.REQUEST_ENTITY_TOO_LARGE, 5632)
        assert (third.code, third.payload) == (Code.CHANGED, b"")
        assert coap.decode(sent[2]).options == []  # no Content-Format without a payload

    run(scenario())


def test_con_retransmission_is_answered_from_the_cache_without_calling_the_handler():
    async def scenario():
        bench = Bench()
        datagram = request(mid=77, token=b"rt")
        (first,) = await bench.feed(datagram)
        (again,) = await bench.feed(datagram)
        assert again == first and len(bench.requests) == 1
        # Same message id from another port is another endpoint: a new exchange.
        await bench.feed(datagram, addr=(PEER[0], PEER[1] + 1))
        assert len(bench.requests) == 2

    run(scenario())


def test_retransmission_while_the_first_is_in_the_handler_is_not_processed_twice():
    async def scenario():
        bench = Bench()
        bench.gate = asyncio.Event()
        datagram = request(code=coap.POST, mid=9, token=b"fl",
                           options=[(coap.OPT_URI_PATH, b"r")], payload=b"\x80")
        assert await bench.feed(datagram) == []  # waiting for its "COMMIT"
        assert await bench.feed(datagram) == []  # retransmission: ignored, not processed
        assert len(bench.requests) == 1
        bench.gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        (answer,) = [raw for raw, _ in bench.transport.sent]
        assert coap.decode(answer).mid == 9
        assert await bench.feed(datagram) == [answer]  # later ones: from the cache
        assert len(bench.requests) == 1

    run(scenario())


def test_non_request_gets_a_non_response_with_its_token_and_duplicates_are_ignored():
    async def scenario():
        bench = Bench()
        datagram = request(mtype=coap.NON, mid=500, token=b"nn")
        reply = only(await bench.feed(datagram))
        assert (reply.mtype, reply.code, reply.token) == (coap.NON, exchange.CONTENT, b"nn")
        second = only(await bench.feed(request(mtype=coap.NON, mid=501, token=b"n2")))
        assert second.mid != reply.mid  # our own message ids
        assert await bench.feed(datagram) == []  # duplicate NON: silently ignored
        assert len(bench.requests) == 2

    run(scenario())


def test_ping_is_reset_and_empty_acks_and_resets_are_ignored():
    async def scenario():
        bench = Bench()
        rst = only(await bench.feed(coap.encode(coap.CON, coap.EMPTY, 0x4242)))
        assert (rst.mtype, rst.code, rst.mid, rst.token, rst.options) == (
            coap.RST, coap.EMPTY, 0x4242, b"", [])
        assert await bench.feed(coap.encode(coap.ACK, coap.EMPTY, 1)) == []
        assert await bench.feed(coap.encode(coap.RST, coap.EMPTY, 2)) == []
        assert bench.drops == 0
        assert await bench.feed(coap.encode(coap.NON, coap.EMPTY, 3)) == []  # format error
        assert bench.drops == 1 and bench.requests == []

    run(scenario())


def test_a_con_that_is_no_request_is_reset_other_non_requests_are_dropped():
    async def scenario():
        bench = Bench()
        for code in (exchange.CONTENT, 0x21, 0xC1, 0xE1):  # a response, reserved classes
            rst = only(await bench.feed(request(code=code, mid=code)))
            assert (rst.mtype, rst.code, rst.mid) == (coap.RST, coap.EMPTY, code)
        assert bench.drops == 0
        for mtype, code in ((coap.NON, exchange.CONTENT), (coap.ACK, exchange.CONTENT),
                            (coap.ACK, coap.GET), (coap.RST, coap.GET)):
            assert await bench.feed(request(mtype=mtype, code=code)) == []
        assert bench.drops == 4 and bench.requests == []

    run(scenario())


@pytest.mark.parametrize("options, code", [
    ([(9, b"")], coap.BAD_OPTION),  # OSCORE: critical, not implemented
    ([(2049, b"x")], coap.BAD_OPTION),  # unknown critical
    ([(coap.OPT_URI_PATH, b"t"), (65001, b"x")], coap.BAD_OPTION),
    ([(1, b"etag")], coap.BAD_OPTION),  # If-Match
    ([(5, b"")], coap.BAD_OPTION),  # If-None-Match
    ([(coap.OPT_URI_HOST, b"a"), (coap.OPT_URI_HOST, b"b")], coap.BAD_OPTION),  # not repeatable
    ([(coap.OPT_URI_HOST, b"")], coap.BAD_OPTION),  # length 1..255
    ([(coap.OPT_URI_PORT, b"\x00\x16\x33")], coap.BAD_OPTION),  # length 0..2
    ([(coap.OPT_ACCEPT, b"\x00\x00\x3c")], coap.BAD_OPTION),
    ([(coap.OPT_BLOCK1, b"\x00\x00\x00\x0e")], coap.BAD_OPTION),  # length 0..3
    ([(coap.OPT_BLOCK2, b"\x00"), (coap.OPT_BLOCK2, b"\x00")], coap.BAD_OPTION),
    ([(coap.OPT_URI_PATH, bytes(256))], coap.BAD_OPTION),
    ([(coap.OPT_PROXY_URI, b"coap://elsewhere/t")], coap.PROXYING_NOT_SUPPORTED),  # Proxy-Uri
    ([(coap.OPT_PROXY_SCHEME, b"coap")], coap.PROXYING_NOT_SUPPORTED),  # Proxy-Scheme
])
def test_unsupported_critical_options_are_refused_without_calling_the_handler(options, code):
    async def scenario():
        bench = Bench()
        reply = only(await bench.feed(request(mid=3, token=b"bo", options=options)))
        assert (reply.mtype, reply.code, reply.mid, reply.token) == (coap.ACK, code, 3, b"bo")
        assert reply.payload == b""
        non = only(await bench.feed(request(mtype=coap.NON, mid=4, options=options)))
        if code == coap.BAD_OPTION:  # a NON with a bad critical option is rejected (5.4.1, 4.3)
            assert (non.mtype, non.mid) == (coap.RST, 4)
        else:
            assert (non.mtype, non.code) == (coap.NON, code)
        assert bench.requests == [] and bench.drops == 0

    run(scenario())


def test_elective_options_of_any_kind_are_ignored():
    async def scenario():
        bench = Bench()
        options = [(coap.OPT_ETAG, b"e"), (coap.OPT_OBSERVE, b""), (coap.OPT_URI_PATH, b"t"),
                   (coap.OPT_MAX_AGE, b"\x00\x00\x00\x00\x10"), (258, b"\x02"), (65000, b"")]
        reply = only(await bench.feed(request(options=options)))
        assert reply.code == exchange.CONTENT and len(bench.requests) == 1

    run(scenario())


@pytest.mark.parametrize("datagram", [
    b"", b"\x40", b"\x40\x01\x12",  # shorter than a header
    b"\x00\x01\x12\x34", b"\x80\x01\x12\x34",  # version 0 and 2
    b"\x49\x01\x12\x34" + bytes(9),  # token length 9
    b"\x48\x01\x12\x34\x01",  # token running past the end
    b"\x40\x01\x12\x34\xff",  # payload marker, no payload
    b"\x40\x01\x12\x34\xf1\x00",  # option delta 15
    b"\x40\x01\x12\x34\xbd",  # option header running past the end
    b"\x42\x00\x12\x34\x01\x02",  # Empty message with a token
    request(options=[(coap.OPT_URI_PATH, b"\xff")]),  # Uri-Path not UTF-8
    request(options=[(coap.OPT_URI_QUERY, b"\xc3")]),
])
def test_malformed_datagrams_are_counted_and_the_server_still_answers(datagram):
    async def scenario():
        bench = Bench()
        sent = await bench.feed(datagram)
        assert bench.drops == 1 and bench.requests == []
        if len(datagram) >= 4 and datagram[0] >> 4 == 4:  # readable CON header: reset
            rst = only(sent)
            assert (rst.mtype, rst.code, rst.mid) == (coap.RST, coap.EMPTY, 0x1234)
        else:
            assert sent == []
        assert only(await bench.feed(request(mid=99))).code == exchange.CONTENT

    run(scenario())


def test_malformed_datagrams_are_logged_at_most_once_a_minute(caplog):
    async def scenario():
        bench = Bench()
        for _ in range(20):
            await bench.feed(b"\x00garbage")
        assert bench.drops == 20

    with caplog.at_level(logging.WARNING, logger="wattshare.coap"):
        run(scenario())
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1


def test_a_failing_handler_is_answered_5_00_and_the_server_keeps_serving(caplog):
    def respond(req):
        if req.payload == b"boom":
            raise RuntimeError("handler bug")
        return CoapResponse(exchange.CONTENT, TIME_MAP)

    async def scenario():
        bench = Bench(respond=respond)
        for mid in (1, 2, 3):
            reply = only(await bench.feed(request(code=coap.POST, mid=mid, payload=b"boom")))
            assert (reply.mtype, reply.code, reply.mid) == (
                coap.ACK, coap.INTERNAL_SERVER_ERROR, mid)
        assert only(await bench.feed(request(mid=4))).code == exchange.CONTENT

    with caplog.at_level(logging.ERROR, logger="wattshare.coap"):
        run(scenario())
    failures = [r for r in caplog.records if r.getMessage() == "handler failed"]
    assert len(failures) == 1 and failures[0].exc_info is not None  # rate-limited


def test_an_unencodable_response_is_answered_5_00():
    async def scenario():
        bench = Bench(respond=lambda req: CoapResponse(999, b""))  # no such code
        reply = only(await bench.feed(request()))
        assert reply.code == coap.INTERNAL_SERVER_ERROR

    run(scenario())


def test_the_deduplication_cache_is_bounded_in_size():
    async def scenario():
        bench = Bench(dedup_max_entries=10)
        for mid in range(50):
            await bench.feed(request(mid=mid))
        assert bench.server.dedup_entries == 10
        assert sum(len(keys) for queue in bench.server._expiry.values()
                   for _, keys in queue) == 10
        assert len(bench.requests) == 50
        await bench.feed(request(mid=49))  # recent: still deduplicated
        assert len(bench.requests) == 50
        await bench.feed(request(mid=0))  # evicted: reaches the handler again
        assert len(bench.requests) == 51

    run(scenario())


def test_the_deduplication_cache_forgets_after_the_exchange_and_non_lifetimes():
    async def scenario():
        bench = Bench()
        con, non = request(mid=1), request(mtype=coap.NON, mid=2)
        await bench.feed(con)
        await bench.feed(non)
        bench.clock.now += NON_LIFETIME_S - 1
        await bench.feed(con)
        await bench.feed(non)
        assert len(bench.requests) == 2  # both still remembered
        bench.clock.now += 2  # past NON_LIFETIME
        await bench.feed(non)
        await bench.feed(con)
        assert len(bench.requests) == 3  # the NON is new again, the CON is not
        bench.clock.now += EXCHANGE_LIFETIME_S - NON_LIFETIME_S
        await bench.feed(con)
        assert len(bench.requests) == 4
        assert bench.server.dedup_entries == 2  # expired entries were removed

    run(scenario())


def test_close_waits_for_requests_in_the_handler_then_cancels_the_rest():
    async def scenario():
        bench = Bench(drain_s=0.05)
        bench.gate = asyncio.Event()
        await bench.feed(request(mid=1))
        await bench.server.close()  # the handler never returns: cancelled after drain_s
        assert bench.transport.closing and bench.transport.sent == []
        assert not bench.server._tasks

    run(scenario())


# -- random datagrams -----------------------------------------------------------------

_REQUEST_CODES = st.sampled_from([1, 2, 3, 4, 5, 31])
_CODES = st.one_of(st.sampled_from([0, 32, 0x21, 69, 0x84, 0xC1, 0xE1]), st.integers(0, 255))
_OPTIONS_HANDLED = st.tuples(st.sampled_from([3, 6, 11, 11, 12, 14, 15, 23, 27, 60, 258]),
                             st.sampled_from([b"r", b"t", b"\x3c", b"\x01\x02", b""]))
_OPTIONS_ANY = st.tuples(
    st.one_of(st.sampled_from([1, 3, 5, 7, 9, 11, 12, 17, 23, 27, 35, 39]),
              st.integers(0, 65535)),
    st.one_of(st.sampled_from([b"", b"r", b"\x3c", b"\xff", b"\xc3\x28"]),
              st.binary(max_size=270)))


@st.composite
def datagrams(draw):
    """Well-framed requests the server should take, and messages with arbitrary fields;
    one in five damaged (cut short, or with bytes appended)."""
    if draw(st.booleans()):
        mtype = draw(st.sampled_from([coap.CON, coap.NON]))
        code = draw(_REQUEST_CODES)
        options = draw(st.lists(_OPTIONS_HANDLED, max_size=4))
    else:
        mtype = draw(st.integers(0, 3))
        code = draw(st.one_of(_REQUEST_CODES, _CODES))
        options = [] if code == 0 else draw(st.lists(_OPTIONS_ANY, max_size=4))
    token = b"" if code == 0 else draw(st.binary(max_size=8))
    payload = b"" if code == 0 else draw(st.sampled_from([b"", b"\x80", b"boom"]))
    raw = coap.encode(mtype, code, draw(st.integers(0, 0xFFFF)), token, options, payload,
                      max_size=65535)
    if draw(st.integers(0, 4)) == 0:
        raw = raw[:len(raw) - draw(st.integers(0, len(raw)))] + draw(
            st.sampled_from([b"", b"\xff", b"\x01", b"\xd1\x01"]))
    return raw


def _respond_or_fail(req):
    if req.payload == b"boom":
        raise RuntimeError("handler bug")
    return CoapResponse(exchange.CHANGED, TIME_MAP, max_age=req.method)


def test_random_datagrams_are_answered_well_formed_or_dropped_and_counted():
    loop = asyncio.new_event_loop()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(st.binary(max_size=40), datagrams()))
    def check(data):
        bench = Bench(respond=_respond_or_fail)
        first = loop.run_until_complete(bench.feed(data))  # never raises
        drops = bench.drops
        assert drops in (0, 1) and len(first) <= 1
        try:
            incoming = coap.decode(data, 65535)
        except DecodeError:
            incoming = None
        for req in bench.requests:
            assert isinstance(req.path, tuple) and all(isinstance(p, str) for p in req.path)
            assert req.content_format is None or 0 <= req.content_format <= 0xFFFF
            assert isinstance(req.payload, bytes) and isinstance(req.blockwise, bool)
            assert 1 <= req.method <= 31 and req.peer == PEER[0]
        kind = None
        if not first:
            # Unanswered: counted as a drop, unless an Empty ACK or RST (nothing to do).
            assert drops == 1 or (incoming is not None and incoming.code == 0
                                  and incoming.mtype in (coap.ACK, coap.RST))
        else:
            reply = coap.decode(first[0], 65535)
            Message.decode(first[0])  # aiocoap reads it too
            kind = reply.mtype
            if kind == coap.RST:
                assert reply.code == 0 and reply.mid == (data[2] << 8 | data[3])
                assert reply.token == b"" and reply.options == []
            else:
                assert drops == 0 and incoming is not None
                assert reply.token == incoming.token and 64 <= reply.code < 192
                if kind == coap.ACK:
                    assert incoming.mtype == coap.CON and reply.mid == incoming.mid
                else:
                    assert kind == coap.NON == incoming.mtype
        # The same datagram again: processed at most once; a CON is answered with the
        # same bytes, a NON is not answered twice, the rest is stateless.
        second = loop.run_until_complete(bench.feed(data))
        assert len(bench.requests) <= 1
        if kind == coap.ACK:
            assert second == first
        elif kind is not None and incoming is not None and incoming.mtype == coap.NON:
            assert second == []
        else:
            assert second == first

    try:
        check()
    finally:
        loop.close()


# -- in a running gateway, over a socket ------------------------------------------------


def test_retransmissions_during_a_slow_commit_are_processed_once(tmp_path):
    meter = MeterKey()
    cfg = write_config(tmp_path, coap={"front_end": "lean"})
    register(cfg, meter)
    batch = exchange.encode_batch([meter.reading(s) for s in (1, 2)])

    async def scenario():
        async with running_gateway(cfg, http=False) as gw:
            udp = RawUdp(gw.coap_port)
            blocker = sqlite3.connect(cfg.db_path, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # the COMMIT has to wait
            try:
                datagram = coap_datagram(4711, token=b"sl", payload=batch)
                udp.send(datagram)
                for _ in range(1000):  # verified, waiting for the COMMIT
                    if gw.writer.pending_rows:
                        break
                    await asyncio.sleep(0.01)
                assert gw.writer.pending_rows == 2
                udp.send(datagram)  # the meter's retransmissions while it waits
                udp.send(datagram)
                assert await udp.silence(0.3)  # no empty ACK, no second processing
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            first = await udp.recv(20)
            assert await udp.silence(0.3)  # one answer for the three copies
            udp.send(datagram)  # a retransmission after the answer: from the cache
            again = await udp.recv()
            udp.close()
            assert again == first
            reply = Message.decode(first)
            assert (reply.mtype, reply.code, reply.mid, reply.token) == (
                Type.ACK, Code.CHANGED, 4711, b"sl")
            assert exchange.decode_response(reply.payload)["ack"] == 2
            assert gw.metrics.responses.total() == 1  # the handler ran once
            assert gw.metrics.duplicates.total() == 0
            assert sorted(stored(cfg)) == [(meter.device_id, 1), (meter.device_id, 2)]

    asyncio.run(scenario())


def test_a_datagram_of_65535_bytes_is_read_whole_and_answered_4_13(tmp_path):
    cfg = write_config(tmp_path, coap={"front_end": "lean"})

    async def scenario():
        async with running_gateway(cfg, http=False) as gw:
            head = coap_datagram(5, payload=b"\x81")
            datagram = head + bytes(65507 - len(head))  # the IPv4 UDP maximum
            udp = RawUdp(gw.coap_port)
            try:
                reply = await udp.exchange(datagram)
            finally:
                udp.close()
            assert reply.code == Code.REQUEST_ENTITY_TOO_LARGE
            assert reply.opt.size1 == exchange.MAX_PAYLOAD

    asyncio.run(scenario())


def _ipv6_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False


def test_binding_to_all_addresses_serves_ipv4_and_ipv6():
    async def scenario():
        peers = []

        async def handle(req):
            peers.append(req.peer)
            return CoapResponse(exchange.CONTENT, TIME_MAP)

        server = LeanCoapServer(handle, "::", 0)
        await server.start()
        loop = asyncio.get_running_loop()
        try:
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    sock.setblocking(False)
                    sock.sendto(request(mid=family), (host, server.port))
                    raw = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
                    assert coap.decode(raw).code == exchange.CONTENT
        finally:
            await server.close()
        assert peers == ["::ffff:127.0.0.1", "::1"]

    if not _ipv6_available():
        pytest.fail("this machine has no IPv6 loopback; the gateway binds to :: by default")
    asyncio.run(scenario())


def test_a_burst_of_queued_datagrams_is_read_in_batches_and_all_answered():
    async def scenario():
        calls = []
        drops = []

        async def handle(req):
            calls.append(req)
            await asyncio.sleep(0)
            return CoapResponse(exchange.CONTENT, TIME_MAP)

        server = LeanCoapServer(handle, "127.0.0.1", 0, on_drop=lambda: drops.append(1))
        await server.start()
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setblocking(False)
            # Sent without yielding to the loop: they queue up in the server's socket.
            for mid in range(200):  # over three READ_BATCHes
                sock.sendto(b"\x00junk" if mid == 100 else request(mid=mid),
                            ("127.0.0.1", server.port))
            mids = set()
            try:
                while len(mids) < 199:
                    raw = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
                    mids.add(coap.decode(raw).mid)
            finally:
                await server.close()
        assert mids == set(range(200)) - {100}
        assert len(calls) == 199 and drops == [1]

    asyncio.run(scenario())


def test_receive_buffer_capped_by_the_kernel_is_reported(caplog):
    from pathlib import Path

    from gateway.coap_lean import set_receive_buffer

    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, caplog.at_level("WARNING"):
        assert set_receive_buffer(sock, 64 * 1024) == 64 * 1024
        assert "receive buffer smaller" not in caplog.text
        # Above net.core.rmem_max the kernel grants rmem_max: say so (Linux reports
        # twice the usable size, which must not hide a cap of up to half).
        granted = set_receive_buffer(sock, 2 * rmem_max)
        assert granted == rmem_max
        assert "receive buffer smaller" in caplog.text


def test_paused_reading_leaves_datagrams_in_the_socket_until_resumed():
    # The writer's commit window pauses reading: what comes meanwhile waits in the
    # socket and is read, all of it, when reading resumes (just before the COMMIT).
    async def scenario():
        calls = []

        async def handle(req):
            calls.append(req)
            return CoapResponse(exchange.CONTENT, TIME_MAP)

        server = LeanCoapServer(handle, "127.0.0.1", 0)
        await server.start()
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                server.pause_reading(True)
                assert server.paused
                for mid in range(5):
                    sock.sendto(request(mid=mid), ("127.0.0.1", server.port))
                # the kernel has them: a wait on our own socket lets the loop run a while
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.3)
                assert calls == []
                server.pause_reading(False)
                assert not server.paused
                await asyncio.sleep(0)  # the handler tasks of what was read run
                assert len(calls) == 5
                mids = set()
                while len(mids) < 5:
                    raw = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
                    mids.add(coap.decode(raw).mid)
                # reading goes on as usual afterwards
                sock.sendto(request(mid=9), ("127.0.0.1", server.port))
                raw = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
                assert coap.decode(raw).mid == 9
            finally:
                await server.close()
        assert mids == set(range(5))

    asyncio.run(scenario())


def test_a_pause_ends_by_itself_if_nobody_resumes(monkeypatch):
    from gateway import coap_lean

    monkeypatch.setattr(coap_lean, "PAUSE_MAX_S", 0.05)

    async def scenario():
        async def handle(req):
            return CoapResponse(exchange.CONTENT, TIME_MAP)

        server = LeanCoapServer(handle, "127.0.0.1", 0)
        await server.start()
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                server.pause_reading(True)
                sock.sendto(request(mid=3), ("127.0.0.1", server.port))
                raw = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
                assert coap.decode(raw).mid == 3 and not server.paused
            finally:
                await server.close()

    asyncio.run(scenario())
