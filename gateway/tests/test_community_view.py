"""The community's day as the page shows it, read back from a real anvil: names from the
gateway's labels, energy and tokens from the contract's events, gaps with their reason,
the member report over dates."""

import json

import community_day
import pytest
from chain_community import L

from gateway import community, units
from gateway.errors import ConfigError

UTC = units.zone("UTC")


@pytest.fixture(scope="module")
def settled(tmp_path_factory):
    c, cfg, chain, first = community_day.build(tmp_path_factory.mktemp("community"))
    yield c, cfg, chain, first
    c.close()


def _logs(c, event):
    return c.logs(event)


def test_the_day_by_name_from_the_chain(settled):
    c, cfg, chain, first = settled
    day = units.local_day(first * L, UTC)
    view = community.day_view(c.conn, cfg, chain, day)
    assert view["day"] == day and view["community"]["name"] == "Rue du Four"
    assert view["token"] == {"symbol": "SUN", "decimals": 18,
                             "address": c.deployment.token}
    members = {m["name"]: m for m in view["members"]}
    assert set(members) == {"producer", "school", "household"}
    # every figure is the contract's: its Settled events and its allocations
    settled_events = [e for e in _logs(c, "Settled")
                      if units.local_day(e["interval"] * L, UTC) == day]
    assert view["totals"]["intervals_settled"] == len(settled_events) >= 2
    assert sum(m["consumed_wh"] for m in members.values()) == sum(
        e["import_wh"] for e in settled_events)
    assert sum(m["produced_wh"] for m in members.values()) == sum(
        e["export_wh"] for e in settled_events)
    p2p = [e for e in _logs(c, "P2PAllocation") if e["interval"] in
           {s["interval"] for s in settled_events}]
    school, producer = members["school"], members["producer"]
    assert school["direct_received_wh"] == sum(e["wh"] for e in p2p)
    assert school["received_from"][0]["name"] == "producer"
    assert producer["sent_to"][0] == {"name": "school", "wh": school["direct_received_wh"]}
    for m in members.values():  # the contract's identities, per member
        assert m["p2p_received_wh"] + m["grid_import_wh"] + m["self_supply_wh"] \
            == m["consumed_wh"]
        assert m["p2p_sent_wh"] + m["grid_export_wh"] + m["self_supply_wh"] \
            == m["produced_wh"]
    assert sum(m["tokens_paid"] for m in members.values()) == sum(
        m["tokens_earned"] for m in members.values()) == sum(e["tokens"] for e in settled_events)
    assert producer["key"].startswith("40 % to school (static)")
    # the bill at the stated tariffs: grid only minus what sharing changed
    b = producer["bill"]
    assert b["grid_only"] == pytest.approx(
        producer["consumed_wh"] * 0.30 / 1000 - producer["produced_wh"] * 0.06 / 1000, abs=1e-4)
    assert b["saving"] == pytest.approx(producer["p2p_sent_wh"] * (0.15 - 0.06) / 1000, abs=1e-4)
    assert producer["text"]["tokens_earned"].endswith(" SUN")
    assert producer["account"]["balance"] == producer["tokens_earned"]  # started at 0
    # flows between parties for the Sankey chart
    flows = {(f["from"], f["to"]): f for f in view["flows"]}
    assert flows[("producer", "school")]["wh"] == school["direct_received_wh"]
    assert ("producer", community.POOL_NAME) in flows
    assert (community.GRID_NAME, "school") in flows or school["grid_import_wh"] == 0


def test_intervals_carry_their_transaction_and_gaps_say_why(settled):
    c, cfg, chain, first = settled
    view = community.day_view(c.conn, cfg, chain, units.local_day(first * L, UTC))
    rows = {r["interval"]: r for r in view["intervals"]}
    submitted = {e["interval"] for e in _logs(c, "Settled")}
    for k in (first, first + 1):
        assert rows[k]["state"] == "settled" and k in submitted
        tx = c.port.request("eth_getTransactionByHash", [rows[k]["tx"]])
        assert tx["to"].lower() == c.settlement.lower()
    assert rows[first]["gaps"] == []
    gap = rows[first + 1]["gaps"]
    assert [g["name"] for g in gap] == ["household"]
    assert "no signed reading within 5 min" in gap[0]["why"]
    assert [g["name"] for g in rows[first + 2]["gaps"]] == ["household"]
    readings = community.interval_readings(c.conn, c.settlement, first, L)
    assert {r["name"] for r in readings} == {"producer", "school", "household"}
    assert all(first * L <= r["t"] < (first + 1) * L for r in readings)


def test_report_json_has_exactly_the_listed_keys(settled):
    c, cfg, chain, first = settled
    view = community.day_view(c.conn, cfg, chain, units.local_day(first * L, UTC))
    report = community.report_json(view, {"verified": 1, "total": 1})
    assert set(report) == {"members", "flows", "intervals", "proofs", "chain"}
    assert all(set(m) == set(community.REPORT_MEMBER_KEYS) for m in report["members"])
    assert all(set(f) == {"from", "to", "wh", "tokens"} for f in report["flows"])
    assert all(set(r) == {"interval", "tx"} for r in report["intervals"])
    assert set(report["chain"]) == {"rpc", "contracts"}


