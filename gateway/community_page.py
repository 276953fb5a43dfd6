"""The community page as HTML, from :func:`gateway.community.day_view`.

The tables are plain HTML (readable without JavaScript, printable); the three charts
are drawn by ``gateway/web/community.js`` with Apache ECharts from the same data, which
the page carries as JSON. Two ways to ship the scripts:

- ``served``: the gateway's web server (``/community``) links ``/assets/...``: ECharts
  from ``node_modules/echarts`` (pinned in package.json, installed by
  ``make setup-gateway CHAIN=1`` with the embedded anvil, or ``make setup``), the page
  script and style from ``gateway/web/``;
- ``inline``: everything inside one file (the demo's ``report.html``): it opens
  offline, from a file, with nothing else.

Why ECharts: it is the one library of those considered (uPlot, Observable Plot,
d3-sankey, Chart.js) that draws a Sankey diagram and the time and bar charts with the
same API and no plug-ins; it is an Apache project with regular releases, renders to SVG
(crisp when printed; names in the chart are text), and has built-in accessibility
descriptions (``aria``). d3-sankey only computes a layout (we would draw the SVG
ourselves), uPlot and Chart.js have no Sankey without third-party plug-ins.
"""

import html
import json
from pathlib import Path

from gateway import units

WEB_DIR = Path(__file__).resolve().parent / "web"
REPO_ROOT = Path(__file__).resolve().parent.parent
ECHARTS = REPO_ROOT / "node_modules" / "echarts" / "dist" / "echarts.min.js"
ASSETS = {  # URL name -> file; served read-only from /assets/
    "echarts.min.js": ECHARTS,
    "community.js": WEB_DIR / "community.js",
    "community.css": WEB_DIR / "community.css",
}


class AssetMissing(Exception):
    """A file the page needs is not installed (ECharts: ``make setup``)."""


def asset(name):
    """Bytes of a page asset; :class:`AssetMissing` naming what to do."""
    path = ASSETS[name]
    try:
        return path.read_bytes()
    except OSError:
        raise AssetMissing(f"{path} is missing: run `make setup-gateway CHAIN=1` on a gateway, "
                           "`make setup` on a developer machine (either installs ECharts "
                           "from package.json into node_modules)") from None


def _e(value):
    return html.escape(str(value), quote=True)


def _json_for_script(value):
    # JSON inside <script>: no "</" (closing tag) and no "<!--"
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def _cards(view):
    t = view["totals"]["text"]
    tot = view["totals"]
    cards = [
        ("Shared between neighbours", t["p2p_sent_wh"]),
        ("Used (imported by members)", t["consumed_wh"]),
        ("Surplus (exported by members)", t["produced_wh"]),
        ("Bought from the grid", t["grid_import_wh"]),
        ("Sold to the grid", t["grid_export_wh"]),
        ("Tokens paid to producers", t["tokens_paid"]),
        ("Intervals settled", f"{tot['intervals_settled']}"
                              + (f" ({tot['intervals_with_gaps']} with gaps)"
                                 if tot["intervals_with_gaps"] else "")),
    ]
    return "".join(f"<div class='card'>{_e(k)}<b>{_e(v)}</b></div>" for k, v in cards)


def _bill(amount, currency):
    # a negative bill is money the member receives
    return units.money(amount, currency) if amount >= 0 else \
        "credit " + units.money(-amount, currency)


def _members_table(view):
    currency = view["community"]["currency"]
    rows = []
    for m in view["members"]:
        t = m["text"]
        saving = m["bill"]["saving"]
        account = (f"{_e(t['account_balance'])}"
                   + (f"<br><span class='warn'>owes {_e(t['account_debt'])}</span>"
                      if m.get("account", {}).get("debt") else "")
                   ) if "account" in m else "-"
        rows.append(
            f"<tr class='member' data-member='{_e(m['name'])}'>"
            f"<td><b>{_e(m['name'])}</b>"
            + (f"<br><span class='note'>{_e(m['key'])}</span>" if m.get("key") else "")
            + f"</td><td class='n'>{_e(t['produced_wh'])}</td>"
            f"<td class='n'>{_e(t['consumed_wh'])}</td>"
            f"<td>{_e(t['p2p_sent_wh'])}" + (f"<br><span class='note'>{_e(t['sent_to'])}"
                                             + (f"; pool {_e(t['pool_sent_wh'])}"
                                                if m["pool_sent_wh"] else "") + "</span>"
                                             if m["p2p_sent_wh"] else "") + "</td>"
            f"<td>{_e(t['p2p_received_wh'])}"
            + (f"<br><span class='note'>{_e(t['received_from'])}"
               + (f"; pool {_e(t['pool_received_wh'])}" if m["pool_received_wh"] else "")
               + "</span>" if m["p2p_received_wh"] else "") + "</td>"
            f"<td class='n'>{_e(t['grid_import_wh'])}</td>"
            f"<td class='n'>{_e(t['grid_export_wh'])}</td>"
            f"<td class='n'>{_e(t['tokens_earned'])}</td>"
            f"<td class='n'>{_e(t['tokens_paid'])}</td>"
            f"<td class='n'>{account}</td>"
            f"<td class='n'>{_e(_bill(m['bill']['community'], currency))}<br>"
            f"<span class='note'>grid only {_e(_bill(m['bill']['grid_only'], currency))}"
            "</span></td>"
            f"<td class='n'>{_e(units.money(saving, currency))}</td></tr>")
    head = ("<tr><th>Member</th><th>Surplus (exported)</th><th>Used (imported)</th>"
            "<th>Shared out (to whom)</th><th>Received (from whom)</th><th>Grid import</th>"
            "<th>Grid export</th><th>Tokens earned</th><th>Tokens paid</th>"
            "<th>Balance now</th><th>Bill (vs grid only)</th><th>Saved</th></tr>")
    body = "".join(rows) or "<tr><td colspan='12'>no member has an on-chain meter yet</td></tr>"
    return f"<table id='members'>{head}{body}</table>"


