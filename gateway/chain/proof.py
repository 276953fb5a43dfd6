"""Light-client check of a contract storage value, trusting only a block hash.

:func:`proven_storage` fetches a block header and ``eth_getProof`` from any node (the
node is *not* trusted) and checks three links, raising :class:`ProofError` on any break:

1. header: ``keccak256(rlp(header fields)) == block hash``, so the header's
   ``stateRoot`` is the one the block hash commits to;
2. account: the account proof leads from ``stateRoot`` to the contract's account
   ``[nonce, balance, storageRoot, codeHash]`` at key ``keccak256(address)``;
3. storage: the storage proof leads from that ``storageRoot`` to the value at key
   ``keccak256(slot)``; an absent key proves the value 0.

The node's own claims (``value``, ``storageHash``, ``balance``...) must equal what the
proofs prove. The trie walk is ``trie.HexaryTrie.get_from_proof``.

Which slot holds what: :func:`vyper_hashmap_slot`. Vyper (unlike Solidity) hashes the
slot *first*: ``HashMap`` value of key ``k`` at base slot ``p`` is at
``keccak256(p || k)`` (both 32-byte words); nested maps apply it again. Take the base
slot from ``vyper -f layout`` (``contracts/build.py`` writes it), never by counting.
"""

from dataclasses import dataclass

import rlp
from eth_utils import is_address, keccak, to_canonical_address, to_checksum_address
from trie import HexaryTrie
from trie.exceptions import BadTrieProof, InvalidNode, ValidationError

from gateway.chain.errors import ProofError

EMPTY_TRIE_ROOT = keccak(rlp.encode(b""))
EMPTY_CODE_HASH = keccak(b"")

# Header fields in RLP order: (JSON name, kind). Forks append fields: London
# baseFeePerGas, Shanghai withdrawalsRoot, Cancun blobGasUsed, excessBlobGas,
# parentBeaconBlockRoot, Prague requestsHash.
_HEADER_FIELDS = (
    ("parentHash", 32), ("sha3Uncles", 32), ("miner", 20), ("stateRoot", 32),
    ("transactionsRoot", 32), ("receiptsRoot", 32), ("logsBloom", 256),
    ("difficulty", int), ("number", int), ("gasLimit", int), ("gasUsed", int),
    ("timestamp", int), ("extraData", bytes), ("mixHash", 32), ("nonce", 8),
)
_HEADER_OPTIONAL = (
    ("baseFeePerGas", int), ("withdrawalsRoot", 32), ("blobGasUsed", int),
    ("excessBlobGas", int), ("parentBeaconBlockRoot", 32), ("requestsHash", 32),
)
_TRIE_ERRORS = (BadTrieProof, InvalidNode, ValidationError, rlp.exceptions.RLPException,
                ValueError, TypeError, IndexError, KeyError)


@dataclass(frozen=True)
class Account:
    nonce: int
    balance: int
    storage_root: bytes
    code_hash: bytes


@dataclass(frozen=True)
class ProvenStorage:
    """A storage value and the chain of hashes it was proven through."""

    value: int
    address: str
    slot: int
    block_number: int
    block_hash: bytes
    state_root: bytes
    storage_root: bytes
    code_hash: bytes = EMPTY_CODE_HASH

    @property
    def word(self):
        """The value as a 32-byte word (e.g. a ``bytes32`` root)."""
        return self.value.to_bytes(32, "big")


def _hex_bytes(header, name, size):
    value = header.get(name)
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ProofError(f"block header field {name} is missing or not hex: {value!r}")
    try:
        data = bytes.fromhex(value[2:])
    except ValueError:
        raise ProofError(f"block header field {name} is not hex: {value!r}") from None
    if size is not bytes and len(data) != size:
        raise ProofError(f"block header field {name} must be {size} bytes, got {len(data)}")
    return data


def _hex_int(value, what):
    try:
        if isinstance(value, bool):
            raise ValueError
        return value if isinstance(value, int) else int(value, 16)
    except (TypeError, ValueError):
        raise ProofError(f"{what} is not a quantity: {value!r}") from None


