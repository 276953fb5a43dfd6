"""Test bed for the chain tests: a tiny Vyper contract (compiled with vyper 0.4.3's
Python API), deployed and driven through the chain port on a real anvil."""

import functools

import vyper

from gateway.chain import rpc

# roots mirrors Settlement.roots; merkle_root is the contract-side check of
# gateway.chain.merkle proofs. The state variables before roots put it at slot 2, so a
# slot computed without the layout would be wrong.
CONTRACT_SOURCE = """\
# pragma version 0.4.3

owner: public(address)
counter: public(uint256)
roots: public(HashMap[uint256, HashMap[address, bytes32]])


@deploy
def __init__():
    self.owner = msg.sender


@external
def set_root(interval: uint256, gateway: address, root: bytes32):
    self.roots[interval][gateway] = root
    self.counter += 1


@external
@pure
def merkle_root(leaf: bytes32, index: uint256, proof: DynArray[bytes32, 64]) -> bytes32:
    h: bytes32 = leaf
    idx: uint256 = index
    for sibling: bytes32 in proof:
        if idx % 2 == 1:
            h = keccak256(concat(sibling, h))
        else:
            h = keccak256(concat(h, sibling))
        idx //= 2
    assert idx == 0
    return h
"""

SET_ROOT = "set_root(uint256,address,bytes32)"
ROOTS = "roots(uint256,address)"
COUNTER = "counter()"
MERKLE_ROOT = "merkle_root(bytes32,uint256,bytes32[])"


@functools.lru_cache(maxsize=1)
def compiled():
    """abi, bytecode (bytes) and storage layout of the test contract."""
    out = vyper.compile_code(CONTRACT_SOURCE, output_formats=["abi", "bytecode", "layout"])
    return {"abi": out["abi"], "bytecode": bytes.fromhex(out["bytecode"][2:]),
            "layout": out["layout"]["storage_layout"]}


def base_slot(variable):
    return compiled()["layout"][variable]["slot"]


def deploy(chain, key):
    """Deploy the test contract; return its address."""
    receipt = rpc.send_transaction(chain, key, None, compiled()["bytecode"])
    return receipt.contract_address


def set_root(chain, key, contract, interval, gateway, root):
    data = rpc.encode_call(SET_ROOT, [interval, gateway, root])
    return rpc.send_transaction(chain, key, contract, data)


def read_root(chain, contract, interval, gateway, block="latest"):
    raw = chain.call(contract, rpc.encode_call(ROOTS, [interval, gateway]), block)
    return rpc.decode_output(["bytes32"], raw)[0]


def read_counter(chain, contract, block="latest"):
    return rpc.decode_output(["uint256"], chain.call(contract, rpc.encode_call(COUNTER, []),
                                                     block))[0]
