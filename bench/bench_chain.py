"""Gas per settlement interval as the gateway submits it, on a real anvil.

For 10, 100 and 256 meters on one gateway (every third meter a producer with a STATIC
key giving 50 % to the next consumer, the rest to the community pool; consumers
prepaid): the gas of the gateway's ``submit`` (salted Merkle root + packed per-meter
import/export, encoded with ``gateway.chain.contracts.pack_totals``), which settles the
interval in the same transaction (one gateway). "first": the first interval after
commissioning (fresh storage slots), "steady": the third. Per reading at one reading per
10 s and 15-min intervals (90 readings per meter per interval). Compared with anchoring
each reading as its own transaction: a plain transaction carrying the 32-byte leaf hash
as call data (the cheapest possible per-reading anchor, no storage at all).

    .venv/bin/python -m bench chain
"""

import os
import random
import tempfile
import time

from eth_account import Account

from gateway.chain import contracts, deploy, merkle, rpc
from gateway.chain.anvil import Anvil

SIZES = (10, 100, 256)
READINGS_PER_METER = 90
L = 900
OWNERS = 16


def _community(port, keys, n):
    admin, gateway_key = keys[0], keys[1]
    gateway = Account.from_key(gateway_key).address
    d = deploy.deploy_community(port, admin, [gateway], interval_s=L)
    owners = [Account.create() for _ in range(OWNERS)]
    indices = []
    for i in range(n):
        owner = owners[i % OWNERS].address
        pub = b"\x04" + i.to_bytes(64, "big")
        indices.append(deploy.register_meter(port, admin, d.registry,
                                             b"WS" + i.to_bytes(6, "big"), pub, owner,
                                             gateway))
    for o in owners:
        deploy.fund(port, admin, d.token, d.settlement, o.address, 10**24)
    # producers: every third meter; its owner needs gas to set its key
    for i in range(0, n - 1, 3):
        owner = owners[i % OWNERS]
        rpc.send_transaction(port, admin, owner.address, b"", value=10**17, gas=21_000)
        deploy.set_producer_key(port, owner.key, d.settlement, indices[i], "static",
                                [indices[i + 1]], [5000])
    return d, gateway_key, indices


def _totals(indices, rng):
    out = []
    for k, index in enumerate(indices):
        if k % 3 == 0:
            out.append((index, rng.randrange(0, 50), rng.randrange(500, 3000)))
        else:
            out.append((index, rng.randrange(100, 1500), 0))
    return out


def _submit(port, key, settlement, interval, totals):
    data = rpc.encode_call(contracts.SUBMIT, [interval, os.urandom(32),
                                              contracts.pack_totals(totals)])
    receipt = rpc.send_transaction(port, key, settlement, data)
    assert receipt.status == 1
    return receipt.gas_used


def run():
    started = time.monotonic()
    rng = random.Random(7)
    result = {"gas_per_interval": {}}
    with tempfile.TemporaryDirectory() as tmp, Anvil(tmp, accounts=2) as node:
        keys = node.account_keys()
        port = rpc.Web3Chain.connect(node.url, node.chain_id)
        first = int(time.time()) // L - 10
        for n in SIZES:
            d, gateway_key, indices = _community(port, keys, n)
            gas = [_submit(port, gateway_key, d.settlement, first + k, _totals(indices, rng))
                   for k in range(3)]
            result["gas_per_interval"][str(n)] = {
                "first": gas[0], "steady": gas[2],
                "steady_per_meter": round(gas[2] / n, 1),
            }
        steady = result["gas_per_interval"][str(SIZES[-1])]["steady"]
        result["gas_per_reading_steady"] = round(steady / (SIZES[-1] * READINGS_PER_METER), 1)
        # one reading anchored per transaction: its 32-byte leaf hash as call data
        leaf = merkle.leaf_hash(merkle.new_salt(), b"reading")
        receipt = rpc.send_transaction(port, keys[1], Account.create().address, leaf)
        result["gas_per_reading_tx_each"] = receipt.gas_used
    result["ratio_vs_tx_each"] = round(result["gas_per_reading_tx_each"]
                                       / result["gas_per_reading_steady"], 1)
    result["readings_per_meter_per_interval"] = READINGS_PER_METER
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
