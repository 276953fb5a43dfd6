from app.coap_uplink import BACKOFF_FIRST_MS, BACKOFF_PERSON_MS, CoapUplink
from app.device_clock import DeviceClock
from app.spool import Spool
from app_fakes import FakeClock, FakeUdp, Lcg, MemoryStorage, run_sync
from wattcore import cbor, coap, exchange

GATEWAY_TIME = 1750000000


class Gateway:
    # answers each request with respond(request Message) -> (code, map, options)
    def __init__(self, respond):
        self.respond = respond
        self.requests = []

    def __call__(self, datagram):
        req = coap.decode(datagram, 8192)
        self.requests.append(req)
        out = self.respond(req)
        if out is None:
            return []
        code, m, options = out
        m = dict(m)
        m.setdefault(exchange.RESP_TIME, GATEWAY_TIME)
        return [coap.encode(coap.ACK, code, req.mid, req.token, options, cbor.dumps(m))]


def _rig(respond, readings=10, trusted=True):
    clock = FakeClock(946684800)
    dclock = DeviceClock(clock)
    if trusted:
        dclock.set(GATEWAY_TIME, "gateway")
    sp = Spool(MemoryStorage())
    for seq in range(readings):
        sp.append(seq, cbor.dumps(b"signed reading %d" % seq))
    gw = Gateway(respond)
    rng = Lcg(5)
    up = CoapUplink(FakeUdp(clock, gw), clock, dclock, sp, rng.bytes, 8)
    return up, sp, gw, dclock, clock


def _seqs(sp):
    return [e.seq for e in sp.peek(100)]


def test_untrusted_clock_asks_the_time_first():
    up, sp, gw, dclock, _ = _rig(lambda req: (exchange.CONTENT, {}, []), trusted=False)
    assert run_sync(up.step()) == 0
    assert dclock.trusted and dclock.now() == GATEWAY_TIME
    req = gw.requests[0]
    assert req.code == coap.GET and req.uri_path() == "t" and req.mtype == coap.CON


def test_changed_drops_the_acknowledged_readings_in_batches_of_8():
    up, sp, gw, _, _ = _rig(lambda req: (exchange.CHANGED, {1: 7}, []))
    assert run_sync(up.step()) == 0
    req = gw.requests[0]
    assert req.code == coap.POST and req.uri_path() == "r"
    assert req.content_format() == exchange.CONTENT_FORMAT_CBOR
    assert len(exchange.decode_batch(req.payload)) == 8
    assert _seqs(sp) == [8, 9]


def test_bad_request_with_rejected_quarantines_it():
    up, sp, _, _, _ = _rig(lambda req: (exchange.BAD_REQUEST, {1: 2, 3: 3, 4: "schema"}, []))
    assert run_sync(up.step()) == 0
    assert _seqs(sp) == [4, 5, 6, 7, 8, 9]
    assert up.stats["quarantined"] == 1


def test_bad_request_without_rejected_searches_one_by_one():
    def respond(req):
        n = len(exchange.decode_batch(req.payload))
        if n > 1:
            return exchange.BAD_REQUEST, {4: "cbor"}, []
        return exchange.CHANGED, {}, []

    up, sp, gw, _, _ = _rig(respond)
    run_sync(up.step())
    assert _seqs(sp) == list(range(10))
    run_sync(up.step())
    assert len(exchange.decode_batch(gw.requests[-1].payload)) == 1
    assert _seqs(sp) == list(range(1, 10))


def test_codes_that_need_a_person_keep_everything_and_wait_10_min():
    for code in (exchange.UNAUTHORIZED, exchange.FORBIDDEN, exchange.NOT_FOUND,
                 exchange.METHOD_NOT_ALLOWED, exchange.UNSUPPORTED_FORMAT):
        up, sp, _, _, _ = _rig(lambda req, code=code: (code, {3: 0, 4: "x"}, []))
        assert run_sync(up.step()) == BACKOFF_PERSON_MS
        assert _seqs(sp) == list(range(10))


def test_conflict_raises_the_alarm_and_quarantines():
    up, sp, _, _, _ = _rig(lambda req: (exchange.CONFLICT, {1: 0, 3: 1, 4: "seq-reuse"}, []))
    assert run_sync(up.step()) == 0
    assert up.alarm
    assert _seqs(sp) == list(range(2, 10))


def test_too_large_sends_fewer():
    def respond(req):
        if len(exchange.decode_batch(req.payload)) > 3:
            return exchange.TOO_LARGE, {}, [(coap.OPT_SIZE1, coap.uint_option(60))]
        return exchange.CHANGED, {}, []

    up, sp, gw, _, _ = _rig(respond)
    assert run_sync(up.step()) == 0
    assert _seqs(sp) == list(range(10))
    run_sync(up.step())
    assert len(exchange.decode_batch(gw.requests[-1].payload)) <= 3
    assert len(_seqs(sp)) < 10


def test_unprocessable_time_skew_sets_the_clock():
    up, sp, _, dclock, _ = _rig(lambda req: (exchange.UNPROCESSABLE,
                                             {2: GATEWAY_TIME + 999, 3: 0, 4: "time-skew"}, []))
    assert run_sync(up.step()) == 0
    assert dclock.now() == GATEWAY_TIME + 999
    assert _seqs(sp) == list(range(1, 10))


def test_server_errors_back_off_doubling_and_keep():
    up, sp, _, _, _ = _rig(lambda req: (exchange.INTERNAL_ERROR, {}, []))
    assert run_sync(up.step()) == BACKOFF_FIRST_MS
    assert run_sync(up.step()) == 2 * BACKOFF_FIRST_MS
    assert _seqs(sp) == list(range(10))


def test_unavailable_waits_max_age():
    up, sp, _, _, _ = _rig(lambda req: (exchange.UNAVAILABLE, {4: "busy"},
                                        [(coap.OPT_MAX_AGE, coap.uint_option(7))]))
    assert run_sync(up.step()) == 7000
    up, sp, _, _, _ = _rig(lambda req: (exchange.UNAVAILABLE, {}, []))
    assert run_sync(up.step()) == 60000
    assert _seqs(sp) == list(range(10))


def test_unknown_code_keeps_and_backs_off():
    up, sp, _, _, _ = _rig(lambda req: (0x86, {}, []))  # 4.06, not in the protocol
    assert run_sync(up.step()) == BACKOFF_FIRST_MS
    assert _seqs(sp) == list(range(10))


def test_no_response_retransmits_with_rfc7252_timing():
    up, sp, gw, _, clock = _rig(lambda req: None)
    assert run_sync(up.step()) == BACKOFF_FIRST_MS
    assert len(gw.requests) == 5  # first send + MAX_RETRANSMIT
    assert len(set((r.mid, r.token) for r in gw.requests)) == 1
    assert 2000 * 31 <= clock.ms <= 3000 * 31  # 2..3 s doubling: 31 timeout units
    assert _seqs(sp) == list(range(10))
