"""Test bed for the gateway tests: meter keys that sign readings, a gateway on loopback,
CoAP clients (aiocoap, and raw UDP datagrams built with aiocoap's sans-IO Message)."""

import asyncio
import contextlib
import os
import socket
import sqlite3
import time

import aiocoap
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from wattcore import cose, exchange, reading
from wattcore.errors import DecodeError

from gateway import config as gwconfig
from gateway import registry, store
from gateway.app import Gateway

OWNER = "0x" + "ab" * 20
FRONT_ENDS = gwconfig.FRONT_ENDS  # parametrize tests that must hold for every CoAP front end
_FRONT_END_MODULES = {"lean": "gateway.coap_lean", "aiocoap": "gateway.coap_server"}


class MeterKey:
    """A meter: device id + P-256 key; signs readings like the firmware does."""

    def __init__(self, device_id=None, model="SDM120CT"):
        self.device_id = device_id or os.urandom(8)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.pubkey = registry.uncompressed(self.key.public_key())
        self.model = model

    def sign(self, tbs):
        der = self.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def fields(self, seq, t=None, st=0, **values):
        r = {"dev": self.device_id, "seq": seq, "t": int(time.time()) if t is None else t,
             "st": st, "mdl": registry.models()[self.model].code}
        if not st & reading.ST_FAULT_MASK:
            r.update({"ei": 1000 + seq, "ee": 500 + seq, "p": 1200})
        r.update(values)
        return {k: v for k, v in r.items() if v is not None}

    def reading(self, seq, t=None, st=0, kid=None, **values):
        """COSE_Sign1 bytes of a reading (measurements derived from seq unless given)."""
        payload = reading.encode_payload(self.fields(seq, t, st, **values))
        return cose.sign1(payload, kid or self.device_id, self.sign)

    def batch(self, seqs, **kw):
        return exchange.encode_batch([self.reading(s, **kw) for s in seqs])


def write_config(directory, **sections):
    """gateway.toml in ``directory`` for tests: loopback, any free ports, inline verify."""
    overrides = {
        "gateway": {"data_dir": "."},
        "coap": {"bind": "127.0.0.1", "port": 0},
        "http": {"bind": "127.0.0.1", "port": 0},
        "ingest": {"processes": 0},
        "log": {"level": "info", "format": "kv"},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    path = directory / gwconfig.CONFIG_NAME
    path.write_text(gwconfig.render(overrides))
    return gwconfig.load(path)


def register(cfg, *meters, ct_rating_a=None):
    conn = store.open_store(cfg.db_path)
    try:
        for m in meters:
            registry.add_device(conn, m.device_id, m.pubkey, m.model, OWNER,
                                "meter-" + m.device_id.hex()[:4], ct_rating_a)
    finally:
        conn.close()


def stored(cfg):
    """{(device, seq): cose bytes} of every stored reading."""
    conn = sqlite3.connect(cfg.db_path)
    try:
        return {(bytes(d), s): bytes(c)
                for d, s, c in conn.execute("SELECT device, seq, cose FROM readings")}
    finally:
        conn.close()


def rejects_table(cfg):
    conn = sqlite3.connect(cfg.db_path)
    try:
        return {(bytes(d), r): n for d, r, n in conn.execute(
            "SELECT device, reason, count FROM rejects")}
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def running_gateway(cfg, http=True):
    gw = Gateway(cfg, http=http)
    try:
        await gw.start()
        # The front end the test asked for is the one serving (in this process, unless
        # the test asked for ingest processes: they serve the lean front end).
        if gw.service is not None:
            assert type(gw.coap).__module__ == _FRONT_END_MODULES[cfg.coap.front_end]
        else:
            assert cfg.coap.front_end == "lean" and gw.processes.processes
        yield gw
    finally:
        await gw.stop()


@contextlib.asynccontextmanager
async def coap_client():
    ctx = await aiocoap.Context.create_client_context()
    try:
        yield ctx
    finally:
        await ctx.shutdown()


async def coap_request(ctx, port, path="r", payload=b"", code=Code.POST, content_format=60,
                       **options):
    """One request with aiocoap -> (code as "c.dd", decoded response map or None, message)."""
    msg = Message(code=code, payload=payload, uri=f"coap://127.0.0.1:{port}/{path}")
    if content_format is not None:
        msg.opt.content_format = content_format
    for name, value in options.items():
        setattr(msg.opt, name, value)
    response = await asyncio.wait_for(ctx.request(msg).response, 20)
    try:
        body = exchange.decode_response(response.payload)
    except DecodeError:
        body = None
    return str(response.code).split(" ")[0], body, response


def coap_datagram(mid, token=b"tk", path="r", payload=b"", code=Code.POST, content_format=60,
                  mtype=Type.CON):
    """Raw CoAP bytes built with aiocoap's sans-IO encoder."""
    msg = Message(code=code, payload=payload)
    msg.mtype = mtype
    msg.mid = mid
    msg.token = token
    msg.opt.uri_path = (path,) if isinstance(path, str) else path
    if content_format is not None:
        msg.opt.content_format = content_format
    return msg.encode()


class RawUdp:
    """A UDP socket on loopback that sends raw datagrams and reads raw replies."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def send(self, data):
        self.sock.sendto(data, ("127.0.0.1", self.port))

    async def recv(self, timeout=5.0):
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)

    async def exchange(self, data, timeout=5.0):
        """Send a CON request, return the decoded piggybacked (or separate) response."""
        self.send(data)
        request = Message.decode(data)
        while True:
            reply = Message.decode(await self.recv(timeout))
            if reply.code == Code.EMPTY:
                continue  # empty ACK: the response follows separately
            if reply.token == request.token:
                if reply.mtype == Type.CON:  # separate response: acknowledge it
                    ack = Message(code=Code.EMPTY)
                    ack.mtype, ack.mid = Type.ACK, reply.mid
                    self.send(ack.encode())
                return reply

    async def silence(self, seconds=0.3):
        """True when nothing arrives for ``seconds``."""
        try:
            await self.recv(seconds)
        except TimeoutError:
            return True
        return False

    def close(self):
        self.sock.close()


def response_map(message):
    return exchange.decode_response(message.payload)
