"""A test CoAP endpoint that plays the gateway for the hardware-in-the-loop tests.

It answers ``GET /t`` and ``POST /r`` as docs/protocol.md says, with implementations
independent of the firmware's: aiocoap frames the CoAP messages, cbor2 decodes the
readings and ``cryptography`` verifies every ES256 signature against the public key the
device printed when provisioned. It records what arrived so tests can check the device:
every stored reading, the order of first arrivals, batch sizes, duplicates, conflicts
(same seq, other bytes: a reused sequence number) and any protocol violation.

``mode`` switches the behaviour while a test runs: ``"normal"``, ``"mute"`` (drop
every datagram: the gateway is down), ``"mute_posts"`` (answer only ``GET /t``), or
``("code", coap_code, payload_map, options)`` to answer every POST with that code.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from dataclasses import dataclass, field

import cbor2
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from wattcore.exchange import decode_batch

FAULT_MASK = 0x09FE
MEASUREMENT_KEYS = (5, 6, 7, 8, 9, 10, 11)
PROTECTED_ES256 = bytes.fromhex("a10126")


@dataclass
class Stored:
    dev: bytes
    seq: int
    cose: bytes
    fields: dict  # integer-keyed payload map
    arrival: float = 0.0


@dataclass
class EndpointLog:
    stored: dict = field(default_factory=dict)  # (dev, seq) -> Stored
    first_arrivals: list = field(default_factory=list)  # (dev, seq) in order of storing
    batch_sizes: list = field(default_factory=list)
    duplicates: int = 0
    conflicts: list = field(default_factory=list)
    violations: list = field(default_factory=list)  # protocol breaches by a device
    time_requests: int = 0
    posts: int = 0


def _reply(request: Message, code, payload: bytes = b"", **options) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        msg = Message(code=code, payload=payload, **options)
        msg.mtype = Type.ACK
        msg.mid = request.mid
        msg.token = request.token
        if payload:
            msg.opt.content_format = 60
    return msg.encode()


class CoapEndpoint(asyncio.DatagramProtocol):
    def __init__(self, time_fn):
        self.time_fn = time_fn  # -> the gateway's unix time (simulated in tests)
        self.keys: dict[bytes, ec.EllipticCurvePublicKey] = {}
        self.log = EndpointLog()
        self.mode: object = "normal"
        self.transport: asyncio.DatagramTransport | None = None
        self.lock = threading.Lock()

    def register(self, device_id: bytes, public_key: bytes) -> None:
        self.keys[device_id] = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                                            public_key)

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr):
        if self.mode == "mute":
            return
        try:
            request = Message.decode(data)
        except Exception as exc:  # noqa: BLE001 - a test double records, never crashes
            self.log.violations.append(f"undecodable CoAP datagram: {exc}")
            return
        if request.mtype != Type.CON:
            return
        with self.lock:
            out = self._handle(request)
        if out is not None:
            self.transport.sendto(out, addr)

    def _time_map(self, extra: dict | None = None) -> bytes:
        m = {2: int(self.time_fn())}
        m.update(extra or {})
        return cbor2.dumps(m)

    def _handle(self, request: Message) -> bytes | None:
        path = "/".join(request.opt.uri_path)
        if request.code == Code.GET and path == "t":
            self.log.time_requests += 1
            return _reply(request, Code.CONTENT, self._time_map())
        if self.mode == "mute_posts":
            return None
        if request.code != Code.POST or path != "r":
            return _reply(request, Code.NOT_FOUND, self._time_map())
        self.log.posts += 1
        if isinstance(self.mode, tuple) and self.mode[0] == "code":
            _, code, extra, options = self.mode
            return _reply(request, code, self._time_map(extra), **options)
        if request.opt.content_format != 60:
            return _reply(request, Code.UNSUPPORTED_CONTENT_FORMAT, self._time_map())
        try:
            items = decode_batch(request.payload)
        except Exception:  # noqa: BLE001
            self.log.violations.append("undecodable batch")
            return _reply(request, Code.BAD_REQUEST, self._time_map({4: "cbor"}))
        self.log.batch_sizes.append(len(items))
        if len(items) > 8:
            self.log.violations.append(f"batch of {len(items)} readings (device max 8)")
        ack = None
        last_seq = None
        for raw in items:
            code, reason, seq = self._store(raw, last_seq)
            if code is not None:
                extra = {4: reason}
                if seq is not None:
                    extra[3] = seq
                if ack is not None:
                    extra[1] = ack
                return _reply(request, code, self._time_map(extra))
            ack = last_seq = seq
        return _reply(request, Code.CHANGED, self._time_map({1: ack}))

    def _store(self, raw: bytes, last_seq):
        tag = cbor2.loads(raw)
        if not isinstance(tag, cbor2.CBORTag) or tag.tag != 18 or len(tag.value) != 4:
            self.log.violations.append("not a COSE_Sign1")
            return Code.BAD_REQUEST, "cose", None
        protected, unprotected, payload, sig = tag.value
        kid = unprotected.get(4)
        if protected != PROTECTED_ES256 or len(sig) != 64 or set(unprotected) != {4}:
            self.log.violations.append("bad COSE headers")
            return Code.BAD_REQUEST, "cose", None
        fields = cbor2.loads(payload)
        seq = fields.get(2)
        if fields.get(1) != kid:
            self.log.violations.append("kid differs from dev")
            return Code.BAD_REQUEST, "kid-mismatch", seq
        key = self.keys.get(kid)
        if key is None:
            return Code.FORBIDDEN, "unknown-device", seq
        to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                   int.from_bytes(sig[32:], "big"))
        try:
            key.verify(der, to_sign, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            self.log.violations.append(f"bad signature seq={seq}")
            return Code.UNAUTHORIZED, "bad-signature", seq
        if cbor2.dumps(fields, canonical=True) != payload:
            self.log.violations.append(f"non-canonical payload seq={seq}")
        if fields.get(4, 0) & FAULT_MASK and any(k in fields for k in MEASUREMENT_KEYS):
            self.log.violations.append(f"fault reading with measurements seq={seq}")
            return Code.BAD_REQUEST, "schema", seq
        if last_seq is not None and seq <= last_seq:
            self.log.violations.append(f"batch not in increasing seq order at {seq}")
        prior = self.log.stored.get((kid, seq))
        if prior is not None:
            if prior.cose != raw:
                self.log.conflicts.append((kid, seq))
                return Code.CONFLICT, "seq-reuse", seq
            self.log.duplicates += 1
            return None, None, seq
        self.log.stored[(kid, seq)] = Stored(kid, seq, raw, fields, time.monotonic())
        self.log.first_arrivals.append((kid, seq))
        return None, None, seq

    # ---- views for tests -------------------------------------------------------------------

    def readings(self, dev: bytes) -> list[Stored]:
        with self.lock:
            return sorted((s for s in self.log.stored.values() if s.dev == dev),
                          key=lambda s: s.seq)

    def seqs(self, dev: bytes) -> set[int]:
        with self.lock:
            return {seq for (d, seq) in self.log.stored if d == dev}


class Background:
    """An asyncio loop in a thread, hosting the endpoint and meter simulators."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def start_endpoint(time_fn, host: str = "127.0.0.1", port: int = 0):
    loop = asyncio.get_running_loop()
    transport, endpoint = await loop.create_datagram_endpoint(lambda: CoapEndpoint(time_fn),
                                                              local_addr=(host, port))
    return endpoint, transport.get_extra_info("sockname")[1]
