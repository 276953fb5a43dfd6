"""The batcher: turns closed settlement intervals into outbox rows (transactions).

A *batch* is a run of consecutive intervals from the gateway's cursor on chain (the next
interval the contract takes from it): one window of an hour (4 intervals of 900 s, 2 of
1800 s), or two when the community is small enough for all their anchors to ride in one
transaction (at most ``MAX_ANCHORS`` signed readings). It is built once its last
boundary's anchors had time to arrive: ``end*L + ANCHOR_DELAY + grace_s`` has passed.

Per meter with an on-chain index (``chain_meters``, set by ``wattshare community
add-meter``), :func:`gateway.chain.intervals.plan_meter` chooses from its stored readings
the anchors (signed readings at interval boundaries) the contract checks, and each
interval's import and export: the counter differences between those anchors, which add
up exactly to what the meter signed. A meter without an anchor at a boundary, or whose
counters went down, is left out of the intervals next to it (``gaps``, with the reason):
never estimated, never settled later; the contract never sees that energy.

The batch becomes one transaction, or several when it is large (``MAX_ANCHORS`` signed
readings and ``MAX_SUBMISSION_INTERVALS`` intervals per transaction): signed readings
that must come before the batch's first interval go in rows of their own first (part
-n .. -1 of that interval), the intervals in rows of up to 8 (part 0, keyed by their
first interval). The outbox sends them in that order; a row whose gas estimate exceeds
the per-transaction cap (2^24 since Osaka) is split in two (:func:`split_row`).

Leaves: each row with intervals commits, under its salted Merkle root, every stored
reading not committed by an earlier row whose time is before its last boundary plus
``ANCHOR_DELAY`` (the anchors it relies on, fault readings too: every reading the
gateway accepted), in ingest order, after a header leaf that binds the root to the
contract, the first interval and the interval count (so the root is never empty and
never the root of another submission). A reading that arrived after its interval was
built is committed by the next row: every stored reading ends up under a root.

Everything of one batch (rows + leaves) is written in one database transaction, so a
crash leaves either nothing (built again) or complete ``built`` rows.
"""

import json
import logging
from dataclasses import dataclass

from eth_utils import to_canonical_address, to_checksum_address
from wattcore import cose, reading

from gateway import simclock, store
from gateway.chain import contracts, intervals, merkle

log = logging.getLogger("wattshare.chain")

MAX_ANCHORS = contracts.MAX_ANCHORS
MAX_INTERVALS = contracts.MAX_SUBMISSION_INTERVALS
NOT_ON_CHAIN = "not_on_chain"  # readings, but the device has no on-chain meter index


def gap_reason(quality):
    """Why a meter was left out of an interval, for people (``chain run``, the status
    and community pages, ``verify``)."""
    delay = intervals.ANCHOR_DELAY // 60
    return {
        intervals.GAP: f"no signed reading within {delay} min after the start or end of its "
                       "window (meter offline, or its readings not received yet)",
        intervals.COUNTER_DECREASE: "its energy counter went down (meter replaced or reset)",
        intervals.OVERFLOW: f"more than {contracts.MAX_WH} Wh in one window (not "
                            "representable)",
        NOT_ON_CHAIN: "not registered on chain (wattshare community add-meter)",
    }.get(quality, quality)


@dataclass(frozen=True)
class Built:
    """One built outbox row (a transaction to send)."""

    interval: int  # its first interval (anchors only: the interval it comes before)
    part: int  # 0: intervals; < 0: signed readings only, sent before part 0
    intervals: int
    anchors: int
    root: bytes | None
    totals: list  # [[(meter_index, import_wh, export_wh)] per interval]
    gaps: dict  # device hex -> {interval: reason}
    leaves: int


def meter_map(conn):
    """device id (bytes) -> meter index, from ``chain_meters``."""
    return {bytes(d): i for d, i in conn.execute("SELECT device, meter_index FROM chain_meters")}


def set_meter_index(conn, device_id, index, now=None):
    now = int(simclock.now()) if now is None else now
    conn.execute(
        "INSERT INTO chain_meters (device, meter_index, set_at) VALUES (?, ?, ?) "
        "ON CONFLICT (device) DO UPDATE SET meter_index = excluded.meter_index, "
        "set_at = excluded.set_at", (device_id, index, now))


