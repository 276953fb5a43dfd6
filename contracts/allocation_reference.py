"""Pure-Python reference of the allocation and payment rule of contracts/Settlement.vy.

The property tests compare the contract against this module event for event, so
it mirrors the contract's order of operations and its integer rounding exactly.
It also holds the packed submission format the gateway batcher uses.

Rule (French "autoconsommation collective", two tiers), per interval:

1. Tier 1, producers in ascending meter index: each producer's own key splits
   its export among the beneficiaries it chose that are present in the interval.
2. Self-supply: what a meter still exports and imports in the interval is its
   own consumption, netted (never pooled back to it as shared energy, never paid).
3. Tier 2: the community key splits the pool (what is left of every export)
   among the consumers' remaining imports. Producers supply the pool in
   proportion to what they put in.
4. What is left of an export is grid export; what is left of an import is grid
   import. No consumer is ever allocated more than its import.

Rounding: floors everywhere; STATIC/COEFFICIENTS/PERCENT_REDISTRIBUTED leave the
floor remainder unallocated (it falls to the next tier, then the grid). PRORATA
and the pool attribution use a telescoping floor (share_i = floor(T*c_i/N) -
floor(T*c_{i-1}/N) over running sums c_i) that hands out exactly T, in list order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

KEY_NONE = 0
KEY_STATIC = 1
KEY_PRORATA = 2
KEY_PERCENT_REDISTRIBUTED = 3
KEY_PRIORITY = 4
KEY_COEFFICIENTS = 5
KEY_NAMES = {
    KEY_NONE: "NONE",
    KEY_STATIC: "STATIC",
    KEY_PRORATA: "PRORATA",
    KEY_PERCENT_REDISTRIBUTED: "PERCENT_REDISTRIBUTED",
    KEY_PRIORITY: "PRIORITY",
    KEY_COEFFICIENTS: "COEFFICIENTS",
}

BPS = 10_000
PPM = 1_000_000
MAX_METERS = 256
MAX_BENEFICIARIES = 8
MAX_GATEWAYS = 8
REDISTRIBUTION_ROUNDS = 8
MAX_WH = (1 << 32) - 1  # per meter, per interval, import or export
MAX_PRICE = (1 << 64) - 1
ENTRIES_PER_WORD = 3
ENTRY_BITS = 80


class PackingError(ValueError):
    """Entries that cannot be put in a submission."""


# --------------------------------------------------------------- packing


def pack_entries(entries: Iterable[tuple[int, int, int]]) -> list[int]:
    """(meter index, import Wh, export Wh) per meter -> words for Settlement.submit().

    entry = index << 64 | import << 32 | export (80 bits); word = e0 | e1 << 80 | e2 << 160.
    Indices must strictly increase (1..65535), Wh fit in 32 bits.
    """
    words: list[int] = []
    previous = 0
    for n, (index, imp, exp) in enumerate(entries):
        if not previous < index <= 0xFFFF:
            raise PackingError(f"meter index {index} must be > {previous} and <= 65535")
        if not (0 <= imp <= MAX_WH and 0 <= exp <= MAX_WH):
            raise PackingError(f"meter {index}: import {imp} / export {exp} outside 0..{MAX_WH}")
        if n >= MAX_METERS:
            raise PackingError(f"more than {MAX_METERS} meters")
        previous = index
        entry = (index << 64) | (imp << 32) | exp
        if n % ENTRIES_PER_WORD == 0:
            words.append(entry)
        else:
            words[-1] |= entry << (ENTRY_BITS * (n % ENTRIES_PER_WORD))
    return words


def pack_intervals(intervals: Iterable[Iterable[tuple[int, int, int]]]) -> list[int]:
    """Consecutive intervals' entries -> Settlement.submit()'s `intervals` array: per
    interval, the number of its packed words, then the words."""
    out: list[int] = []
    for entries in intervals:
        words = pack_entries(entries)
        out += [len(words), *words]
    return out


def unpack_words(words: Iterable[int]) -> list[tuple[int, int, int]]:
    """Inverse of pack_entries (no validation beyond the layout)."""
    out = []
    for word in words:
        for k in range(ENTRIES_PER_WORD):
            entry = (word >> (ENTRY_BITS * k)) & ((1 << ENTRY_BITS) - 1)
            if entry:
                out.append((entry >> 64, (entry >> 32) & MAX_WH, entry & MAX_WH))
    return out


# ------------------------------------------------------------- splitting


def split(kind: int, budget: int, needs: list[int], weights: list[int]) -> list[int]:
    """Shares of `budget` Wh among members; share_i <= needs[i], sum <= budget."""
    n = len(needs)
    if kind in (KEY_STATIC, KEY_COEFFICIENTS):
        denominator = BPS if kind == KEY_STATIC else PPM
        return [min(budget * weights[i] // denominator, needs[i]) for i in range(n)]
    if kind == KEY_PRIORITY:
        out = []
        remaining = budget
        for need in needs:
            share = min(remaining, need)
            remaining -= share
            out.append(share)
        return out
    if kind == KEY_PRORATA:
        total = sum(needs)
        handed = min(budget, total)
        return telescoping(handed, needs)
    if kind == KEY_PERCENT_REDISTRIBUTED:
        out = [0] * n
        active = [weights[i] > 0 and needs[i] > 0 for i in range(n)]
        pot = budget * sum(weights) // BPS
        for _ in range(REDISTRIBUTION_ROUNDS):
            if pot == 0:
                break
            live_weight = sum(weights[i] for i in range(n) if active[i])
            if live_weight == 0:
                break
            running = previous = excess = 0
            for i in range(n):
                if not active[i]:
                    continue
                running += weights[i]
                current = pot * running // live_weight
                share = current - previous
                previous = current
                room = needs[i] - out[i]
                if share >= room:
                    out[i] += room
                    excess += share - room
                    active[i] = False
                else:
                    out[i] += share
            pot = excess
        return out
    return [0] * n


def telescoping(total: int, parts: list[int]) -> list[int]:
    """Split `total` (<= sum(parts)) in proportion to parts; the shares add up to total."""
    whole = sum(parts)
    out = []
    running = previous = 0
    for part in parts:
        running += part
        current = total * running // whole if whole else 0
        out.append(current - previous)
        previous = current
    return out


# ------------------------------------------------------------ allocation


@dataclass(frozen=True)
class Key:
    """An allocation key: kind, member meter indices, weights (bps, ppm or 0)."""

    kind: int = KEY_NONE
    members: tuple[int, ...] = ()
    weights: tuple[int, ...] = ()


DEFAULT_COMMUNITY_KEY = Key(KEY_PRORATA)


@dataclass
class Flows:
    """Energy flows of one interval, in settlement order (Wh)."""

    p2p: list[tuple[int, int, int]] = field(default_factory=list)  # producer, consumer, wh
    self_supply: list[tuple[int, int]] = field(default_factory=list)  # meter, wh
    pool_allocations: list[tuple[int, int]] = field(default_factory=list)  # consumer, wh
    pool_contributions: list[tuple[int, int]] = field(default_factory=list)  # producer, wh
    grid_export: dict[int, int] = field(default_factory=dict)  # meter -> wh (> 0 only)
    grid_import: dict[int, int] = field(default_factory=dict)  # meter -> wh (> 0 only)


def allocate(
    meters: Mapping[int, tuple[int, int]],
    producer_keys: Mapping[int, Key],
    community_key: Key = DEFAULT_COMMUNITY_KEY,
) -> Flows:
    """meters: index -> (import Wh, export Wh) of one interval."""
    order = sorted(meters)
    need = {m: meters[m][0] for m in order}
    left = {m: meters[m][1] for m in order}
    flows = Flows()

    for p in order:
        key = producer_keys.get(p)
        if left[p] == 0 or key is None or key.kind == KEY_NONE:
            continue
        members = [(b, w) for b, w in zip(key.members, key.weights, strict=True) if b in need]
        if not members:
            continue
        shares = split(key.kind, left[p], [need[b] for b, _ in members], [w for _, w in members])
        for (b, _), wh in zip(members, shares, strict=True):
            if wh:
                need[b] -= wh
                left[p] -= wh
                flows.p2p.append((p, b, wh))

    for m in order:
        own = min(left[m], need[m])
        if own:
            left[m] -= own
            need[m] -= own
            flows.self_supply.append((m, own))

    pool = sum(left.values())
    if community_key.kind != KEY_NONE and pool > 0:
        if community_key.members:
            members = [
                (c, w)
                for c, w in zip(community_key.members, community_key.weights, strict=True)
                if c in need
            ]
        elif community_key.kind == KEY_PRORATA:
            members = [(c, 0) for c in order if need[c] > 0]
        else:
            members = []
        shares = split(
            community_key.kind, pool, [need[c] for c, _ in members], [w for _, w in members]
        )
        for (c, _), wh in zip(members, shares, strict=True):
            if wh:
                need[c] -= wh
                flows.pool_allocations.append((c, wh))
        pooled = sum(wh for _, wh in flows.pool_allocations)
        if pooled:
            suppliers = [p for p in order if left[p] > 0]
            for p, wh in zip(
                suppliers, telescoping(pooled, [left[p] for p in suppliers]), strict=True
            ):
                if wh:
                    left[p] -= wh
                    flows.pool_contributions.append((p, wh))

    flows.grid_export = {m: left[m] for m in order if left[m]}
    flows.grid_import = {m: need[m] for m in order if need[m]}
    return flows


# -------------------------------------------------------------- payments


@dataclass
class Ledger:
    """The settlement contract's token ledger (token units)."""

    balance: dict[str, int] = field(default_factory=dict)
    debt: dict[str, int] = field(default_factory=dict)
    receivable: dict[str, int] = field(default_factory=dict)
    recovered: int = 0

    def charge(self, debtor: str, tokens: int) -> int:
        """Take tokens from the debtor's balance; return the unpaid part (now debt)."""
        if tokens == 0:
            return 0
        have = self.balance.get(debtor, 0)
        if have >= tokens:
            self.balance[debtor] = have - tokens
            return 0
        self.balance[debtor] = 0
        self.debt[debtor] = self.debt.get(debtor, 0) + tokens - have
        return tokens - have

    def credit(self, creditor: str, tokens: int, unpaid: int) -> None:
        self.balance[creditor] = self.balance.get(creditor, 0) + tokens - unpaid
        if unpaid:
            self.receivable[creditor] = self.receivable.get(creditor, 0) + unpaid


