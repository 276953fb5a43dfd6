"""Deploy and drive a Wattshare community in titanoboa's in-process EVM.

Used by contracts/tests and usable from a REPL:

    from contracts.boa_harness import deploy_community
    c = deploy_community()
    school = c.register_meter(c.new_account("school"))
    c.submit(c.next_interval(), {school: (1200, 0)})   # signs the anchors it needs

Meters sign like the firmware: each registered meter gets a P-256 key (derived from its
registration number, so runs repeat), and :meth:`Community.signed` builds a reading
payload with the same core the firmware uses (``wattcore.reading``) and signs its COSE
``Sig_structure``. :meth:`Community.submit` adds the boundary readings (anchors) a
submission needs, so a test states only what each meter imported and exported.

P256VERIFY: titanoboa's EVM (py-evm) has no precompile at address 0x100. Importing this
module registers one that verifies with ``cryptography`` and charges EIP-7951's 6,900
gas, with the precompile's interface: input ``sha256(msg) || r || s || x || y``, output
the 32-byte word 1 when the signature is valid, nothing otherwise. The anvil tests run
the real one (anvil 1.7.1, ``--hardfork osaka``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import boa
from boa.vm.py_evm import register_raw_precompile
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from contracts.allocation_reference import Key, pack_intervals

CONTRACTS_DIR = Path(__file__).resolve().parent
_FIRMWARE = CONTRACTS_DIR.parent / "firmware"
if str(_FIRMWARE) not in sys.path:
    sys.path.insert(0, str(_FIRMWARE))

from wattcore import cose, reading  # noqa: E402

INTERVAL_LENGTH = 900
SETTLE_DELAY = 3600
DECIMALS = 18
SUPPLY = 10**9 * 10**DECIMALS
# 0.15 token per kWh (token ~ 1 EUR, 18 decimals) = 1.5e14 units per Wh
PRICE = 150 * 10**12
MAX_WINDOW = 4  # intervals of 900 s in the longest window (MeterAnchors.MAX_WINDOW_SECONDS)
RESTART_PENDING = 7  # MeterAnchors: `intervals` of a meter after reset()
MAX_ANCHORS = 32  # signed readings per submission

P256VERIFY = "0x0000000000000000000000000000000000000100"
P256VERIFY_GAS = 6900
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _p256verify(computation):
    computation.consume_gas(P256VERIFY_GAS, reason="P256VERIFY")
    data = computation.msg.data_as_bytes
    computation.output = b""
    if len(data) != 160:
        return computation
    digest = data[:32]
    r, s, x, y = (int.from_bytes(data[k:k + 32], "big") for k in range(32, 160, 32))
    if not (0 < r < _P256_N and 0 < s < _P256_N):
        return computation
    try:
        key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        key.verify(utils.encode_dss_signature(r, s), digest,
                   ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        return computation
    computation.output = (1).to_bytes(32, "big")
    return computation


register_raw_precompile(P256VERIFY, _p256verify, force=True)


@functools.cache
def deployer(name: str):
    """boa deployer for contracts/<name>.vy (compiled once per process, cached on disk)."""
    return boa.load_partial(str(CONTRACTS_DIR / f"{name}.vy"))


def device_id(n: int) -> bytes:
    """8-byte device id as the firmware makes it: b"WS" + 6-byte hardware id."""
    return b"WS" + n.to_bytes(6, "big")


def meter_key(n: int) -> ec.EllipticCurvePrivateKey:
    """The P-256 key of registration number n (deterministic, for repeatable runs)."""
    secret = int.from_bytes(hashlib.sha256(b"wattshare meter %d" % n).digest(), "big")
    return ec.derive_private_key(secret % (_P256_N - 1) + 1, ec.SECP256R1())


def public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """65-byte uncompressed SEC1 public key (04 || x || y)."""
    n = key.public_key().public_numbers()
    return b"\x04" + n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")


def key_hash(public: bytes) -> bytes:
    """sha256 of a 65-byte public key, as the registry's events carry it."""
    return hashlib.sha256(public).digest()


