"""A snapshot of the gateway's state read from its database.

Shared by ``wattshare gateway status`` (works whether or not the gateway runs) and the
status page / ``/status.json`` of the running gateway, so both show the same numbers.
The chain link's side comes from the same database (the outbox that ``wattshare chain
run`` keeps): the contract, the last confirmed interval, recent gaps and why, failed
submissions, and per device its on-chain meter index and last settled interval. No
chain node is asked, so the status works when the node is down.
"""

import time
from dataclasses import asdict, dataclass, field

from wattcore import cose, reading

from gateway import commissioning, enrolment, registry, store
from gateway.verify import signature_valid

STALE_AFTER_S = 600  # a device not heard from for this long stands out
RECENT_INTERVALS = 96  # gaps and last-settled lookups go back this many outbox rows


@dataclass
class DeviceStatus:
    id: str
    label: str
    model: str
    owner: str
    status: str
    ct_rating_a: float
    added_at: int
    revoked_at: int | None
    readings: int = 0
    last_seq: int | None = None
    last_t: int | None = None
    last_st: int | None = None
    last_p: int | None = None
    last_ei: int | None = None
    last_ee: int | None = None
    last_seen_ms: int | None = None
    faults: int = 0
    last_fault_t: int | None = None
    last_fault_flags: list = field(default_factory=list)
    rejects: dict = field(default_factory=dict)
    meter_index: int | None = None  # on-chain MeterRegistry index (community add-meter)
    last_settled_interval: int | None = None  # latest confirmed interval it was part of
    stale: bool = False  # active, and not heard from for STALE_AFTER_S (or never)


@dataclass
class ChainStatus:
    """The chain link as the outbox has it. ``contract`` None: not deployed."""

    contract: str | None = None
    rpc_url: str | None = None
    interval_s: int = 900
    outbox: dict = field(default_factory=dict)  # state -> rows
    last_confirmed_interval: int | None = None
    last_confirmed_tx: str | None = None
    failed: list = field(default_factory=list)  # [{interval, error}]
    gaps: list = field(default_factory=list)  # recent: [{interval, device, label, reason}]
    mapped_meters: int = 0

    @property
    def summary(self):
        if self.contract is None:
            return "not configured (wattshare chain deploy)"
        done = self.last_confirmed_interval
        text = f"contract {self.contract}, " + (
            f"last confirmed interval {done}" if done is not None else "nothing confirmed yet")
        if self.failed:
            text += f", {len(self.failed)} FAILED"
        return text


@dataclass
class GatewayStatus:
    now_ms: int
    devices: list
    rejects: dict  # reason -> count, all devices and unregistered senders
    readings_total: int
    readings_last_minute: int
    storage_bytes: int
    chain: ChainStatus
    storage_free_bytes: int | None = None  # free on the database's volume
    readings_room: int | None = None  # readings that still fit, about

    @property
    def readings_per_s(self):
        return self.readings_last_minute / 60.0

    def as_json(self):
        out = asdict(self)
        out["readings_per_s"] = round(self.readings_per_s, 3)
        out["chain"]["summary"] = self.chain.summary
        return out


