"""Gas per reading as the gateway settles it, with the meters' signatures checked on chain.

On a real anvil 1.7.1 (``--hardfork osaka``: the P256VERIFY precompile; ``--enable-tx-gas-limit``:
no transaction above 2^24 gas), for 10, 100 and 256 meters on one gateway: every meter
signs a reading every 10 s (P-256, COSE_Sign1, as the firmware does), the gateway checks
and stores them (``verify.check_batch``, ``writer.GroupStore``), and its chain link
settles them: the batcher builds batches of intervals with each meter's signed readings at
the interval boundaries (``gateway.chain.batcher``), the outbox signs and sends them
(``gateway.chain.outbox``). Every third meter is a producer with a STATIC key giving 50 %
to the next meter, the rest goes to the community pool; consumers prepay.

"steady": the third batch (meters anchored, balances written before), its gas (every
transaction of it, receipts' gasUsed: base and call data included) per reading at one
reading per 10 s. A small community submits two hours per transaction (its signed
readings fit one), a large one an hour, its signed readings in transactions of their own
first. ``signature_checks_per_meter_hour``: P256VERIFY calls per meter per hour in
steady state. ``gas_per_interval``: the first and the steady batch's gas per interval.
Compared with anchoring each reading as its own transaction: a plain transaction carrying
the 32-byte leaf hash as call data (the cheapest possible per-reading anchor).

    .venv/bin/python -m bench chain
"""

import random
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from eth_account import Account
from wattcore import cose, exchange, reading

from gateway import registry, store
from gateway.chain import batcher, contracts, deploy, merkle, rpc
from gateway.chain.anvil import Anvil
from gateway.chain.outbox import Outbox
from gateway.verify import Credential, Policy, check_batch
from gateway.writer import GroupStore

SIZES = (10, 100, 256)
L = 900
STEP = 10  # one reading per 10 s
READINGS_PER_METER_HOUR = 3600 // STEP
BATCHES = 3  # the third is the steady one
OWNERS = 16


