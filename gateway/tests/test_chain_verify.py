"""Proof bundles on a real anvil: a genuine reading verifies (signature, Merkle path, the
settlement contract's own code and the root it holds, proven from the block header, the
device key in the registry); a tampered reading, a wrong Merkle path, a forged storage
proof, header or code, another key, a relabelled interval, too few confirmations and two
nodes that disagree are rejected."""

import copy
import json

import pytest
from chain_community import Community, L

from gateway.chain import bundle
from gateway.chain.errors import BundleError
from gateway.chain.outbox import Outbox


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    c = Community(tmp_path_factory.mktemp("verify"))
    first = c.first
    c.store_readings(first * L, (first + 1) * L + 30)
    c.batcher().build(first, first + 1)
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    for _ in range(10):
        if outbox.step().get(first) == "confirmed":
            break
    rid = c.conn.execute("SELECT reading_id FROM chain_leaves WHERE leaf_index = 37"
                         ).fetchone()[0]
    c.bundle = bundle.export_bundle(c.conn, rid, c.port.chain_id)
    yield c
    c.close()


class ForgingPort:
    """The real node, with some answers forged."""

    def __init__(self, port, header=None, proof_response=None, code=None, head=None):
        self.port, self.url, self.chain_id = port, port.url, port.chain_id
        self._header, self._proof, self._code, self._head = header, proof_response, code, head

    def get_chain_id(self):
        return self.port.get_chain_id()

    def get_block_number(self):
        return self._head if self._head is not None else self.port.get_block_number()

    def get_block_header(self, block):
        h = copy.deepcopy(self.port.get_block_header(block))
        return self._header(h) if self._header else h

    def get_proof(self, address, slots, block):
        p = copy.deepcopy(self.port.get_proof(address, slots, block))
        return self._proof(p) if self._proof else p

    def get_code(self, address, block):
        code = self.port.get_code(address, block)
        return self._code(code) if self._code else code


def _failed(report):
    return {c.name for c in report.checks if not c.ok}


def test_genuine_reading_verifies(submitted):
    c = submitted
    b = json.loads(json.dumps(c.bundle))  # survives JSON
    report = bundle.verify_bundle(b, c.port)
    assert report.ok, bundle.format_report(report)
    assert [x.name for x in report.checks] == [
        "reading", "signature", "merkle", "chain", "confirmations", "contract", "storage",
        "interval", "device key", "settled"]
    assert report.warnings == []
    assert report.fields["dev"].hex() == b["device_id"]
    text = bundle.format_report(report)
    assert "VALID: the reading is signed" in text and "[warn]" not in text
    assert "import counter" in text and " kWh" in text  # human units
    assert f"block {b['block_number']}" in text
    assert b["root"][:16] in text  # which root holds it


def test_a_key_not_checked_on_chain_is_a_warning_not_ok(submitted):
    c = submitted
    b = dict(c.bundle, meter_index=None)
    report = bundle.verify_bundle(b, c.port)
    assert report.ok and [w.name for w in report.warnings] == ["device key"]
    text = bundle.format_report(report)
    assert "[warn] device key: NOT checked on chain" in text and "[ok] device key" not in text
    assert "VALID, WITH 1 WARNING" in text


def test_tampered_reading_is_rejected(submitted):
    c = submitted
    b = dict(c.bundle)
    raw = bytearray.fromhex(b["cose"])
    raw[-1] ^= 1  # a bit of the signature
    b["cose"] = raw.hex()
    report = bundle.verify_bundle(b, c.port)
    assert not report.ok
    assert {"signature", "merkle", "storage"} <= _failed(report)


def test_changed_measurement_is_rejected(submitted):
    # re-encode the payload with another counter value, keep the old signature
    from wattcore import cbor, cose, reading
    c = submitted
    b = dict(c.bundle)
    s = cose.decode_sign1(bytes.fromhex(b["cose"]))
    fields = reading.decode_payload(s.payload)
    fields["ei"] += 1
    forged = cbor.dumps(cbor.Tag(18, [s.protected, {4: s.kid},
                                      reading.encode_payload(fields), s.signature]))
    b["cose"] = forged.hex()
    report = bundle.verify_bundle(b, c.port)
    assert {"signature", "merkle", "storage"} <= _failed(report)


