"""The gateway's contract-independent chain layer.

- :mod:`gateway.chain.anvil`: the embedded local EVM node (anvil) for the default set-up.
- :mod:`gateway.chain.rpc`: the chain port and its JSON-RPC adapter (web3 HTTPProvider),
  EIP-1559 signing with eth-account, call data with eth-abi.
- :mod:`gateway.chain.merkle`: the salted Merkle tree over signed readings.
- :mod:`gateway.chain.intervals`: per-interval import/export energy from cumulative counters.
- :mod:`gateway.chain.proof`: light-client verification of a contract storage value.

Errors are in :mod:`gateway.chain.errors`.
"""
