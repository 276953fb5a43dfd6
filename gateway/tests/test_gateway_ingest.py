"""Every answer of POST /r and GET /t over real CoAP: once through an aiocoap client,
once through raw UDP datagrams, each against both CoAP front ends (lean and aiocoap).
After each case the database holds exactly the readings acknowledged so far (nothing
rejected is stored) and the gateway still answers."""

import asyncio
import itertools
import time
import urllib.request
from typing import NamedTuple

import pytest
from aiocoap.numbers.codes import Code
from gw_testbed import (
    FRONT_ENDS,
    MeterKey,
    RawUdp,
    coap_client,
    coap_datagram,
    coap_request,
    register,
    rejects_table,
    running_gateway,
    stored,
    write_config,
)
from wattcore import cbor, cose, exchange, reading
from wattcore.errors import DecodeError

from gateway import registry, store


class Step(NamedTuple):
    payload: bytes = b""
    path: str = "r"
    code: object = Code.POST
    content_format: int | None = 60
    expect: str = "2.04"
    reason: str | None = None
    ack: int | None = None
    rejected: int | None = None
    stores: tuple = ()  # (device, seq, cose) now stored
    size1: int | None = None


class Meters:
    def __init__(self):
        self.a, self.b, self.revoked, self.unknown = (MeterKey() for _ in range(4))
        self._seq = {}

    def seqs(self, meter, n=1):
        counter = self._seq.setdefault(meter.device_id, itertools.count(1))
        return [next(counter) for _ in range(n)]


def rows(meter, seqs_and_bytes):
    return tuple((meter.device_id, s, b) for s, b in seqs_and_bytes)