def test_wrong_merkle_path_is_rejected(submitted):
    c = submitted
    b = dict(c.bundle)
    siblings = list(b["siblings"])
    siblings[2] = "00" * 31 + "01"
    b["siblings"] = siblings
    assert {"merkle", "storage"} <= _failed(bundle.verify_bundle(b, c.port))
    b = dict(c.bundle, leaf_index=c.bundle["leaf_index"] ^ 1)
    assert "storage" in _failed(bundle.verify_bundle(b, c.port))
    b = dict(c.bundle, salt="11" * 32)
    assert "storage" in _failed(bundle.verify_bundle(b, c.port))


def test_a_relabelled_interval_is_rejected(submitted):
    # the interval length and the root's intervals come from the chain, not the bundle
    c = submitted
    for change in ({"interval": c.bundle["interval"] + 1}, {"intervals": 2},
                   {"gateway": c.deployment.admin}):
        report = bundle.verify_bundle(dict(c.bundle, **change), c.port)
        assert "storage" in _failed(report), change


def test_forged_storage_proof_is_rejected(submitted):
    c = submitted

    def fake_value(p):
        p["storageProof"][0]["value"] = "0x" + "ab" * 32
        return p

    def fake_node(p):
        node = bytearray.fromhex(p["storageProof"][0]["proof"][-1][2:])
        node[-1] ^= 1
        p["storageProof"][0]["proof"][-1] = "0x" + node.hex()
        return p

    def fake_state_root(h):
        h["stateRoot"] = "0x" + "cd" * 32
        return h

    for port in (ForgingPort(c.port, proof_response=fake_value),
                 ForgingPort(c.port, proof_response=fake_node),
                 ForgingPort(c.port, header=fake_state_root)):
        report = bundle.verify_bundle(c.bundle, port)
        assert "storage" in _failed(report)
        assert "rejected" in next(x.detail for x in report.checks if x.name == "storage")


def test_forged_contract_code_is_rejected(submitted):
    c = submitted
    # code that does not hash to the proven code hash
    port = ForgingPort(c.port, code=lambda code: code[:-1] + bytes([code[-1] ^ 1]))
    assert "storage" in _failed(bundle.verify_bundle(c.bundle, port))
    # a proven contract that is not this version's Settlement (the registry here)
    b = dict(c.bundle, contract=c.deployment.registry)
    assert "contract" in _failed(bundle.verify_bundle(b, c.port))


def test_other_device_key_is_rejected(submitted):
    c = submitted
    other = next(m for m in c.members if m.meter.device_id.hex() != c.bundle["device_id"])
    b = dict(c.bundle, pubkey=other.meter.pubkey.hex())
    assert {"signature", "device key"} <= _failed(bundle.verify_bundle(b, c.port))


def test_wrong_block_hash_or_chain_is_rejected(submitted):
    c = submitted
    b = dict(c.bundle, block_hash="ee" * 32)
    assert "storage" in _failed(bundle.verify_bundle(b, c.port))
    b = dict(c.bundle, chain_id=1)
    assert "chain" in _failed(bundle.verify_bundle(b, c.port))


def test_confirmations_and_a_second_node(submitted):
    c = submitted
    head = c.port.get_block_number()
    depth = head - c.bundle["block_number"] + 1
    assert bundle.verify_bundle(c.bundle, c.port, confirmations=depth).ok
    report = bundle.verify_bundle(c.bundle, c.port, confirmations=depth + 1)
    assert _failed(report) == {"confirmations"}
    # a second node that agrees; one that has another block at that height refuses
    assert bundle.verify_bundle(c.bundle, c.port, second=c.port).ok

    def other_block(h):
        h["hash"] = "0x" + "99" * 32
        return h

    report = bundle.verify_bundle(c.bundle, c.port, second=ForgingPort(c.port,
                                                                       header=other_block))
    assert _failed(report) == {"second node"}
    assert "DISAGREE" in bundle.format_report(report)
    assert [x.name for x in report.checks][-1] == "second node"  # nothing after it


def test_unsubmitted_reading_has_no_bundle(submitted):
    c = submitted
    c.store_readings((c.first + 5) * L, (c.first + 5) * L)
    rid = c.conn.execute("SELECT max(id) FROM readings").fetchone()[0]
    with pytest.raises(BundleError, match="under no root yet"):
        bundle.export_bundle(c.conn, rid, c.port.chain_id)
    with pytest.raises(BundleError, match="version"):
        bundle.verify_bundle({"version": 99}, c.port)
