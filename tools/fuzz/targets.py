"""Fuzz targets: every parser that takes bytes from outside the gateway or the device.

Each target is a function ``build() -> one(data: bytes)``. ``build`` imports what it
tests (so that the fuzzer's instrumentation, set up around the call, covers it) and
returns the function the fuzzer calls with each input. ``one`` lets the parser's own
error for bad input pass (the errors it promises: ``DecodeError``, ``ConfigError``, ...)
and turns everything else into a crash: any other exception, and any broken property
(``_fail``), such as two decoders that disagree on the same bytes.

- ``coap``: ``wattcore.coap.decode``, and the encode round trip (any host on the LAN;
  the gateway, for a device);
- ``coap_lean``: the gateway's CoAP front end, datagram to answer (any host on the LAN);
- ``cbor``: ``wattcore.cbor``, strict and canonical, against cbor2 (meters, the gateway);
- ``cose``: ``wattcore.cose.decode_sign1``, re-encoding gives the same bytes (meters);
- ``reading``: ``wattcore.reading.decode_payload``, re-encoding too (meters);
- ``exchange``: the batch and response decoders (meters; the gateway, for a device);
- ``verify``: the gateway's fast decoder against wattcore's strict ones (meters);
- ``signed_batch``: ``gateway.verify.check_batch`` on readings signed with the
  registered key, so the checks after the signature are reached (a registered meter);
- ``enrol``, ``commissioning``: the gateway's ``POST /e`` and ``POST /c`` on a fresh copy
  of a database with an open invite and a registered device (anyone on the LAN), and
  the device's reading of the answer and of a typed code;
- ``modbus``: Modbus RTU reply framing and register decoding (the meter on the bus);
- ``board_toml``, ``meter_toml``: ``tools.board_config`` (a board or meter file);
- ``gateway_toml``: ``gateway.config`` (the operator's gateway.toml);
- ``bundle``: ``gateway.chain.bundle.verify_bundle``, with the node's answers taken from
  the input too (whoever hands over a proof bundle, and a lying RPC node).
"""

import json
import os
import tempfile
from pathlib import Path


class Crash(AssertionError):
    """A broken property: the fuzzer reports it like any uncaught exception."""


def _fail(message):
    raise Crash(message)


# -- CoAP ------------------------------------------------------------------------------


def coap():
    from wattcore import coap as wcoap
    from wattcore.errors import DecodeError, EncodeError

    def one(data):
        try:
            msg = wcoap.decode(data)
        except DecodeError:
            return
        # What decodes encodes again (options sorted by number as decoded) to bytes that
        # decode to the same message.
        try:
            again = wcoap.encode(msg.mtype, msg.code, msg.mid, msg.token, msg.options,
                                 msg.payload)
        except EncodeError as e:
            _fail(f"a decoded message does not encode: {e}")
        back = wcoap.decode(again)
        if (back.mtype, back.code, back.mid, back.token, back.options, back.payload) != (
                msg.mtype, msg.code, msg.mid, msg.token, msg.options, msg.payload):
            _fail("decode(encode(decode(x))) differs from decode(x)")

    return one