def cases(m):
    """name -> list of steps. Uses fresh seqs from ``m`` each time it is called."""
    a, b = m.a, m.b
    now = int(time.time())
    out = {}

    s1, s2, s3 = m.seqs(a, 3)
    items = [a.reading(s) for s in (s1, s2, s3)]
    out["accepted"] = [Step(exchange.encode_batch(items), ack=s3,
                            stores=rows(a, zip((s1, s2, s3), items, strict=True)))]

    (s,) = m.seqs(a)
    fault = a.reading(s, st=reading.ST_METER_NO_REPLY | reading.ST_BOOT)
    out["fault reading stored"] = [Step(exchange.encode_batch([fault]), ack=s,
                                        stores=rows(a, [(s, fault)]))]

    (s,) = m.seqs(a)
    old = a.reading(s, t=now - 10 * 86400)
    out["catch-up reading 10 days old"] = [Step(exchange.encode_batch([old]), ack=s,
                                                stores=rows(a, [(s, old)]))]

    out["cbor: not an array"] = [Step(b"\xa1\x01\x02", expect="4.00", reason="cbor")]
    out["cbor: garbage"] = [Step(b"\xff\xfe\xfd", expect="4.00", reason="cbor")]
    out["cbor: truncated"] = [Step(exchange.encode_batch([a.reading(99)])[:-5],
                                   expect="4.00", reason="cbor")]
    out["empty"] = [Step(b"\x80", expect="4.00", reason="empty")]

    (s,) = m.seqs(a)
    first = a.reading(s)
    out["cose: second item is no COSE_Sign1"] = [Step(
        cbor.array_head(2) + first + b"\x01", expect="4.00", reason="cose", ack=s,
        stores=rows(a, [(s, first)]))]

    (s,) = m.seqs(a)
    bad_payload = cbor.dumps({1: a.device_id, 2: s})
    out["schema"] = [Step(exchange.encode_batch([cose.sign1(bad_payload, a.device_id, a.sign)]),
                          expect="4.00", reason="schema")]

    (s,) = m.seqs(a)
    out["kid-mismatch"] = [Step(exchange.encode_batch([a.reading(s, kid=b.device_id)]),
                                expect="4.00", reason="kid-mismatch", rejected=s)]

    (s,) = m.seqs(a)
    (t,) = m.seqs(b)
    first = a.reading(s)
    out["mixed-devices"] = [Step(exchange.encode_batch([first, b.reading(t)]), expect="4.00",
                                 reason="mixed-devices", ack=s, rejected=t,
                                 stores=rows(a, [(s, first)]))]

    s1, s2, s3 = m.seqs(a, 3)
    first = a.reading(s1)
    forged = bytearray(a.reading(s2))
    forged[-3] ^= 0x40
    out["bad-signature"] = [Step(exchange.encode_batch([first, bytes(forged), a.reading(s3)]),
                                 expect="4.01", reason="bad-signature", ack=s1, rejected=s2,
                                 stores=rows(a, [(s1, first)]))]

    (s,) = m.seqs(m.unknown)
    out["unknown-device"] = [Step(exchange.encode_batch([m.unknown.reading(s)]),
                                  expect="4.03", reason="unknown-device", rejected=s)]
    (s,) = m.seqs(m.revoked)
    out["revoked"] = [Step(exchange.encode_batch([m.revoked.reading(s)]),
                           expect="4.03", reason="revoked", rejected=s)]

    out["not-found"] = [Step(exchange.encode_batch([a.reading(999)]), path="x",
                             expect="4.04", reason="not-found")]
    out["method: GET /r"] = [Step(path="r", code=Code.GET, content_format=None,
                                  expect="4.05", reason="method")]
    out["method: POST /t"] = [Step(b"\xa0", path="t", expect="4.05", reason="method")]

    (s,) = m.seqs(a)
    first = a.reading(s)
    again = a.reading(s)  # same seq, new signature: other bytes
    out["seq-reuse"] = [
        Step(exchange.encode_batch([first]), ack=s, stores=rows(a, [(s, first)])),
        Step(exchange.encode_batch([again]), expect="4.09", reason="seq-reuse", rejected=s),
    ]

    s1, s2, s3 = m.seqs(a, 3)
    i1, i2, i3 = (a.reading(s) for s in (s1, s2, s3))
    batch = exchange.encode_batch([i1, i2])
    out["replay stored once"] = [
        Step(batch, ack=s2, stores=rows(a, [(s1, i1), (s2, i2)])),
        Step(batch, ack=s2),
        Step(exchange.encode_batch([i2, i3]), ack=s3, stores=rows(a, [(s3, i3)])),
    ]

    s0, s1, s2, s3, s4 = m.seqs(a, 5)
    i0, i1, i2, i4 = (a.reading(s) for s in (s0, s1, s2, s4))
    forged = bytearray(a.reading(s3))
    forged[-1] ^= 1
    out["mixed batch: new, duplicate, new, forged, new"] = [
        Step(exchange.encode_batch([i0]), ack=s0, stores=rows(a, [(s0, i0)])),
        Step(exchange.encode_batch([i1, i0, i2, bytes(forged), i4]), expect="4.01",
             reason="bad-signature", ack=s2, rejected=s3,
             stores=rows(a, [(s1, i1), (s2, i2)])),
    ]

    body = exchange.MAX_PAYLOAD + 1 - 4  # one byte over the limit, as [bstr(body)]
    out["too-large: bytes"] = [Step(b"\x81\x59" + body.to_bytes(2, "big") + bytes(body),
                                    expect="4.13",
                                    reason="too-large", size1=exchange.MAX_PAYLOAD)]
    out["too-large: readings"] = [Step(b"\x98\x21" + b"\x01" * 33, expect="4.13",
                                       reason="too-large", size1=exchange.MAX_PAYLOAD)]
    out["content-format: text/plain"] = [Step(exchange.encode_batch([a.reading(999)]),
                                              content_format=0, expect="4.15",
                                              reason="content-format")]
    out["content-format: none"] = [Step(exchange.encode_batch([a.reading(999)]),
                                        content_format=None, expect="4.15",
                                        reason="content-format")]

    out["seq-range"] = [Step(exchange.encode_batch([a.reading(2**63, ei=10**9, ee=10**9)]),
                             expect="4.22", reason="seq-range", rejected=2**63)]
    (s,) = m.seqs(a)
    out["clock-untrusted"] = [Step(
        exchange.encode_batch([a.reading(s, st=reading.ST_CLOCK_UNTRUSTED)]),
        expect="4.22", reason="clock-untrusted", rejected=s)]
    (s,) = m.seqs(a)
    out["time-skew: future"] = [Step(exchange.encode_batch([a.reading(s, t=now + 3600)]),
                                     expect="4.22", reason="time-skew", rejected=s)]
    (s,) = m.seqs(a)
    out["too-old"] = [Step(
        exchange.encode_batch([a.reading(s, t=now - 40 * 86400)]),
        expect="4.22", reason="too-old", rejected=s)]
    (s,) = m.seqs(a)
    out["over-rating"] = [Step(exchange.encode_batch([a.reading(s, p=25301)]),
                               expect="4.22", reason="over-rating", rejected=s)]

    (s,) = m.seqs(a)
    out["counter-backwards: below an earlier reading"] = [Step(
        exchange.encode_batch([a.reading(s, ei=5)]),
        expect="4.22", reason="counter-backwards", rejected=s)]
    lo, mid, hi = m.seqs(a, 3)
    ilo, ihi, imid = a.reading(lo), a.reading(hi), a.reading(mid)
    out["counter-backwards: above a later reading, then the gap filled"] = [
        Step(exchange.encode_batch([ilo, ihi]), ack=hi, stores=rows(a, [(lo, ilo), (hi, ihi)])),
        Step(exchange.encode_batch([a.reading(mid, ee=500 + hi + 1)]), expect="4.22",
             reason="counter-backwards", rejected=mid),
        Step(exchange.encode_batch([imid]), ack=mid, stores=rows(a, [(mid, imid)])),
    ]
    return out