def outbox_intervals(conn, contract, first, last):
    """What the outbox says of each interval ``first..last`` it submits (a row of n
    intervals covers n; signed-reading-only rows none): {interval: {"state", "tx",
    "block", "row" (its row's first interval), "meters" (with energy in this interval),
    "entries" [(meter_index, import_wh, export_wh)], "gaps" {device hex: reason},
    "error"}}."""
    out = {}
    for k0, n, state, tx, block, packed, gaps, error in conn.execute(
            "SELECT interval, intervals, state, tx_hash, block_number, packed, gaps, error "
            "FROM chain_outbox WHERE contract = ? AND part = 0 AND interval <= ? AND "
            "interval + intervals > ? ORDER BY interval", (contract, last, first)):
        call = json.loads(packed) if packed else {}
        if isinstance(call, list):  # a row of the one-interval format (schema 3)
            call = {"intervals": [hex(len(call)), *call]}
        per = contracts.unpack_intervals([int(w, 16) for w in call.get("intervals", [])])
        gaps = json.loads(gaps or "{}")
        for j in range(n):
            k = k0 + j
            if not first <= k <= last:
                continue
            entries = per[j] if j < len(per) else []
            out[k] = {"state": state, "tx": "0x" + bytes(tx).hex() if tx else None,
                      "block": block, "row": k0, "meters": len(entries), "entries": entries,
                      "gaps": {d: g if isinstance(g, str) else g[str(k)]
                               for d, g in sorted(gaps.items())
                               if isinstance(g, str) or str(k) in g},
                      "error": error}
    return out


def header_leaf(salt, contract, first, count):
    """Leaf 0 of a row's Merkle tree: binds the root to (contract, first interval,
    intervals)."""
    body = (b"wattshare submission" + to_canonical_address(contract)
            + first.to_bytes(8, "big") + count.to_bytes(1, "big"))
    return merkle.leaf_hash(salt, body)


class ChainView:
    """What the batcher reads from the chain: the gateway's cursor and each meter's last
    verified anchor (``MeterAnchors.anchor_of``), at the node's latest block."""

    def __init__(self, port, settlement, gateway):
        self.port = port
        self.settlement = to_checksum_address(settlement)
        self.gateway = to_checksum_address(gateway)
        self._book = None

    def _view(self, to, signature, args, types):
        from gateway.chain import rpc  # web3: imported when used (status pages need none)

        return rpc.decode_output(types, self.port.call(to, rpc.encode_call(signature, args)))

    def cursor(self):
        return self._view(self.settlement, contracts.CURSOR, [self.gateway], ["uint256"])[0]

    def anchor(self, meter):
        if self._book is None:
            self._book = to_checksum_address(self._view(
                self.settlement, contracts.ANCHOR_BOOK, [], ["address"])[0])
        return intervals.ChainAnchor(*self._view(self._book, contracts.ANCHOR_OF,
                                                 [self.settlement, meter],
                                                 contracts.ANCHOR_OF_TYPES))


def _anchor_fields(anchor):
    """(meter, boundary, seq, ei, ee) of a row's anchor [meter, restart, at, payload, r, s]."""
    f = reading.decode_payload(bytes.fromhex(anchor[3]))
    return anchor[0], f["t"], f["seq"], f["ei"], f.get("ee") or 0