def _chain_status(conn, config, devices):
    """The chain side (:class:`ChainStatus`); fills each device's index and last
    settled interval."""
    from gateway.chain import batcher  # eth_abi, not web3: imported when used

    chain = ChainStatus()
    if config is not None:
        chain.rpc_url = config.chain.rpc_url
        chain.interval_s = config.chain.interval_s
        chain.contract = config.chain.contract or None
    index = {bytes(d).hex(): i for d, i in conn.execute(
        "SELECT device, meter_index FROM chain_meters")}
    chain.mapped_meters = len(index)
    for d in devices:
        d.meter_index = index.get(d.id)
    if chain.contract is None:
        return chain
    chain.outbox = dict(conn.execute(
        "SELECT state, count(*) FROM chain_outbox WHERE contract = ? GROUP BY state",
        (chain.contract,)).fetchall())
    row = conn.execute("SELECT interval + intervals - 1, tx_hash FROM chain_outbox WHERE "
                       "contract = ? AND part = 0 AND intervals > 0 AND state = 'confirmed' "
                       "ORDER BY interval DESC LIMIT 1", (chain.contract,)).fetchone()
    if row:
        chain.last_confirmed_interval = row[0]
        chain.last_confirmed_tx = "0x" + bytes(row[1]).hex() if row[1] else None
    chain.failed = [{"interval": k, "error": e} for k, e in conn.execute(
        "SELECT interval, error FROM chain_outbox WHERE contract = ? AND state = 'failed' "
        "ORDER BY interval, part", (chain.contract,))]
    if chain.last_confirmed_interval is None:
        return chain
    labels = {d.id: d.label for d in devices}
    by_index = {i: d for d in devices if (i := d.meter_index) is not None}
    waiting = set(by_index)
    last = chain.last_confirmed_interval
    per = batcher.outbox_intervals(conn, chain.contract, last - RECENT_INTERVALS + 1, last)
    for k, box in sorted(per.items(), reverse=True):
        if box["state"] != "confirmed":
            continue
        for dev, quality in box["gaps"].items():
            chain.gaps.append({"interval": k, "device": dev, "label": labels.get(dev, dev),
                               "reason": quality})
        for m, _imp, _exp in box["entries"]:
            if m in waiting:
                by_index[m].last_settled_interval = k
                waiting.discard(m)
    return chain


def collect(conn, db_path, now_ms, config=None):
    """Build a :class:`GatewayStatus` from a connection to the gateway database;
    ``config`` (the gateway's) adds the chain link's side."""
    states = {
        bytes(row[0]): row[1:]
        for row in conn.execute(
            "SELECT device, readings, last_seq, last_t, last_st, last_p, last_ei, last_ee, "
            "last_received_ms, faults, last_fault_t, last_fault_st FROM device_state"
        )
    }
    per_device = {}
    totals = {}
    for device, reason, count in conn.execute("SELECT device, reason, count FROM rejects"):
        device = bytes(device)
        totals[reason] = totals.get(reason, 0) + count
        per_device.setdefault(device, {})[reason] = count
    devices = []
    for d in registry.list_devices(conn):
        s = DeviceStatus(d.id.hex(), d.label, d.model, d.owner, d.status, d.ct_rating_a,
                         d.added_at, d.revoked_at, rejects=per_device.get(d.id, {}))
        state = states.get(d.id)
        if state is not None:
            (s.readings, s.last_seq, s.last_t, s.last_st, s.last_p, s.last_ei, s.last_ee,
             s.last_seen_ms, s.faults, s.last_fault_t, fault_st) = state
            s.last_fault_flags = reading.flag_names(fault_st) if fault_st else []
        s.stale = s.status == "active" and (
            s.last_seen_ms is None or now_ms - s.last_seen_ms > STALE_AFTER_S * 1000)
        devices.append(s)
    total = conn.execute("SELECT coalesce(sum(readings), 0) FROM device_state").fetchone()[0]
    last_minute = conn.execute(
        "SELECT count(*) FROM readings WHERE received_ms > ?", (now_ms - 60_000,)
    ).fetchone()[0]
    chain = _chain_status(conn, config, devices)
    used = store.storage_bytes(db_path) if db_path else 0
    free = room = None
    if db_path:
        try:
            free = store.free_bytes(db_path)
        except OSError:
            pass
        else:
            per_reading = used / total if total >= 1000 else store.READING_BYTES
            room = int(free / max(per_reading, 1))
    return GatewayStatus(now_ms, devices, totals, total, last_minute, used, chain, free, room)


@dataclass
class StoredReading:
    """One stored reading as ``wattshare device readings`` shows it (``id``: ingest order,
    what ``wattshare verify --reading`` takes)."""

    id: int
    seq: int
    t: int
    st: int
    flags: list
    p: int | None
    ei: int | None
    ee: int | None
    received_ms: int
    interval: int | None = None  # the settlement interval whose root holds it
    on_chain: str | None = None  # that interval's outbox state (confirmed, sent, ...)


