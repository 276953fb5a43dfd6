"""Salted Merkle tree over the signed readings of one settlement interval.

Leaf
    ``leaf = keccak256(salt || sha256(cose))``: ``salt`` is 32 bytes from
    ``os.urandom`` (:func:`new_salt`), ``cose`` the exact COSE_Sign1 bytes the device
    signed. The gateway stores each salt next to its reading; without the salt the public
    root says nothing about a reading (a reading's fields are guessable, 32 random bytes
    are not). Revealing one reading's salt reveals nothing about the others.

Nodes
    ``node = keccak256(left || right)`` over the 64-byte concatenation, positional (not
    sorted): a proof shows *where* a leaf is, not only that it is there. Bit ``k`` of the
    leaf index says whether the path node is the right (1) or left (0) child at level
    ``k`` (leaves are level 0).

Odd levels
    A level with an odd count pairs its last node with the zero hash of that level:
    ``Z0 = 32 zero bytes``, ``Z(k+1) = keccak256(Zk || Zk)``. That is the root of the
    leaves padded with zero words up to a power of two, computed without hashing the
    padding (about ``n + log2(n)`` hashes). Every proof therefore has exactly
    ``depth = ceil(log2(n))`` siblings and verification needs no leaf count: the index
    must be below ``2 ** len(siblings)``. A padding leaf cannot be proven (no reading
    hashes to zero), and a leaf cannot pass for an inner node at another depth: a
    verifier hashes the reading's bytes itself, so that would need a SHA-256 pre-image.
    Promoting the odd node instead (as RFC 9162 does) would make the proof depend on an
    uncommitted leaf count: leaf 2 of 3 would also verify as leaf 1 of 2.

Empty interval: :data:`EMPTY_ROOT` (32 zero bytes); it has no proofs.

Contract-side verification (Vyper), the same as :func:`root_from_proof`::

    h: bytes32 = leaf
    idx: uint256 = index
    for sibling: bytes32 in proof:
        if idx % 2 == 1:
            h = keccak256(concat(sibling, h))
        else:
            h = keccak256(concat(h, sibling))
        idx //= 2
    assert idx == 0  # the index fits the proof's depth
    # then compare h with the stored root
"""

import hashlib
import os
from dataclasses import dataclass

from eth_utils import keccak

SALT_SIZE = 32
EMPTY_ROOT = bytes(32)


def new_salt():
    """32 random bytes for one leaf (``os.urandom``); the caller stores it."""
    return os.urandom(SALT_SIZE)


def leaf_hash(salt, cose):
    """``keccak256(salt || sha256(cose))`` for one signed reading."""
    if len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
    return keccak(bytes(salt) + hashlib.sha256(cose).digest())


def node_hash(left, right):
    """``keccak256(left || right)``: the 64-byte concatenation a contract would hash."""
    return keccak(left + right)


# ZERO_HASHES[k]: root of a subtree of 2**k padding leaves
ZERO_HASHES = [bytes(32)]
for _ in range(64):
    ZERO_HASHES.append(node_hash(ZERO_HASHES[-1], ZERO_HASHES[-1]))


@dataclass(frozen=True)
class MerkleProof:
    """Where a leaf sits (``index``) and the sibling hashes from the leaf level upwards."""

    index: int
    siblings: tuple


def _levels(leaves):
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        if len(level) % 2:
            level = level + [ZERO_HASHES[len(levels) - 1]]
        levels.append([node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)])
    return levels


class MerkleTree:
    """A tree over leaf hashes (from :func:`leaf_hash`), in the order given."""

    def __init__(self, leaves):
        leaves = [bytes(x) for x in leaves]
        for i, leaf in enumerate(leaves):
            if len(leaf) != 32:
                raise ValueError(f"leaf {i} must be 32 bytes, got {len(leaf)}")
        self.count = len(leaves)
        self._levels = _levels(leaves) if leaves else [[]]

    @classmethod
    def from_readings(cls, readings):
        """A tree over ``(salt, cose)`` pairs."""
        return cls(leaf_hash(salt, cose) for salt, cose in readings)

    @property
    def root(self):
        return self._levels[-1][0] if self.count else EMPTY_ROOT

    @property
    def depth(self):
        return len(self._levels) - 1

    def leaf(self, index):
        return self._levels[0][index]

    def proof(self, index):
        """The :class:`MerkleProof` of the leaf at ``index``."""
        if not 0 <= index < self.count:
            raise IndexError(f"leaf index {index} out of range 0..{self.count - 1}")
        siblings = []
        i = index
        for k, level in enumerate(self._levels[:-1]):
            sibling = i ^ 1
            siblings.append(level[sibling] if sibling < len(level) else ZERO_HASHES[k])
            i //= 2
        return MerkleProof(index, tuple(siblings))


def root_from_proof(leaf, proof):
    """The root that ``leaf`` at ``proof.index`` with ``proof.siblings`` leads to, or None
    if the index does not fit the proof's depth."""
    index, siblings = proof.index, proof.siblings
    if not 0 <= index < 2 ** len(siblings):
        return None
    h = bytes(leaf)
    for sibling in siblings:
        h = node_hash(bytes(sibling), h) if index % 2 else node_hash(h, bytes(sibling))
        index //= 2
    return h


def verify_proof(root, leaf, proof):
    """True if ``leaf`` is at ``proof.index`` in the tree with this ``root``."""
    return root_from_proof(leaf, proof) == bytes(root)


def verify_reading(root, salt, cose, proof):
    """True if the signed reading ``cose`` with ``salt`` is at ``proof.index`` under
    ``root``. Check the COSE signature separately (:mod:`gateway.verify`)."""
    return verify_proof(root, leaf_hash(salt, cose), proof)