class Batcher:
    """Builds outbox rows for the settlement contract ``contract`` from the store.

    ``chain``: a :class:`ChainView` (cursor and anchors on chain)."""

    def __init__(self, conn, contract, chain=None, length=intervals.DEFAULT_LENGTH,
                 grace_s=120, batch_intervals=0, salt=merkle.new_salt, clock=simclock.now):
        self.conn = conn
        self.contract = to_checksum_address(contract)
        self.chain = chain
        self.length = intervals.check_length(length)
        self.window = intervals.max_window(length)
        self.grace_s = grace_s
        self.batch_intervals = batch_intervals  # 0: automatic (batch_size)
        self._salt = salt
        self._clock = clock

    # ---- which intervals

    def since(self, backfill_intervals):
        """First interval to consider: stored at the first run (meta
        ``chain_since:<contract>``) as the current interval minus ``backfill_intervals``."""
        key = f"chain_since:{self.contract}"
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return row[0]
        since = int(self._clock()) // self.length - backfill_intervals
        self.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, since))
        return self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def closed(self):
        """The last boundary whose anchors had time to arrive: intervals before it are
        closed."""
        return (int(self._clock()) - self.grace_s - intervals.ANCHOR_DELAY) // self.length

    def batch_size(self, meters):
        """Intervals per batch: as configured, else two windows (two hours) when the
        community's anchors for both fit one transaction, else one."""
        if self.batch_intervals:
            return self.batch_intervals
        return 2 * self.window if 2 * meters <= MAX_ANCHORS else self.window

    def _ahead(self, cursor):
        """The rows the chain has not applied yet: not failed, from its cursor on (a node
        that forgot blocks goes back to an older cursor: those rows go again)."""
        return self.conn.execute(
            "SELECT interval, part, packed, intervals FROM chain_outbox WHERE contract = ? "
            "AND state != 'failed' AND interval >= ? ORDER BY interval, part",
            (self.contract, cursor)).fetchall()

    def _blocked(self):
        return self.conn.execute(
            "SELECT min(interval) FROM chain_outbox WHERE contract = ? AND state = 'failed'",
            (self.contract,)).fetchone()[0]

    def expected_cursor(self):
        """The gateway's cursor once the rows the chain has not applied yet are in."""
        chain = cursor = self.chain.cursor()
        for interval, _part, _packed, count in self._ahead(chain):
            if count:
                cursor = max(cursor, interval + count)
        return cursor

    def expected(self, meters):
        """{meter: ChainAnchor} once the rows the chain has not applied yet are in: the
        chain's anchors, with each such row's anchors applied (a batch settles the
        windows it opens in full, so none is left open)."""
        state = {m: self.chain.anchor(m) for m in meters}
        for _interval, _part, packed, _count in self._ahead(self.chain.cursor()):
            for a in json.loads(packed)["anchors"]:
                m, t, seq, ei, ee = _anchor_fields(a)
                if m in state:
                    state[m] = intervals.ChainAnchor(t // self.length, seq, ei, ee)
        return state

    def due(self, since):
        """(first, end) of the next batch to build, or None: nothing closed, rows failed,
        no reading from the cursor on, or a batch still filling (readings still come in
        and not all of its intervals are closed: it waits, a full batch costs less gas
        per reading)."""
        if self._blocked() is not None:
            return None
        meters = meter_map(self.conn)
        first = max(self.expected_cursor(), since)
        closed = self.closed()
        row = self.conn.execute("SELECT min(t), max(t) FROM readings WHERE t >= ?",
                                (first * self.length,)).fetchone()
        if row[0] is None:
            return None
        first = max(first, row[0] // self.length)
        data_end = row[1] // self.length  # the readings reach this boundary
        size = self.batch_size(len(meters))
        end = min(first + size, closed, data_end)
        if end <= first or (end < first + size and data_end >= closed):
            return None
        return first, end

    # ---- one batch

    def _series(self, devices, first, end, last_id):
        by_device = {d: [] for d in devices}
        for device, rid, seq, t, st, ei, ee in self.conn.execute(
                "SELECT device, id, seq, t, st, ei, ee FROM readings WHERE t >= ? AND t < ? "
                "AND id <= ?", (first * self.length,
                                end * self.length + intervals.ANCHOR_DELAY, last_id)):
            s = by_device.get(bytes(device))
            if s is not None:
                s.append(intervals.Reading(rid, seq, t, st, ei, ee))
        return {d: intervals.Series(r, self.length) for d, r in by_device.items()}

    def plan(self, first, end):
        """Plan intervals ``first`` .. ``end - 1``: ({device: MeterPlan}, meter map,
        last reading id)."""
        last_id = self.conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0]
        mapping = meter_map(self.conn)
        state = self.expected(mapping.values())
        series = self._series(mapping, first, end, last_id)
        plans = {d: intervals.plan_meter(series[d], state[mapping[d]], first, end, self.window)
                 for d in mapping}
        return plans, mapping, last_id

    def _signed(self, ids):
        """reading id -> (payload, r, s) of the stored COSE bytes."""
        out = {}
        for rid, raw in self.conn.execute(
                f"SELECT id, cose FROM readings WHERE id IN ({','.join('?' * len(ids))})",
                list(ids)):
            s = cose.decode_sign1(bytes(raw))
            out[rid] = (s.payload, s.signature[:32], s.signature[32:])
        return out

    def next_due(self):
        """(interval, unix time) of the last interval to close next, and when it is due (its
        end plus the anchor delay plus ``grace_s``)."""
        k = self.closed() + 1
        return k - 1, k * self.length + intervals.ANCHOR_DELAY + self.grace_s

    def _rows(self, first, end, plans, mapping):
        """The batch as a list of rows: {"first", "anchors": [...], "intervals": [k, ...]}
        in sending order; anchors carry `at` relative to their row."""
        before = {k: [] for k in range(first, end)}
        for device in sorted(plans, key=lambda d: mapping[d]):
            for a in plans[device].anchors:
                before[a.before].append((mapping[device], a))
        rows = []
        row = {"anchors": [], "intervals": []}
        for k in range(first, end):
            for meter, a in before[k]:
                if len(row["anchors"]) == MAX_ANCHORS:
                    rows.append(row)
                    row = {"anchors": [], "intervals": []}
                row["anchors"].append((meter, a, len(row["intervals"])))
            if len(row["intervals"]) == MAX_INTERVALS:
                rows.append(row)
                row = {"anchors": [], "intervals": []}
            row["intervals"].append(k)
        rows.append(row)
        return rows

    def build(self, first, end=None, planned=None):
        """Plan (unless ``planned`` by :meth:`plan`) and store the batch of intervals
        ``first`` .. ``end - 1`` (default: the batch size) as ``built`` outbox rows with
        their leaves.

        Returns the list of :class:`Built`, or [] if the batch has no reading at all or
        is in the outbox already."""
        mapping = meter_map(self.conn)
        if end is None:
            end = first + self.batch_size(len(mapping))
        plans, mapping, last_id = planned or self.plan(first, end)
        # trailing intervals where no meter has energy (no readings there yet) wait for a
        # later batch, unless nothing would be left
        while end - 1 > first and not any(end - 1 in p.energy for p in plans.values()):
            end -= 1
            for p in plans.values():
                p.gaps.pop(end, None)
                p.anchors = [a for a in p.anchors if a.before < end]
        rows = self._rows(first, end, plans, mapping)
        signed = self._signed({a.reading.id for p in plans.values() for a in p.anchors})
        energy = {k: sorted((mapping[d], *p.energy[k]) for d, p in plans.items()
                            if k in p.energy) for k in range(first, end)}
        gaps = {d.hex(): p.gaps for d, p in plans.items() if p.gaps}
        built = []
        now = int(self._clock())
        conn = self.conn
        with store.immediate(conn):
            if conn.execute("SELECT 1 FROM chain_outbox WHERE contract = ? AND interval >= ? "
                            "AND interval < ? AND state != 'failed'",
                            (self.contract, first, end)).fetchone():
                return []  # built before (the transaction writes nothing)
            keys = self._keys(rows, end)
            for (interval, part), row in zip(keys, rows, strict=True):
                anchors = [[meter, a.restart, at, signed[a.reading.id][0].hex(),
                            signed[a.reading.id][1].hex(), signed[a.reading.id][2].hex()]
                           for meter, a, at in row["anchors"]]
                ks = row["intervals"]
                call = {"anchors": anchors,
                        "intervals": [hex(w) for w in contracts.pack_intervals(
                            energy[k] for k in ks)]}
                root, leaves = None, []
                if ks:
                    leaves = self._uncommitted(
                        last_id, (ks[-1] + 1) * self.length + intervals.ANCHOR_DELAY)
                    header = self._salt()
                    salts = [self._salt() for _ in leaves]
                    tree = merkle.MerkleTree(
                        [header_leaf(header, self.contract, ks[0], len(ks))]
                        + [merkle.leaf_hash(s, c) for s, (_, c) in zip(salts, leaves,
                                                                        strict=True)])
                    root = tree.root
                    call["header"] = header.hex()
                    conn.executemany(
                        "INSERT INTO chain_leaves (contract, interval, leaf_index, reading_id,"
                        " salt) VALUES (?, ?, ?, ?, ?)",
                        [(self.contract, interval, i + 1, rid, salt)
                         for i, ((rid, _), salt) in enumerate(zip(leaves, salts,
                                                                  strict=True))])
                row_gaps = {d: {str(k): why for k, why in g.items() if k in ks}
                            for d, g in gaps.items()}
                row_gaps = {d: g for d, g in row_gaps.items() if g}
                conn.execute(
                    "INSERT INTO chain_outbox (contract, interval, part, intervals, anchors, "
                    "length, state, root, packed, meters, leaves, gaps, last_reading_id, "
                    "built_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'built', ?, ?, ?, ?, ?, "
                    "?, ?, ?)",
                    (self.contract, interval, part, len(ks), len(anchors), self.length,
                     root, json.dumps(call), len({m for k in ks for m, *_ in energy[k]}),
                     len(leaves), json.dumps(row_gaps, sort_keys=True), last_id, now, now))
                built.append(Built(interval, part, len(ks), len(anchors), root,
                                   [energy[k] for k in ks], row_gaps, len(leaves)))
        if gaps:
            log.warning("intervals with gaps", extra={"fields": {
                "first": first, "end": end, "gaps": gaps}})
        return built

    def _uncommitted(self, last_id, cutoff):
        """[(reading id, cose)] stored up to ``last_id`` with ``t < cutoff`` and under no
        root yet. The latest row with intervals committed everything stored up to its
        ``last_reading_id`` with ``t`` before its cutoff: only readings after that id, or
        after that cutoff, can be new."""
        prev = self.conn.execute(
            "SELECT last_reading_id, (interval + intervals) * length FROM chain_outbox WHERE "
            "contract = ? AND intervals > 0 ORDER BY interval DESC LIMIT 1",
            (self.contract,)).fetchone()
        query = ("SELECT id, cose FROM readings WHERE {} AND id <= ? AND t < ? AND NOT "
                 "EXISTS (SELECT 1 FROM chain_leaves l WHERE l.contract = ? AND "
                 "l.reading_id = readings.id)")
        if prev is None:
            found = self.conn.execute(query.format("1"), (last_id, cutoff, self.contract))
        else:
            prev_id, prev_cut = prev[0], prev[1] + intervals.ANCHOR_DELAY
            # stored since (by id), and stored before but after its cutoff (by time)
            found = self.conn.execute(query.format("id > ?"),
                                      (prev_id, last_id, cutoff, self.contract)).fetchall()
            found += self.conn.execute(query.format("t >= ?"),
                                       (prev_cut, min(last_id, prev_id), cutoff,
                                        self.contract)).fetchall()
        return sorted((rid, bytes(c)) for rid, c in found)

    @staticmethod
    def _keys(rows, end):
        """(interval, part) of each row: a row with intervals is (its first, 0); rows of
        signed readings only are (the next row's first interval, -n .. -1)."""
        keys = [None] * len(rows)
        following = end
        run = 0
        for i in range(len(rows) - 1, -1, -1):
            if rows[i]["intervals"]:
                following = rows[i]["intervals"][0]
                keys[i] = (following, 0)
                run = 0
            else:
                run += 1
                keys[i] = (following, -run)
        return keys

    def build_due(self, since):
        """Build the next due batch; returns the list of :class:`Built` ([] if none).

        A batch in which no meter has energy (readings without anchors: an outage of
        every meter, or only fault readings) is not sent: the next batch starts after it
        (meta ``chain_skip:<contract>``), and its readings go under that batch's root."""
        key = f"chain_skip:{self.contract}"
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        batch = self.due(max(since, row[0] if row else since))
        if batch is None:
            return []
        first, end = batch
        planned = self.plan(first, end)
        if not any(p.energy for p in planned[0].values()):
            self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                              "DO UPDATE SET value = excluded.value", (key, end))
            log.warning("no meter has a signed reading at both ends of an interval; moving "
                        "on", extra={"fields": {"first": first, "end": end}})
            return []
        return self.build(first, end, planned)


