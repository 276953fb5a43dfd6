"""The community page served by the gateway's web server, in headless Debian Chromium
(playwright-core): the charts render from the settled day with no console errors and no
request leaving the gateway, members and figures as the chain has them; an interval's
readings and a reading's proof bundle, which verifies against the chain. The screenshot
is kept in out/screenshots/ for people to look at."""

import asyncio
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import community_day
import pytest
from chain_community import L

from gateway import community, units
from gateway.chain import bundle
from gateway.http_status import StatusHttp

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SCRIPT = Path(__file__).with_name("community_page.mjs")
SCREENSHOTS = ROOT / "out" / "screenshots"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    c, cfg, chain, first = community_day.build(tmp_path_factory.mktemp("page"))
    loop = asyncio.new_event_loop()
    http = StatusHttp(cfg.db_path, None, lambda: {}, "127.0.0.1", 0, config=cfg)
    loop.run_until_complete(http.start())
    yield c, cfg, chain, first, f"http://127.0.0.1:{http.port}", loop
    loop.run_until_complete(http.close())
    loop.close()
    c.close()


def _kwh2(wh):
    # as the page's Sankey labels a node: whole Wh to kWh, two decimals, half up
    return f"{(wh + 5) // 10 / 100:.2f} kWh"


def _browse(loop, url, screenshot):
    async def run():
        proc = await asyncio.create_subprocess_exec(
            "node", str(SCRIPT), url, str(screenshot), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()[-3000:]
        return json.loads(out)

    return loop.run_until_complete(run())


def _get(loop, url):
    def fetch():
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    return loop.run_until_complete(asyncio.to_thread(fetch))


def test_community_page_in_a_browser(site):
    c, cfg, chain, first, base, loop = site
    day = units.local_day(first * L, units.zone("UTC"))
    view = community.day_view(c.conn, cfg, chain, day)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "community-page.png"
    page = _browse(loop, f"{base}/community?date={day}", shot)
    assert page["status"] == 200 and page["errors"] == [] and page["error"] is None
    assert page["ready"] and page["externalRequests"] == []  # offline: nothing from a CDN
    assert page["title"] == f"Rue du Four: {day}"
    # every chart drawn, at a visible size
    assert all(w > 600 and h > 200 for w, h in page["svgSizes"])
    sankey = page["series"]["sankey"][0]
    assert sankey["type"] == "sankey" and sankey["points"] == len(view["flows"])
    members = {m["name"]: m for m in view["members"]}
    for name, m in members.items():
        # each member, with its settled figures, in the Sankey's text
        if m["consumed_wh"]:
            assert f"{name}  {_kwh2(m['consumed_wh'])}" in page["sankeyText"]
        if m["produced_wh"]:
            assert f"{name}  {_kwh2(m['produced_wh'])}" in page["sankeyText"]
        assert name in page["membersChartText"]
    assert f"community pool  {_kwh2(members['producer']['pool_sent_wh'])}" \
        in page["sankeyText"]
    settled = [r for r in view["intervals"] if r["state"] == "settled"]
    assert all(s["points"] == len(settled) for s in page["series"]["timeline"])
    # the members table, in human units
    header = page["membersHeader"]
    rows = {r[0].split("\n")[0]: dict(zip(header, r, strict=True)) for r in page["members"]}
    assert set(rows) == set(members)
    school = rows["school"]
    assert school["Used (imported)"] == units.kwh(members["school"]["consumed_wh"])
    assert school["Tokens paid"] == units.tokens(members["school"]["tokens_paid"], chain.token)
    assert school["Tokens paid"].endswith(" SUN") and "producer" in school[
        "Received (from whom)"]
    assert "40 % to school" in rows["producer"]["Member"]
    assert len(page["intervals"]) == len(view["intervals"])
    gap_row = next(r for r in page["intervals"] if "household" in r[-1])
    assert "no signed reading within 5 min" in gap_row[-1]
    assert page["verifyCommand"] == f"wattshare verify --bundle reading-ID.json --rpc {c.node.url}"
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


def test_interval_readings_and_a_proof_that_verifies(site):
    c, cfg, chain, first, base, loop = site
    status, _, body = _get(loop, f"{base}/community/interval/{first}")
    assert status == 200
    text = body.decode()
    readings = community.interval_readings(c.conn, c.settlement, first, L)
    assert text.count("/community/proof/") == len(readings) > 0
    rid = readings[0]["id"]
    status, headers, body = _get(loop, f"{base}/community/proof/{rid}.json")
    assert status == 200
    assert headers["Content-Disposition"] == f'attachment; filename="reading-{rid}.json"'
    report = bundle.verify_bundle(json.loads(body), c.port)
    assert report.ok, [vars(x) for x in report.checks]


def test_bad_requests_are_clear(site):
    c, cfg, chain, first, base, loop = site
    status, _, body = _get(loop, f"{base}/community?date=17-06-2025")
    assert status == 400 and b"YYYY-MM-DD" in body
    status, _, body = _get(loop, f"{base}/community/proof/999999.json")
    assert status == 404 and b"no reading with id 999999" in body
    assert _get(loop, f"{base}/assets/../gateway.toml")[0] == 404
    status, headers, body = _get(loop, f"{base}/assets/echarts.min.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"echarts" in body[:2000]
