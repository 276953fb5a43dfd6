"""Test bed for the batcher/outbox/verify tests: a Wattshare community deployed on a real
anvil, meters that sign readings (cryptography), readings stored through the gateway's
own path (``verify.check_batch`` then ``writer.GroupStore``)."""

import os
import signal
import sys
import time
from pathlib import Path

from eth_account import Account
from gw_testbed import MeterKey
from wattcore import exchange

from gateway import registry, store
from gateway.chain import batcher, contracts, deploy, rpc
from gateway.chain.anvil import Anvil
from gateway.verify import Credential, Policy, check_batch
from gateway.writer import GroupStore

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

L = 900
STEP = 10  # one reading every 10 s
FUNDING = 10**24


class Member:
    def __init__(self, name, owner_key, import_w, export_w):
        self.name = name
        self.meter = MeterKey()
        self.owner_key = owner_key
        self.owner = Account.from_key(owner_key).address
        self.import_w, self.export_w = import_w, export_w  # constant power
        self.index = None
        self.seq = 0

    def counters(self, t, t0):
        # cumulative Wh at time t (integer: power x seconds / 3600, floored)
        return (self.import_w * (t - t0) // 3600 + 1000, self.export_w * (t - t0) // 3600 + 50)


class Community:
    """anvil + deployed contracts + a gateway database with three meters."""

    def __init__(self, tmp_path, members=(("producer", 0, 20_000), ("school", 6_000, 0),
                                          ("household", 1_500, 0)), past_intervals=8):
        self.tmp = tmp_path
        self.node = Anvil(tmp_path / "chain").start()
        self.keys = self.node.account_keys()
        self.port = rpc.Web3Chain.connect(self.node.url, self.node.chain_id)
        now = int(time.time())
        # intervals well in the past: the community (contracts, meters) was set up before
        # them, so the chain's clock goes back there for the set-up, then to now
        self.first = now // L - past_intervals
        self.t0 = self.first * L
        self.port.request("evm_setTime", [self.t0 - L])
        self.admin_key = self.keys[0]
        self.gateway_key = self.keys[1]
        self.gateway = Account.from_key(self.gateway_key).address
        self.deployment = deploy.deploy_community(self.port, self.admin_key, [self.gateway],
                                                  interval_s=L)
        self.settlement = self.deployment.settlement
        self.db = tmp_path / "gateway.sqlite3"
        self.conn = store.open_store(self.db)
        # owners: anvil's funded accounts while they last (a producer signs its key)
        self.members = [Member(n, self.keys[2 + i] if 2 + i < len(self.keys)
                               else Account.create().key, imp, exp)
                        for i, (n, imp, exp) in enumerate(members)]
        for m in self.members:
            registry.add_device(self.conn, m.meter.device_id, m.meter.pubkey, "SDM120CT",
                                m.owner, m.name, 100.0)
            m.index = deploy.register_meter(self.port, self.admin_key, self.deployment.registry,
                                            m.meter.device_id, m.meter.pubkey, m.owner,
                                            self.gateway)
            batcher.set_meter_index(self.conn, m.meter.device_id, m.index)
            if m.import_w:
                deploy.fund(self.port, self.admin_key, self.deployment.token, self.settlement,
                            m.owner, FUNDING)
        self.store = GroupStore(self.conn)
        self.port.request("evm_setTime", [now])
        self.port.request("evm_mine", [])
        self.view = batcher.ChainView(self.port, self.settlement, self.gateway)

    def batcher(self, **kw):
        """The gateway's batcher for this community (grace 60 s)."""
        kw.setdefault("grace_s", 60)
        return batcher.Batcher(self.conn, self.settlement, self.view, length=L, **kw)

    def member(self, name):
        return next(m for m in self.members if m.name == name)

    def store_readings(self, t_from, t_to, members=None):
        """Sign and store one reading per STEP s in [t_from, t_to] for each member."""
        for m in members or self.members:
            signed = []
            for t in range(t_from, t_to + 1, STEP):
                m.seq += 1
                ei, ee = m.counters(t, self.t0)
                signed.append(m.meter.reading(m.seq, t=t, ei=ei, ee=ee, p=0))
            self.store_signed(m, signed)

    def store_signed(self, m, signed):
        """Check and store signed readings of member ``m`` as the gateway would."""
        for k in range(0, len(signed), 32):
            payload = exchange.encode_batch(signed[k:k + 32])
            cred = Credential(m.meter.device_id, m.meter.pubkey, 10**6, False)
            checked = check_batch(payload, cred, 2**40, Policy(2**40, 2**40))
            assert checked.reason is None, checked
            outcome = self.store.commit([("store", 0, m.meter.device_id,
                                          checked.readings, 0)])
            assert outcome[0][1].reason is None

    def expected_totals(self, interval):
        """{meter index: (import Wh, export Wh)} from the counters at the boundaries."""
        out = {}
        for m in self.members:
            a = m.counters(interval * L, self.t0)
            b = m.counters((interval + 1) * L, self.t0)
            out[m.index] = (b[0] - a[0], b[1] - a[1])
        return out

    def logs(self, event, from_block=0):
        topic = "0x" + contracts.event_topic("Settlement", event).hex()
        raw = self.port.request("eth_getLogs", [{"address": self.settlement,
                                                 "fromBlock": hex(from_block),
                                                 "toBlock": "latest", "topics": [topic]}])
        return [contracts.decode_log("Settlement", x)[1] for x in raw]

    def kill_node(self):
        """SIGKILL anvil (a crash or power cut of the node: nothing written)."""
        pid = self.node.pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.node.exit_status() is None:
            assert time.monotonic() < deadline, f"anvil {pid} survived SIGKILL"
            time.sleep(0.01)

    def restart_node(self):
        """Start anvil again from its state file; returns the new port."""
        self.node.restart()
        self.port = rpc.Web3Chain.connect(self.node.url, self.node.chain_id)
        self.view.port = self.port
        return self.port

    def close(self):
        self.conn.close()
        self.node.stop()
