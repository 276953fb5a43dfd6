"""Salted Merkle tree over signed readings: proofs for every leaf of trees of 1..33
leaves, rejection of tampered leaves / salts / indexes / paths, fixed shapes, and the
same roots from a Vyper verifier (titanoboa, in-process EVM)."""

import hashlib
import os
import random

import pytest
from chain_testbed import CONTRACT_SOURCE
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chain import merkle
from gateway.chain.merkle import MerkleProof, MerkleTree


def _readings(n, seed):
    rng = random.Random(seed)
    return [(rng.randbytes(32), rng.randbytes(100 + rng.randrange(40))) for _ in range(n)]


def test_every_leaf_verifies_and_tampering_fails_for_sizes_1_to_33():
    for n in range(1, 34):
        readings = _readings(n, n)
        tree = MerkleTree.from_readings(readings)
        for i, (salt, cose) in enumerate(readings):
            p = tree.proof(i)
            assert len(p.siblings) == tree.depth == (n - 1).bit_length()
            assert merkle.verify_reading(tree.root, salt, cose, p), (n, i)
            # tampered signed bytes, wrong salt
            flipped = cose[:-1] + bytes([cose[-1] ^ 1])
            assert not merkle.verify_reading(tree.root, salt, flipped, p)
            assert not merkle.verify_reading(tree.root, bytes(32), cose, p)
            # another leaf's reading at this position
            other = readings[(i + 1) % n]
            if n > 1:
                assert not merkle.verify_reading(tree.root, other[0], other[1], p)
            # wrong index with this path: each index bit flipped, neighbours, beyond the
            # tree and beyond the proof's depth
            leaf = merkle.leaf_hash(salt, cose)
            depth = len(p.siblings)
            wrong = {i ^ (1 << k) for k in range(depth)} | {i - 1, i + 1, n, 2 ** depth}
            for j in sorted(wrong):
                if j != i:
                    assert not merkle.verify_proof(tree.root, leaf,
                                                   MerkleProof(j, p.siblings)), (n, i, j)
            # a sibling flipped, one dropped, one added
            for k in range(len(p.siblings)):
                bad = list(p.siblings)
                bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
                assert not merkle.verify_reading(tree.root, salt, cose,
                                                 MerkleProof(i, tuple(bad)))
            if p.siblings:
                assert not merkle.verify_reading(tree.root, salt, cose,
                                                 MerkleProof(i, p.siblings[:-1]))
            assert not merkle.verify_reading(tree.root, salt, cose,
                                             MerkleProof(i, p.siblings + (bytes(32),)))


def test_fixed_shapes():
    salts = [bytes([i]) * 32 for i in range(5)]
    coses = [b"reading %d" % i for i in range(5)]
    leaves = [keccak(s + hashlib.sha256(c).digest()) for s, c in zip(salts, coses, strict=True)]
    assert merkle.leaf_hash(salts[0], coses[0]) == leaves[0]

    def h(a, b):
        return keccak(a + b)

    def root(n):
        return MerkleTree.from_readings(zip(salts[:n], coses[:n], strict=True)).root

    z0 = bytes(32)
    z1 = h(z0, z0)
    assert root(1) == leaves[0]
    assert root(2) == h(leaves[0], leaves[1])
    assert root(3) == h(h(leaves[0], leaves[1]), h(leaves[2], z0))  # padded with zero
    assert root(4) == h(h(leaves[0], leaves[1]), h(leaves[2], leaves[3]))
    assert root(5) == h(h(h(leaves[0], leaves[1]), h(leaves[2], leaves[3])),
                        h(h(leaves[4], z0), z1))
    tree = MerkleTree(leaves)
    assert tree.proof(4).siblings == (z0, z1, h(h(leaves[0], leaves[1]),
                                                h(leaves[2], leaves[3])))
    assert tree.proof(2).siblings == (leaves[3], h(leaves[0], leaves[1]),
                                      h(h(leaves[4], z0), z1))
    # the same root as padding the leaf list with zero words to a power of two
    assert tree.root == MerkleTree(leaves + [z0] * 3).root


def test_empty_tree_and_bad_input():
    tree = MerkleTree([])
    assert tree.root == merkle.EMPTY_ROOT and tree.count == 0
    with pytest.raises(IndexError):
        tree.proof(0)
    with pytest.raises(ValueError, match="salt must be 32 bytes"):
        merkle.leaf_hash(b"short", b"x")
    with pytest.raises(ValueError, match="leaf 1 must be 32 bytes"):
        MerkleTree([bytes(32), b"x"])
    assert len(merkle.new_salt()) == 32 and merkle.new_salt() != merkle.new_salt()
    assert not merkle.verify_proof(bytes(32), bytes(32), MerkleProof(1, ()))
    assert not merkle.verify_proof(bytes(32), bytes(32), MerkleProof(-1, ()))


def test_leaf_order_matters():
    readings = _readings(4, 99)
    swapped = [readings[1], readings[0]] + readings[2:]
    assert MerkleTree.from_readings(readings).root != MerkleTree.from_readings(swapped).root


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_random_sizes_prove_one_position_only(n, data):
    leaves = [os.urandom(32) for _ in range(n)]
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(0, n - 1))
    p = tree.proof(i)
    assert merkle.verify_proof(tree.root, leaves[i], p)
    j = data.draw(st.integers(0, n - 1))
    assert merkle.verify_proof(tree.root, leaves[j], p) == (j == i)


def test_vyper_verifier_computes_the_same_roots():
    boa = pytest.importorskip("boa")  # titanoboa is a pinned dev dependency
    verifier = boa.loads(CONTRACT_SOURCE)
    for n in (1, 2, 3, 5, 8, 13, 17):
        readings = _readings(n, 1000 + n)
        tree = MerkleTree.from_readings(readings)
        for i in range(n):
            p = tree.proof(i)
            assert verifier.merkle_root(tree.leaf(i), i, list(p.siblings)) == tree.root