def coap_lean():
    import asyncio

    from wattcore import coap as wcoap
    from wattcore import exchange

    from gateway.coap_lean import LeanCoapServer
    from gateway.ingest import CoapResponse

    sent = []

    class Transport:
        def sendto(self, data, addr):
            sent.append(data)

        def close(self):
            pass

    async def handle(request):
        if request.path == ("r",):
            return CoapResponse(exchange.CHANGED, exchange.encode_response(1, ack=1))
        return CoapResponse(exchange.NOT_FOUND, b"")

    loop = asyncio.new_event_loop()

    async def exchange_twice(data):
        # A fresh server per input (so a crash replays from its input alone); the datagram
        # arrives twice: the second is a duplicate and must get the first answer again.
        server = LeanCoapServer(handle, "127.0.0.1", 0, dedup_max_entries=64,
                                clock=lambda: 0.0)
        server.connection_made(Transport())
        answers = []
        for _ in range(2):
            sent.clear()
            server.datagram_received(data, ("192.0.2.1", 5683))
            while server._tasks:
                await asyncio.gather(*server._tasks)
            answers.append(list(sent))
        return answers

    def one(data):
        first, second = loop.run_until_complete(exchange_twice(data))
        if len(first) > 1 or len(second) > 1:
            _fail(f"{len(first)} and {len(second)} answers to one datagram")
        for reply in first:
            msg = wcoap.decode(reply)  # what the server sends must be valid CoAP
            if msg.mtype == wcoap.ACK and msg.mid != (data[2] << 8 | data[3]):
                _fail("an ACK with another message id than the request's")
            if msg.mtype == wcoap.ACK and msg.code != wcoap.EMPTY and second != first:
                _fail("a duplicate CON got another answer than the first")

    return one


# -- CBOR and the protocol's layers ------------------------------------------------------


def _plain(value):
    # wattcore's value with every container as cbor2 returns it; None when it holds a
    # tag (cbor2 gives tags meaning, so its values differ by design).
    from wattcore import cbor

    if isinstance(value, cbor.Tag):
        return None
    if isinstance(value, list):
        items = [_plain(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value,
                                                                         strict=True)) else items
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            p = _plain(v)
            if p is None and v is not None:
                return None
            out[k] = p
        return out
    return value


def cbor():
    import cbor2
    from wattcore import cbor as wcbor
    from wattcore.errors import DecodeError

    def one(data):
        try:
            value = wcbor.loads(data)
        except DecodeError:
            value = _REFUSED
        try:
            canonical = wcbor.loads(data, True)
        except DecodeError:
            canonical = _REFUSED
        if canonical is not _REFUSED:
            if value is _REFUSED or value != canonical:
                _fail("the canonical decoder accepts what the plain one refuses or reads "
                      "differently")
            if wcbor.dumps(canonical) != bytes(data):
                _fail("a canonical item does not encode back to the same bytes")
        if value is _REFUSED:
            return
        plain = _plain(value)
        if plain is None and value is not None:
            return
        try:
            theirs = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, RecursionError) as e:
            _fail(f"wattcore accepts what cbor2 refuses: {e}")
        if theirs != plain or type(theirs) is not type(plain):
            _fail(f"wattcore reads {plain!r}, cbor2 reads {theirs!r}")

    return one


_REFUSED = object()


def cose():
    from wattcore import cose as wcose
    from wattcore.errors import DecodeError

    def one(data):
        try:
            sign1 = wcose.decode_sign1(data)
        except DecodeError:
            return
        again = wcose.sign1(sign1.payload, sign1.kid, lambda tbs: sign1.signature)
        if again != bytes(data):
            _fail("an accepted COSE_Sign1 is not the one encoding of its content")

    return one


def reading():
    from wattcore import reading as wreading
    from wattcore.errors import DecodeError

    def one(data):
        try:
            fields = wreading.decode_payload(data)
        except DecodeError:
            return
        if wreading.encode_payload(fields) != bytes(data):
            _fail("an accepted reading is not the one encoding of its fields")

    return one


def exchange():
    from wattcore import exchange as wexchange
    from wattcore.errors import DecodeError

    def one(data):
        try:
            items = wexchange.decode_batch(data)
        except DecodeError:
            pass
        else:
            if not 1 <= len(items) <= wexchange.MAX_BATCH:
                _fail(f"a batch of {len(items)} items accepted")
            if wexchange.encode_batch(items) != bytes(data):
                _fail("an accepted batch is not its items behind an array head")
        try:
            response = wexchange.decode_response(data)
        except DecodeError:
            return
        if not isinstance(response.get("time"), int):
            _fail("a response without a time accepted")

    return one


# -- the gateway's reading decoder -------------------------------------------------------


def _vectors():
    return json.loads((Path(__file__).resolve().parents[2] / "docs" / "vectors"
                       / "protocol-vectors.json").read_text())