def header_fields(header):
    """The RLP list of a JSON-RPC block header (pre-London through Prague fields)."""
    fields = []
    for name, kind in _HEADER_FIELDS:
        if kind is int:
            fields.append(_hex_int(header.get(name), "block header field " + name))
        else:
            fields.append(_hex_bytes(header, name, kind))
    present = [header.get(name) is not None for name, _ in _HEADER_OPTIONAL]
    count = present.index(False) if False in present else len(present)
    if any(present[count:]):
        later = [n for (n, _), p in zip(_HEADER_OPTIONAL, present, strict=True) if p][-1]
        raise ProofError(f"block header has {later} without {_HEADER_OPTIONAL[count][0]}")
    for name, kind in _HEADER_OPTIONAL[:count]:
        if kind is int:
            fields.append(_hex_int(header[name], "block header field " + name))
        else:
            fields.append(_hex_bytes(header, name, kind))
    return fields


def header_hash(header):
    """``keccak256(rlp(header))``: the block hash the header fields give."""
    return keccak(rlp.encode(header_fields(header)))


def verify_header(header, block_hash=None):
    """Check the header hashes to ``block_hash`` (trusted) and return its ``stateRoot``.

    Without ``block_hash`` the header's own ``hash`` field is taken: that only checks the
    node is consistent, the trust then rests on the node.
    """
    computed = header_hash(header)
    claimed = _hex_bytes(header, "hash", 32)
    expected = claimed if block_hash is None else bytes(block_hash)
    if computed != expected:
        raise ProofError(f"block header of block {header.get('number')} hashes to"
                         f" 0x{computed.hex()}, expected 0x{expected.hex()}")
    if claimed != computed:
        raise ProofError(f"block header claims hash 0x{claimed.hex()} but hashes to"
                         f" 0x{computed.hex()}")
    return _hex_bytes(header, "stateRoot", 32)


def _nodes(proof, what):
    if not isinstance(proof, list | tuple):
        raise ProofError(f"{what}: proof must be a list of nodes")
    try:
        return [rlp.decode(bytes.fromhex(n[2:]) if isinstance(n, str) else bytes(n))
                for n in proof]
    except (rlp.exceptions.RLPException, ValueError, TypeError) as e:
        raise ProofError(f"{what}: malformed proof node: {e}") from None


def _walk(root, key, proof, what):
    try:
        return HexaryTrie.get_from_proof(root, key, _nodes(proof, what))
    except ProofError:
        raise
    except _TRIE_ERRORS as e:
        raise ProofError(f"{what}: proof does not verify against root"
                         f" 0x{bytes(root).hex()}: {e}") from None


def verify_account_proof(state_root, address, account_proof):
    """The :class:`Account` the proof shows under ``state_root`` (an empty account if the
    proof shows the address absent)."""
    what = f"account {address}"
    encoded = _walk(state_root, keccak(to_canonical_address(address)), account_proof, what)
    if encoded == b"":
        return Account(0, 0, EMPTY_TRIE_ROOT, EMPTY_CODE_HASH)
    try:
        nonce, balance, storage_root, code_hash = rlp.decode(encoded)
    except (rlp.exceptions.RLPException, ValueError) as e:
        raise ProofError(f"{what}: proven account is not [nonce, balance, storageRoot, codeHash]:"
                         f" {e}") from None
    return Account(int.from_bytes(nonce, "big"), int.from_bytes(balance, "big"),
                   bytes(storage_root), bytes(code_hash))


def verify_storage_proof(storage_root, slot, storage_proof):
    """The value the proof shows at ``slot`` under ``storage_root`` (0 if absent)."""
    what = f"storage slot 0x{slot:064x}"
    encoded = _walk(storage_root, keccak(slot.to_bytes(32, "big")), storage_proof, what)
    if encoded == b"":
        return 0
    try:
        value = rlp.decode(encoded)
    except rlp.exceptions.RLPException as e:
        raise ProofError(f"{what}: proven value is not RLP: {e}") from None
    if not isinstance(value, bytes) or len(value) > 32:
        raise ProofError(f"{what}: proven value is not a 32-byte word")
    return int.from_bytes(value, "big")


def _check_claim(what, claimed, proven):
    if claimed != proven:
        raise ProofError(f"{what}: node claims {claimed!r} but the proof shows {proven!r}")


