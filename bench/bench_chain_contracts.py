"""Gas of one settlement interval on a local anvil chain (real transactions, receipts).

For 10, 100 and 256 meters (every third meter a producer, the others consumers, each
meter its own owner account, every consumer prepaid), the gas of the gateway's submit()
that also settles the interval: first interval after deployment and steady state (third
interval; 18th with two gateways, once the staging ring is reused), per meter and per
reading at 90 readings per meter per 15-minute interval. Also: 256 meters where every
producer has a tier-1 key to 8 beneficiaries (the heaviest allowed shape), and 256
meters split over two gateways (the first submission is staged, the second settles).
Worst case: all 256 meters import and export, none prepaid, each with an 8-beneficiary
PERCENT_REDISTRIBUTED key, and a 256-member PERCENT_REDISTRIBUTED community key (first
interval, when every debt and receivable slot is new).

    .venv/bin/python -m bench.bench_chain_contracts
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from contracts.allocation_reference import KEY_PERCENT_REDISTRIBUTED, pack_entries  # noqa: E402
from contracts.boa_harness import PRICE, device_id, key_hash  # noqa: E402

READINGS_PER_METER = 90  # one reading per 10 s, 15-minute interval
INTERVAL = 900
SETTLE_DELAY = 3600
GAS = 29_000_000
SIZES = (10, 100, 256)


def _anvil_binary() -> Path:
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    path = REPO_ROOT / "node_modules" / "@foundry-rs" / f"anvil-linux-{arch}" / "bin" / "anvil"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run `make setup` (npm @foundry-rs/anvil)")
    return path


@contextlib.contextmanager
def _anvil():
    from web3 import Web3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(_anvil_binary()), "--port", str(port), "--silent", "--gas-limit", "30000000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}"))
        for _ in range(200):
            if proc.poll() is not None:
                raise RuntimeError("anvil exited at start")
            with contextlib.suppress(Exception):
                if w3.is_connected():
                    break
            time.sleep(0.05)
        yield w3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _artifacts() -> dict:
    # boa's compile cache makes this quick after the first run
    from vyper.compiler.output import build_abi_output

    from contracts.boa_harness import deployer

    out = {}
    for name in ("CommunityToken", "MeterRegistry", "Settlement"):
        data = deployer(name).compiler_data
        out[name] = (build_abi_output(data), data.bytecode)
    return out


class _Chain:
    def __init__(self, w3, artifacts):
        self.w3 = w3
        self.artifacts = artifacts
        self.admin, self.treasury, self.gw0, self.gw1 = w3.eth.accounts[:4]

    def rpc(self, method, params):
        response = self.w3.provider.make_request(method, params)
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']}")
        return response["result"]

    def receipt(self, tx_hash):
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.005)

    def deploy(self, name, *args):
        abi, bytecode = self.artifacts[name]
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        data = factory.constructor(*args).data_in_transaction
        tx = self.rpc("eth_sendTransaction", [{"from": self.admin, "data": data, "gas": hex(GAS)}])
        return self.w3.eth.contract(address=self.receipt(tx)["contractAddress"], abi=abi)

    def send(self, contract, fn_name, args, sender):
        data = contract.encode_abi(fn_name, args)
        tx = self.rpc("eth_sendTransaction", [
            {"from": sender, "to": contract.address, "data": data, "gas": hex(GAS)}])
        receipt = self.receipt(tx)
        if receipt["status"] != 1:
            raise RuntimeError(f"{fn_name} reverted")
        return receipt, len(bytes.fromhex(data[2:]))

    def next_interval(self) -> int:
        now = self.w3.eth.get_block("latest")["timestamp"]
        interval = now // INTERVAL
        self.rpc("evm_setNextBlockTimestamp", [(interval + 1) * INTERVAL])
        self.rpc("evm_mine", [])
        return interval


def _community(chain, n_meters, n_gateways, beneficiaries, worst=False):
    token = chain.deploy("CommunityToken", "Wattshare Sun", "SUN", 18, chain.treasury, 10**27)
    registry = chain.deploy("MeterRegistry")
    gateways = [chain.gw0, chain.gw1][:n_gateways]
    for gw in gateways:
        chain.send(registry, "add_gateway", [gw], chain.admin)
    settlement = chain.deploy("Settlement", token.address, registry.address, INTERVAL,
                              SETTLE_DELAY, PRICE)
    rng = random.Random(n_meters)
    owners = [chain.w3.to_checksum_address(rng.randbytes(20)) for _ in range(n_meters)]
    chain.send(token, "approve", [settlement.address, 10**27], chain.treasury)
    gateway_of = {}
    for i, owner in enumerate(owners):
        meter = i + 1
        gateway_of[meter] = gateways[i * n_gateways // n_meters]
        chain.send(registry, "register_meter",
                   [device_id(meter), key_hash(meter), owner, gateway_of[meter]], chain.admin)
        if meter % 3 != 1 and not worst:  # consumers prepay
            chain.send(settlement, "deposit_for", [owner, 10**22], chain.treasury)
    if beneficiaries:
        consumers = [m for m in gateway_of if m % 3 != 1 or worst]
        for p in (m for m in gateway_of if m % 3 == 1 or worst):
            # the producer sets its own key: send from its (impersonated) account
            chosen = rng.sample([m for m in consumers if m != p], beneficiaries)
            weights = [10_000 // len(chosen)] * len(chosen)
            chain.rpc("anvil_impersonateAccount", [owners[p - 1]])
            chain.rpc("anvil_setBalance", [owners[p - 1], hex(10**18)])
            chain.send(settlement, "set_producer_key",
                       [p, KEY_PERCENT_REDISTRIBUTED, chosen, weights], owners[p - 1])
    if worst:
        chain.send(settlement, "set_community_key",
                   [KEY_PERCENT_REDISTRIBUTED, sorted(gateway_of), [39] * n_meters], chain.admin)
    return settlement, gateway_of


def _measure(chain, n_meters, n_gateways=1, beneficiaries=0, intervals=3, worst=False):
    settlement, gateway_of = _community(chain, n_meters, n_gateways, beneficiaries, worst)
    rng = random.Random(7 * n_meters + beneficiaries)
    gas = []
    calldata = 0
    for _ in range(intervals):
        # producers export 200-1500 Wh, consumers import 100-3000 Wh per 15 min
        entries = [(m, 0, rng.randint(200, 1500)) if m % 3 == 1 else
                   (m, rng.randint(100, 3000), 0) for m in sorted(gateway_of)]
        if worst:
            entries = [(m, rng.randint(1000, 4000), rng.randint(1, 3000))
                       for m in sorted(gateway_of)]
        interval = chain.next_interval()
        gas.append([])
        calldata = 0
        for gw in dict.fromkeys(gateway_of.values()):
            mine = [e for e in entries if gateway_of[e[0]] == gw]
            receipt, size = chain.send(settlement, "submit",
                                       [interval, rng.randbytes(32), pack_entries(mine)], gw)
            gas[-1].append(receipt["gasUsed"])
            calldata += size
    readings = n_meters * READINGS_PER_METER
    first, steady = sum(gas[0]), sum(gas[-1])
    return {
        "meters": n_meters,
        "gateways": n_gateways,
        "tier1_beneficiaries_per_producer": beneficiaries,
        "first_interval_gas": first,
        "steady_interval": intervals,
        "steady_gas": steady,
        "steady_gas_per_tx": gas[-1],
        "steady_gas_per_meter": round(steady / n_meters),
        "first_gas_per_reading": round(first / readings, 1),
        "steady_gas_per_reading": round(steady / readings, 1),
        "calldata_bytes": calldata,
    }


def run() -> dict:
    t0 = time.perf_counter()
    artifacts = _artifacts()
    results = {}
    with _anvil() as w3:
        chain = _Chain(w3, artifacts)
        for n in SIZES:
            results[f"meters_{n}"] = _measure(chain, n)
        results["meters_256_keys_8"] = _measure(chain, 256, beneficiaries=8)
        # staging reuses its ring slots (16 intervals) from the 17th interval on
        results["meters_256_two_gateways"] = _measure(chain, 256, n_gateways=2, intervals=18)
        results["meters_256_worst_case"] = _measure(chain, 256, beneficiaries=8, intervals=1,
                                                    worst=True)
    results["readings_per_meter_per_interval"] = READINGS_PER_METER
    results["chain"] = "anvil 1.7.1, default hardfork, receipt gasUsed (includes 21000 + calldata)"
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
