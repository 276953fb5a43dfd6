"""Crash safety: the gateway runs as a subprocess (`python -m gateway run`) under load
from 16 emulated meters and is killed with SIGKILL at 20 random moments, restarting
each time. Afterwards every reading any meter saw acknowledged is in the database,
byte for byte, exactly once, and nothing else is."""

import asyncio
import os
import random
import socket
import sqlite3
import sys
import time

import pytest
from aiocoap import Message
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from gw_testbed import MeterKey, coap_datagram, register, write_config
from wattcore import exchange

SENDERS = 16
KILLS = 20
SEED = 20240611


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Meter:
    """An emulated meter: a spool of signed readings, sent oldest first, dropped on ack."""

    def __init__(self, port, rng):
        self.key = MeterKey()
        self.port = port
        self.rng = rng
        self.next_seq = 1
        self.spool = []  # (seq, cose bytes), oldest first
        self.acked = {}  # seq -> cose bytes
        self.unexpected = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.mid = rng.randrange(1 << 16)

    def top_up(self):
        while len(self.spool) < 8:
            self.spool.append((self.next_seq, self.key.reading(self.next_seq)))
            self.next_seq += 1

    async def exchange(self, datagram, token, timeout):
        loop = asyncio.get_running_loop()
        self.sock.sendto(datagram, ("127.0.0.1", self.port))
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                raw = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), remaining)
            except TimeoutError:
                return None
            try:
                reply = Message.decode(raw)
            except (UnparsableMessage, ValueError):
                continue
            if reply.mtype == Type.CON:  # separate response: acknowledge it
                ack = Message(code=Code.EMPTY)
                ack.mtype, ack.mid = Type.ACK, reply.mid
                self.sock.sendto(ack.encode(), ("127.0.0.1", self.port))
            if reply.code != Code.EMPTY and reply.token == token:
                return reply

    async def run(self, stop):
        while not stop.is_set():
            self.top_up()
            batch = self.spool[: self.rng.randint(1, 8)]
            self.mid = (self.mid + 1) & 0xFFFF
            token = os.urandom(4)
            datagram = coap_datagram(self.mid, token=token,
                                     payload=exchange.encode_batch([c for _, c in batch]))
            reply = None
            for _ in range(3):  # CON retransmissions: same message id
                reply = await self.exchange(datagram, token, 0.3)
                if reply is not None:
                    break
            if reply is None:
                await asyncio.sleep(0.05)  # gateway down: keep the spool, try again
                continue
            code = str(reply.code).split(" ")[0]
            if code == "2.04":
                ack = exchange.decode_response(reply.payload)["ack"]
                assert ack == batch[-1][0]
                for seq, raw in batch:
                    self.acked[seq] = raw
                del self.spool[: len(batch)]
            elif code in ("5.03", "5.00"):
                await asyncio.sleep(0.05)
            else:
                self.unexpected.append((code, reply.payload))
                await asyncio.sleep(0.05)
        self.sock.close()


async def start_gateway(config_path, port):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "--config", str(config_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + 20
        mid = 0
        while loop.time() < deadline:
            assert proc.returncode is None, "gateway exited during start-up"
            mid += 1
            probe.sendto(coap_datagram(mid, token=b"up", path="t", code=Code.GET,
                                       content_format=None), ("127.0.0.1", port))
            try:
                await asyncio.wait_for(loop.sock_recv(probe, 1024), 0.05)
                return proc
            except TimeoutError:
                continue
        raise AssertionError("gateway did not start within 20 s")
    finally:
        probe.close()


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_reading(tmp_path):
    port = free_udp_port()
    # eight senders at full speed from one address: no per-source limit (that is
    # test_gateway_flood's subject), so the SIGKILLs land under the full load
    cfg = write_config(tmp_path, coap={"port": port, "max_datagrams_per_source": 0},
                       ingest={"processes": 2})
    rng = random.Random(SEED)
    meters = [Meter(port, random.Random(rng.random())) for _ in range(SENDERS)]
    register(cfg, *[m.key for m in meters])
    acked_at_kill = []

    async def scenario():
        stop = asyncio.Event()
        senders = [asyncio.create_task(m.run(stop)) for m in meters]
        try:
            for _ in range(KILLS):
                proc = await start_gateway(cfg.path, port)
                await asyncio.sleep(rng.uniform(0.1, 0.6))
                proc.kill()  # SIGKILL: no shutdown code runs
                await proc.wait()
                acked_at_kill.append(sum(len(m.acked) for m in meters))
            proc = await start_gateway(cfg.path, port)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*senders)
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)
        finally:
            stop.set()
            for task in senders:
                task.cancel()

    started = time.monotonic()
    asyncio.run(scenario())
    elapsed = time.monotonic() - started

    for m in meters:
        assert m.unexpected == []
    acked = {(m.key.device_id, seq): raw for m in meters for seq, raw in m.acked.items()}
    sent = {(m.key.device_id, seq) for m in meters for seq in range(1, m.next_seq)}
    # The load was real: acknowledgements kept arriving between kills.
    print("acked at each kill:", acked_at_kill)
    assert sum(b > a for a, b in zip(acked_at_kill, acked_at_kill[1:], strict=False)) >= KILLS // 2
    assert len(acked) > 500

    db = sqlite3.connect(cfg.db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT device, seq, cose FROM readings").fetchall()
    finally:
        db.close()
    in_db = {}
    for device, seq, raw in rows:
        key = (bytes(device), seq)
        assert key not in in_db, f"stored twice: {key!r}"
        in_db[key] = bytes(raw)
    for key, raw in acked.items():
        assert in_db.get(key) == raw, f"acknowledged but not stored: {key!r}"
    assert set(in_db) <= sent  # only readings the meters produced
    print(f"crash test: {KILLS} kills, {len(acked)} readings acknowledged, "
          f"{len(in_db)} stored, {elapsed:.1f} s")