def verify_storage_response(state_root, address, slot, response):
    """Check an ``eth_getProof`` response for ``address`` and one ``slot`` against
    ``state_root``; return ``(Account, value)``."""
    if not isinstance(response, dict):
        raise ProofError(f"eth_getProof response is not an object: {response!r}")
    if not is_address(response.get("address", "")) or \
            to_checksum_address(response["address"]) != to_checksum_address(address):
        raise ProofError(f"eth_getProof answered for address {response.get('address')!r},"
                         f" asked for {address}")
    account = verify_account_proof(state_root, address, response.get("accountProof"))
    what = f"account {address}"
    _check_claim(what + " nonce", _hex_int(response.get("nonce"), "nonce"), account.nonce)
    _check_claim(what + " balance", _hex_int(response.get("balance"), "balance"),
                 account.balance)
    _check_claim(what + " storageHash", _hex_bytes(response, "storageHash", 32),
                 account.storage_root)
    _check_claim(what + " codeHash", _hex_bytes(response, "codeHash", 32), account.code_hash)
    entries = response.get("storageProof")
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        raise ProofError(f"eth_getProof: expected one storage proof, got {entries!r}")
    entry = entries[0]
    if _hex_int(entry.get("key"), "storage proof key") != slot:
        raise ProofError(f"storage proof is for key {entry.get('key')},"
                         f" asked for slot 0x{slot:064x}")
    value = verify_storage_proof(account.storage_root, slot, entry.get("proof"))
    _check_claim(f"storage slot 0x{slot:064x} value",
                 _hex_int(entry.get("value"), "storage value"), value)
    return account, value


def proven_storage(port, address, slot, block, block_hash=None):
    """The value at ``slot`` of contract ``address`` at ``block``, proven from the block
    header down; :class:`ProofError` if anything does not verify.

    ``port`` is a :class:`gateway.chain.rpc.ChainPort`; ``block_hash`` is the one trusted
    input (see :func:`verify_header`).
    """
    header = port.get_block_header(block)
    state_root = verify_header(header, block_hash)
    number = _hex_int(header.get("number"), "block number")
    if isinstance(block, int) and number != block:
        raise ProofError(f"asked for block {block}, the node sent block {number}")
    response = port.get_proof(to_checksum_address(address), [slot], number)
    account, value = verify_storage_response(state_root, address, slot, response)
    storage_root = _hex_bytes(response, "storageHash", 32)
    return ProvenStorage(value, to_checksum_address(address), slot, number,
                         _hex_bytes(header, "hash", 32), state_root, storage_root,
                         account.code_hash)


def proven_code(port, proven):
    """The code of the account of ``proven`` (a :class:`ProvenStorage`) at its block, as
    the node sends it, checked against the proven code hash; :class:`ProofError` if it
    does not hash to it."""
    code = port.get_code(proven.address, proven.block_number)
    if not isinstance(code, bytes | bytearray) or keccak(bytes(code)) != proven.code_hash:
        raise ProofError(f"the code the node sent for {proven.address} does not hash to the"
                         f" proven code hash 0x{proven.code_hash.hex()}")
    return bytes(code)


def _key_word(key):
    # A HashMap key as the 32-byte word Vyper hashes: value types only.
    if isinstance(key, bool):
        return int(key).to_bytes(32, "big")
    if isinstance(key, int):
        if not -(2**255) <= key < 2**256:
            raise ValueError(f"HashMap key {key} does not fit in 256 bits")
        return (key % 2**256).to_bytes(32, "big")
    if isinstance(key, str):
        if not is_address(key):
            raise ValueError(f"HashMap key {key!r} is not an address")
        return to_canonical_address(key).rjust(32, b"\0")
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        return bytes(key)
    raise ValueError(f"HashMap key {key!r}: use an int, an address string or 32 bytes")


def vyper_hashmap_slot(base_slot, *keys):
    """Storage slot of ``var[k1][k2]...`` for a Vyper 0.4 ``HashMap`` at ``base_slot``:
    ``keccak256(slot || key)`` per level (slot first, the reverse of Solidity)."""
    slot = base_slot
    for key in keys:
        slot = int.from_bytes(keccak(slot.to_bytes(32, "big") + _key_word(key)), "big")
    return slot
