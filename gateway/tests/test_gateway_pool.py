"""Verification in worker processes: same answers as inline, survives a dying worker."""

import asyncio
import os
import signal

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


async def post(udp, mid, payload):
    reply = await udp.exchange(coap_datagram(mid, token=mid.to_bytes(3, "big"), payload=payload),
                               timeout=20)
    return str(reply.code).split(" ")[0], exchange.decode_response(reply.payload)


def test_worker_processes_verify_concurrent_senders_and_survive_a_killed_worker(tmp_path):
    meters = [MeterKey() for _ in range(8)]
    cfg = write_config(tmp_path, ingest={"verify_workers": 2})
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
            assert gw.pool.workers == 2
            chunks = [list(range(1 + 4 * i, 5 + 4 * i)) for i in range(5)]
            results = await asyncio.gather(*[
                sender(gw, m, chunks, 1000 * k) for k, m in enumerate(meters)])
            for per_meter in results:
                assert [(code, body["ack"]) for code, body in per_meter] == [
                    ("2.04", c[-1]) for c in chunks]
            # A bad signature is found in a worker just as inline.
            forged = bytearray(meters[0].reading(21))
            forged[-1] ^= 1
            udp = RawUdp(gw.coap_port)
            try:
                code, body = await post(udp, 50, exchange.encode_batch([bytes(forged)]))
                assert (code, body["reason"], body["rejected"]) == ("4.01", "bad-signature", 21)
                # Kill a worker: a new one starts; meters may see 5.00 meanwhile, then 2.04.
                victim = gw.pool.processes[0]
                os.kill(victim.pid, signal.SIGKILL)
                payload = exchange.encode_batch([meters[0].reading(21)])
                for attempt in range(20):
                    code, body = await post(udp, 60 + attempt, payload)
                    if code == "2.04":
                        break
                    assert (code, body["reason"]) == ("5.00", "internal")
                    await asyncio.sleep(0.1)
                assert code == "2.04" and body["ack"] == 21
                assert gw.pool.restarts == 1 and victim not in gw.pool.processes
            finally:
                udp.close()
            assert len(stored(cfg)) == 8 * 20 + 1

    asyncio.run(scenario())