def test_member_report_over_dates(settled):
    c, cfg, chain, first = settled
    day = units.local_day(first * L, UTC)
    r = community.member_report(c.conn, cfg, chain, "school", day, day)
    view = community.day_view(c.conn, cfg, chain, day)
    school = next(m for m in view["members"] if m["name"] == "school")
    assert r["p2p_received_wh"] == school["p2p_received_wh"] > 0
    assert r["tokens_paid"] == school["tokens_paid"]
    with pytest.raises(ConfigError, match="no member named 'nobody'"):
        community.member_report(c.conn, cfg, chain, "nobody", day, day)
    with pytest.raises(ConfigError, match="after"):
        community.member_report(c.conn, cfg, chain, "school", "2030-01-02", "2030-01-01")


def test_without_a_node_the_gateway_side_still_shows(settled):
    c, cfg, _chain, first = settled
    view = community.day_view(c.conn, cfg, None, units.local_day(first * L, UTC),
                              rpc_note="node not reachable")
    assert view["chain"]["reachable"] is False and view["chain"]["note"] == "node not reachable"
    rows = {r["interval"]: r for r in view["intervals"]}
    assert rows[first]["state"] == "confirmed" and rows[first]["tx"].startswith("0x")


def test_verify_warns_when_the_readings_meter_was_a_gap(settled):
    from gateway.chain import bundle

    c, cfg, chain, first = settled
    home = c.member("household")
    rid = c.conn.execute(
        "SELECT l.reading_id FROM chain_leaves l JOIN readings r ON r.id = l.reading_id "
        "WHERE r.t >= ? AND r.t < ? AND r.device = ?",
        ((first + 1) * L, (first + 2) * L, home.meter.device_id)).fetchone()[0]
    b = bundle.export_bundle(c.conn, rid, c.port.chain_id)
    assert b["gap"] == "gap"
    report = bundle.verify_bundle(b, c.port)
    assert report.ok and [w.name for w in report.warnings] == ["settled"]
    text = bundle.format_report(report, units.zone("UTC"))
    assert f"[warn] settled: meter {home.index} was LEFT OUT of interval {first + 1}" in text
    assert "no signed reading" in text and "VALID, WITH 1 WARNING" in text
    # the same meter in an interval it was part of: no warning
    rid = c.conn.execute(
        "SELECT l.reading_id FROM chain_leaves l JOIN readings r ON r.id = l.reading_id "
        "WHERE r.t >= ? AND r.t < ? AND r.device = ?",
        (first * L, (first + 1) * L, home.meter.device_id)).fetchone()[0]
    report = bundle.verify_bundle(bundle.export_bundle(c.conn, rid, c.port.chain_id), c.port)
    assert report.ok and report.warnings == []
    assert "import" in report.checks[-1].detail and report.checks[-1].name == "settled"


def test_members_report_and_readings_from_the_cli(settled, capsys):
    from tools.cli import main

    c, cfg, chain, first = settled
    conf = str(cfg.path)
    assert main(["community", "members", "--config", conf]) == 0
    out = capsys.readouterr().out
    for m in c.members:
        assert f"{m.index:>5}  {m.name:24} {m.meter.device_id.hex()}" in out
    day = units.local_day(first * L, UTC)
    assert main(["community", "report", "--config", conf, "--member", "school",
                 "--from", day, "--to", day]) == 0
    out = capsys.readouterr().out
    view = community.day_view(c.conn, cfg, chain, day)
    school = next(m for m in view["members"] if m["name"] == "school")
    t = school["text"]
    assert out.startswith(f"school (meter {c.member('school').index}), {day} (UTC):")
    assert f"from neighbours {t['direct_received_wh']} (producer " in out
    assert f"paid {t['tokens_paid']}" in out and " SUN" in out
    assert "saved 0." in out and " EUR" in out
    assert main(["community", "report", "--config", conf, "--member", "nobody",
                 "--from", day]) == 2
    assert "no member named 'nobody'" in capsys.readouterr().err

    assert main(["device", "readings", "household", "--config", conf, "--date", day,
                 "--limit", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5 and all(r["interval"] is not None for r in rows)
    assert all(r["on_chain"] == "confirmed" for r in rows)
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # newest last
    assert all(units.local_day(r["t"], UTC) == day for r in rows)
    home = c.member("household")
    assert main(["device", "readings", str(home.index), "--config", conf, "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"household ({home.meter.device_id.hex()}), newest last:")
    assert " UTC " in out and "confirmed" in out
    latest = c.conn.execute("SELECT max(id) FROM readings WHERE device = ?",
                            (home.meter.device_id,)).fetchone()[0]
    assert f"wattshare export-proof --reading {latest} " in out
    assert main(["device", "readings", "household", "--config", conf, "--limit", "-1"]) == 2
