# Enrolment at boot (app.enroller through app.coap_uplink): POST /e before any
# reading, readings kept while it is refused, success remembered across restarts.
from app.coap_uplink import BACKOFF_FIRST_MS, BACKOFF_PERSON_MS, CoapUplink
from app.device_clock import DeviceClock
from app.enroller import ENROLLED_FILE, Enroller
from app.spool import Spool
from app_fakes import FakeClock, FakeUdp, Lcg, MemoryStorage, run_sync
from wattcore import cbor, coap, cose, enrolment, exchange, p256

GATEWAY_TIME = 1750000000
PRIV = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
DEV = b"WS\xa4\xc1\x38\xf1\xe2\xd0"
CODE = enrolment.code_from_random(lambda n: b"\x11" * n)
KEY = enrolment.code_key(CODE)
CONFIRM = enrolment.confirmation(KEY, DEV, p256.public_key(PRIV))


class Gateway:
    # answers POST /e with enrol(request) -> (code, map); POST /r with 2.04
    def __init__(self, enrol):
        self.enrol = enrol
        self.paths = []

    def __call__(self, datagram):
        req = coap.decode(datagram, 8192)
        path = req.uri_path()
        self.paths.append(path)
        if path == "e":
            code, m = self.enrol(req)
        else:
            code, m = exchange.CHANGED, {}
        m = dict(m)
        m.setdefault(exchange.RESP_TIME, GATEWAY_TIME)
        return [coap.encode(coap.ACK, code, req.mid, req.token, [], cbor.dumps(m))]


def _rig(enrol, data=None, readings=3):
    clock = FakeClock(946684800)
    dclock = DeviceClock(clock)
    dclock.set(GATEWAY_TIME, "gateway")
    data = data or MemoryStorage()
    sp = Spool(MemoryStorage())
    for seq in range(readings):
        sp.append(seq, cbor.dumps(b"signed reading %d" % seq))
    lines = []
    enroller = Enroller(data, CODE, PRIV, DEV, 1, lines.append)
    gw = Gateway(enrol)
    up = CoapUplink(FakeUdp(clock, gw), clock, dclock, sp, Lcg(3).bytes, 8, lines.append,
                    enroller)
    return up, sp, gw, enroller, data, lines


def _accept(req):
    return exchange.CHANGED, {exchange.RESP_CONFIRM: CONFIRM}


def test_enrols_first_then_sends_the_readings():
    up, sp, gw, enroller, data, lines = _rig(_accept)
    assert not enroller.done
    assert run_sync(up.step()) == 0
    assert gw.paths == ["e"] and enroller.done and len(sp) == 3
    assert data.read(ENROLLED_FILE) is not None
    assert "enrolment: enrolled at the gateway; sending readings" in lines
    assert run_sync(up.step()) == 0
    assert gw.paths == ["e", "r"] and len(sp) == 0


def test_the_request_is_signed_and_bound_to_the_code():
    seen = []

    def enrol(req):
        seen.append(req)
        return _accept(req)

    up, _, _, _, _, _ = _rig(enrol)
    run_sync(up.step())
    req = seen[0]
    assert req.code == coap.POST and req.content_format() == exchange.CONTENT_FORMAT_CBOR
    sign1, r = enrolment.open_signed(req.payload, enrolment.decode_request)
    assert r["dev"] == DEV and r["pub"] == p256.public_key(PRIV) and r["mdl"] == 1
    assert r["bind"] == enrolment.binding(KEY, DEV, r["pub"])
    assert r["t"] == GATEWAY_TIME  # the trusted clock
    expected = cose.sign1(sign1.payload, DEV, lambda tbs: p256.sign(PRIV, tbs),
                          enrolment.AAD_ENROL)
    assert req.payload == expected


def test_a_restart_remembers_and_a_new_code_enrols_again():
    up, _, gw, _, data, _ = _rig(_accept)
    run_sync(up.step())
    up2, sp2, gw2, enroller2, _, _ = _rig(_accept, data=data)
    assert enroller2.done
    run_sync(up2.step())
    assert gw2.paths == ["r"] and len(sp2) == 0
    other = Enroller(data, enrolment.code_from_random(lambda n: b"\x22" * n), PRIV, DEV, 1)
    assert not other.done


def test_refused_codes_keep_the_readings_and_wait_for_a_person():
    for reason in (enrolment.CODE_WRONG, enrolment.CODE_USED, enrolment.CODE_EXPIRED):
        up, sp, gw, enroller, data, lines = _rig(
            lambda req, r=reason: (exchange.FORBIDDEN, {exchange.RESP_REASON: r}))
        assert run_sync(up.step()) == BACKOFF_PERSON_MS
        assert run_sync(up.step()) == BACKOFF_PERSON_MS
        assert gw.paths == ["e", "e"] and len(sp) == 3 and not enroller.done
        assert data.read(ENROLLED_FILE) is None
        assert enroller.last_reason == reason
        said = [x for x in lines if x.startswith("enrolment: REFUSED 4.03 " + reason)]
        assert said and "readings are kept" in said[0]


def test_an_unconfirmed_answer_is_not_believed():
    up, sp, gw, enroller, _, _ = _rig(lambda req: (exchange.CHANGED, {}))
    assert run_sync(up.step()) == BACKOFF_FIRST_MS
    assert not enroller.done and gw.paths == ["e"]
    forged = {exchange.RESP_CONFIRM: b"\x00" * 16}
    up, _, _, enroller, _, _ = _rig(lambda req: (exchange.CHANGED, forged))
    run_sync(up.step())
    assert not enroller.done


def test_a_device_the_gateway_knows_stops_enrolling():
    answer = {exchange.RESP_REASON: enrolment.DEVICE_EXISTS, exchange.RESP_CONFIRM: CONFIRM}
    up, sp, gw, enroller, _, lines = _rig(lambda req: (exchange.CONFLICT, answer))
    assert run_sync(up.step()) == 0 and enroller.done
    run_sync(up.step())
    assert gw.paths == ["e", "r"] and len(sp) == 0


def test_no_answer_or_busy_backs_off_and_retries():
    up, sp, gw, enroller, _, _ = _rig(lambda req: (exchange.UNAVAILABLE, {}))
    assert run_sync(up.step()) == 60000  # 5.03 without Max-Age
    gone = []
    clock = FakeClock(0)
    dclock = DeviceClock(clock)
    dclock.set(GATEWAY_TIME, "gateway")
    up = CoapUplink(FakeUdp(clock, lambda d: gone.append(d) or []), clock, dclock,
                    Spool(MemoryStorage()), Lcg(4).bytes, 8, None,
                    Enroller(MemoryStorage(), CODE, PRIV, DEV, 1))
    assert run_sync(up.step()) == BACKOFF_FIRST_MS
    assert run_sync(up.step()) == 2 * BACKOFF_FIRST_MS
    assert len(gone) == 2 * (coap.MAX_RETRANSMIT + 1)
