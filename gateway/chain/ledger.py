"""The community's settled energy and payments, read back from the chain.

Everything here comes from the Settlement contract's events and views, through any
JSON-RPC node (a :class:`gateway.chain.rpc.ChainPort`): what the contract settled, not
what a gateway or a simulator meant to submit. Per interval:

- ``Settled``: the interval's totals and the transaction that settled it;
- flows: ``P2PAllocation`` (producer -> its chosen beneficiary), ``PoolContribution``
  (producer -> community pool), ``PoolAllocation`` (pool -> consumer), ``GridExport``
  (meter -> grid), ``GridImport`` (grid -> meter), ``SelfSupply`` (a meter that both
  exported and imported in the interval used that much of its own export: no one else's,
  no tokens); energy in Wh and the tokens charged;
- ``UnpaidAllocation`` / ``ReceivableRecorded``: the part of a charge a consumer's
  balance did not cover (its debt; the producers' receivable).

Per meter this gives the contract's own identities: what it imported = P2P and pool
received + grid import + self-supply; what it exported = P2P and pool sent + grid export
+ self-supply. A meter
that was a gap in an interval has no events in it.

Meters are indices of the community's MeterRegistry; names belong to the caller (the
gateway's labels, :mod:`gateway.community`).
"""

from dataclasses import dataclass, field

from gateway.chain import contracts, rpc

POOL = "pool"
GRID = "grid"

# event -> kind of flow
FLOW_EVENTS = {
    "P2PAllocation": "p2p",
    "PoolContribution": "pool_in",
    "PoolAllocation": "pool_out",
    "GridExport": "grid_export",
    "GridImport": "grid_import",
    "SelfSupply": "self_supply",
}
_OTHER_EVENTS = ("Settled", "UnpaidAllocation", "ReceivableRecorded")
_MAX_TOPIC_INTERVALS = 400  # beyond this, fetch every interval's logs and filter here

BALANCE_OF = "balance_of(address)"
DEBT_OF = "debt_of(address)"
RECEIVABLE_OF = "receivable_of(address)"
SYMBOL = "symbol()"
DECIMALS = "decimals()"
PRODUCER_KEY_SET = "ProducerKeySet"


@dataclass(frozen=True)
class Flow:
    """Energy that went from ``source`` to ``target`` in one interval. Meters are indices;
    the pool and the grid are :data:`POOL` and :data:`GRID`. ``tokens``: what the consumer
    was charged for it (0 for grid flows, which are billed off chain)."""

    interval: int
    kind: str  # p2p, pool_in, pool_out, grid_export, grid_import
    source: object
    target: object
    wh: int
    tokens: int = 0


@dataclass
class SettledInterval:
    """One settled interval as the chain tells it."""

    interval: int
    tx_hash: str
    block_number: int
    meters: int
    import_wh: int
    export_wh: int
    p2p_wh: int
    tokens: int
    by_deadline: bool
    flows: list = field(default_factory=list)
    unpaid: dict = field(default_factory=dict)  # consumer meter -> tokens not covered
    receivable: dict = field(default_factory=dict)  # producer meter -> tokens owed to it


def _topic(interval):
    return "0x" + interval.to_bytes(32, "big").hex()


def read_intervals(port, settlement, first, last, from_block=0, to_block="latest"):
    """{interval: :class:`SettledInterval`} for the settled intervals in
    ``first..last`` (inclusive), from ``from_block``."""
    names = list(FLOW_EVENTS) + list(_OTHER_EVENTS)
    topics = [["0x" + contracts.event_topic("Settlement", n).hex() for n in names]]
    if last - first + 1 <= _MAX_TOPIC_INTERVALS:
        topics.append([_topic(k) for k in range(first, last + 1)])
    logs = port.request("eth_getLogs", [{
        "address": settlement, "fromBlock": hex(from_block),
        "toBlock": to_block if isinstance(to_block, str) else hex(to_block),
        "topics": topics}])
    out, pending = {}, {}
    for log in logs:
        decoded = contracts.decode_log("Settlement", log)
        if decoded is None:
            continue
        name, f = decoded
        k = f.get("interval")
        if k is None or not first <= k <= last:
            continue
        bucket = pending.setdefault(k, {"flows": [], "unpaid": {}, "receivable": {}})
        if name == "Settled":
            out[k] = SettledInterval(
                interval=k, tx_hash=log["transactionHash"],
                block_number=int(log["blockNumber"], 16), meters=f["meters"],
                import_wh=f["import_wh"], export_wh=f["export_wh"], p2p_wh=f["p2p_wh"],
                tokens=f["tokens"], by_deadline=f["by_deadline"])
        elif name in FLOW_EVENTS:
            bucket["flows"].append(_flow(name, f))
        elif name == "UnpaidAllocation":
            bucket["unpaid"][f["consumer"]] = bucket["unpaid"].get(f["consumer"], 0) \
                + f["tokens"]
        elif name == "ReceivableRecorded":
            bucket["receivable"][f["producer"]] = bucket["receivable"].get(f["producer"], 0) \
                + f["tokens"]
    for k, s in out.items():
        b = pending.get(k, {})
        s.flows, s.unpaid, s.receivable = b.get("flows", []), b.get("unpaid", {}), \
            b.get("receivable", {})
    return out


def _flow(name, f):
    kind, k = FLOW_EVENTS[name], f["interval"]
    if kind == "p2p":
        return Flow(k, kind, f["producer"], f["consumer"], f["wh"], f["tokens"])
    if kind == "pool_in":
        return Flow(k, kind, f["producer"], POOL, f["wh"], f["tokens"])
    if kind == "pool_out":
        return Flow(k, kind, POOL, f["consumer"], f["wh"], f["tokens"])
    if kind == "grid_export":
        return Flow(k, kind, f["meter"], GRID, f["wh"])
    if kind == "self_supply":
        return Flow(k, kind, f["meter"], f["meter"], f["wh"])
    return Flow(k, kind, GRID, f["meter"], f["wh"])