def settle(
    interval: int,
    meters: Mapping[int, tuple[int, int]],
    owners: Mapping[int, str],
    producer_keys: Mapping[int, Key],
    community_key: Key,
    price: int,
    ledger: Ledger,
    by_deadline: bool = False,
) -> list[tuple]:
    """Settle one interval on `ledger` (mutated); return the contract's events, in order.

    Events are tuples (name, *fields) with the fields of Settlement.vy's events.
    """
    flows = allocate(meters, producer_keys, community_key)
    events: list[tuple] = []
    unpaid_by = dict.fromkeys(meters, 0)  # meter -> tokens its owner did not pay
    owed_to = dict.fromkeys(meters, 0)  # meter -> tokens its owner is owed
    for p, c, wh in flows.p2p:
        tokens = wh * price
        unpaid = ledger.charge(owners[c], tokens)
        ledger.credit(owners[p], tokens, unpaid)
        unpaid_by[c] += unpaid
        owed_to[p] += unpaid
        events.append(("P2PAllocation", interval, p, c, wh, tokens))

    for m, wh in flows.self_supply:
        events.append(("SelfSupply", interval, m, wh))

    pool_unpaid = 0
    for c, wh in flows.pool_allocations:
        unpaid = ledger.charge(owners[c], wh * price)
        unpaid_by[c] += unpaid
        pool_unpaid += unpaid
        events.append(("PoolAllocation", interval, c, wh, wh * price))
    contribution_tokens = [wh * price for _, wh in flows.pool_contributions]
    unpaid_shares = telescoping(pool_unpaid, contribution_tokens)
    for (p, wh), tokens, unpaid in zip(
        flows.pool_contributions, contribution_tokens, unpaid_shares, strict=True
    ):
        ledger.credit(owners[p], tokens, unpaid)
        owed_to[p] += unpaid
        events.append(("PoolContribution", interval, p, wh, tokens))

    for m in sorted(meters):
        if m in flows.grid_export:
            events.append(("GridExport", interval, m, flows.grid_export[m]))
        if m in flows.grid_import:
            events.append(("GridImport", interval, m, flows.grid_import[m]))
        if unpaid_by[m]:
            events.append(("UnpaidAllocation", interval, m, owners[m], unpaid_by[m]))
        if owed_to[m]:
            events.append(("ReceivableRecorded", interval, m, owners[m], owed_to[m]))
    p2p_wh = sum(wh for *_, wh in flows.p2p) + sum(wh for _, wh in flows.pool_allocations)
    events.append(
        (
            "Settled",
            interval,
            len(meters),
            sum(i for i, _ in meters.values()),
            sum(e for _, e in meters.values()),
            p2p_wh,
            p2p_wh * price,
            by_deadline,
        )
    )
    return events