def _intervals_table(view, served):
    rows = []
    for r in view["intervals"]:
        gaps = "; ".join(f"{g['name']}: {g['why']}" for g in r["gaps"])
        tx = f"<code>{_e(r['tx'])}</code>" if r["tx"] else "-"
        proofs = (f"<a href='/community/interval/{r['interval']}'>{r['readings']} readings"
                  "</a>" if served and r["readings"] else _e(r["readings"] or "-"))
        state = r["state"] + (f": {r['error']}" if r.get("error") else "")
        rows.append(
            f"<tr class='interval{' gap' if r['gaps'] else ''}' data-interval='{r['interval']}'>"
            f"<td>{_e(r['label'])}</td><td>{_e(state)}</td>"
            f"<td class='n'>{_e(units.kwh(r['direct_wh'] + r['pool_wh']))}</td>"
            f"<td class='n'>{_e(units.kwh(r['grid_import_wh']))}</td>"
            f"<td class='n'>{_e(units.kwh(r['grid_export_wh']))}</td>"
            f"<td class='n'>{_e(r['text']['tokens'])}</td>"
            f"<td>{tx}</td><td>{proofs}</td><td>{_e(gaps) or '-'}</td></tr>")
    head = ("<tr><th>Interval</th><th>State</th><th>Shared</th><th>Grid import</th>"
            "<th>Grid export</th><th>Tokens</th><th>Settlement transaction</th>"
            "<th>Readings (proofs)</th><th>Gaps: why</th></tr>")
    body = "".join(rows) or "<tr><td colspan='9'>nothing submitted for this day</td></tr>"
    return f"<table id='intervals'>{head}{body}</table>"


def _proofs_section(view, proofs):
    chain = view["chain"]
    contracts = "".join(f"<li>{_e(k)}: <code>{_e(v)}</code></li>"
                        for k, v in chain["contracts"].items())
    sample = ""
    if proofs:
        items = "".join(
            f"<li><a download='reading-{p['id']}.json' href='data:application/json;base64,"
            f"{p['base64']}'>reading {p['id']}</a> ({_e(p['name'])}, {_e(p['when'])}): "
            f"{'verified' if p['ok'] else '<span class=warn>NOT verified</span>'}</li>"
            for p in proofs)
        sample = f"<p>Sampled proof bundles, checked by the demo:</p><ul id='proofs'>{items}</ul>"
    return (
        "<p>Every figure above comes from the settlement contract's events. Any reading "
        "can be checked down to the chain: download its proof bundle (per interval, "
        "above) and run the one command:</p>"
        f"<pre><code id='verify-command'>{_e(view['verify_command'])}</code></pre>"
        f"<p class='note'>RPC node: <code>{_e(chain['rpc'] or 'not reachable')}</code>, "
        f"chain id {_e(chain['chain_id'])}. Contracts:</p><ul>{contracts}</ul>{sample}")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
{refresh}<title>{title}</title>
{style}
</head><body>
<header>
<h1>{name}: where the sun went on {day}</h1>
<nav class="days">{nav}</nav>
<p class="note">Energy in kWh, tokens in {symbol}, times in {tz}. Members by the names the
community gave them; on chain they are pseudonymous meter numbers. Tariffs: grid
{retail} per kWh, feed-in {feed_in}, shared {p2p}; on chain {price} per kWh.</p>
{chain_note}
</header>
<main>
<section class="cards" id="cards">{cards}</section>
<h2>Where the energy went</h2>
<div id="sankey" class="chart" role="img"
 aria-label="Energy flows: producers to beneficiaries, the pool and the grid"></div>
