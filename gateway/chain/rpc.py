"""The chain port: what the gateway asks of an EVM node, and its JSON-RPC adapter.

:class:`Web3Chain` is the real adapter: JSON-RPC over web3 8's ``HTTPProvider``, taking
the node's raw JSON answers (no web3 result formatters: the light-client proof needs the
block header exactly as the node sent it). Transactions are EIP-1559 (type 2), signed
locally with eth-account and sent raw; the gateway's key never leaves the gateway.
Call data is built with :func:`encode_call` (eth-abi + 4-byte selector), about 20x
cheaper than web3's contract objects for the per-interval submission.

A port implementation (a fake in a test, titanoboa, ...) provides the methods of
:class:`ChainPort`; :func:`send_transaction` and :mod:`gateway.chain.proof` use only those.
"""

import re
import time
from dataclasses import dataclass
from functools import lru_cache

import eth_abi
import requests
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from gateway.chain.contracts import TX_GAS_CAP
from gateway.chain.errors import (
    ChainIdMismatch,
    ReceiptTimeout,
    RpcError,
    TransactionFailed,
)

DEFAULT_REQUEST_TIMEOUT = 10.0  # seconds per HTTP request
DEFAULT_RECEIPT_TIMEOUT = 120.0
DEFAULT_GAS_MARGIN = 1.2  # estimate x margin; unused gas is not charged


@dataclass(frozen=True)
class Fees:
    """An EIP-1559 fee suggestion, in wei per gas.

    ``max_fee = 2 * base_fee + priority_fee``: the transaction stays includable while the
    base fee rises for about six full blocks in a row (+12.5% each).
    """

    base_fee: int
    priority_fee: int
    max_fee: int


@dataclass(frozen=True)
class SignedTransaction:
    raw: bytes
    tx_hash: bytes
    sender: str
    nonce: int


@dataclass(frozen=True)
class Receipt:
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    status: int  # 1 success, 0 reverted
    gas_used: int
    effective_gas_price: int
    contract_address: str | None
    logs: list


class ChainPort:
    """The interface the gateway's chain code uses (documentation and a base class).

    Blocks are named by number (int) or tag ("latest", "pending", ...); addresses are
    0x-strings; hashes and data are bytes; quantities are ints.
    """

    url = "?"
    chain_id = 0

    def get_chain_id(self):
        raise NotImplementedError

    def get_block_number(self):
        raise NotImplementedError

    def get_nonce(self, address, block="pending"):
        raise NotImplementedError

    def suggest_fees(self):
        raise NotImplementedError

    def estimate_gas(self, sender, to, data, value=0):
        raise NotImplementedError

    def call(self, to, data, block="latest"):
        raise NotImplementedError

    def send_raw(self, raw):
        raise NotImplementedError

    def get_receipt(self, tx_hash):
        raise NotImplementedError

    def wait_for_receipt(self, tx_hash, timeout=DEFAULT_RECEIPT_TIMEOUT, poll=0.1):
        """Poll :meth:`get_receipt` until it is there; :class:`ReceiptTimeout` after
        ``timeout`` seconds (the transaction may still be mined later)."""
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.get_receipt(tx_hash)
            if receipt is not None:
                return receipt
            if time.monotonic() >= deadline:
                raise ReceiptTimeout(f"{self.url}: no receipt for transaction"
                                     f" 0x{bytes(tx_hash).hex()} within {timeout:.1f} s")
            time.sleep(poll)

    def get_block_header(self, block="latest"):
        raise NotImplementedError

    def get_transaction(self, tx_hash):
        """The JSON-RPC transaction object (hex strings, as the node sent it), or None."""
        raise NotImplementedError

    def get_proof(self, address, slots, block):
        raise NotImplementedError

    def get_storage_at(self, address, slot, block="latest"):
        raise NotImplementedError

    def get_code(self, address, block="latest"):
        """The code (bytes) of ``address`` at ``block``."""
        raise NotImplementedError

    def get_logs(self, address, topics, from_block, to_block="latest"):
        """The logs of ``address`` matching ``topics`` (bytes, or None for any) in the
        block range, as the node sent them (hex strings)."""
        raise NotImplementedError


def _block_param(block):
    if isinstance(block, bool) or not isinstance(block, (int, str)):
        raise TypeError(f"block must be a number or a tag, not {block!r}")
    return hex(block) if isinstance(block, int) else block


def _hexbytes(data):
    return "0x" + bytes(data).hex()


def _bytes(value):
    return bytes.fromhex(value[2:]) if value else b""


def _int(value):
    return int(value, 16) if isinstance(value, str) else int(value)


