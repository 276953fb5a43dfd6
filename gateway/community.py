"""What the community page, the member report and the demo's report show: a local day
(or span of days) of the community, from the chain's events and the gateway's database.

- energy and tokens: the Settlement contract's events for the day's intervals
  (:mod:`gateway.chain.ledger`), read through the gateway's RPC node;
- names: the labels the community gave its meters (``wattshare device add --label``),
  matched to the on-chain meter indices the gateway mapped (``community add-meter``);
- per interval: the gateway's outbox (state, gaps and why), the transaction that settled
  it (from the chain), the readings committed to its root (proof bundles);
- money: the member's bill at the community's stated tariffs (``[community]`` in
  gateway.toml) against what the same energy would have cost with the grid alone.

:func:`day_view` builds one JSON-able dict (the page renders it; ``/community.json``
serves it); :func:`report_json` is the machine-readable summary of the demo's report;
:func:`member_report` sums one member over a span of days (``wattshare community
report``). Figures stay exact (integer Wh, integer token units) next to their human text
(:mod:`gateway.units`).
"""

import json
from datetime import date, timedelta

from gateway import units
from gateway.chain import batcher, ledger
from gateway.errors import ConfigError

POOL_NAME = "community pool"
GRID_NAME = "grid"
DEPLOYMENT_NAME = "chain-deployment.json"  # as gateway.chain.deploy writes it


class Members:
    """The community's meters by name: on-chain index <-> device label (gateway DB)."""

    def __init__(self, conn):
        rows = conn.execute(
            "SELECT d.id, d.label, d.owner, d.model, d.status, m.meter_index FROM devices d "
            "LEFT JOIN chain_meters m ON m.device = d.id ORDER BY m.meter_index IS NULL, "
            "m.meter_index, d.label").fetchall()
        self.devices = [{"device": bytes(r[0]).hex(), "name": r[1] or bytes(r[0]).hex(),
                         "owner": r[2], "model": r[3], "status": r[4], "index": r[5]}
                        for r in rows]
        self.by_index = {d["index"]: d for d in self.devices if d["index"] is not None}
        self.by_device = {d["device"]: d for d in self.devices}

    def name(self, index):
        """A meter index, the pool or the grid, as people call it."""
        if index == ledger.POOL:
            return POOL_NAME
        if index == ledger.GRID:
            return GRID_NAME
        d = self.by_index.get(index)
        return d["name"] if d else f"meter {index} (another gateway)"

    def find(self, text):
        """A member by label, device id or meter index; :class:`ConfigError` if none or
        several match."""
        text = text.strip()
        hits = [d for d in self.devices if text in (d["name"], d["device"])
                or (text.isdigit() and d["index"] == int(text))]
        if not hits:
            hits = [d for d in self.devices if d["name"].lower() == text.lower()]
        if len(hits) != 1:
            known = ", ".join(repr(d["name"]) for d in self.devices) or "none"
            what = "no member" if not hits else "several members"
            raise ConfigError(f"{what} named {text!r} (a label, device id or meter index;"
                              f" members: {known})")
        return hits[0]