def _credential():
    from gateway.verify import Credential

    v = _vectors()
    return Credential(bytes.fromhex(v["device_id"]), bytes.fromhex(v["public_key"]),
                      20_000, False)


# The reading vectors are stamped 2026-07; a fixed "now" keeps every run reproducible.
_NOW = 1_785_319_300


def _compare_parses(verify, payload):
    # The fast decoder's view of every item against wattcore's strict decoders.
    from wattcore.errors import DecodeError

    def parses(fast):
        try:
            return list(verify._parse_items(payload, fast))
        except DecodeError as e:
            return ("DecodeError", str(e))

    fast, strict = parses(True), parses(False)
    if fast != strict:
        _fail(f"fast and strict decoders disagree: {fast!r} != {strict!r}")


def verify():
    from gateway import verify as gverify
    from gateway.verify import Policy

    credential = _credential()
    policy = Policy(300, 30 * 86400)

    def one(data):
        _compare_parses(gverify, data)
        fast = gverify.check_batch(data, credential, _NOW, policy, fast=True)
        strict = gverify.check_batch(data, credential, _NOW, policy, fast=False)
        if fast != strict:
            _fail(f"check_batch fast {fast!r} != strict {strict!r}")
        hint = gverify.peek_device_id(data)
        if fast.readings and hint != fast.device_id:
            _fail("a batch is accepted for a device its peeked id does not name")

    return one


def signed_batch():
    # The input is split into up to four reading payloads, each signed with the
    # vectors' key: the fuzzer reaches the checks after the signature.
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from wattcore import cose as wcose
    from wattcore import exchange as wexchange

    from gateway import verify as gverify
    from gateway.verify import Policy

    v = _vectors()
    key = ec.derive_private_key(int(v["private_key"], 16), ec.SECP256R1())
    assert key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ) == bytes.fromhex(v["public_key"])
    device = bytes.fromhex(v["device_id"])
    credential = _credential()
    policy = Policy(300, 30 * 86400)
    algorithm = ec.ECDSA(hashes.SHA256())

    def sign(tbs):
        r, s = utils.decode_dss_signature(key.sign(tbs, algorithm))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def one(data):
        payloads = [p for p in data.split(b"\xf0\x0d")[:4]]
        items = [wcose.sign1(p, device, sign) for p in payloads]
        batch = wexchange.encode_batch(items)
        _compare_parses(gverify, batch)
        fast = gverify.check_batch(batch, credential, _NOW, policy, fast=True)
        strict = gverify.check_batch(batch, credential, _NOW, policy, fast=False)
        if fast != strict:
            _fail(f"check_batch fast {fast!r} != strict {strict!r}")
        for checked in fast.readings:
            if checked.seq > gverify.MAX_STORED_SEQ or checked.t > _NOW + 300:
                _fail(f"an implausible reading passed: {checked!r}")
        if fast.reason == "bad-signature":
            _fail("a reading signed with the registered key failed its signature")

    return one


# -- enrolment and commissioning (POST /e, POST /c) --------------------------------------

# A fixed one-time code, so that seeds signed for it reach every check after the binding.
ENROL_CODE_RANDOM = bytes(range(1, 8))
_ENROL_NOW = 1_785_319_300


def _enrol_template():
    # An in-memory gateway database with one open invite and the vectors' device
    # registered (for commissioning records); each input gets a fresh copy of it.
    import sqlite3

    from gateway import enrolment, registry, store

    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    store.migrate(conn)
    enrolment.create_invite(conn, "fuzz", "0x" + "ab" * 20, 3600, now=_ENROL_NOW,
                            random_bytes=lambda n: ENROL_CODE_RANDOM[:n])
    v = _vectors()
    registry.add_device(conn, bytes.fromhex(v["device_id"]), bytes.fromhex(v["public_key"]),
                        "SDM120CT", "0x" + "ab" * 20, "vectors", now=_ENROL_NOW)
    return conn


