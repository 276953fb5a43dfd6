"""Light-client proof of a Vyper HashMap value on a real anvil: header hash, account
proof, storage proof; forged answers (tampered node, wrong value, wrong slot, altered
stateRoot, wrong block hash) raise ProofError."""

import copy

import pytest
from chain_testbed import base_slot, deploy, read_root, set_root
from eth_utils import keccak

from gateway.chain import proof
from gateway.chain.errors import ProofError
from gateway.errors import GatewayError

GATEWAY = "0x" + "5a" * 20
INTERVAL = 1_764_000_000 // 900
ROOT = keccak(b"interval root")


@pytest.fixture(scope="module")
def deployed(chain, node):
    key = node.account_keys()[2]
    contract = deploy(chain, key)
    receipt = set_root(chain, key, contract, INTERVAL, GATEWAY, ROOT)
    set_root(chain, key, contract, INTERVAL + 1, GATEWAY, keccak(b"next"))  # more nodes
    return contract, receipt


class ForgingPort:
    """The real port, with a function that rewrites answers before they are checked."""

    def __init__(self, chain, header=None, proof_response=None):
        self.chain, self.url, self.chain_id = chain, chain.url, chain.chain_id
        self._header, self._proof = header, proof_response

    def get_block_header(self, block):
        h = copy.deepcopy(self.chain.get_block_header(block))
        return self._header(h) if self._header else h

    def get_proof(self, address, slots, block):
        p = copy.deepcopy(self.chain.get_proof(address, slots, block))
        return self._proof(p) if self._proof else p


def _slot():
    return proof.vyper_hashmap_slot(base_slot("roots"), INTERVAL, GATEWAY)


def _flip(hex_string, at=-1):
    raw = bytearray.fromhex(hex_string[2:])
    raw[at] ^= 0x01
    return "0x" + raw.hex()


def test_vyper_hashmap_slot_matches_storage(chain, deployed):
    contract, _ = deployed
    assert base_slot("roots") == 2  # from the compiler's layout, not counted by hand
    slot = _slot()
    assert chain.get_storage_at(contract, slot) == ROOT
    assert read_root(chain, contract, INTERVAL, GATEWAY) == ROOT
    # Solidity's order, keccak(key || slot), finds nothing
    inner = keccak(INTERVAL.to_bytes(32, "big") + (2).to_bytes(32, "big"))
    solidity = keccak(bytes(12) + bytes.fromhex(GATEWAY[2:]) + inner)
    assert chain.get_storage_at(contract, int.from_bytes(solidity, "big")) == bytes(32)


def test_storage_value_proven_against_trusted_block_hash(chain, deployed):
    contract, receipt = deployed
    proven = proof.proven_storage(chain, contract, _slot(), receipt.block_number,
                                  block_hash=receipt.block_hash)
    assert proven.word == ROOT
    assert proven.block_number == receipt.block_number
    assert proven.block_hash == receipt.block_hash
    header = chain.get_block_header(receipt.block_number)
    assert proven.state_root.hex() == header["stateRoot"][2:]
    # at the latest block too (trusting the node's hash), and an unset key proves 0
    assert proof.proven_storage(chain, contract, _slot(), "latest").word == ROOT
    empty = proof.vyper_hashmap_slot(2, INTERVAL + 5, GATEWAY)
    assert proof.proven_storage(chain, contract, empty, "latest").value == 0
    # before the write, the slot was empty
    assert proof.proven_storage(chain, contract, _slot(), receipt.block_number - 1).value == 0


def test_header_hash_matches_the_node_for_every_block(chain, deployed):
    for number in range(chain.get_block_number() + 1):
        header = chain.get_block_header(number)
        assert "0x" + proof.header_hash(header).hex() == header["hash"]


def _forged(chain, deployed, **rewrite):
    contract, receipt = deployed
    with pytest.raises(ProofError) as e:
        proof.proven_storage(ForgingPort(chain, **rewrite), contract, _slot(),
                             receipt.block_number, block_hash=receipt.block_hash)
    assert isinstance(e.value, GatewayError)
    return str(e.value)


