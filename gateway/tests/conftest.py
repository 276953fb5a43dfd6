"""Fixtures shared by the gateway's chain tests: a local anvil node per test module and
the gateway's RPC port to it (imported lazily: most gateway tests need no chain)."""

import pytest


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from gateway.chain.anvil import Anvil

    with Anvil(tmp_path_factory.mktemp("anvil")) as node:
        yield node


@pytest.fixture(scope="module")
def chain(node):
    from gateway.chain import rpc

    return rpc.Web3Chain.connect(node.url, node.chain_id)