def deployment_block(data_dir):
    """The block the community's contracts were deployed in (0 if unknown)."""
    try:
        return json.loads((data_dir / DEPLOYMENT_NAME).read_text())["block_number"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _outbox(conn, contract, first, last, length):
    out = batcher.outbox_intervals(conn, contract, first, last)
    for row in out.values():
        row["readings"] = 0
    # the readings committed (under any root: a late one under a later one), by interval
    for k, n in conn.execute(
            "SELECT r.t / ? AS k, count(*) FROM chain_leaves l JOIN readings r ON "
            "r.id = l.reading_id WHERE l.contract = ? AND r.t >= ? AND r.t < ? GROUP BY k",
            (length, contract, first * length, (last + 1) * length)):
        if k in out:
            out[k]["readings"] = n
    return out


def _unmapped_with_readings(conn, members, start, end):
    """Devices with readings in [start, end) but no on-chain index, per interval."""
    unmapped = [bytes.fromhex(d["device"]) for d in members.devices if d["index"] is None]
    if not unmapped:
        return []
    marks = ",".join("?" * len(unmapped))
    return conn.execute(f"SELECT DISTINCT device FROM readings WHERE device IN ({marks}) "
                        "AND t >= ? AND t < ?", (*unmapped, start, end)).fetchall()


class ChainView:
    """What the page needs from the chain, cached where it cannot change (contract
    addresses, the token's symbol and decimals)."""

    def __init__(self, port, settlement, from_block=0):
        self.port = port
        self.settlement = settlement
        self.from_block = from_block
        self.addresses = ledger.contract_addresses(port, settlement)
        symbol, decimals = ledger.token_info(port, self.addresses["token"])
        self.token = units.Token(symbol, decimals, self.addresses["token"])

    def settled(self, first, last, from_block=None):
        return ledger.read_intervals(self.port, self.settlement, first, last,
                                     self.from_block if from_block is None else from_block)


def _bill(wh, tariffs):
    """The member's bill at the community's tariffs vs grid only (currency units)."""
    k = 1 / 1000
    retail, feed_in, p2p = (tariffs.retail_per_kwh, tariffs.feed_in_per_kwh,
                            tariffs.p2p_per_kwh)
    grid_only = wh["consumed_wh"] * k * retail - wh["produced_wh"] * k * feed_in
    community = (wh["grid_import_wh"] * k * retail + wh["p2p_received_wh"] * k * p2p
                 - wh["grid_export_wh"] * k * feed_in - wh["p2p_sent_wh"] * k * p2p)
    return {"community": round(community, 4), "grid_only": round(grid_only, 4),
            "saving": round(grid_only - community, 4)}


def _member_entry(d, day, members, token, tariffs, state=None):
    wh = {
        "produced_wh": day.exported_wh, "consumed_wh": day.imported_wh,
        "p2p_sent_wh": day.p2p_sent_wh + day.pool_sent_wh,
        "p2p_received_wh": day.p2p_received_wh + day.pool_received_wh,
        "direct_sent_wh": day.p2p_sent_wh, "pool_sent_wh": day.pool_sent_wh,
        "direct_received_wh": day.p2p_received_wh, "pool_received_wh": day.pool_received_wh,
        "grid_import_wh": day.grid_import_wh, "grid_export_wh": day.grid_export_wh,
        "self_supply_wh": day.self_supply_wh,
    }
    tok = {"tokens_paid": day.tokens_paid, "tokens_earned": day.tokens_earned,
           "tokens_owed": day.tokens_unpaid, "tokens_receivable": day.tokens_receivable}
    entry = {"name": d["name"], "index": d["index"], "device": d.get("device"),
             "owner": d.get("owner"), **wh, **tok,
             "sent_to": [{"name": members.name(i), "wh": w}
                         for i, w in sorted(day.sent_to.items(), key=lambda x: -x[1])],
             "received_from": [{"name": members.name(i), "wh": w}
                               for i, w in sorted(day.received_from.items(),
                                                  key=lambda x: -x[1])],
             "intervals": day.intervals}
    entry["bill"] = _bill(wh, tariffs)
    if state is not None:
        entry["account"] = state
    currency = tariffs.currency
    text = {k: units.kwh(v) for k, v in wh.items()}
    text.update({k: units.tokens(v, token) for k, v in tok.items()})
    text.update({f"bill_{k}": units.money(v, currency) for k, v in entry["bill"].items()})
    if state is not None:
        text.update({f"account_{k}": units.tokens(v, token) for k, v in state.items()})
    text["sent_to"] = ", ".join(f"{x['name']} {units.kwh(x['wh'])}" for x in entry["sent_to"])
    text["received_from"] = ", ".join(f"{x['name']} {units.kwh(x['wh'])}"
                                      for x in entry["received_from"])
    entry["text"] = text
    return entry


def _key_text(kind, entries, members):
    if kind == "none" or not entries:
        return "everything to the community pool"
    if kind in ("static", "percent"):
        parts = [f"{w / 100:g} % to {members.name(m)}" for m, w in entries]
    elif kind == "coefficients":
        parts = [f"{w / 10_000:g} % to {members.name(m)}" for m, w in entries]
    elif kind == "priority":
        parts = ["first " + ", then ".join(members.name(m) for m, _ in entries)]
    else:
        parts = ["in proportion to need: " + ", ".join(members.name(m) for m, _ in entries)]
    return f"{'; '.join(parts)} ({kind}); the rest to the community pool"


def day_view(conn, cfg, chain, day=None, now=None, rpc_note=None):
    """The community page's data for local day ``day`` (``YYYY-MM-DD``; default: the day
    of the latest settled interval, else today). ``chain``: a :class:`ChainView`, or None
    when the node cannot be reached (then only the gateway's side is shown, and
    ``rpc_note`` says why)."""
    from gateway import simclock

    now = simclock.now() if now is None else now
    tz = cfg.community.tz
    length = cfg.chain.interval_s
    contract = cfg.chain.contract
    members = Members(conn)
    if day is None:
        row = conn.execute("SELECT max(interval + intervals - 1) FROM chain_outbox WHERE "
                           "contract = ? AND part = 0 AND intervals > 0 AND "
                           "state = 'confirmed'", (contract,)).fetchone()
        t = row[0] * length if row and row[0] is not None else now
        day = units.local_day(t, tz)
    start, end = units.day_bounds(day, tz)
    first, last = start // length, (end - 1) // length
    outbox = _outbox(conn, contract, first, last, length) if contract else {}
    settled = {}
    if chain is not None:
        blocks = [r["block"] for r in outbox.values() if r["block"] is not None]
        settled = chain.settled(first, last, min(blocks) if blocks else None)
    token = chain.token if chain is not None else units.Token("?", 0)
    per_meter = ledger.per_meter(settled.values())
    keys = ledger.producer_keys(chain.port, chain.settlement, chain.from_block) \
        if chain is not None else {}
    c = cfg.community

    entries = []
    for d in members.devices:
        if d["index"] is None:
            continue
        state = None
        if chain is not None:
            state = ledger.account_state(chain.port, chain.settlement, d["owner"])
        e = _member_entry(d, per_meter.get(d["index"], ledger.MeterDay()), members, token, c,
                          state)
        if d["index"] in keys:
            e["key"] = _key_text(*keys[d["index"]], members)
        entries.append(e)
    for index, day_m in sorted(per_meter.items()):  # meters of other gateways
        if index not in members.by_index:
            entries.append(_member_entry({"name": members.name(index), "index": index},
                                         day_m, members, token, c))

    # flows between parties, summed over the day (the Sankey chart)
    pairs = {}
    for s in settled.values():
        for f in s.flows:
            if f.kind == "self_supply":  # a meter's own export used by itself: no flow
                continue
            key = (f.kind, members.name(f.source), members.name(f.target))
            wh, tk = pairs.get(key, (0, 0))
            pairs[key] = (wh + f.wh, tk + f.tokens)
    flows = [{"from": a, "to": b, "kind": kind, "wh": wh, "tokens": tk,
              "text": {"wh": units.kwh(wh), "tokens": units.tokens(tk, token)}}
             for (kind, a, b), (wh, tk) in sorted(pairs.items(), key=lambda x: -x[1][0])]

    # per interval: the gateway's submission, the chain's settlement, gaps and why
    unmapped = {bytes(r[0]).hex() for r in _unmapped_with_readings(conn, members, start, end)}
    rows = []
    for k in range(first, last + 1):
        box, s = outbox.get(k), settled.get(k)
        if box is None and s is None:
            continue
        gaps = [{"name": members.by_device.get(dev, {"name": dev})["name"], "reason": q,
                 "why": batcher.gap_reason(q)}
                for dev, q in sorted((box or {}).get("gaps", {}).items())]
        gaps += [{"name": members.by_device[dev]["name"], "reason": batcher.NOT_ON_CHAIN,
                  "why": batcher.gap_reason(batcher.NOT_ON_CHAIN)} for dev in sorted(unmapped)
                 ] if box else []
        kinds = {"p2p": 0, "pool_out": 0, "grid_import": 0, "grid_export": 0}
        for f in (s.flows if s else []):
            if f.kind in kinds:
                kinds[f.kind] += f.wh
        rows.append({
            "interval": k, "start": k * length,
            "label": units.interval_span(k, length, tz, with_date=False),
            "state": "settled" if s else (box["state"] if box else "-"),
            "tx": s.tx_hash if s else (box or {}).get("tx"),
            "block": s.block_number if s else (box or {}).get("block"),
            "readings": (box or {}).get("readings"), "meters": s.meters if s else None,
            "error": (box or {}).get("error"),
            "gaps": gaps,
            "direct_wh": kinds["p2p"], "pool_wh": kinds["pool_out"],
            "grid_import_wh": kinds["grid_import"], "grid_export_wh": kinds["grid_export"],
            "import_wh": s.import_wh if s else None, "export_wh": s.export_wh if s else None,
            "tokens": s.tokens if s else None,
            "text": {"tokens": units.tokens(s.tokens, token) if s else "-"},
        })

    totals = {k: sum(e[k] for e in entries) for k in (
        "produced_wh", "consumed_wh", "p2p_sent_wh", "grid_import_wh", "grid_export_wh",
        "self_supply_wh", "tokens_paid", "tokens_earned")}
    totals["intervals_settled"] = len(settled)
    totals["intervals_with_gaps"] = sum(1 for r in rows if r["gaps"])
    totals["text"] = {k: units.kwh(v) for k, v in totals.items() if k.endswith("_wh")}
    totals["text"].update({k: units.tokens(totals[k], token)
                           for k in ("tokens_paid", "tokens_earned")})
    d0 = date.fromisoformat(day)
    rpc_url = chain.port.url if chain is not None else None
    return {
        "community": {"name": c.name, "timezone": c.timezone or "local time",
                      "currency": c.currency,
                      "tariffs": {"retail_per_kwh": c.retail_per_kwh,
                                  "feed_in_per_kwh": c.feed_in_per_kwh,
                                  "p2p_per_kwh": c.p2p_per_kwh}},
        "day": day, "previous_day": str(d0 - timedelta(days=1)),
        "next_day": str(d0 + timedelta(days=1)), "interval_s": length,
        "generated": units.local_time(now, tz),
        "chain": {"rpc": rpc_url, "chain_id": cfg.chain.chain_id,
                  "contracts": chain.addresses if chain is not None else (
                      {"settlement": contract} if contract else {}),
                  "reachable": chain is not None, "note": rpc_note,
                  "price_per_kwh": (units.tokens(ledger.p2p_price(chain.port,
                                                                  chain.settlement) * 1000,
                                                 token) if chain is not None else None)},
        "token": token.as_json(),
        "members": entries, "flows": flows, "intervals": rows, "totals": totals,
        "verify_command": ("wattshare verify --bundle reading-ID.json --rpc "
                           + (rpc_url or "URL-OF-A-NODE")),
    }


REPORT_MEMBER_KEYS = ("name", "produced_wh", "consumed_wh", "p2p_sent_wh", "p2p_received_wh",
                      "grid_import_wh", "grid_export_wh", "tokens_paid", "tokens_earned")


def report_json(view, proofs):
    """The demo's ``report.json``: members, flows, intervals, proofs, chain; exact
    integers (Wh, token units). ``proofs``: {"verified": n, "total": n}."""
    return {
        "members": [{k: m[k] for k in REPORT_MEMBER_KEYS} for m in view["members"]],
        "flows": [{"from": f["from"], "to": f["to"], "wh": f["wh"], "tokens": f["tokens"]}
                  for f in view["flows"]],
        "intervals": [{"interval": r["interval"], "tx": r["tx"]} for r in view["intervals"]
                      if r["state"] == "settled"],
        "proofs": {"verified": proofs["verified"], "total": proofs["total"]},
        "chain": {"rpc": view["chain"]["rpc"], "contracts": view["chain"]["contracts"]},
    }


def interval_readings(conn, contract, interval, length):
    """The readings of ``interval`` committed to a root (its own submission's, or a later
    one's if they came late): id, member, time, power, counters."""
    rows = conn.execute(
        "SELECT DISTINCT r.id, r.device, d.label, r.seq, r.t, r.st, r.p, r.ei, r.ee FROM "
        "chain_leaves l JOIN readings r ON r.id = l.reading_id JOIN devices d ON "
        "d.id = r.device WHERE l.contract = ? AND r.t >= ? AND r.t < ? ORDER BY d.label, r.t",
        (contract, interval * length, (interval + 1) * length))
    return [{"id": r[0], "device": bytes(r[1]).hex(), "name": r[2], "seq": r[3], "t": r[4],
             "st": r[5], "p": r[6], "ei": r[7], "ee": r[8]} for r in rows]


def member_report(conn, cfg, chain, member, first_day, last_day):
    """One member over local days ``first_day..last_day``: energy to and from each
    party, pool share, tokens earned, paid and owed (``wattshare community report``)."""
    tz = cfg.community.tz
    length = cfg.chain.interval_s
    members = Members(conn)
    d = members.find(member)
    if d["index"] is None:
        raise ConfigError(f"member {d['name']!r} has no on-chain meter index yet "
                          "(wattshare community add-meter)")
    start, _ = units.day_bounds(first_day, tz)
    _, end = units.day_bounds(last_day, tz)
    if end <= start:
        raise ConfigError(f"--from {first_day} is after --to {last_day}")
    first, last = start // length, (end - 1) // length
    settled = chain.settled(first, last)
    day = ledger.per_meter(settled.values()).get(d["index"], ledger.MeterDay())
    state = ledger.account_state(chain.port, chain.settlement, d["owner"])
    entry = _member_entry(d, day, members, chain.token, cfg.community, state)
    entry.update({"from": first_day, "to": last_day, "intervals_settled": len(settled),
                  "token": chain.token.as_json()})
    return entry