def test_tampered_storage_proof_node_is_rejected(chain, deployed):
    def tamper(p):
        nodes = p["storageProof"][0]["proof"]
        nodes[-1] = _flip(nodes[-1])
        return p
    assert "does not verify" in _forged(chain, deployed, proof_response=tamper)


def test_tampered_account_proof_node_is_rejected(chain, deployed):
    def tamper(p):
        p["accountProof"][-1] = _flip(p["accountProof"][-1])
        return p
    assert "account" in _forged(chain, deployed, proof_response=tamper)


def test_wrong_value_is_rejected(chain, deployed):
    def claim(p):
        p["storageProof"][0]["value"] = "0x1234"
        return p
    assert "node claims" in _forged(chain, deployed, proof_response=claim)

    def leaf_value(p):  # rewrite the value inside the leaf node: its hash no longer links
        nodes = p["storageProof"][0]["proof"]
        nodes[-1] = nodes[-1].replace(ROOT.hex(), keccak(b"forged").hex())
        p["storageProof"][0]["value"] = "0x" + keccak(b"forged").hex()
        return p
    assert "does not verify" in _forged(chain, deployed, proof_response=leaf_value)


def test_wrong_slot_is_rejected(chain, deployed):
    contract, receipt = deployed
    other = proof.vyper_hashmap_slot(2, INTERVAL + 1, GATEWAY)
    real = chain.get_proof(contract, [other], receipt.block_number)

    def swap(p):  # the proof of another slot, under its own key or relabelled
        p["storageProof"] = copy.deepcopy(real["storageProof"])
        return p
    assert "asked for slot" in _forged(chain, deployed, proof_response=swap)

    def relabel(p):
        p["storageProof"] = copy.deepcopy(real["storageProof"])
        p["storageProof"][0]["key"] = f"0x{_slot():064x}"
        return p
    _forged(chain, deployed, proof_response=relabel)
    # and directly: that slot's proof nodes do not show ROOT at our slot
    account = proof.verify_account_proof(
        bytes.fromhex(chain.get_block_header(receipt.block_number)["stateRoot"][2:]),
        contract, real["accountProof"])
    try:
        value = proof.verify_storage_proof(account.storage_root, _slot(),
                                           real["storageProof"][0]["proof"])
    except ProofError:
        value = None
    assert value != int.from_bytes(ROOT, "big")


def test_altered_header_is_rejected(chain, deployed):
    def state_root(h):
        h["stateRoot"] = "0x" + keccak(b"another state").hex()
        return h
    assert "hashes to" in _forged(chain, deployed, header=state_root)

    def state_root_and_hash(h):  # a self-consistent forged header: the trusted hash differs
        h["stateRoot"] = "0x" + keccak(b"another state").hex()
        h["hash"] = "0x" + proof.header_hash(h).hex()
        return h
    assert "expected 0x" in _forged(chain, deployed, header=state_root_and_hash)


def test_wrong_trusted_block_hash_is_rejected(chain, deployed):
    contract, receipt = deployed
    with pytest.raises(ProofError, match="expected 0x"):
        proof.proven_storage(chain, contract, _slot(), receipt.block_number,
                             block_hash=keccak(b"not this block"))


def test_storage_hash_claim_must_match_the_account_proof(chain, deployed):
    def claim(p):
        p["storageHash"] = _flip(p["storageHash"])
        return p
    assert "storageHash" in _forged(chain, deployed, proof_response=claim)


def test_hashmap_slot_keys():
    base = 2
    addr_word = bytes(12) + bytes.fromhex("5a" * 20)
    assert proof.vyper_hashmap_slot(base, GATEWAY) == int.from_bytes(
        keccak(base.to_bytes(32, "big") + addr_word), "big")
    assert proof.vyper_hashmap_slot(base, addr_word) == proof.vyper_hashmap_slot(base, GATEWAY)
    assert proof.vyper_hashmap_slot(base) == base
    assert proof.vyper_hashmap_slot(base, -1) == proof.vyper_hashmap_slot(base, 2**256 - 1)
    for bad in ("0x1234", b"short", 2**256, 1.5):
        with pytest.raises(ValueError):
            proof.vyper_hashmap_slot(base, bad)
