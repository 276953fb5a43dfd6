"""5.03 with Max-Age when the store falls behind ("busy") or the database fails ("storage").
In both cases nothing is acknowledged that is not on disk, and the gateway recovers.
Both CoAP front ends (lean and aiocoap)."""

import asyncio
import sqlite3

import pytest
from gw_testbed import (
    FRONT_ENDS,
    MeterKey,
    RawUdp,
    coap_client,
    coap_datagram,
    coap_request,
    register,
    running_gateway,
    stored,
    write_config,
)
from wattcore import exchange


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_overload_answers_5_03_with_max_age_then_recovers(tmp_path, front_end):
    meters = [MeterKey() for _ in range(6)]
    cfg = write_config(tmp_path, coap={"front_end": front_end},
                       ingest={"max_pending_readings": 100, "overload_max_age_s": 7})
    register(cfg, *meters)
    batches = [exchange.encode_batch([m.reading(s) for s in range(1, 33)]) for m in meters]

    async def post(udp, mid, batch):
        reply = await udp.exchange(coap_datagram(mid, token=b"o%d" % mid, payload=batch),
                                   timeout=30)
        return str(reply.code).split(" ")[0], exchange.decode_response(reply.payload), reply

    async def scenario():
        async with running_gateway(cfg) as gw:
            sockets = [RawUdp(gw.coap_port) for _ in batches]
            blocker = sqlite3.connect(cfg.db_path, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # the disk "stalls": commits wait
            try:
                tasks = []
                for i, batch in enumerate(batches):
                    tasks.append(asyncio.create_task(post(sockets[i], i + 1, batch)))
                    await asyncio.sleep(0.05)  # let each reach the writer queue in turn
                early = await asyncio.wait_for(asyncio.gather(*tasks[4:]), 10)
                assert gw.writer.pending_rows == 4 * 32
                assert not any(t.done() for t in tasks[:4])  # waiting for their COMMIT
                for code, body, reply in early:
                    assert (code, body["reason"], reply.opt.max_age) == ("5.03", "busy", 7)
                    assert "ack" not in body
                assert stored(cfg) == {}
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            try:
                for code, body, _ in await asyncio.wait_for(asyncio.gather(*tasks[:4]), 20):
                    assert (code, body["ack"]) == ("2.04", 32)
                for i in (4, 5):  # the meter retries after Max-Age: now accepted
                    code, body, _ = await post(sockets[i], 100 + i, batches[i])
                    assert (code, body["ack"]) == ("2.04", 32)
            finally:
                for udp in sockets:
                    udp.close()
            assert len(stored(cfg)) == 6 * 32

    asyncio.run(scenario())


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_database_failure_answers_5_03_and_stores_nothing(tmp_path, front_end):
    meter = MeterKey()
    cfg = write_config(tmp_path, coap={"front_end": front_end})
    register(cfg, meter)
    batch = exchange.encode_batch([meter.reading(s) for s in (1, 2)])
    db = sqlite3.connect(cfg.db_path, isolation_level=None)
    db.execute("CREATE TRIGGER broken BEFORE INSERT ON readings "
               "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")

    async def scenario():
        async with running_gateway(cfg) as gw, coap_client() as ctx:
            code, body, response = await coap_request(ctx, gw.coap_port, "r", batch)
            assert (code, body.get("reason"), body.get("ack")) == ("5.03", "storage", None)
            assert response.opt.max_age == cfg.ingest.overload_max_age_s
            assert stored(cfg) == {}
            db.execute("DROP TRIGGER broken")
            code, body, _ = await coap_request(ctx, gw.coap_port, "r", batch)
            assert (code, body["ack"]) == ("2.04", 2)
            assert len(stored(cfg)) == 2

    try:
        asyncio.run(scenario())
    finally:
        db.close()