@dataclass
class MeterDay:
    """One meter's settled energy and tokens over some intervals."""

    imported_wh: int = 0  # p2p + pool received + grid import + self-supply
    exported_wh: int = 0  # p2p + pool sent + grid export + self-supply
    self_supply_wh: int = 0  # its own export it used in the same interval
    p2p_sent_wh: int = 0  # to chosen beneficiaries
    pool_sent_wh: int = 0
    p2p_received_wh: int = 0  # from producers that chose this meter
    pool_received_wh: int = 0
    grid_import_wh: int = 0
    grid_export_wh: int = 0
    tokens_charged: int = 0  # for what it received
    tokens_credited: int = 0  # for what it supplied
    tokens_unpaid: int = 0  # of the charge, not covered by its balance: its debt
    tokens_receivable: int = 0  # of the credit, not paid (a consumer's debt)
    sent_to: dict = field(default_factory=dict)  # meter -> Wh (its key's beneficiaries)
    received_from: dict = field(default_factory=dict)  # meter -> Wh
    intervals: int = 0  # intervals in which it took part

    @property
    def tokens_paid(self):
        return self.tokens_charged - self.tokens_unpaid

    @property
    def tokens_earned(self):
        return self.tokens_credited - self.tokens_receivable


def per_meter(settled):
    """{meter: :class:`MeterDay`} summed over ``settled`` (SettledInterval values)."""
    out = {}

    def m(index):
        return out.setdefault(index, MeterDay())

    for s in settled:
        seen = set()
        for f in s.flows:
            if f.kind == "p2p":
                a, b = m(f.source), m(f.target)
                a.p2p_sent_wh += f.wh
                a.tokens_credited += f.tokens
                a.sent_to[f.target] = a.sent_to.get(f.target, 0) + f.wh
                b.p2p_received_wh += f.wh
                b.tokens_charged += f.tokens
                b.received_from[f.source] = b.received_from.get(f.source, 0) + f.wh
                seen |= {f.source, f.target}
            elif f.kind == "pool_in":
                m(f.source).pool_sent_wh += f.wh
                m(f.source).tokens_credited += f.tokens
                seen.add(f.source)
            elif f.kind == "pool_out":
                m(f.target).pool_received_wh += f.wh
                m(f.target).tokens_charged += f.tokens
                seen.add(f.target)
            elif f.kind == "grid_export":
                m(f.source).grid_export_wh += f.wh
                seen.add(f.source)
            elif f.kind == "self_supply":
                m(f.source).self_supply_wh += f.wh
                seen.add(f.source)
            else:
                m(f.target).grid_import_wh += f.wh
                seen.add(f.target)
        for meter, t in s.unpaid.items():
            m(meter).tokens_unpaid += t
        for meter, t in s.receivable.items():
            m(meter).tokens_receivable += t
        for meter in seen:
            m(meter).intervals += 1
    for d in out.values():
        d.imported_wh = d.p2p_received_wh + d.pool_received_wh + d.grid_import_wh \
            + d.self_supply_wh
        d.exported_wh = d.p2p_sent_wh + d.pool_sent_wh + d.grid_export_wh + d.self_supply_wh
    return out


# ---- views of the contracts


def _view(port, to, signature, args, types):
    out = rpc.decode_output(types, port.call(to, rpc.encode_call(signature, args)))
    return out[0] if len(out) == 1 else out


def contract_addresses(port, settlement):
    """{"settlement", "token", "registry"} as the settlement contract names them."""
    from eth_utils import to_checksum_address

    return {"settlement": to_checksum_address(settlement),
            "token": to_checksum_address(_view(port, settlement, contracts.TOKEN, [],
                                               ["address"])),
            "registry": to_checksum_address(_view(port, settlement, contracts.REGISTRY, [],
                                                  ["address"]))}


def token_info(port, token):
    """(symbol, decimals) of the ERC-20 ``token``."""
    return (_view(port, token, SYMBOL, [], ["string"]),
            _view(port, token, DECIMALS, [], ["uint8"]))


def p2p_price(port, settlement):
    """Token units per Wh the contract charges now."""
    return _view(port, settlement, contracts.P2P_PRICE, [], ["uint256"])


def account_state(port, settlement, account):
    """{"balance", "debt", "receivable"} of ``account`` in the settlement ledger."""
    return {"balance": _view(port, settlement, BALANCE_OF, [account], ["uint256"]),
            "debt": _view(port, settlement, DEBT_OF, [account], ["uint256"]),
            "receivable": _view(port, settlement, RECEIVABLE_OF, [account], ["uint256"])}


def producer_keys(port, settlement, from_block=0):
    """{producer meter: (kind name, [(beneficiary meter, weight)])}: each producer's key
    as last set (``ProducerKeySet`` events)."""
    kinds = {v: k for k, v in contracts.KEY_KINDS.items()}
    topic = "0x" + contracts.event_topic("Settlement", PRODUCER_KEY_SET).hex()
    logs = port.request("eth_getLogs", [{"address": settlement, "fromBlock": hex(from_block),
                                         "toBlock": "latest", "topics": [topic]}])
    out = {}
    for log in logs:
        _, f = contracts.decode_log("Settlement", log)
        out[f["producer"]] = (kinds.get(f["kind"], str(f["kind"])),
                              list(zip(f["beneficiaries"], f["weights"], strict=True)))
    return out