def split_row(conn, contract, interval, part=0, length=intervals.DEFAULT_LENGTH,
              salt=merkle.new_salt, now=None):
    """Replace a ``built`` intervals row that is too large for one transaction by two
    (its intervals halved; each half takes the signed readings that come before its
    intervals, and the leaves up to its own last boundary). Returns False if it cannot be
    split (one interval)."""
    contract = to_checksum_address(contract)
    now = int(simclock.now()) if now is None else now
    with store.immediate(conn):
        found = conn.execute(
            "SELECT packed, gaps, last_reading_id, length FROM chain_outbox WHERE contract = ? "
            "AND interval = ? AND part = ? AND state = 'built'",
            (contract, interval, part)).fetchone()
        if found is None:
            return False
        call, gaps, last_id, length = json.loads(found[0]), json.loads(found[1]), found[2], \
            found[3]
        per_interval = contracts.unpack_intervals([int(w, 16) for w in call["intervals"]])
        n = len(per_interval)
        if n < 2:
            return False
        half = n // 2
        leaves = conn.execute(
            "SELECT l.leaf_index, l.reading_id, l.salt, r.cose, r.t FROM chain_leaves l JOIN "
            "readings r ON r.id = l.reading_id WHERE l.contract = ? AND l.interval = ? "
            "ORDER BY l.leaf_index", (contract, interval)).fetchall()
        conn.execute("DELETE FROM chain_leaves WHERE contract = ? AND interval = ?",
                     (contract, interval))
        conn.execute("DELETE FROM chain_outbox WHERE contract = ? AND interval = ? AND "
                     "part = ?", (contract, interval, part))
        cut = (interval + half) * length + intervals.ANCHOR_DELAY
        for first, ks, anchors, mine in (
                (interval, per_interval[:half], [a for a in call["anchors"] if a[2] < half],
                 [x for x in leaves if x[4] < cut]),
                (interval + half, per_interval[half:],
                 [[*a[:2], a[2] - half, *a[3:]] for a in call["anchors"] if a[2] >= half],
                 [x for x in leaves if x[4] >= cut])):
            header = salt()
            tree = merkle.MerkleTree(
                [header_leaf(header, contract, first, len(ks))]
                + [merkle.leaf_hash(bytes(s), bytes(c)) for _, _, s, c, _ in mine])
            part_call = {"anchors": anchors, "header": header.hex(),
                         "intervals": [hex(w) for w in contracts.pack_intervals(ks)]}
            part_gaps = {d: {k: why for k, why in g.items()
                             if first <= int(k) < first + len(ks)} for d, g in gaps.items()}
            part_gaps = {d: g for d, g in part_gaps.items() if g}
            conn.execute(
                "INSERT INTO chain_outbox (contract, interval, part, intervals, anchors, "
                "length, state, root, packed, meters, leaves, gaps, last_reading_id, "
                "built_at, updated_at) VALUES (?, ?, 0, ?, ?, ?, 'built', ?, ?, ?, ?, ?, ?, "
                "?, ?)",
                (contract, first, len(ks), len(anchors), length, tree.root,
                 json.dumps(part_call), len({e[0] for k in ks for e in k}), len(mine),
                 json.dumps(part_gaps, sort_keys=True), last_id, now, now))
            conn.executemany(
                "INSERT INTO chain_leaves (contract, interval, leaf_index, reading_id, salt) "
                "VALUES (?, ?, ?, ?, ?)",
                [(contract, first, i + 1, rid, bytes(s)) for i, (_, rid, s, _, _)
                 in enumerate(mine)])
    log.info("submission split in two (too large for one transaction)", extra={"fields": {
        "interval": interval, "intervals": n}})
    return True
