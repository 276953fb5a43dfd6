"""Write the seed corpus of every fuzz target (tools/fuzz/corpus/TARGET/).

    python -m tools.fuzz.seeds            # everything but the bundle seeds
    python -m tools.fuzz.seeds --bundle   # also the bundle seeds (starts an anvil; slow)

Seeds are valid inputs (the protocol vectors, the repository's board and meter files,
a default gateway.toml, a real proof bundle with the node's answers) and a few near
misses, so the fuzzer starts deep inside each parser instead of at its first byte check.
Files are named by content: re-running adds nothing that is already there.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

from tools.fuzz.targets import CORPUS, _vectors

ROOT = Path(__file__).resolve().parents[2]


def _write(target, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("seed-" + hashlib.sha1(data).hexdigest()[:16])
    path.write_bytes(data)


def protocol_seeds():
    from wattcore import cbor, coap, exchange, modbus_rtu

    v = _vectors()
    readings = v["readings"]
    payloads = [bytes.fromhex(r["payload"]) for r in readings]
    signed = [bytes.fromhex(r["cose_sign1"]) for r in readings]
    batch = bytes.fromhex(v["batch"]["payload"])
    messages = [bytes.fromhex(m["message"]) for m in v["coap"].values()]
    responses = [bytes.fromhex(m["payload"]) for m in v["coap"].values() if "payload" in m]

    for m in messages:
        _write("coap", m)
        _write("coap_lean", m)
    extra = [
        coap.encode(coap.CON, coap.POST, 7, b"\x01", [(coap.OPT_URI_PATH, b"r"),
                    (coap.OPT_CONTENT_FORMAT, b"\x3c"), (coap.OPT_BLOCK1, b"\x0e")], batch),
        coap.encode(coap.NON, coap.POST, 8, b"", [(coap.OPT_URI_HOST, b"gw"),
                    (coap.OPT_URI_PATH, b"r"), (coap.OPT_URI_QUERY, b"a=1")], b"\x80"),
        coap.encode(coap.CON, coap.GET, 9, b"tk", [(coap.OPT_PROXY_URI, b"coap://x/")]),
        coap.encode(coap.CON, coap.EMPTY, 10),
        coap.encode(coap.CON, coap.POST, 11, b"t", [(coap.OPT_URI_PATH, b"r"),
                    (2049, b"odd"), (coap.OPT_SIZE1, b"\x10\x00")], signed[0]),
    ]
    for m in extra:
        _write("coap", m)
        _write("coap_lean", m)

    for data in payloads + signed + responses + [batch]:
        _write("cbor", data)
    for s in signed:
        _write("cose", s)
    for p in payloads:
        _write("reading", p)
    for data in responses + [batch, exchange.encode_batch(signed[:1])]:
        _write("exchange", data)
    for data in [batch, exchange.encode_batch(signed[:1]), exchange.encode_batch(signed * 3)]:
        _write("verify", data)
    # one reading whose map is encoded the long way: the fast path refuses it
    long_way = cbor.dumps(cbor.Tag(18, [b"\xa1\x01\x26", {4: signed[0][9:17]},
                                        payloads[0], signed[0][-64:]]))
    _write("verify", exchange.encode_batch([long_way]))
    _write("signed_batch", b"\xf0\x0d".join(payloads))
    for p in payloads:
        _write("signed_batch", p)

    for count, slave in ((2, 1), (76, 1), (10, 1)):
        for function in (4, 3):
            body = bytes([slave, function, 2 * count]) + bytes(range(2 * count))
            crc = modbus_rtu.crc16(body)
            frame = body + bytes([crc & 0xFF, crc >> 8])
            _write("modbus", bytes([count - 1, function & 1]) + frame)
        body = bytes([1, 0x84, 2])
        crc = modbus_rtu.crc16(body)
        _write("modbus", bytes([count - 1, 0]) + body + bytes([crc & 0xFF, crc >> 8]))


def enrolment_seeds():
    """Requests bound to the targets' fixed code, and records, signed with real keys."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from wattcore import enrolment, exchange

    from gateway import registry
    from tools.fuzz.targets import _ENROL_NOW, ENROL_CODE_RANDOM

    def signer(key):
        def sign(tbs):
            r, s = utils.decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return sign

    code = enrolment.code_from_random(lambda n: ENROL_CODE_RANDOM[:n])
    k = enrolment.code_key(code)
    fresh = ec.generate_private_key(ec.SECP256R1())
    pub = registry.uncompressed(fresh.public_key())
    dev = b"WS" + bytes(range(6))
    _write("enrol", enrolment.sign_request(k, dev, pub, _ENROL_NOW, 1, signer(fresh)))
    _write("enrol", enrolment.sign_request(k, dev, pub, _ENROL_NOW, 3, signer(fresh), sn=77))
    _write("enrol", enrolment.sign_request(enrolment.code_key("0" * 12), dev, pub, _ENROL_NOW,
                                           2, signer(fresh)))
    _write("enrol", exchange.encode_response(_ENROL_NOW, reason="code-used"))
    _write("enrol", enrolment.format_code(code).encode())
    v = _vectors()
    vkey = ec.derive_private_key(int(v["private_key"], 16), ec.SECP256R1())
    vdev, vpub = bytes.fromhex(v["device_id"]), bytes.fromhex(v["public_key"])
    record = '{"installer": "A. Fitter", "checks": {"ct_direction": {"ok": true}}}'
    _write("commissioning", enrolment.sign_record(vdev, vpub, _ENROL_NOW, record, signer(vkey)))
    _write("commissioning", enrolment.sign_record(vdev, vpub, _ENROL_NOW, "{}", signer(vkey)))