def _fresh(template):
    import sqlite3

    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    template.backup(conn)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def enrol():
    # The gateway's POST /e on the request, and the device's reading of an answer.
    from wattcore import enrolment as core
    from wattcore import exchange as wexchange
    from wattcore.errors import CodeError, DecodeError

    from gateway import enrolment, registry

    template = _enrol_template()

    def one(data):
        conn = _fresh(template)
        try:
            outcome = enrolment.enrol(conn, data, _ENROL_NOW)
            if outcome.reason is not None and outcome.reason not in enrolment.REASONS:
                _fail(f"unknown reason {outcome.reason!r}")
            if outcome.reason is None and not outcome.repeat:
                sign1, r = core.open_signed(data, core.decode_request)
                if enrolment.signature_ok(r["pub"], sign1.signature,
                                          sign1.to_be_signed(core.AAD_ENROL)) is not True:
                    _fail("a device was enrolled without a valid signature")
                device = registry.get_device(conn, r["dev"])
                if device.pubkey != r["pub"]:
                    _fail("the enrolled key is not the request's")
        finally:
            conn.close()
        try:  # the same bytes as the answer a device reads
            answer = wexchange.decode_response(data)
        except DecodeError:
            answer = {}
        core.outcome(data[0] if data else 0, answer, b"\x00" * 16)
        try:
            core.parse_code(data.decode("utf-8", "replace"))
        except CodeError:
            pass

    return one


def commissioning():
    # The gateway's POST /c on a record, against a registry holding the vectors' device.
    from gateway import commissioning as gcommissioning

    template = _enrol_template()

    def one(data):
        conn = _fresh(template)
        try:
            outcome = gcommissioning.store_record(conn, data, _ENROL_NOW * 1000)
            if outcome.reason is not None and outcome.reason not in gcommissioning.REASONS:
                _fail(f"unknown reason {outcome.reason!r}")
            stored = conn.execute("SELECT count(*) FROM commissioning").fetchone()[0]
            if stored != (outcome.reason is None):
                _fail(f"{stored} records stored for outcome {outcome!r}")
        finally:
            conn.close()

    return one


# -- Modbus RTU ------------------------------------------------------------------------


def modbus():
    from wattcore import modbus_rtu
    from wattcore.errors import DecodeError

    scales = (1, 1000, (1, 10), (3, 7))

    def one(data):
        if len(data) < 2:
            return
        count = data[0] % modbus_rtu.MAX_READ_COUNT + 1
        function = (modbus_rtu.READ_INPUT_REGISTERS if data[1] & 1
                    else modbus_rtu.READ_HOLDING_REGISTERS)
        frame = data[2:]
        try:
            modbus_rtu.reply_length_after_header(frame[:modbus_rtu.HEADER_LENGTH], count)
        except DecodeError:
            pass
        try:
            registers = modbus_rtu.parse_read_reply(frame, 1, function, count)
        except DecodeError:
            registers = frame[3:]  # the decoders below also see what a bad reply holds
        else:
            if len(registers) != 2 * count:
                _fail(f"{len(registers)} register bytes for {count} registers")
        for kind in modbus_rtu.KINDS:
            width = 2 if kind == "u16" else 4
            # the first registers: each decoder sees every kind of word there
            for offset in range(0, min(len(registers), 24) - width + 1, 2):
                for scale in scales:
                    value = modbus_rtu.decode_value(registers, offset, kind, scale)
                    if value is not None and not isinstance(value, int):
                        _fail(f"{kind} decoded to {value!r}")

    return one


# -- configuration files ---------------------------------------------------------------


def _scratch(name):
    # A file in a RAM-backed folder when there is one: written once per input.
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    folder = Path(tempfile.mkdtemp(prefix="wattshare-fuzz-", dir=base))
    return folder / name


def board_toml():
    from tools import board_config
    from tools.errors import ConfigError

    path = _scratch("fuzz.toml")

    def one(data):
        path.write_bytes(data)
        try:
            board = board_config.load_board(path)
        except ConfigError:
            return
        board_config.compile_board(board)

    return one