class Meter:
    def __init__(self, n):
        self.device_id = b"WS" + n.to_bytes(6, "big")
        self.key = ec.derive_private_key(1_000_003 * n + 7, ec.SECP256R1())
        self.pubkey = registry.uncompressed(self.key.public_key())
        self.seq = 0
        self.index = None

    def sign(self, tbs):
        r, s = utils.decode_dss_signature(self.key.sign(tbs, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def readings(self, t_from, t_to, power_in, power_out, t0):
        out = []
        for t in range(t_from, t_to, STEP):
            self.seq += 1
            payload = reading.encode_payload({
                "dev": self.device_id, "seq": self.seq, "t": t, "st": 0,
                "ei": 1000 + power_in * (t - t0) // 3600,
                "ee": 50 + power_out * (t - t0) // 3600,
                "p": power_in - power_out, "u": 2301, "i": 5230, "f": 5000, "pf": 990,
                "mdl": 1})
            out.append(cose.sign1(payload, self.device_id, self.sign))
        return out


def _store(conn, meter, signed):
    writer = GroupStore(conn)
    cred = Credential(meter.device_id, meter.pubkey, 10**6, False)
    for k in range(0, len(signed), 32):
        checked = check_batch(exchange.encode_batch(signed[k:k + 32]), cred, 2**40,
                              Policy(2**40, 2**40))
        assert checked.reason is None, checked.reason
        writer.commit([("store", 0, meter.device_id, checked.readings, 0)])


def _measure(port, keys, n, tmp):
    admin, gateway_key = keys[0], keys[1]
    gateway = Account.from_key(gateway_key).address
    rng = random.Random(n)
    batch = 8 if 2 * n <= contracts.MAX_ANCHORS else 4
    hours = BATCHES * batch // 4
    now = int(time.time())
    first = now // L - hours * 4 - 2
    t0 = first * L
    # the community is set up before the hours it settles
    port.request("evm_setTime", [t0 - L])
    d = deploy.deploy_community(port, admin, [gateway], interval_s=L)
    owners = [Account.create() for _ in range(OWNERS)]
    conn = store.open_store(Path(tmp) / f"gw{n}.sqlite3")
    meters = [Meter(10_000 * n + i) for i in range(n)]
    for i, m in enumerate(meters):
        owner = owners[i % OWNERS].address
        registry.add_device(conn, m.device_id, m.pubkey, "SDM120CT", owner, f"m{i}", 100.0)
        m.index = deploy.register_meter(port, admin, d.registry, m.device_id, m.pubkey,
                                        owner, gateway)
        batcher.set_meter_index(conn, m.device_id, m.index)
    for o in owners:
        deploy.fund(port, admin, d.token, d.settlement, o.address, 10**24)
    for i in range(0, n - 1, 3):  # producers: their owner signs their key
        owner = owners[i % OWNERS]
        rpc.send_transaction(port, admin, owner.address, b"", value=10**17, gas=21_000)
        deploy.set_producer_key(port, owner.key, d.settlement, meters[i].index, "static",
                                [meters[i + 1].index], [5000])
    port.request("evm_setTime", [now])
    port.request("evm_mine", [])
    # a reading every 10 s for every meter over the hours settled (and the last boundary)
    end_t = (first + hours * 4) * L + 1
    for i, m in enumerate(meters):
        power_in, power_out = ((rng.randrange(0, 200), rng.randrange(2000, 12000))
                               if i % 3 == 0 else (rng.randrange(400, 6000), 0))
        _store(conn, m, m.readings(t0, end_t, power_in, power_out, t0))
    view = batcher.ChainView(port, d.settlement, gateway)
    b = batcher.Batcher(conn, d.settlement, view, length=L, grace_s=60)
    box = Outbox(conn, port, gateway_key, d.settlement,
                 split=lambda k, p: batcher.split_row(conn, d.settlement, k, p, length=L))
    batches = []
    for k in range(BATCHES):
        start = first + k * batch
        built = b.build(start, start + batch)
        for _ in range(200):
            box.step()
            states = {s for (s,) in conn.execute("SELECT state FROM chain_outbox")}
            if states <= {"confirmed"}:
                break
        else:
            raise RuntimeError(f"{n} meters: outbox not done: {states}")
        rows = conn.execute(
            "SELECT interval, part, intervals, anchors, gas_used FROM chain_outbox WHERE "
            "interval >= ? AND interval < ? ORDER BY interval, part",
            (start, start + batch)).fetchall()
        batches.append({"intervals": sum(r[2] for r in rows), "anchors": sum(r[3] for r in rows),
                        "transactions": [r[4] for r in rows], "gas": sum(r[4] for r in rows),
                        "built_rows": len(built)})
    settled = conn.execute("SELECT count(*) FROM chain_outbox WHERE state = 'confirmed'"
                           ).fetchone()[0]
    conn.close()
    steady = batches[-1]
    readings = n * READINGS_PER_METER_HOUR * steady["intervals"] // 4
    return {
        "batch_intervals": batch,
        "first": batches[0], "steady": steady, "rows_confirmed": settled,
        "gas_per_reading": round(steady["gas"] / readings, 1),
        "signature_checks_per_meter_hour": round(
            steady["anchors"] / n / (steady["intervals"] / 4), 2),
        "max_transaction_gas": max(max(x["transactions"]) for x in batches),
    }


def run():
    started = time.monotonic()
    result = {"gas_per_interval": {}, "gas_per_reading_by_meters": {}, "communities": {}}
    with tempfile.TemporaryDirectory() as tmp, Anvil(Path(tmp) / "chain", accounts=2) as node:
        keys = node.account_keys()
        port = rpc.Web3Chain.connect(node.url, node.chain_id)
        for n in SIZES:
            r = _measure(port, keys, n, tmp)
            result["communities"][str(n)] = r
            result["gas_per_reading_by_meters"][str(n)] = r["gas_per_reading"]
            result["gas_per_interval"][str(n)] = {
                "first": round(r["first"]["gas"] / r["first"]["intervals"]),
                "steady": round(r["steady"]["gas"] / r["steady"]["intervals"]),
                "steady_per_meter": round(r["steady"]["gas"] / r["steady"]["intervals"] / n, 1),
            }
            print(f"bench chain: {n} meters: {r['gas_per_reading']} gas per reading",
                  file=sys.stderr, flush=True)
        result["gas_per_reading_steady"] = result["gas_per_reading_by_meters"][str(SIZES[-1])]
        result["signature_checks_per_meter_hour"] = \
            result["communities"][str(SIZES[-1])]["signature_checks_per_meter_hour"]
        result["max_transaction_gas"] = max(r["max_transaction_gas"]
                                            for r in result["communities"].values())
        result["transaction_gas_cap"] = contracts.TX_GAS_CAP
        # one reading anchored per transaction: its 32-byte leaf hash as call data
        leaf = merkle.leaf_hash(merkle.new_salt(), b"reading")
        receipt = rpc.send_transaction(port, keys[1], Account.create().address, leaf)
        result["gas_per_reading_tx_each"] = receipt.gas_used
    result["ratio_vs_tx_each"] = round(result["gas_per_reading_tx_each"]
                                       / result["gas_per_reading_steady"], 1)
    result["readings_per_meter_per_hour"] = READINGS_PER_METER_HOUR
    result["chain"] = "anvil 1.7.1 --hardfork osaka --enable-tx-gas-limit, receipts' gasUsed"
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