@dataclass
class Device:
    """A registered meter's device: key, sequence number and cumulative counters."""

    index: int
    device_id: bytes
    key: ec.EllipticCurvePrivateKey
    seq: int = 0
    ei: int = 1_000
    ee: int = 500

    @property
    def public_key(self) -> bytes:
        return public_key(self.key)

    def sign(self, payload: bytes, key: ec.EllipticCurvePrivateKey | None = None):
        """(r, s) of the ES256 signature over the payload's COSE Sig_structure."""
        tbs = cose.sig_structure(cose.PROTECTED_ES256, payload)
        der = (key or self.key).sign(tbs, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big"), s.to_bytes(32, "big")


@dataclass
class Community:
    token: object
    registry: object
    anchors: object
    settlement: object
    admin: str
    treasury: str
    gateways: list[str]
    owners: dict[int, str] = field(default_factory=dict)  # meter index -> owner account
    gateway_of: dict[int, str] = field(default_factory=dict)  # meter index -> gateway
    devices: dict[int, Device] = field(default_factory=dict)  # meter index -> its device

    def fork(self) -> Community:
        """A copy of the Python-side bookkeeping (the chain state is boa's, snapshotted
        by its pytest plugin), so a test can register meters without leaking them."""
        return dataclasses.replace(
            self, gateways=list(self.gateways), owners=dict(self.owners),
            gateway_of=dict(self.gateway_of),
            devices={m: dataclasses.replace(d) for m, d in self.devices.items()})

    # ---- accounts and registry

    def new_account(self, alias: str | None = None) -> str:
        return boa.env.generate_address(alias)

    def register_meter(self, owner: str, gateway: str | None = None) -> int:
        gateway = gateway or self.gateways[0]
        n = self.registry.meter_count() + 1
        key = meter_key(n)
        with boa.env.prank(self.admin):
            index = self.registry.register_meter(device_id(n), public_key(key), owner, gateway)
        self.owners[index] = owner
        self.gateway_of[index] = gateway
        self.devices[index] = Device(index, device_id(n), key)
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

    # ---- time

    def next_interval(self) -> int:
        """The first interval that starts after now, once it is over: travels to its end.

        Anything registered before this call is registered before that interval."""
        now = boa.env.evm.patch.timestamp
        interval = now // INTERVAL_LENGTH + 1
        boa.env.time_travel(seconds=(interval + 1) * INTERVAL_LENGTH - now)
        return interval

    def travel_to(self, t: int) -> None:
        """Move the chain's clock forward to unix time t."""
        now = boa.env.evm.patch.timestamp
        if t > now:
            boa.env.time_travel(seconds=t - now)

    # ---- signed readings

    def signed(self, meter: int, t: int, *, ei: int | None = None, ee: int | None = None,
               st: int = 0, seq: int | None = None, dev: bytes | None = None,
               signer: int | None = None, restart: bool = False) -> tuple:
        """An Anchor tuple (meter, restart, at, payload, r, s): the device of `meter` signs a
        reading at time t with its counters (or the given ones); `signer` signs with
        another meter's key instead."""
        d = self.devices[meter]
        if seq is None:
            d.seq += 1
            seq = d.seq
        fields = {"dev": dev or d.device_id, "seq": seq, "t": t, "st": st, "mdl": 1}
        if not st & reading.ST_FAULT_MASK:
            fields.update({"ei": d.ei if ei is None else ei, "ee": d.ee if ee is None else ee,
                           "p": 0})
        payload = reading.encode_payload(fields)
        key = self.devices[signer].key if signer is not None else None
        r, s = d.sign(payload, key)
        return (meter, restart, 0, payload, r, s)

    def anchor(self, meter: int, boundary: int, imported: int = 0, exported: int = 0,
               restart: bool = False, delay: int = 0) -> tuple:
        """The meter's signed reading `delay` s after boundary `boundary` (an interval id),
        its counters first advanced by the energy since its previous anchor."""
        d = self.devices[meter]
        d.ei += imported
        d.ee += exported
        return self.signed(meter, boundary * INTERVAL_LENGTH + delay, restart=restart)

    def anchor_state(self, meter: int) -> tuple:
        """(boundary, seq, ei, ee, intervals left, import left, export left, gateway id)."""
        return self.anchors.anchor_of(self.settlement.address, meter)

    def window_anchors(self, interval: int, meters: dict[int, tuple[int, int]]) -> list[tuple]:
        """The anchors that give each meter a one-interval window for `interval` holding
        exactly its (import, export), unless an open window covers the interval already."""
        out = []
        for m in sorted(meters):
            boundary, _seq, _ei, _ee, left, *_ = self.anchor_state(m)
            if left not in (0, RESTART_PENDING) and boundary - left == interval:
                continue  # the test opened a longer window itself
            if boundary != interval or left != 0:
                out.append(self.anchor(m, interval, restart=True))
            out.append(self.anchor(m, interval + 1, *meters[m]))
        return out

    def open_window(self, start: int, budgets: dict[int, tuple[int, int]],
                    intervals: int = MAX_WINDOW, gateway: str | None = None) -> None:
        """Sign and submit anchors at `start` (afresh) and `start + intervals` for each
        meter, giving it a window of `intervals` intervals with {meter: (import, export)}."""
        meters = sorted(budgets)
        self.travel_to((start + intervals) * INTERVAL_LENGTH)
        for part in (0, 1):
            anchors = [self.anchor(m, start, restart=True) if part == 0 else
                       self.anchor(m, start + intervals, *budgets[m]) for m in meters]
            for k in range(0, len(anchors), MAX_ANCHORS):
                with boa.env.prank(gateway or self.gateway_of[meters[0]]):
                    self.settlement.submit(0, b"\x00" * 32, anchors[k:k + MAX_ANCHORS], [])

    # ---- submissions

    _roots = itertools.count(1)

    def root(self) -> bytes:
        """A fresh non-zero root (the contract takes each root once)."""
        return hashlib.sha256(b"root %d" % next(self._roots)).digest()

    def submit(
        self,
        interval: int,
        meters: dict[int, tuple[int, int]],
        gateway: str | None = None,
        root: bytes | None = None,
        anchors: list[tuple] | None = None,
    ):
        """Submit meters {index: (import Wh, export Wh)} for `interval` from `gateway`,
        with the anchors that open each meter's window (signed here) unless given."""
        gateway = gateway or self.gateways[0]
        if anchors is None:
            anchors = self.window_anchors(interval, meters)
        packed = pack_intervals([[(m, *meters[m]) for m in sorted(meters)]])
        with boa.env.prank(gateway):
            while len(anchors) > MAX_ANCHORS:  # the rest first, on their own
                self.settlement.submit(0, b"\x00" * 32, anchors[:MAX_ANCHORS], [])
                anchors = anchors[MAX_ANCHORS:]
            self.settlement.submit(interval, root or self.root(), anchors, packed)
        return self.settlement


def deploy_community(
    n_gateways: int = 1,
    interval_length: int = INTERVAL_LENGTH,
    settle_delay: int = SETTLE_DELAY,
    price: int = PRICE,
) -> Community:
    """Token (supply to the treasury), registry (admin + gateways), anchors, settlement."""
    admin = boa.env.generate_address("admin")
    treasury = boa.env.generate_address("treasury")
    gateways = [boa.env.generate_address(f"gateway{i}") for i in range(n_gateways)]
    with boa.env.prank(admin):
        token = deployer("CommunityToken").deploy("Wattshare Sun", "SUN", DECIMALS, treasury,
                                                  SUPPLY)
        registry = deployer("MeterRegistry").deploy()
        for gateway in gateways:
            registry.add_gateway(gateway)
        anchors = deployer("MeterAnchors").deploy()
        settlement = deployer("Settlement").deploy(
            token.address, registry.address, anchors.address, interval_length, settle_delay,
            price
        )
    return Community(token, registry, anchors, settlement, admin, treasury, gateways)


def event_tuples(contract, names: set[str] | None = None, emitter=None) -> list[tuple]:
    """Events the contract itself (or `emitter`, a contract it called) emitted in its
    last call, as (name, *fields) tuples."""
    out = []
    source = (emitter or contract).address
    for log in contract.get_logs():
        name = type(log).__name__
        if log[0] != source:
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
    self_supply: dict[int, int] = field(default_factory=dict)  # meter -> wh
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
        elif name == "SelfSupply":
            out.self_supply[f[1]] = f[2]
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