def setup_gateway(tmp_path, meters, front_end):
    cfg = write_config(tmp_path, coap={"front_end": front_end})
    register(cfg, meters.a, meters.b, meters.revoked)
    conn = store.open_store(cfg.db_path)
    registry.revoke_device(conn, meters.revoked.device_id)
    conn.close()
    return cfg


async def run_cases(cfg, meters, send):
    """Run every case through ``send(step) -> (code, body, size1)``; returns reject counts."""
    expected_db = {}
    counts = {}
    for name, steps in cases(meters).items():
        for step in steps:
            code, body, size1 = await send(step)
            assert code == step.expect, (name, code, body)
            assert body is not None and abs(body["time"] - time.time()) < 5, name
            assert body.get("reason") == step.reason, (name, body)
            assert body.get("ack") == step.ack, (name, body)
            assert body.get("rejected") == step.rejected, (name, body)
            if step.size1 is not None:
                assert size1 == step.size1 and body.get("max_batch") == exchange.MAX_BATCH
            if step.reason:
                counts[step.reason] = counts.get(step.reason, 0) + 1
            for device, seq, raw in step.stores:
                expected_db[(device, seq)] = raw
            assert stored(cfg) == expected_db, name
            code, body, _ = await send(Step(path="t", code=Code.GET, content_format=None))
            assert code == "2.05" and "time" in body, name
    return counts


def check_counters(gw, cfg, meters, counts):
    assert gw.metrics.rejected.values == counts
    # Persisted per device (registered ones) once the writer has flushed them.
    deadline = time.time() + 5
    while True:
        table = rejects_table(cfg)
        if sum(table.values()) == sum(counts.values()) or time.time() > deadline:
            break
        time.sleep(0.1)
    by_reason = {}
    for (_, reason), n in table.items():
        by_reason[reason] = by_reason.get(reason, 0) + n
    assert by_reason == counts
    assert table[(meters.a.device_id, "bad-signature")] == 2
    assert table[(meters.revoked.device_id, "revoked")] == 1
    assert table[(b"", "unknown-device")] == 1
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{gw.http_port}/metrics").read()
    assert b'wattshare_readings_rejected_total{reason="seq-reuse"} 1' in metrics


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_every_answer_with_aiocoap_client(tmp_path, front_end):
    meters = Meters()
    cfg = setup_gateway(tmp_path, meters, front_end)

    async def scenario():
        async with running_gateway(cfg) as gw, coap_client() as ctx:
            async def send(step):
                code, body, response = await coap_request(
                    ctx, gw.coap_port, step.path, step.payload, step.code, step.content_format)
                return code, body, response.opt.size1

            counts = await run_cases(cfg, meters, send)
            await asyncio.to_thread(check_counters, gw, cfg, meters, counts)
            assert gw.metrics.duplicates.total() == 4

    asyncio.run(scenario())


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_every_answer_with_raw_datagrams(tmp_path, front_end):
    meters = Meters()
    cfg = setup_gateway(tmp_path, meters, front_end)

    async def scenario():
        async with running_gateway(cfg) as gw:
            udp = RawUdp(gw.coap_port)
            mids = itertools.count(100)

            async def send(step):
                mid = next(mids)
                reply = await udp.exchange(coap_datagram(
                    mid, token=mid.to_bytes(2, "big"), path=step.path, payload=step.payload,
                    code=step.code, content_format=step.content_format))
                try:
                    body = exchange.decode_response(reply.payload)
                except DecodeError:
                    body = None
                return str(reply.code).split(" ")[0], body, reply.opt.size1

            try:
                counts = await run_cases(cfg, meters, send)
            finally:
                udp.close()
            await asyncio.to_thread(check_counters, gw, cfg, meters, counts)

    asyncio.run(scenario())