class Web3Chain(ChainPort):
    """JSON-RPC adapter over web3 8's ``HTTPProvider``.

    Use :meth:`connect`, which checks that the node serves ``chain_id``.
    """

    def __init__(self, url, chain_id, request_timeout=DEFAULT_REQUEST_TIMEOUT):
        self.url = url
        self.chain_id = chain_id
        self.sent = 0  # raw transactions this adapter sent (a command that sent none
        # leaves the embedded node's state file alone)
        # No web3 retry layer: a failing request surfaces at once as RpcError, and the
        # batcher (which knows what is safe to resend) decides about retrying.
        self._provider = Web3.HTTPProvider(url, request_kwargs={"timeout": request_timeout},
                                           exception_retry_configuration=None)

    @classmethod
    def connect(cls, url, chain_id, request_timeout=DEFAULT_REQUEST_TIMEOUT):
        """An adapter for ``url`` after checking the node's chain id equals ``chain_id``."""
        chain = cls(url, chain_id, request_timeout)
        chain.check_chain_id()
        return chain

    def request(self, method, params):
        """One JSON-RPC request; returns ``result`` or raises :class:`RpcError`."""
        try:
            reply = self._provider.make_request(method, params)
        except requests.RequestException as e:
            raise RpcError(f"{self.url}: {method}: node unreachable: {e}") from e
        except ValueError as e:  # not JSON
            raise RpcError(f"{self.url}: {method}: malformed reply: {e}") from e
        if not isinstance(reply, dict):
            raise RpcError(f"{self.url}: {method}: malformed reply {reply!r}")
        if reply.get("error") is not None:
            error = reply["error"]
            if isinstance(error, dict):
                error = f"error {error.get('code')}: {error.get('message')}"
            raise RpcError(f"{self.url}: {method}: {error}")
        if "result" not in reply:
            raise RpcError(f"{self.url}: {method}: reply without result")
        return reply["result"]

    def check_chain_id(self):
        actual = self.get_chain_id()
        if actual != self.chain_id:
            raise ChainIdMismatch(
                f"{self.url} serves chain id {actual}, but the gateway is configured for"
                f" chain id {self.chain_id}: wrong node URL or wrong [chain] chain_id")
        return actual

    def get_chain_id(self):
        return _int(self.request("eth_chainId", []))

    def get_block_number(self):
        return _int(self.request("eth_blockNumber", []))

    def get_nonce(self, address, block="pending"):
        return _int(self.request("eth_getTransactionCount", [address, _block_param(block)]))

    def suggest_fees(self):
        header = self.get_block_header("latest")
        if header.get("baseFeePerGas") is None:
            raise RpcError(f"{self.url}: latest block has no baseFeePerGas: not an EIP-1559 chain")
        base_fee = _int(header["baseFeePerGas"])
        priority_fee = _int(self.request("eth_maxPriorityFeePerGas", []))
        return Fees(base_fee, priority_fee, 2 * base_fee + priority_fee)

    def estimate_gas(self, sender, to, data, value=0):
        tx = {"from": sender, "data": _hexbytes(data), "value": hex(value)}
        if to is not None:
            tx["to"] = to
        return _int(self.request("eth_estimateGas", [tx]))

    def call(self, to, data, block="latest"):
        return _bytes(self.request("eth_call", [{"to": to, "data": _hexbytes(data)},
                                                _block_param(block)]))

    def send_raw(self, raw):
        self.sent += 1
        return _bytes(self.request("eth_sendRawTransaction", [_hexbytes(raw)]))

    def get_receipt(self, tx_hash):
        r = self.request("eth_getTransactionReceipt", [_hexbytes(tx_hash)])
        if r is None:
            return None
        return Receipt(
            tx_hash=_bytes(r["transactionHash"]), block_number=_int(r["blockNumber"]),
            block_hash=_bytes(r["blockHash"]), status=_int(r["status"]),
            gas_used=_int(r["gasUsed"]), effective_gas_price=_int(r["effectiveGasPrice"]),
            contract_address=(to_checksum_address(r["contractAddress"])
                              if r.get("contractAddress") else None),
            logs=r.get("logs", []))

    def get_block_header(self, block="latest"):
        """The JSON-RPC block object (hex strings, as the node sent it), without bodies."""
        header = self.request("eth_getBlockByNumber", [_block_param(block), False])
        if header is None:
            raise RpcError(f"{self.url}: no block {block}")
        return header

    def get_transaction(self, tx_hash):
        return self.request("eth_getTransactionByHash", [tx_hash])

    def get_proof(self, address, slots, block):
        """``eth_getProof`` result as the node sent it (hex strings)."""
        return self.request("eth_getProof", [address, [f"0x{s:064x}" for s in slots],
                                             _block_param(block)])

    def get_storage_at(self, address, slot, block="latest"):
        return _bytes(self.request("eth_getStorageAt", [address, f"0x{slot:064x}",
                                                        _block_param(block)]))

    def get_code(self, address, block="latest"):
        return _bytes(self.request("eth_getCode", [address, _block_param(block)]))

    def get_logs(self, address, topics, from_block, to_block="latest"):
        return self.request("eth_getLogs", [{
            "address": address, "fromBlock": _block_param(from_block),
            "toBlock": _block_param(to_block),
            "topics": [None if t is None else _hexbytes(t) for t in topics]}])


