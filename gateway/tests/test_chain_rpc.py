"""The JSON-RPC chain adapter against a real anvil: chain id check, EIP-1559 signing and
raw sending, receipts, fees, and call data checked against web3's own encoder."""

import pytest
from chain_testbed import (
    COUNTER,
    MERKLE_ROOT,
    SET_ROOT,
    compiled,
    deploy,
    read_counter,
    read_root,
)
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from gateway.chain import rpc
from gateway.chain.anvil import free_loopback_port
from gateway.chain.errors import (
    ChainIdMismatch,
    ReceiptTimeout,
    RpcError,
    TransactionFailed,
)

GATEWAY = "0x" + "5a" * 20


@pytest.fixture(scope="module")
def key(node):
    return node.account_keys()[1]


@pytest.fixture(scope="module")
def contract(chain, key):
    return deploy(chain, key)


def test_encode_call_matches_web3_contract_encoding():
    w3 = Web3()
    c = w3.eth.contract(abi=compiled()["abi"])
    root = keccak(b"root")
    proof = [keccak(b"a"), keccak(b"b"), keccak(b"c")]
    assert rpc.encode_call(SET_ROOT, [7, GATEWAY, root]) == bytes.fromhex(
        c.encode_abi("set_root", [7, Web3.to_checksum_address(GATEWAY), root])[2:])
    assert rpc.encode_call(MERKLE_ROOT, [root, 5, proof]) == bytes.fromhex(
        c.encode_abi("merkle_root", [root, 5, proof])[2:])
    assert rpc.encode_call(COUNTER, []) == keccak(b"counter()")[:4]
    # whitespace is not part of the signature; nested tuples split at the top level only
    assert rpc.encode_call("set_root(uint256, address, bytes32)", [7, GATEWAY, root]) == \
        rpc.encode_call(SET_ROOT, [7, GATEWAY, root])
    assert rpc.parse_signature("f(uint8,(address,bytes32)[],uint256)")[1] == (
        "uint8", "(address,bytes32)[]", "uint256")


def test_encode_call_rejects_bad_signatures_and_arity():
    with pytest.raises(ValueError, match="not a function signature"):
        rpc.encode_call("set_root", [])
    with pytest.raises(ValueError, match="takes 3 arguments, got 2"):
        rpc.encode_call(SET_ROOT, [1, GATEWAY])
    with pytest.raises(ValueError, match="empty type"):
        rpc.encode_call("f(uint256,,uint256)", [1, 2])


def test_signed_eip1559_transaction_sent_raw_lands(chain, key, contract):
    sender = Account.from_key(key).address
    before = read_counter(chain, contract)
    fees = chain.suggest_fees()
    nonce = chain.get_nonce(sender)
    data = rpc.encode_call(SET_ROOT, [900, GATEWAY, b"\x11" * 32])
    signed = rpc.sign_transaction(key, chain_id=chain.chain_id, nonce=nonce, to=contract,
                                  data=data, gas=200_000, fees=fees)
    assert signed.raw[0] == 2 and signed.sender == sender  # EIP-2718 type 2 envelope
    assert chain.send_raw(signed.raw) == signed.tx_hash
    receipt = chain.wait_for_receipt(signed.tx_hash, timeout=10)
    assert receipt.status == 1
    tx = chain.request("eth_getTransactionByHash", ["0x" + signed.tx_hash.hex()])
    assert int(tx["type"], 16) == 2 and tx["from"].lower() == sender.lower()
    assert int(tx["maxFeePerGas"], 16) == fees.max_fee
    assert int(tx["maxPriorityFeePerGas"], 16) == fees.priority_fee
    assert int(tx["chainId"], 16) == chain.chain_id
    assert tx["input"] == "0x" + data.hex()
    assert read_root(chain, contract, 900, GATEWAY) == b"\x11" * 32
    assert read_counter(chain, contract) == before + 1
    assert chain.get_nonce(sender) == nonce + 1


def test_fee_suggestion_follows_the_base_fee(chain):
    fees = chain.suggest_fees()
    base = int(chain.get_block_header("latest")["baseFeePerGas"], 16)
    assert fees.base_fee == base
    assert fees.priority_fee == int(chain.request("eth_maxPriorityFeePerGas", []), 16)
    assert fees.max_fee == 2 * fees.base_fee + fees.priority_fee


def test_chain_id_mismatch_names_url_and_both_ids(node):
    with pytest.raises(ChainIdMismatch) as e:
        rpc.Web3Chain.connect(node.url, 100)
    message = str(e.value)
    assert node.url in message and "chain id 31337" in message and "chain id 100" in message


def test_unreachable_node_names_the_url():
    url = f"http://127.0.0.1:{free_loopback_port()}"
    with pytest.raises(RpcError, match="node unreachable") as e:
        rpc.Web3Chain.connect(url, 31337, request_timeout=2)
    assert url in str(e.value)


def test_error_reply_is_an_rpc_error(chain):
    with pytest.raises(RpcError, match="eth_noSuchMethod"):
        chain.request("eth_noSuchMethod", [])


def test_receipt_wait_is_bounded(chain, key, contract):
    chain.request("evm_setAutomine", [False])
    try:
        sender = Account.from_key(key).address
        signed = rpc.sign_transaction(
            key, chain_id=chain.chain_id, nonce=chain.get_nonce(sender), to=contract,
            data=rpc.encode_call(SET_ROOT, [1800, GATEWAY, b"\x22" * 32]), gas=200_000,
            fees=chain.suggest_fees())
        chain.send_raw(signed.raw)
        with pytest.raises(ReceiptTimeout, match=signed.tx_hash.hex()):
            chain.wait_for_receipt(signed.tx_hash, timeout=0.3, poll=0.05)
        chain.request("evm_mine", [])
        assert chain.wait_for_receipt(signed.tx_hash, timeout=10).status == 1
    finally:
        chain.request("evm_setAutomine", [True])


def test_reverted_transaction_is_reported(chain, key, contract):
    # merkle_root asserts the index fits the proof: as a transaction with fixed gas it
    # is mined and reverts
    data = rpc.encode_call(MERKLE_ROOT, [b"\0" * 32, 3, []])
    with pytest.raises(TransactionFailed, match="reverted"):
        rpc.send_transaction(chain, key, contract, data, gas=100_000, timeout=10)
    with pytest.raises(RpcError, match="revert"):  # estimating gas already fails
        rpc.send_transaction(chain, key, contract, data, timeout=10)


class _Sent(Exception):
    pass


@pytest.mark.parametrize("estimate,gas", [(100_000, 120_000), (15_000_000, 1 << 24),
                                          (20_000_000, 20_000_000)])
def test_gas_limit_has_a_margin_within_the_per_transaction_cap(monkeypatch, estimate, gas):
    # estimate x 1.2, but never above Osaka's 2^24 (the node would refuse the transaction)
    # nor below the estimate
    asked = {}

    class Port:
        chain_id, url = 1, "fake"

        def get_nonce(self, sender, block):
            return 0

        def suggest_fees(self):
            return None

        def estimate_gas(self, sender, to, data, value=0):
            return estimate

    def sign(private_key, **kw):
        asked.update(kw)
        raise _Sent

    monkeypatch.setattr(rpc, "sign_transaction", sign)
    with pytest.raises(_Sent):
        rpc.send_transaction(Port(), b"\x01" * 32, GATEWAY, b"")
    assert asked["gas"] == gas
