"""Gas of the settlement contracts' heavier shapes, on a real anvil 1.7.1 (``--hardfork
osaka``, receipts' gasUsed: base and call data included).

Every meter's device signs its boundary readings (P-256, COSE_Sign1), checked on chain
(P256VERIFY). A window is an hour: the anchors at its boundaries, then its four
intervals in one transaction (32 anchors at most per transaction: the rest go first, in
transactions of their own). Consumers prepay; every third meter is a producer.

- ``meters_256_keys_8``: 256 meters, every producer with a PERCENT_REDISTRIBUTED key to 8
  beneficiaries (the heaviest tier-1 shape); steady window (the third). Intervals that
  would not fit one transaction go in several, as the gateway's outbox splits them.
- ``meters_256_two_gateways``: 256 meters, half on each of two gateways: the first
  gateway's intervals are staged, the second's settle both (the third window).
- ``worst_case``: all 256 meters import and export, none prepaid, each with an
  8-beneficiary PERCENT_REDISTRIBUTED key, a 256-member PERCENT_REDISTRIBUTED community
  key; one interval, the first after deployment (every debt and receivable slot new),
  its anchors sent before it. Measured on a node without the per-transaction cap, so the
  figure is known even above it: ``fits_tx_cap`` says whether one transaction of Osaka
  (2^24 gas) holds it.

    .venv/bin/python -m bench chain_contracts
"""

import random
import sys
import tempfile
import time
from pathlib import Path

from eth_account import Account
from wattcore import cose, reading

from bench.bench_chain import Meter
from gateway.chain import contracts, deploy, rpc
from gateway.chain.anvil import Anvil
from gateway.chain.errors import RpcError

L = 900
READINGS_PER_METER_INTERVAL = 90  # one reading per 10 s
PERCENT = contracts.KEY_KINDS["percent"]


class _Uncapped(Anvil):
    """anvil without Osaka's per-transaction cap (to measure what would not fit)."""

    def command(self, port):
        argv = [a for a in super().command(port) if a != "--enable-tx-gas-limit"]
        return argv + ["--gas-limit", "100000000"]


def _anchor(meter, t, ei, ee, at=0, restart=False):
    meter.seq += 1
    payload = reading.encode_payload({"dev": meter.device_id, "seq": meter.seq, "t": t,
                                      "st": 0, "ei": ei, "ee": ee, "p": 0, "mdl": 1})
    sig = cose.decode_sign1(cose.sign1(payload, meter.device_id, meter.sign)).signature
    return (meter.index, restart, at, payload, sig[:32], sig[32:])