<h2>Interval by interval</h2>
<div id="timeline" class="chart short" role="img"
 aria-label="Per settlement interval: energy shared, from the pool, from and to the grid"></div>
<h2>Members</h2>
<div class="scroll">{members}</div>
<div id="members-chart" class="chart short" role="img"
 aria-label="Per member: energy received and sent"></div>
<h2>Settlement, interval by interval</h2>
<div class="scroll">{intervals}</div>
<h2>Check it yourself</h2>
{proofs}
</main>
<footer>Generated {generated} by the community's gateway. {footer}</footer>
<script id="community-data" type="application/json">{data}</script>
{scripts}
</body></html>
"""


def render(view, mode="served", proofs=None):
    """The page (str). ``mode``: ``served`` (links /assets/) or ``inline`` (one offline
    file: ECharts, script and style inside). ``proofs``: sampled proof bundles to embed
    (inline mode: the demo's report)."""
    served = mode == "served"
    c = view["community"]
    cur = c["currency"]
    tariffs = c["tariffs"]
    if served:
        style = "<link rel='stylesheet' href='/assets/community.css'>"
        scripts = ("<script src='/assets/echarts.min.js'></script>\n"
                   "<script src='/assets/community.js'></script>")
        nav = (f"<a href='/community?date={_e(view['previous_day'])}'>&larr; "
               f"{_e(view['previous_day'])}</a><form method='get' action='/community'>"
               f"<input type='date' name='date' value='{_e(view['day'])}'>"
               "<button>Show</button></form>"
               f"<a href='/community?date={_e(view['next_day'])}'>{_e(view['next_day'])} "
               "&rarr;</a><a href='/'>technician's status page</a>"
               f"<a href='/community.json?date={_e(view['day'])}'>data (JSON)</a>")
        refresh = "<meta http-equiv='refresh' content='60'>\n"
        footer = "This page refreshes every minute."
    else:
        style = f"<style>{asset('community.css').decode()}</style>"
        scripts = (f"<script>{asset('echarts.min.js').decode()}</script>\n"
                   f"<script>{asset('community.js').decode()}</script>")
        nav = f"<span class='note'>Report of {_e(view['day'])}, saved as one file.</span>"
        refresh = ""
        footer = "This file holds everything it shows; it needs no network."
    chain = view["chain"]
    chain_note = "" if chain["reachable"] else (
        f"<p class='warn'>The chain node is not reachable ({_e(chain['note'])}): settled "
        "energy and tokens cannot be shown, only what the gateway submitted.</p>")
    return _PAGE.format(
        refresh=refresh, title=_e(f"{c['name']}: {view['day']}"), style=style,
        name=_e(c["name"]), day=_e(view["day"]), nav=nav, symbol=_e(view["token"]["symbol"]),
        tz=_e(c["timezone"]), retail=_e(units.money(tariffs["retail_per_kwh"], cur)),
        feed_in=_e(units.money(tariffs["feed_in_per_kwh"], cur)),
        p2p=_e(units.money(tariffs["p2p_per_kwh"], cur)),
        price=_e(chain["price_per_kwh"] or "-"), chain_note=chain_note, cards=_cards(view),
        members=_members_table(view), intervals=_intervals_table(view, served),
        proofs=_proofs_section(view, proofs), generated=_e(view["generated"]), footer=footer,
        data=_json_for_script(view), scripts=scripts)


def render_readings(view_interval, readings, tz, verify_command):
    """``/community/interval/N``: the readings committed to one interval, each with its
    proof bundle to download."""
    rows = "".join(
        f"<tr><td>{_e(r['name'])}</td><td>{_e(units.local_time(r['t'], tz, seconds=True))}"
        f"</td><td class='n'>{_e('-' if r['p'] is None else str(r['p']) + ' W')}</td>"
        f"<td class='n'>{_e(units.kwh(r['ei']))}</td><td class='n'>{_e(units.kwh(r['ee']))}"
        f"</td><td><a href='/community/proof/{r['id']}.json' download='reading-{r['id']}.json'"
        f">reading-{r['id']}.json</a></td></tr>" for r in readings)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Readings of {_e(view_interval)}</title>"
        "<link rel='stylesheet' href='/assets/community.css'></head><body><main>"
        f"<h1>Readings of {_e(view_interval)}</h1>"
        "<p><a href='javascript:history.back()'>&larr; back</a></p>"
        "<p>Each reading is signed by its meter and committed to the interval's root on "
        "chain. Download a proof bundle, then check it with:</p>"
        f"<pre><code>{_e(verify_command)}</code></pre>"
        "<table id='readings'><tr><th>Member</th><th>Time</th><th>Power</th>"
        "<th>Import counter</th><th>Export counter</th><th>Proof bundle</th></tr>"
        f"{rows or '<tr><td colspan=6>no readings</td></tr>'}</table></main></body></html>")
