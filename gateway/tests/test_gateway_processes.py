"""Ingest processes sharing the CoAP port: same answers as in one process, metrics
summed in the gateway process, a killed process is replaced."""

import asyncio
import os
import signal
import socket

import pytest
from aiocoap.numbers.codes import Code
from gw_testbed import (
    MeterKey,
    RawUdp,
    coap_datagram,
    register,
    running_gateway,
    stored,
    write_config,
)
from wattcore import exchange

from gateway.app import Gateway
from gateway.errors import GatewayError


async def post(udp, mid, payload):
    reply = await udp.exchange(coap_datagram(mid, token=mid.to_bytes(3, "big"), payload=payload),
                               timeout=20)
    return str(reply.code).split(" ")[0], exchange.decode_response(reply.payload)


def test_ingest_processes_serve_concurrent_senders_and_survive_a_killed_process(tmp_path):
    meters = [MeterKey() for _ in range(8)]
    cfg = write_config(tmp_path, ingest={"processes": 2})
    register(cfg, *meters)

    async def sender(gw, meter, seqs, mid_base):
        udp = RawUdp(gw.coap_port)
        try:
            results = []
            for i, chunk in enumerate(seqs):
                payload = exchange.encode_batch([meter.reading(s) for s in chunk])
                results.append(await post(udp, mid_base + i, payload))
            return results
        finally:
            udp.close()

    async def scenario():
        async with running_gateway(cfg) as gw:
            assert gw.service is None and len(gw.processes.processes) == 2
            chunks = [list(range(1 + 4 * i, 5 + 4 * i)) for i in range(5)]
            results = await asyncio.gather(*[
                sender(gw, m, chunks, 1000 * k) for k, m in enumerate(meters)])
            for per_meter in results:
                assert [(code, body["ack"]) for code, body in per_meter] == [
                    ("2.04", c[-1]) for c in chunks]
            # Both processes serve (the kernel spreads source ports over them): 32 more
            # senders ask for the time; the chance that all reach one process is 2**-39.
            for i in range(32):
                probe = RawUdp(gw.coap_port)
                reply = await probe.exchange(coap_datagram(i, path="t", code=Code.GET,
                                                           payload=b"", content_format=None))
                probe.close()
                assert str(reply.code).startswith("2.05")
            # A bad signature is found in an ingest process just as inline.
            forged = bytearray(meters[0].reading(21))
            forged[-1] ^= 1
            udp = RawUdp(gw.coap_port)
            try:
                code, body = await post(udp, 50, exchange.encode_batch([bytes(forged)]))
                assert (code, body["reason"], body["rejected"]) == ("4.01", "bad-signature", 21)
                # The gateway process sums what the processes report (once a second):
                # wait until every response sent so far is in a report.
                answered = 8 * 5 + 32 + 1
                for _ in range(100):
                    metrics = gw.metrics
                    if metrics.responses.total() >= answered:
                        break
                    await asyncio.sleep(0.05)
                assert metrics.responses.total() == answered
                assert metrics.accepted.total() == 8 * 20
                assert metrics.rejected.values == {"bad-signature": 1}
                assert "wattshare_readings_accepted_total 160" in metrics.render()
                states = gw.processes.states()
                assert len(states) == 2
                assert all(sum(state["responses"].values()) > 0 for state in states)
                # Kill both processes: new ones start on the same port; the meter's
                # retransmission is answered once they run, and nothing counted is lost.
                victims = gw.processes.processes
                for victim in victims:
                    os.kill(victim.pid, signal.SIGKILL)
                payload = exchange.encode_batch([meters[0].reading(21)])
                datagram = coap_datagram(60, token=b"k", payload=payload)
                for _ in range(40):  # the meter retransmits until it gets an answer
                    try:
                        reply = await udp.exchange(datagram, timeout=0.5)
                        break
                    except TimeoutError:
                        continue
                assert str(reply.code).startswith("2.04")
                assert exchange.decode_response(reply.payload)["ack"] == 21
                assert gw.processes.restarts == 2
                assert not set(victims) & set(gw.processes.processes)
                assert gw.metrics.accepted.total() >= 8 * 20
            finally:
                udp.close()
            assert len(stored(cfg)) == 8 * 20 + 1

    asyncio.run(scenario())


@pytest.mark.parametrize("processes", [0, 2])
def test_a_taken_coap_port_is_a_clear_error_not_a_shared_one(tmp_path, processes):
    # With SO_REUSEPORT a second gateway could silently join the first one's port and
    # take half of its meters into another database: it must refuse to start instead.
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first_cfg = write_config(tmp_path / "a", ingest={"processes": 2})
    second_cfg = None

    async def scenario():
        nonlocal second_cfg
        async with running_gateway(first_cfg, http=False) as first:
            second_cfg = write_config(tmp_path / "b", coap={"port": first.coap_port},
                                      ingest={"processes": processes})
            second = Gateway(second_cfg, http=False)
            try:
                with pytest.raises(GatewayError) as caught:
                    await second.start()
            finally:
                await second.stop()
            udp = RawUdp(first.coap_port)  # the first one still answers
            reply = await udp.exchange(coap_datagram(1, path="t", code=Code.GET,
                                                     content_format=None))
            udp.close()
            assert str(reply.code).startswith("2.05")
            return str(caught.value)

    message = asyncio.run(scenario())
    assert str(second_cfg.path) in message and "cannot bind" in message
    assert "another gateway running" in message


def test_a_taken_http_port_is_a_clear_error(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    cfg = write_config(tmp_path, http={"port": holder.getsockname()[1]},
                       ingest={"processes": 2})

    async def scenario():
        gw = Gateway(cfg)
        started = []
        try:
            with pytest.raises(GatewayError) as caught:
                await gw.start()
            started = gw.processes.processes  # they start before the status site
        finally:
            await gw.stop()
        assert len(started) == 2
        assert all(p.poll() is not None for p in started)  # stopped again, not orphaned
        return str(caught.value)

    try:
        message = asyncio.run(scenario())
    finally:
        holder.close()
    assert str(cfg.path) in message and "[http]" in message and "cannot bind" in message
