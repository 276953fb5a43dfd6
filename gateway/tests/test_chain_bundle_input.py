"""A proof bundle is input from anyone: a malformed one is refused with BundleError
naming the field, never a traceback. Runs on a bundle recorded from a real anvil with
the node's answers (tools/fuzz/corpus/bundle), replayed by a scripted node."""

import json
from pathlib import Path

import pytest

from gateway.chain import bundle, contracts
from gateway.chain.errors import BundleError, RpcError

SEEDS = Path(__file__).resolve().parents[2] / "tools" / "fuzz" / "corpus" / "bundle"


class RecordedNode:
    """Answers what the real node answered when the bundle was recorded."""

    def __init__(self, script):
        self.script, self.proofs = script, list(script["proofs"])

    def get_chain_id(self):
        return self.script["chain_id"]

    def get_block_number(self):
        return self.script["head"]

    def get_code(self, address, block):
        runtime = contracts.artifact("Settlement")["bytecode_runtime"][2:]
        return bytes.fromhex(runtime + self.script["immutables"])

    def get_block_header(self, block):
        return self.script["headers"][str(block)]

    def get_proof(self, address, slots, block):
        if not self.proofs:
            raise RpcError("no more recorded answers")
        return self.proofs.pop(0)

    def get_transaction(self, tx_hash):
        if tx_hash not in self.script.get("transactions", {}):
            raise RpcError(f"no recorded transaction {tx_hash}")
        return self.script["transactions"][tx_hash]


@pytest.fixture
def recorded():
    scripts = [json.loads(p.read_text()) for p in SEEDS.iterdir()]
    return max(scripts, key=lambda s: len(s["proofs"]))  # the one with the key check


def test_the_recorded_bundle_verifies(recorded):
    report = bundle.verify_bundle(recorded["bundle"], RecordedNode(recorded))
    assert report.ok and [c.name for c in report.checks] == [
        "reading", "signature", "merkle", "chain", "confirmations", "contract", "storage",
        "interval", "device key", "settled"]
    # the submission's transaction: checked if it was recorded, else a warning, not [ok]
    settled = report.checks[-1]
    assert settled.warn == (not recorded.get("transactions"))


@pytest.mark.parametrize("field,value,message", [
    # found by the fuzzer (tools/fuzz/regressions/bundle): a ValueError traceback before
    ("gateway", "0x" + "ab" * 20 + "8", "'gateway' is not an account address"),
    ("pubkey", "04" + "00" * 64, "'pubkey' is not a P-256 public key"),
    ("contract", 42, "'contract' is not an account address"),
    ("intervals", -1, "'intervals' must be an integer"),
    ("meter_index", "3", "'meter_index' must be an integer"),
    ("siblings", "ab" * 32, "'siblings' must be a list"),
    ("salt", "zz", "'salt' is not hex"),
])
def test_a_malformed_field_is_refused_by_name(recorded, field, value, message):
    data = dict(recorded["bundle"], **{field: value})
    with pytest.raises(BundleError, match=message):
        bundle.verify_bundle(data, RecordedNode(recorded))


def test_a_key_off_the_curve_is_refused_even_with_a_valid_prefix(recorded):
    key = bytearray.fromhex(recorded["bundle"]["pubkey"])
    key[-1] ^= 1  # y no longer matches x
    with pytest.raises(BundleError, match="not a P-256 public key"):
        bundle.verify_bundle(dict(recorded["bundle"], pubkey=key.hex()),
                             RecordedNode(recorded))
