"""The batcher: turns each closed settlement interval into one outbox row.

For interval ``k`` (``[k*L, (k+1)*L)``, ``L`` = ``[chain] interval_s``) once
``(k+1)*L + grace_s`` has passed:

- leaves: every stored reading with ``t`` in the interval (fault readings too: they are
  signed readings the gateway accepted), in ingest order (``readings.id``), each with a
  fresh 32-byte salt; the salts and leaf indices go to ``chain_leaves`` so a proof can be
  exported later (:mod:`gateway.chain.bundle`). The public root says nothing without them.
- totals: per meter with an on-chain index (``chain_meters``, set by
  ``wattshare community add-meter`` or looked up in the registry), import and export Wh
  from the cumulative counters (:mod:`gateway.chain.intervals`, floor interpolation at the
  boundaries, readings up to ``max_gap`` around the interval).
- an import-only meter (no export register, e.g. the PZEM-004T) has export 0.
- gaps: a meter whose import or export is unknown (no reading within ``max_gap`` of a
  boundary, or a counter that went down) is **left out** of ``packed`` for this interval:
  the contract then allocates nothing to or from it and the energy is settled off-chain by
  the grid supplier; nothing is estimated. The outbox row records why (``gaps``, JSON
  ``{device hex: quality}``). Its readings are still leaves of the root.
- an interval with no reading at all is not submitted (the contract refuses a zero root).

Readings that arrive after their interval was built (a meter's spool catching up after
``grace_s``) are stored but not in any root; ``last_reading_id`` records what the build saw.

Everything of one interval (outbox row + leaves) is written in one transaction, so a
crash leaves either nothing (built again on restart) or a complete ``built`` row.
"""

import json
import logging
from dataclasses import dataclass

from gateway import simclock, store
from gateway.chain import contracts, intervals, merkle

log = logging.getLogger("wattshare.chain")

GAP_OVERFLOW = "overflow"  # more than 2**32-1 Wh in one interval: not representable
NOT_ON_CHAIN = "not_on_chain"  # readings, but the device has no on-chain meter index


def gap_reason(quality, max_gap_s=None):
    """Why a meter was left out of an interval, for people (``chain run``, the status
    and community pages)."""
    near = f"within {max_gap_s // 60} min of" if max_gap_s else "close enough to"
    return {
        intervals.GAP: f"no reading {near} the interval's start or end "
                       "(meter offline, or its readings not received yet)",
        intervals.COUNTER_DECREASE: "its energy counter went down (meter replaced or reset)",
        GAP_OVERFLOW: f"more than {contracts.MAX_WH} Wh in one interval (not representable)",
        NOT_ON_CHAIN: "not registered on chain (wattshare community add-meter)",
    }.get(quality, quality)


@dataclass(frozen=True)
class Built:
    interval: int
    root: bytes
    packed: list
    totals: list  # [(meter_index, import_wh, export_wh)]
    gaps: dict  # device hex -> quality
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