def meter_toml():
    from tools import board_config
    from tools.errors import ConfigError

    path = _scratch("fuzz.toml")

    def one(data):
        path.write_bytes(data)
        try:
            meter = board_config.load_meter(path)
        except ConfigError:
            return
        board_config.compile_meter(meter)

    return one


def gateway_toml():
    from gateway import config as gwconfig
    from gateway.errors import ConfigError

    path = _scratch("gateway.toml")

    def one(data):
        path.write_bytes(data)
        try:
            cfg = gwconfig.load(path)
        except ConfigError:
            return
        cfg.ingest.process_count()  # the one derived value the gateway computes at start

    return one


# -- proof bundles and the RPC node ------------------------------------------------------


def _settlement_runtime():
    from gateway.chain import contracts

    return bytes.fromhex(contracts.artifact("Settlement")["bytecode_runtime"][2:])


def bundle():
    # The input is a JSON object {"bundle": ..., "chain_id": ..., "head": block,
    # "headers": {block: header}, "proofs": [answer, ...], "immutables": hex,
    # "transactions": {hash: tx}}: a bundle and what a (lying) node answers.
    from gateway.chain import bundle as gbundle
    from gateway.chain.errors import ChainError

    class Node:
        def __init__(self, script):
            self.script = script
            self.proofs = list(script.get("proofs") or [])

        def get_chain_id(self):
            return self.script.get("chain_id")

        def get_block_number(self):
            head = self.script.get("head")
            if isinstance(head, bool) or not isinstance(head, int):
                raise _NodeSaysNo("no head block")
            return head

        def get_code(self, address, block):
            # this version's Settlement runtime and the input's immutables (the seeds
            # stay small; a changed runtime byte fails the code hash anyway)
            try:
                tail = bytes.fromhex(self.script.get("immutables"))
            except (TypeError, ValueError):
                raise _NodeSaysNo("no code") from None
            return _settlement_runtime() + tail

        def get_block_header(self, block):
            headers = self.script.get("headers")
            header = headers.get(str(block)) if isinstance(headers, dict) else None
            if not isinstance(header, dict):
                raise _NodeSaysNo(f"no header for block {block}")
            return header

        def get_proof(self, address, slots, block):
            if not self.proofs or not isinstance(self.proofs[0], dict):
                raise _NodeSaysNo("no proof")
            return self.proofs.pop(0)

        def get_transaction(self, tx_hash):
            txs = self.script.get("transactions")
            if not isinstance(txs, dict) or tx_hash not in txs:
                raise _NodeSaysNo(f"no transaction {tx_hash}")
            return txs[tx_hash]

    from gateway.chain.errors import RpcError

    class _NodeSaysNo(RpcError):
        pass

    def one(data):
        try:
            script = json.loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(script, dict):
            return
        try:
            report = gbundle.verify_bundle(script.get("bundle"), Node(script))
        except ChainError:
            return
        gbundle.format_report(report)
        if report.ok and script.get("bundle", {}).get("cose") is None:
            _fail("a bundle without a reading verified")

    return one


TARGETS = {
    "coap": coap,
    "coap_lean": coap_lean,
    "cbor": cbor,
    "cose": cose,
    "reading": reading,
    "exchange": exchange,
    "verify": verify,
    "signed_batch": signed_batch,
    "enrol": enrol,
    "commissioning": commissioning,
    "modbus": modbus,
    "board_toml": board_toml,
    "meter_toml": meter_toml,
    "gateway_toml": gateway_toml,
    "bundle": bundle,
}

# Packages whose code the fuzzer's coverage instrumentation covers.
INSTRUMENTED = ["wattcore", "gateway", "tools.board_config"]

CORPUS = Path(__file__).resolve().parent / "corpus"


def seed_folder(target):
    return CORPUS / target


def scratch_root():
    return Path(os.environ.get("WATTSHARE_FUZZ_OUT", "out/fuzz"))