def config_seeds():
    from gateway import config as gwconfig

    for path in sorted((ROOT / "boards").glob("*.toml")):
        text = path.read_text()
        _write("board_toml", text.replace(f'id = "{path.stem}"', 'id = "fuzz"').encode())
    for path in sorted((ROOT / "boards" / "meters").glob("*.toml")):
        text = path.read_text()
        _write("meter_toml", text.replace(f'id = "{path.stem}"', 'id = "fuzz"').encode())
    _write("gateway_toml", gwconfig.render().encode())
    _write("gateway_toml", gwconfig.render({"coap": {"port": 0}, "ingest": {"processes": 2},
                                            "chain": {"rpc_url": "http://127.0.0.1:8545"}}
                                           ).encode())


def bundle_seeds():
    """A real bundle and the answers of a real anvil to the verifier's questions."""
    sys.path.insert(0, str(ROOT / "gateway" / "tests"))  # the chain test bed
    import tempfile

    from chain_community import Community, L

    from gateway.chain import bundle, contracts
    from gateway.chain.outbox import Outbox

    with tempfile.TemporaryDirectory() as folder:
        c = Community(Path(folder))
        try:
            first = c.first
            c.store_readings(first * L, (first + 1) * L + 30)
            c.batcher().build(first, first + 1)
            outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
            for _ in range(10):
                if outbox.step().get(first) == "confirmed":
                    break
            rid = c.conn.execute("SELECT reading_id FROM chain_leaves WHERE leaf_index = 5"
                                 ).fetchone()[0]
            data = bundle.export_bundle(c.conn, rid, c.port.chain_id)
            recorder = _Recorder(c.port)
            assert bundle.verify_bundle(data, recorder).ok
            # the contract's code is this version's Settlement and its immutables: only
            # the immutables are kept (the fuzz node adds the compiled runtime back)
            runtime = contracts.artifact("Settlement")["bytecode_runtime"][2:]
            assert recorder.code.startswith(runtime)
            script = {"bundle": data, "chain_id": recorder.chain_id, "head": recorder.head,
                      "headers": recorder.headers, "proofs": recorder.proofs,
                      "immutables": recorder.code[len(runtime):],
                      "transactions": recorder.transactions}
            _write("bundle", json.dumps(script, separators=(",", ":")).encode())
            without_index = dict(data, meter_index=None)
            script = dict(script, bundle=without_index, proofs=recorder.proofs[:1])
            _write("bundle", json.dumps(script, separators=(",", ":")).encode())
        finally:
            c.close()


class _Recorder:
    def __init__(self, port):
        self.port, self.headers, self.proofs, self.chain_id = port, {}, [], None
        self.head, self.code, self.transactions = None, None, {}

    def get_chain_id(self):
        self.chain_id = self.port.get_chain_id()
        return self.chain_id

    def get_block_number(self):
        self.head = self.port.get_block_number()
        return self.head

    def get_code(self, address, block):
        code = self.port.get_code(address, block)
        self.code = code.hex()
        return code

    def get_block_header(self, block):
        header = self.port.get_block_header(block)
        self.headers[str(block)] = header
        return header

    def get_proof(self, address, slots, block):
        answer = self.port.get_proof(address, slots, block)
        self.proofs.append(answer)
        return answer

    def get_transaction(self, tx_hash):
        answer = self.port.get_transaction(tx_hash)
        self.transactions[tx_hash] = answer
        return answer


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.fuzz.seeds", description=__doc__)
    p.add_argument("--bundle", action="store_true", help="also record the bundle seeds")
    args = p.parse_args(argv)
    protocol_seeds()
    enrolment_seeds()
    config_seeds()
    if args.bundle:
        bundle_seeds()
    print(f"seeds in {CORPUS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