class Batcher:
    """Builds outbox rows for the settlement contract ``contract`` from the store."""

    def __init__(self, conn, contract, length=intervals.DEFAULT_LENGTH, grace_s=120,
                 max_gap=None, salt=merkle.new_salt, clock=simclock.now):
        self.conn = conn
        self.contract = contract
        self.length = intervals.check_length(length)
        self.grace_s = grace_s
        self.max_gap = max_gap if max_gap is not None else (
            intervals.DEFAULT_MAX_GAP_INTERVALS * length)
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

    def due(self, since):
        """Intervals >= ``since`` that are closed (end + grace passed), hold readings and
        have no outbox row yet, oldest first."""
        L = self.length
        last = (int(self._clock()) - self.grace_s) // L - 1
        top = self.conn.execute("SELECT max(interval) FROM chain_outbox WHERE contract = ?",
                                (self.contract,)).fetchone()[0]
        k = since if top is None else max(since, top + 1)
        out = []
        while k <= last:
            # next interval with a reading, by the t index
            row = self.conn.execute("SELECT min(t) FROM readings WHERE t >= ? AND t < ?",
                                    (k * L, (last + 1) * L)).fetchone()
            if row[0] is None:
                break
            k = row[0] // L
            out.append(k)
            k += 1
        return out

    def next_due(self):
        """(interval, unix time) of the next interval to close, and when it is due (its
        end plus ``grace_s``)."""
        k = (int(self._clock()) - self.grace_s) // self.length + 1
        return k - 1, k * self.length + self.grace_s

    # ---- one interval

    def compute(self, interval):
        """(leaf rows [(reading id, cose)], totals, gaps, last reading id) of ``interval``."""
        L = self.length
        start, end = interval * L, (interval + 1) * L
        last_id = self.conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0]
        leaves = [(rid, bytes(cose)) for rid, cose in self.conn.execute(
            "SELECT id, cose FROM readings WHERE t >= ? AND t < ? AND id <= ? ORDER BY id",
            (start, end, last_id))]
        mapping = meter_map(self.conn)
        series = {device: [] for device in mapping}
        for device, t, ei, ee in self.conn.execute(
                "SELECT device, t, ei, ee FROM readings WHERE t >= ? AND t <= ? AND id <= ?",
                (start - self.max_gap, end + self.max_gap, last_id)):
            s = series.get(bytes(device))
            if s is not None:
                # an import-only meter (PZEM-004T: no export register) signs no `ee`:
                # its export is 0, not unknown (a fault reading has neither counter)
                s.append((t, ei, 0 if ee is None and ei is not None else ee))
        result = intervals.interval_totals(series, start, L, self.max_gap)
        totals, gaps = [], {}
        for device, mi in sorted(result.meters.items()):
            if mi.gap:
                gaps[device.hex()] = mi.quality
            elif mi.import_wh > contracts.MAX_WH or mi.export_wh > contracts.MAX_WH:
                gaps[device.hex()] = GAP_OVERFLOW
            else:
                totals.append((mapping[device], mi.import_wh, mi.export_wh))
        return leaves, sorted(totals), gaps, last_id

    def build(self, interval):
        """Compute ``interval`` and store it as a ``built`` outbox row with its leaves.

        Returns the :class:`Built`, or None if the interval has no readings or is
        already in the outbox."""
        leaves, totals, gaps, last_id = self.compute(interval)
        if not leaves:
            return None
        salts = [self._salt() for _ in leaves]
        tree = merkle.MerkleTree(merkle.leaf_hash(s, cose) for s, (_, cose) in zip(
            salts, leaves, strict=True))
        packed = contracts.pack_totals(totals)
        now = int(self._clock())
        conn = self.conn
        with store.immediate(conn):
            exists = conn.execute("SELECT 1 FROM chain_outbox WHERE contract = ? AND interval = ?",
                                  (self.contract, interval)).fetchone()
            if exists:
                return None  # built before (the transaction wrote nothing)
            conn.execute(
                "INSERT INTO chain_outbox (contract, interval, length, state, root, packed, "
                "meters, leaves, gaps, last_reading_id, built_at, updated_at) "
                "VALUES (?, ?, ?, 'built', ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.contract, interval, self.length, tree.root,
                 json.dumps([hex(w) for w in packed]), len(totals), len(leaves),
                 json.dumps(gaps, sort_keys=True), last_id, now, now))
            conn.executemany(
                "INSERT INTO chain_leaves (contract, interval, leaf_index, reading_id, salt) "
                "VALUES (?, ?, ?, ?, ?)",
                [(self.contract, interval, i, rid, salt)
                 for i, ((rid, _), salt) in enumerate(zip(leaves, salts, strict=True))])
        if gaps:
            log.warning("interval has gaps", extra={"fields": {
                "interval": interval, "gaps": gaps}})
        return Built(interval, tree.root, packed, totals, gaps, len(leaves))

    def build_due(self, since):
        """Build every due interval; returns the list of :class:`Built`."""
        built = []
        for k in self.due(since):
            b = self.build(k)
            if b is not None:
                built.append(b)
        return built