# --- call data ---------------------------------------------------------------------

_SIGNATURE = re.compile(r"^([A-Za-z_$][A-Za-z0-9_$]*)\((.*)\)$")


def _split_types(inner):
    types, depth, start = [], 0, 0
    for i, c in enumerate(inner):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            types.append(inner[start:i])
            start = i + 1
    if inner:
        types.append(inner[start:])
    return types


@lru_cache(maxsize=256)
def parse_signature(signature):
    """``"f(uint256,(address,bytes32)[])"`` -> (4-byte selector, tuple of ABI types)."""
    canonical = "".join(signature.split())
    m = _SIGNATURE.match(canonical)
    if not m or canonical.count("(") != canonical.count(")"):
        raise ValueError(f"not a function signature: {signature!r}"
                         " (expected e.g. 'f(uint256,address)')")
    types = tuple(_split_types(m.group(2)))
    if any(not t for t in types):
        raise ValueError(f"empty type in function signature {signature!r}")
    return keccak(text=canonical)[:4], types


def encode_call(signature, args):
    """Call data: the 4-byte selector of ``signature`` then ``eth_abi.encode(types, args)``.

    ``encode_call("submit(uint256,bytes32,uint256[])", [7, root, words])``
    """
    selector, types = parse_signature(signature)
    args = tuple(args)
    if len(args) != len(types):
        raise ValueError(f"{signature} takes {len(types)} arguments, got {len(args)}")
    return selector + eth_abi.encode(types, args)


def decode_output(types, data):
    """Decode a call's return data, e.g. ``decode_output(["bytes32"], raw)``."""
    return eth_abi.decode(list(types), bytes(data))


# --- transactions ------------------------------------------------------------------

def sign_transaction(private_key, *, chain_id, nonce, to, data, gas, fees, value=0):
    """Sign an EIP-1559 (type 2) transaction locally; ``to=None`` deploys a contract."""
    tx = {"type": 2, "chainId": chain_id, "nonce": nonce, "gas": gas, "value": value,
          "data": bytes(data), "maxFeePerGas": fees.max_fee,
          "maxPriorityFeePerGas": fees.priority_fee}
    if to is not None:
        tx["to"] = to_checksum_address(to)
    account = Account.from_key(private_key)
    signed = account.sign_transaction(tx)
    return SignedTransaction(bytes(signed.raw_transaction), bytes(signed.hash),
                             account.address, nonce)


def send_transaction(port, private_key, to, data, *, value=0, gas=None,
                     gas_margin=DEFAULT_GAS_MARGIN, timeout=DEFAULT_RECEIPT_TIMEOUT):
    """Nonce, fees, gas estimate, sign, send raw, wait for the receipt.

    Raises :class:`TransactionFailed` if the transaction reverted, :class:`ReceiptTimeout`
    if it was not mined within ``timeout`` seconds.
    """
    sender = Account.from_key(private_key).address
    nonce = port.get_nonce(sender, "pending")
    fees = port.suggest_fees()
    if gas is None:
        estimate = port.estimate_gas(sender, to, data, value)
        # the margin, but not above Osaka's per-transaction cap (a node refuses a gas
        # limit above it), nor below the estimate (a chain without the cap)
        gas = max(estimate, min(int(estimate * gas_margin), TX_GAS_CAP))
    signed = sign_transaction(private_key, chain_id=port.chain_id, nonce=nonce, to=to,
                              data=data, gas=gas, fees=fees, value=value)
    tx_hash = port.send_raw(signed.raw)
    if tx_hash != signed.tx_hash:
        raise RpcError(f"{port.url}: node returned transaction hash 0x{tx_hash.hex()}"
                       f" for 0x{signed.tx_hash.hex()}")
    receipt = port.wait_for_receipt(tx_hash, timeout=timeout)
    if receipt.status != 1:
        raise TransactionFailed(f"{port.url}: transaction 0x{tx_hash.hex()} reverted in block"
                                f" {receipt.block_number} (gas used {receipt.gas_used})")
    return receipt
