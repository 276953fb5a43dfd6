"""The technician's status knows the chain: after a deploy and confirmed intervals,
`gateway status` and the status page show the contract, the last confirmed interval,
gaps with their reason, each device's on-chain index and last settled interval; stale
devices and rejects stand out."""

import json

import community_day
import pytest

from gateway import status, units
from gateway.http_status import render_page
from tools.cli import main

LIVE = {"store_queue": 0, "ingest_processes": 0, "started_ms": 0}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    c, cfg, chain, first = community_day.build(tmp_path_factory.mktemp("status"))
    yield c, cfg, first
    c.close()


def test_status_knows_the_chain(gw, capsys):
    c, cfg, first = gw
    confirmed = {e["interval"] for e in c.logs("Settled")}
    now_ms = (max(confirmed) + 1) * 900 * 1000
    snap = status.collect(c.conn, cfg.db_path, now_ms, cfg)
    chain = snap.chain
    assert chain.contract == c.settlement and chain.mapped_meters == 3
    assert chain.last_confirmed_interval == max(confirmed)
    # one outbox row per submission (here the three intervals in one)
    assert chain.outbox == {"confirmed": len(c.logs("Submitted"))} and chain.failed == []
    household = c.member("household")
    gaps = {(g["interval"], g["label"]) for g in chain.gaps}
    assert (first + 1, "household") in gaps and (first + 2, "household") in gaps
    assert (first, "household") not in gaps
    devices = {d.label: d for d in snap.devices}
    assert devices["household"].meter_index == household.index
    assert devices["household"].last_settled_interval == first  # silent afterwards
    assert devices["school"].last_settled_interval == first + 2
    tx = c.port.request("eth_getTransactionByHash", [chain.last_confirmed_tx])
    assert int(tx["blockNumber"], 16) > 0

    page = render_page(snap, LIVE, units.zone("UTC"))
    assert f"contract {c.settlement}, last confirmed interval {max(confirmed)}" in page
    assert "no signed reading within 5 min" in page and "<td>household</td>" in page
    span = units.interval_span(first + 2, 900, units.zone("UTC"))
    assert f"{first + 2} ({span})" in page  # the school's last settled interval, local time

    assert main(["gateway", "status", "--config", str(cfg.path)]) == 0
    out = capsys.readouterr().out
    assert f"chain:     contract {c.settlement}, last confirmed interval" in out
    assert f"meter {household.index} settled to {first}" in out
    assert "gaps in the last 96 intervals" in out
    assert main(["gateway", "status", "--config", str(cfg.path), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["chain"]["last_confirmed_interval"] == max(confirmed)


def test_stale_devices_and_rejects_stand_out(gw):
    c, cfg, first = gw
    school = c.member("school")
    c.conn.execute("INSERT INTO rejects (device, reason, count, last_ms) VALUES (?, ?, ?, ?)",
                   (school.meter.device_id, "bad-signature", 4, 0))
    try:
        last_seen = max(d.last_seen_ms or 0 for d in status.collect(
            c.conn, cfg.db_path, 0, cfg).devices)
        # just after the last reading arrived: nobody is stale
        fresh = status.collect(c.conn, cfg.db_path, last_seen + 1000, cfg)
        assert not any(d.stale for d in fresh.devices)
        later = status.collect(c.conn, cfg.db_path,
                               last_seen + (status.STALE_AFTER_S + 60) * 1000, cfg)
        assert all(d.stale for d in later.devices)
        page = render_page(later, LIVE, units.zone("UTC"))
        assert page.count("<span class='alert'>STALE</span>") == 3
        assert "class='device active stale rejecting'" in page
        assert "<span class='alert'>bad-signature: 4</span>" in page
    finally:
        c.conn.execute("DELETE FROM rejects")
