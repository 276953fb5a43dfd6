"""Malformed datagrams never crash or stall the gateway and are never stored;
retransmissions are answered again without a second copy in the database. Every test
runs against both CoAP front ends (lean and aiocoap)."""

import asyncio
import random

import pytest
from aiocoap import Message
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from gw_testbed import (
    FRONT_ENDS,
    MeterKey,
    RawUdp,
    coap_datagram,
    register,
    running_gateway,
    stored,
    write_config,
)
from wattcore import exchange


def malformed_datagrams(valid):
    rng = random.Random(7)
    out = {
        "empty datagram": b"",
        "one byte": b"\x40",
        "truncated header": valid[:3],
        "version 0": bytes([valid[0] & 0x3F]) + valid[1:],
        "version 2": bytes([(valid[0] & 0x3F) | 0x80]) + valid[1:],
        "token length 9 (reserved)": bytes([0x49]) + valid[1:4] + bytes(9),
        "token length 15 (reserved)": bytes([0x4F]) + valid[1:4],
        "token longer than datagram": bytes([0x48]) + valid[1:4] + b"\x01\x02",
        "option delta 15 without payload marker": valid[:6] + b"\xf1\x00",
        "option length nibble 15": valid[:6] + b"\x1f\x00",
        "option running past the end": valid[:6] + b"\xbd\xff",
        "payload marker with no payload": valid[:6] + b"\xff",
        "truncated payload": valid[:-40],
        "response code in a request": bytes([valid[0], 0x45]) + valid[2:],
        "reserved class 1": bytes([valid[0], 0x21]) + valid[2:],
        "empty message with a token": bytes([0x42, 0x00]) + valid[2:6],
        "ACK for nothing": bytes([0x60, 0x00, 0x12, 0x34]),
        "RST for nothing": bytes([0x70, 0x00, 0x12, 0x35]),
        "zeros": bytes(64),
        "all 0xff": b"\xff" * 64,
    }
    for i in range(40):
        out[f"random {i}"] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    for i in range(30):
        flipped = bytearray(valid)
        flipped[rng.randrange(len(valid))] ^= 1 << rng.randrange(8)
        if not same_request(bytes(flipped), valid):
            out[f"bit flip {i}"] = bytes(flipped)
    return out


def same_request(a, b):
    # A flip in the message id or token leaves a valid request for the same reading.
    try:
        ma, mb = Message.decode(a), Message.decode(b)
    except (UnparsableMessage, ValueError):
        return False
    return (ma.code, ma.mtype, ma.opt.uri_path, ma.opt.content_format, ma.payload) == (
        mb.code, mb.mtype, mb.opt.uri_path, mb.opt.content_format, mb.payload)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_malformed_datagrams_are_dropped_or_refused_and_the_gateway_keeps_answering(
        tmp_path, front_end):
    meter = MeterKey()
    cfg = write_config(tmp_path, coap={"front_end": front_end})
    register(cfg, meter)

    async def scenario():
        async with running_gateway(cfg) as gw:
            udp = RawUdp(gw.coap_port)
            valid = coap_datagram(1, token=b"ab",
                                  payload=exchange.encode_batch([meter.reading(1)]))
            probe_mid = 5000
            try:
                for name, datagram in malformed_datagrams(valid).items():
                    if datagram == valid:
                        continue
                    udp.send(datagram)
                    # The gateway may ignore it, reset it or answer an error: never 2.xx.
                    while True:
                        try:
                            raw = await udp.recv(0.05)
                        except TimeoutError:
                            break
                        reply = Message.decode(raw)
                        if reply.mtype == Type.ACK and reply.code == Code.CONTENT:
                            continue  # a late probe answer
                        assert reply.mtype == Type.RST or not reply.code.is_successful(), (
                            name, reply)
                    probe_mid += 1
                    answer = await udp.exchange(coap_datagram(
                        probe_mid, token=b"p" + probe_mid.to_bytes(2, "big"), path="t",
                        code=Code.GET, content_format=None), timeout=2.0)
                    assert answer.code == Code.CONTENT, name
                    assert stored(cfg) == {}, name
                # Still serving readings afterwards.
                reply = await udp.exchange(coap_datagram(
                    9000, token=b"ok", payload=exchange.encode_batch([meter.reading(1)])))
                assert reply.code == Code.CHANGED
                assert list(stored(cfg)) == [(meter.device_id, 1)]
                assert gw.metrics.dropped.total() >= 10
            finally:
                udp.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_oversized_datagram_is_answered_4_13(tmp_path, front_end):
    cfg = write_config(tmp_path, coap={"front_end": front_end})

    async def scenario():
        async with running_gateway(cfg) as gw:
            udp = RawUdp(gw.coap_port)
            try:
                reply = await udp.exchange(coap_datagram(3, payload=b"\x81" + bytes(20000)))
            finally:
                udp.close()
            assert reply.code == Code.REQUEST_ENTITY_TOO_LARGE
            assert reply.opt.size1 == exchange.MAX_PAYLOAD
            assert exchange.decode_response(reply.payload)["max_batch"] == exchange.MAX_BATCH

    asyncio.run(scenario())


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_retransmission_and_replay_are_stored_once(tmp_path, front_end):
    meter = MeterKey()
    cfg = write_config(tmp_path, coap={"front_end": front_end})
    register(cfg, meter)
    batch = exchange.encode_batch([meter.reading(s) for s in (1, 2, 3)])

    async def scenario():
        async with running_gateway(cfg) as gw:
            udp = RawUdp(gw.coap_port)
            try:
                datagram = coap_datagram(77, token=b"rt", payload=batch)
                first = await udp.exchange(datagram)
                # CoAP retransmission: same message id, answered from the front end's cache.
                again = await udp.exchange(datagram)
                # Replay in a new exchange (device retrying after a lost ACK).
                replay = await udp.exchange(coap_datagram(78, token=b"r2", payload=batch))
                # NON request: answered too.
                non = await udp.exchange(coap_datagram(79, token=b"r3", payload=batch,
                                                       mtype=Type.NON))
            finally:
                udp.close()
            for reply in (first, again, replay, non):
                assert reply.code == Code.CHANGED
                assert exchange.decode_response(reply.payload)["ack"] == 3
            assert non.mtype == Type.NON
            assert sorted(stored(cfg)) == [(meter.device_id, s) for s in (1, 2, 3)]
            assert gw.metrics.accepted.total() == 3
            assert gw.metrics.duplicates.total() == 6  # replay + NON; the retransmission
            # never reached the handler

    asyncio.run(scenario())
