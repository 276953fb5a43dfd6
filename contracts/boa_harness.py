"""Deploy and drive a Wattshare community in titanoboa's in-process EVM.

Used by contracts/tests and usable from a REPL:

    from contracts.boa_harness import deploy_community
    c = deploy_community()
    school = c.register_meter(c.new_account("school"))
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import boa

from contracts.allocation_reference import Key, pack_entries

CONTRACTS_DIR = Path(__file__).resolve().parent
INTERVAL_LENGTH = 900
SETTLE_DELAY = 3600
DECIMALS = 18
SUPPLY = 10**9 * 10**DECIMALS
# 0.15 token per kWh (token ~ 1 EUR, 18 decimals) = 1.5e14 units per Wh
PRICE = 150 * 10**12


@functools.cache
def deployer(name: str):
    """boa deployer for contracts/<name>.vy (compiled once per process, cached on disk)."""
    return boa.load_partial(str(CONTRACTS_DIR / f"{name}.vy"))


def device_id(n: int) -> bytes:
    """8-byte device id as the firmware makes it: b"WS" + 6-byte hardware id."""
    return b"WS" + n.to_bytes(6, "big")


def key_hash(n: int) -> bytes:
    """Stand-in for sha256(65-byte uncompressed P-256 public key)."""
    return hashlib.sha256(b"\x04" + n.to_bytes(64, "big")).digest()


@dataclass
class Community:
    token: object
    registry: object
    settlement: object
    admin: str
    treasury: str
    gateways: list[str]
    owners: dict[int, str] = field(default_factory=dict)  # meter index -> owner account
    gateway_of: dict[int, str] = field(default_factory=dict)  # meter index -> gateway

    def fork(self) -> Community:
        """A copy of the Python-side bookkeeping (the chain state is boa's, snapshotted
        by its pytest plugin), so a test can register meters without leaking them."""
        return dataclasses.replace(self, gateways=list(self.gateways), owners=dict(self.owners),
                                   gateway_of=dict(self.gateway_of))

    # ---- accounts and registry

    def new_account(self, alias: str | None = None) -> str:
        return boa.env.generate_address(alias)

    def register_meter(self, owner: str, gateway: str | None = None) -> int:
        gateway = gateway or self.gateways[0]
        n = len(self.owners) + 1
        with boa.env.prank(self.admin):
            index = self.registry.register_meter(device_id(n), key_hash(n), owner, gateway)
        self.owners[index] = owner
        self.gateway_of[index] = gateway
        return index

    # ---- tokens

    def fund(self, account: str, amount: int) -> None:
        """Treasury deposits `amount` into the settlement contract for `account`."""
        with boa.env.prank(self.treasury):
            self.token.approve(self.settlement.address, amount)
            self.settlement.deposit_for(account, amount)

    def give_tokens(self, account: str, amount: int) -> None:
        with boa.env.prank(self.treasury):
            self.token.transfer(account, amount)

    # ---- keys

    def set_producer_key(self, producer: int, key: Key) -> None:
        with boa.env.prank(self.owners[producer]):
            self.settlement.set_producer_key(
                producer, key.kind, list(key.members), list(key.weights)
            )

    def set_community_key(self, key: Key) -> None:
        with boa.env.prank(self.admin):
            self.settlement.set_community_key(key.kind, list(key.members), list(key.weights))

    # ---- intervals

    def finished_interval(self) -> int:
        """Id of the last interval that has fully ended at the current block time."""
        return boa.env.evm.patch.timestamp // INTERVAL_LENGTH - 1

    def next_interval(self) -> int:
        """Travel past the end of the current interval and return its id."""
        now = boa.env.evm.patch.timestamp
        interval = now // INTERVAL_LENGTH
        boa.env.time_travel(seconds=(interval + 1) * INTERVAL_LENGTH - now)
        return interval

    def submit(
        self,
        interval: int,
        meters: dict[int, tuple[int, int]],
        gateway: str | None = None,
        root: bytes | None = None,
    ):
        """Submit meters {index: (import Wh, export Wh)} for `interval` from `gateway`."""
        gateway = gateway or self.gateways[0]
        root = root or hashlib.sha256(b"root" + interval.to_bytes(8, "big") + gateway.encode())
        if not isinstance(root, bytes):
            root = root.digest()
        packed = pack_entries((m, *meters[m]) for m in sorted(meters))
        with boa.env.prank(gateway):
            self.settlement.submit(interval, root, packed)
        return self.settlement


def deploy_community(
    n_gateways: int = 1,
    interval_length: int = INTERVAL_LENGTH,
    settle_delay: int = SETTLE_DELAY,
    price: int = PRICE,
) -> Community:
    """Token (supply to the treasury), registry (admin + gateways), settlement."""
    admin = boa.env.generate_address("admin")
    treasury = boa.env.generate_address("treasury")
    gateways = [boa.env.generate_address(f"gateway{i}") for i in range(n_gateways)]
    with boa.env.prank(admin):
        token = deployer("CommunityToken").deploy("Wattshare Sun", "SUN", DECIMALS, treasury,
                                                  SUPPLY)
        registry = deployer("MeterRegistry").deploy()
        for gateway in gateways:
            registry.add_gateway(gateway)
        settlement = deployer("Settlement").deploy(
            token.address, registry.address, interval_length, settle_delay, price
        )
    return Community(token, registry, settlement, admin, treasury, gateways)


def event_tuples(contract, names: set[str] | None = None) -> list[tuple]:
    """Events the contract itself emitted in its last call, as (name, *fields) tuples."""
    out = []
    for log in contract.get_logs():
        name = type(log).__name__
        if log[0] != contract.address:
            continue  # e.g. the token's Transfer inside a deposit
        if names is None or name in names:
            out.append((name, *(str(v) if _is_address(v) else v for v in log[1:])))
    return out


def _is_address(value) -> bool:
    return isinstance(value, str) and value.startswith("0x") and len(value) == 42


@dataclass
class SettlementOutcome:
    """Flows of one settlement, from the contract's events (Wh and token units)."""

    p2p: dict[tuple[int, int], int] = field(default_factory=dict)  # (producer, consumer) -> wh
    p2p_tokens: dict[tuple[int, int], int] = field(default_factory=dict)
    pool_allocations: dict[int, int] = field(default_factory=dict)  # consumer -> wh
    pool_contributions: dict[int, int] = field(default_factory=dict)  # producer -> wh
    grid_import: dict[int, int] = field(default_factory=dict)
    grid_export: dict[int, int] = field(default_factory=dict)
    unpaid: list[tuple] = field(default_factory=list)
    receivables: list[tuple] = field(default_factory=list)
    settled: tuple | None = None


def settlement_outcome(events: list[tuple]) -> SettlementOutcome:
    """Collect event tuples (see event_tuples) of a settling call."""
    out = SettlementOutcome()
    for name, *f in events:
        if name == "P2PAllocation":
            out.p2p[(f[1], f[2])] = f[3]
            out.p2p_tokens[(f[1], f[2])] = f[4]
        elif name == "PoolAllocation":
            out.pool_allocations[f[1]] = f[2]
        elif name == "PoolContribution":
            out.pool_contributions[f[1]] = f[2]
        elif name == "GridImport":
            out.grid_import[f[1]] = f[2]
        elif name == "GridExport":
            out.grid_export[f[1]] = f[2]
        elif name == "UnpaidAllocation":
            out.unpaid.append(tuple(f))
        elif name == "ReceivableRecorded":
            out.receivables.append(tuple(f))
        elif name == "Settled":
            out.settled = tuple(f)
    return out