def device_readings(conn, device_id, limit=20, after_seq=None, span=None):
    """The last ``limit`` readings of a device (0: all), in ingest order; with
    ``after_seq``, only those with a higher sequence number; with ``span`` (start, end),
    only those stamped in it. Each with the interval it was committed to, if any."""
    where, args = "r.device = ?", [device_id]
    if after_seq is not None:
        where += " AND r.seq > ?"
        args.append(after_seq)
    if span is not None:
        where += " AND r.t >= ? AND r.t < ?"
        args += list(span)
    sql = ("SELECT r.id, r.seq, r.t, r.st, r.p, r.ei, r.ee, r.received_ms, l.interval, "
           "o.state FROM readings r LEFT JOIN chain_leaves l ON l.reading_id = r.id "
           "LEFT JOIN chain_outbox o ON o.contract = l.contract AND o.interval = l.interval "
           "AND o.part = 0 "
           f"WHERE {where} ORDER BY r.id")
    if limit:
        sql = f"SELECT * FROM ({sql} DESC LIMIT ?) ORDER BY id"
        args.append(limit)
    return [StoredReading(rid, seq, t, st, reading.flag_names(st) if st else [], p, ei, ee,
                          received, interval, state)
            for rid, seq, t, st, p, ei, ee, received, interval, state in conn.execute(sql, args)]


def device_json(d):
    """The registry entry of a :class:`gateway.registry.Device` as JSON data."""
    return {"id": d.id.hex(), "pubkey": d.pubkey.hex(), "model": d.model, "owner": d.owner,
            "label": d.label, "ct_rating_a": d.ct_rating_a, "status": d.status,
            "added_at": d.added_at, "revoked_at": d.revoked_at}


def _utc(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def last_reading(conn, device):
    """The device's reading with the highest seq, its signature checked again against the
    registered key; None when it has sent none."""
    row = conn.execute(
        "SELECT seq, t, st, p, ei, ee, u, i, f, pf, sn, cose, received_ms FROM readings "
        "WHERE device = ? ORDER BY seq DESC LIMIT 1", (device.id,)).fetchone()
    if row is None:
        return None
    seq, t, st, p, ei, ee, u, i, f, pf, sn, signed, received_ms = row
    return {
        "seq": seq, "t": t, "time": _utc(t), "received_ms": received_ms,
        "flags": reading.flag_names(st), "p_w": p, "ei_wh": ei, "ee_wh": ee,
        "u_dv": u, "i_ma": i, "f_chz": f, "pf_milli": pf, "sn": sn,
        "signature_valid": signature_valid(device.pubkey, cose.decode_sign1(bytes(signed))),
    }


def device_report(conn, device_id, now_ms):
    """Everything a tool asks about one device (``wattshare device show --json`` and
    ``/api/devices/ID``): the registry entry, ``registered``, ``enrolled`` (registered by
    an invite's code), ``last_reading`` (checked again), ``commissioning`` (the newest
    record, decoded, checked again) and ``state`` (counts, last seen, rejects)."""
    d = registry.get_device(conn, device_id, missing_ok=True)
    if d is None:
        return {"id": device_id.hex(), "registered": False, "enrolled": False,
                "last_reading": None, "commissioning": None}
    out = device_json(d)
    invite = enrolment.enrolled_by(conn, d.id)
    out["registered"] = True
    out["enrolled"] = invite is not None
    out["enrolment"] = ({"invite": invite.id, "at": invite.used_at}
                        if invite is not None else None)
    out["last_reading"] = last_reading(conn, d)
    out["commissioning"] = commissioning.latest(conn, d)
    snap = collect(conn, None, now_ms)
    s = next(x for x in snap.devices if x.id == d.id.hex())
    out["state"] = {k: v for k, v in vars(s).items() if k not in out}
    return out