class _Community:
    def __init__(self, port, keys, n, gateways=1, beneficiaries=0, worst=False):
        self.port, self.admin = port, keys[0]
        self.gateway_keys = keys[1:1 + gateways]
        gw = [Account.from_key(k).address for k in self.gateway_keys]
        rng = random.Random(n + 17 * beneficiaries + worst)
        now = int(time.time())
        self.first = now // L - 40
        port.request("evm_setTime", [self.first * L - L])  # set up before the hours settled
        d = self.d = deploy.deploy_community(port, self.admin, gw, interval_s=L)
        self.meters = [Meter(50_000 * n + 1000 * gateways + i) for i in range(n)]
        self.gateway_of = {}
        owners = [Account.create() for _ in range(n)]
        for i, (m, owner) in enumerate(zip(self.meters, owners, strict=True)):
            g = i * gateways // n
            m.index = deploy.register_meter(port, self.admin, d.registry, m.device_id,
                                            m.pubkey, owner.address, gw[g])
            self.gateway_of[m.index] = g
            m.ei, m.ee = 1000, 50
            if not worst and i % 3:
                deploy.fund(port, self.admin, d.token, d.settlement, owner.address, 10**24)
        producers = range(n) if worst else range(0, n, 3)
        if beneficiaries:
            for i in producers:
                chosen = rng.sample([j for j in range(n) if j != i and (worst or j % 3)],
                                    beneficiaries)
                rpc.send_transaction(port, self.admin, owners[i].address, b"", value=10**17,
                                     gas=21_000)
                deploy.set_producer_key(port, owners[i].key, d.settlement,
                                        self.meters[i].index, "percent",
                                        [self.meters[j].index for j in chosen],
                                        [10_000 // beneficiaries] * beneficiaries)
        if worst:
            deploy.transact(port, self.admin, d.settlement, contracts.SET_COMMUNITY_KEY,
                            [PERCENT, [m.index for m in self.meters], [39] * n])
        self.worst = worst
        self.rng = rng
        port.request("evm_setTime", [now])
        port.request("evm_mine", [])

    def energy(self, i):
        if self.worst:
            return self.rng.randint(1000, 4000), self.rng.randint(1, 3000)
        return (0, self.rng.randint(200, 1500)) if i % 3 == 0 else \
            (self.rng.randint(100, 3000), 0)

    def window(self, start, intervals=4, fresh=False):
        """Anchors at ``start`` (when ``fresh``) and ``start + intervals``, then the
        intervals; per gateway: anchor-only transactions, then its intervals. The gas of
        each transaction, in sending order."""
        per_interval = [{} for _ in range(intervals)]
        before, after = [], []
        for i, m in enumerate(self.meters):
            if fresh:
                before.append(_anchor(m, start * L, m.ei, m.ee, restart=True))
            for k in range(intervals):
                per_interval[k][m.index] = self.energy(i)
            m.ei += sum(e[m.index][0] for e in per_interval)
            m.ee += sum(e[m.index][1] for e in per_interval)
            after.append(_anchor(m, (start + intervals) * L, m.ei, m.ee))
        gas = []
        for g, key in enumerate(self.gateway_keys):
            mine = [a for a in before + after if self.gateway_of[a[0]] == g]
            while len(mine) > contracts.MAX_ANCHORS:
                gas.append(self._submit(key, 0, b"\0" * 32, mine[:contracts.MAX_ANCHORS], []))
                mine = mine[contracts.MAX_ANCHORS:]
            totals = [sorted((m, *e) for m, e in per.items() if self.gateway_of[m] == g)
                      for per in per_interval]
            # the rest of the anchors go before the first interval; as the gateway's
            # outbox does, intervals that would not fit one transaction go in several
            k, size = 0, len(totals)
            while k < len(totals):
                size = min(size, len(totals) - k)
                data = rpc.encode_call(contracts.SUBMIT, [
                    start + k, self.rng.randbytes(32), mine if k == 0 else [],
                    contracts.pack_intervals(totals[k:k + size])])
                if size > 1 and not self._fits(key, data):
                    size = (size + 1) // 2
                    continue
                gas.append(self._send(key, data))
                k += size
        return gas

    def _fits(self, key, data):
        try:
            estimate = self.port.estimate_gas(Account.from_key(key).address,
                                              self.d.settlement, data, 0)
        except RpcError:
            return False
        return estimate <= 0.95 * contracts.TX_GAS_CAP

    def _send(self, key, data):
        return rpc.send_transaction(self.port, key, self.d.settlement, data).gas_used

    def _submit(self, key, first, root, anchors, words):
        return self._send(key, rpc.encode_call(contracts.SUBMIT, [first, root, anchors, words]))


def _shape(port, keys, n, gateways=1, beneficiaries=0, windows=3):
    c = _Community(port, keys, n, gateways, beneficiaries)
    port.request("evm_setTime", [(c.first + 4 * windows) * L + 400])
    port.request("evm_mine", [])
    gas = [c.window(c.first + 4 * w, fresh=w == 0) for w in range(windows)]
    steady = gas[-1]
    readings = n * READINGS_PER_METER_INTERVAL * 4
    return {"meters": n, "gateways": gateways, "tier1_beneficiaries_per_producer": beneficiaries,
            "first_window_gas": sum(gas[0]), "steady_window_gas": sum(steady),
            "steady_gas_per_tx": steady,
            "steady_gas_per_reading": round(sum(steady) / readings, 1),
            "max_transaction_gas": max(max(g) for g in gas)}


def _worst(port, keys, n=256):
    c = _Community(port, keys, n, worst=True)
    port.request("evm_setTime", [(c.first + 1) * L + 400])
    port.request("evm_mine", [])
    gas = c.window(c.first, intervals=1, fresh=True)
    return {"meters": n, "tier1_beneficiaries_per_producer": 8, "community_key_members": n,
            "anchor_transactions_gas": gas[:-1], "interval_transaction_gas": gas[-1],
            "fits_tx_cap": gas[-1] <= contracts.TX_GAS_CAP and max(gas) <= contracts.TX_GAS_CAP}


def run():
    started = time.monotonic()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        with Anvil(Path(tmp) / "capped", accounts=3) as node:
            port = rpc.Web3Chain.connect(node.url, node.chain_id)
            keys = node.account_keys()
            result["meters_256_keys_8"] = _shape(port, keys, 256, beneficiaries=8)
            print("bench chain_contracts: keys_8 done", file=sys.stderr, flush=True)
            result["meters_256_two_gateways"] = _shape(port, keys, 256, gateways=2)
            print("bench chain_contracts: two gateways done", file=sys.stderr, flush=True)
        with _Uncapped(Path(tmp) / "uncapped", accounts=3) as node:
            port = rpc.Web3Chain.connect(node.url, node.chain_id)
            result["worst_case"] = _worst(port, node.account_keys())
    result["transaction_gas_cap"] = contracts.TX_GAS_CAP
    result["readings_per_meter_per_interval"] = READINGS_PER_METER_INTERVAL
    result["chain"] = "anvil 1.7.1 --hardfork osaka, receipts' gasUsed"
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
