"""Read-only HTTP endpoints of the running gateway (aiohttp).

- ``/``            status page (HTML, no JavaScript, refreshes itself every 10 s)
- ``/status.json`` the same data as JSON (used by ``wattshare gateway status``)
- ``/metrics``     Prometheus text format
- ``/healthz``     "ok" while the service runs
- ``/api/devices/ID``  one device as JSON for tools on another machine (the installer's
  laptop): :func:`gateway.status.device_report` (``registered``, ``enrolled``,
  ``last_reading`` with its signature checked again, ``commissioning``); an unknown id
  answers ``{"registered": false, ...}``, a malformed one 400 with ``error``
- ``/community``   the community page: the day's flows, members, settlement and proofs
  (``?date=YYYY-MM-DD``; :mod:`gateway.community_page`), ``/community.json`` its data,
  ``/community/interval/N`` an interval's readings (``.json``: as JSON),
  ``/community/proof/ID.json`` a reading's proof bundle, ``/assets/NAME`` the page's
  script, style and ECharts
"""

import asyncio
import html
import json
import logging
import threading
import time

from aiohttp import web

from gateway import community_page, registry, simclock, status, store, units
from gateway.errors import GatewayError, InvalidDevice

log = logging.getLogger("wattshare.gateway")
_VIEW_TTL_S = 2.0  # the community page's data is rebuilt at most this often per day


def _when(ms, now_ms, tz=None):
    if ms is None:
        return "never"
    return f"{units.local_time(ms / 1000, tz, seconds=True)} " \
           f"({units.ago((now_ms - ms) // 1000)})"


def _n(value, unit=""):
    return "-" if value is None else f"{value}{unit}"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3}
tr.revoked{color:#999}
tr.stale td{background:#fff3cd}
.alert{color:#b3261e;font-weight:bold}
h1{font-size:1.4em}
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="10">
<title>Wattshare gateway</title>
<style>{style}</style></head><body>
<h1>Wattshare gateway</h1>
<p><a href="/community">Community page</a> (the day's energy and tokens, for members)</p>
<table id="summary">{summary}</table>
<h2>Devices</h2>
<table id="devices"><tr><th>Label</th><th>Id</th><th>Model</th><th>Status</th>
<th>Last seen</th><th>Readings</th><th>Last seq</th><th>Power</th><th>Import</th>
<th>Export</th><th>Faults</th><th>Rejects</th><th>On-chain meter</th><th>Last settled</th></tr>
{devices}</table>
<h2>Chain</h2>
<table id="chain">{chain}</table>
<h3>Recent gaps (meters left out of an interval, and why)</h3>
<table id="gaps"><tr><th>Interval</th><th>Device</th><th>Why</th></tr>{gaps}</table>
<h2>Rejected requests by reason</h2>
<table id="rejects"><tr><th>Reason</th><th>Count</th></tr>{rejects}</table>
</body></html>
"""


def render_page(snapshot, live, tz=None):
    """HTML status page from a :class:`gateway.status.GatewayStatus` and live figures;
    times in ``tz`` (the community's zone; None = this machine's)."""
    e = html.escape
    now = snapshot.now_ms
    chain = snapshot.chain
    length = chain.interval_s
    rows = []
    for d in snapshot.devices:
        faults = ", ".join(d.last_fault_flags) if d.last_fault_flags else ""
        fault_cell = (
            f"{d.faults} (last: {e(faults)}, {_when(d.last_fault_t * 1000, now, tz)})"
            if d.faults else "0"
        )
        rejects = ", ".join(f"{e(r)}: {n}" for r, n in sorted(d.rejects.items()))
        reject_cell = f"<span class='alert'>{rejects}</span>" if rejects else "0"
        seen = _when(d.last_seen_ms, now, tz)
        if d.stale:
            seen = f"<span class='alert'>STALE</span> {seen}"
        settled = ("-" if d.last_settled_interval is None else
                   f"{d.last_settled_interval} "
                   f"({units.interval_span(d.last_settled_interval, length, tz)})")
        cells = (e(d.label), f"<code>{e(d.id)}</code>", e(d.model), e(d.status),
                 seen, d.readings, _n(d.last_seq), _n(d.last_p, " W"),
                 units.kwh(d.last_ei), units.kwh(d.last_ee), fault_cell, reject_cell,
                 _n(d.meter_index) if d.meter_index is not None else
                 ("not on chain" if chain.contract else "-"), e(settled))
        classes = f"device {e(d.status)}" + (" stale" if d.stale else "") + (
            " rejecting" if d.rejects else "")
        rows.append(f"<tr class='{classes}' data-device='{e(d.id)}'>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    reject_rows = "".join(
        f"<tr class='reject'><td>{e(reason)}</td><td class='alert'>{n}</td></tr>"
        for reason, n in sorted(snapshot.rejects.items())
    ) or "<tr><td colspan='2'>none</td></tr>"
    summary = [
        ("Readings stored", str(snapshot.readings_total)),
        ("Readings/s (last minute)", f"{snapshot.readings_per_s:.2f}"),
        ("Storage", f"{snapshot.storage_bytes / 1e6:.1f} MB"),
        ("Room left", "unknown" if snapshot.storage_free_bytes is None else
         f"{snapshot.storage_free_bytes / 1e6:.1f} MB, about {snapshot.readings_room:,} "
         "readings"),
        ("Chain", chain.summary),
        ("Store queue", f"{live['store_queue']} readings"),
        ("Ingest processes", str(live["ingest_processes"] or "none (in the gateway process)")),
        ("Up since", _when(live["started_ms"], now, tz)),
    ]
    summary_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary)
    last = chain.last_confirmed_interval
    chain_rows = [
        ("Settlement contract", chain.contract or "not deployed (wattshare chain deploy)"),
        ("Node", chain.rpc_url or "-"),
        ("Meters on chain", str(chain.mapped_meters)),
        ("Last confirmed interval", "-" if last is None else
         f"{last} ({units.interval_span(last, length, tz)}), tx {chain.last_confirmed_tx}"),
        ("Outbox", ", ".join(f"{k} {v}" for k, v in sorted(chain.outbox.items())) or "empty"),
    ]
    chain_html = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in chain_rows)
    chain_html += "".join(
        f"<tr class='failed'><th class='alert'>FAILED interval {f['interval']}</th>"
        f"<td>{e(f['error'] or '')} (wattshare chain retry --interval {f['interval']})</td>"
        "</tr>" for f in chain.failed)
    from gateway.chain.batcher import gap_reason  # eth_abi, not web3: imported when used

    gap_rows = "".join(
        f"<tr class='gap'><td>{g['interval']} ({e(units.interval_span(g['interval'], length, tz))})"
        f"</td><td>{e(g['label'])}</td><td>{e(gap_reason(g['reason']))}</td></tr>"
        for g in chain.gaps[:50]) or "<tr><td colspan='3'>none</td></tr>"
    return _PAGE.format(
        style=_STYLE,
        summary=summary_rows,
        devices="\n".join(rows) or "<tr><td colspan='14'>no devices</td></tr>",
        chain=chain_html, gaps=gap_rows,
        rejects=reject_rows,
    )


class StatusHttp:
    """The aiohttp site. ``live()`` returns in-memory figures (queue depths, start time).
    ``config``: the gateway's configuration (the community page and the chain link need
    it; without it they answer 404)."""

    def __init__(self, db_path, metrics, live, bind, port, config=None):
        self._db_path = db_path
        self._metrics = metrics
        self._live = live
        self._bind = bind
        self._port = port
        self._config = config
        self._runner = None
        self.port = None
        self._chain_lock = threading.Lock()  # one chain reader at a time (to_thread)
        self._chain_view = None
        self._views = {}  # day -> (monotonic time, view)

    def _snapshot(self):
        conn = store.connect(self._db_path, readonly=True)
        try:
            return status.collect(conn, self._db_path, simclock.now_ms(), self._config)
        finally:
            conn.close()

    async def _page(self, request):
        snapshot = await asyncio.to_thread(self._snapshot)
        tz = self._config.community.tz if self._config is not None else None
        return web.Response(text=render_page(snapshot, self._live(), tz),
                            content_type="text/html")

    async def _json(self, request):
        snapshot = await asyncio.to_thread(self._snapshot)
        body = dict(snapshot.as_json(), live=self._live())
        return web.Response(text=json.dumps(body), content_type="application/json")

    def _device(self, device_id):
        conn = store.connect(self._db_path, readonly=True)
        try:
            return status.device_report(conn, device_id, simclock.now_ms())
        finally:
            conn.close()

    async def _device_json(self, request):
        try:
            device_id = registry.parse_device_id(request.match_info["id"])
        except InvalidDevice as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(await asyncio.to_thread(self._device, device_id))

    async def _metrics_text(self, request):
        return web.Response(
            body=self._metrics.render().encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _health(self, request):
        return web.Response(text="ok\n")

    # ---- the community page

    def _chain(self):
        """(ChainView or None, why not). Connected once, again after a node error."""
        from gateway import community
        from gateway.chain import node
        from gateway.chain.errors import ChainError

        cfg = self._config
        if not cfg.chain.contract:
            return None, "no settlement contract yet (wattshare chain deploy)"
        if self._chain_view is None:
            try:
                port = node.live_port(cfg)
            except ChainError as e:
                return None, str(e)
            if port is None:
                return None, "the embedded chain node is not running (wattshare chain run)"
            try:
                self._chain_view = community.ChainView(
                    port, cfg.chain.contract, community.deployment_block(cfg.data_dir))
            except ChainError as e:
                return None, str(e)
        return self._chain_view, None

    def _community_view(self, day):
        from gateway import community
        from gateway.chain.errors import ChainError

        with self._chain_lock:
            conn = store.connect(self._db_path, readonly=True)
            try:
                # what the chain link has done: a new confirmation makes a new view
                version = conn.execute("SELECT count(*), max(updated_at) FROM chain_outbox "
                                       "WHERE state = 'confirmed'").fetchone()
                cached = self._views.get(day)
                if cached and cached[2] == version and \
                        time.monotonic() - cached[0] < _VIEW_TTL_S:
                    return cached[1]
                chain, note = self._chain()
                try:
                    view = community.day_view(conn, self._config, chain, day, rpc_note=note)
                except ChainError as e:  # the node went away: show the gateway's side
                    self._chain_view = None
                    view = community.day_view(conn, self._config, None, day, rpc_note=str(e))
            finally:
                conn.close()
            if len(self._views) > 32:
                self._views.clear()
            self._views[day] = (time.monotonic(), view, version)
            return view

    async def _view_or_error(self, request):
        if self._config is None:
            raise web.HTTPNotFound(text="the community page needs the gateway's config\n")
        day = request.query.get("date") or None
        try:
            return await asyncio.to_thread(self._community_view, day)
        except GatewayError as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from None

    async def _community(self, request):
        view = await self._view_or_error(request)
        try:
            page = community_page.render(view, "served")
        except community_page.AssetMissing as e:
            raise web.HTTPServiceUnavailable(text=f"{e}\n") from None
        return web.Response(text=page, content_type="text/html")

    async def _community_json(self, request):
        view = await self._view_or_error(request)
        return web.Response(text=json.dumps(view), content_type="application/json")

    def _readings(self, interval):
        from gateway import community

        cfg = self._config
        conn = store.connect(self._db_path, readonly=True)
        try:
            return community.interval_readings(conn, cfg.chain.contract, interval,
                                                cfg.chain.interval_s)
        finally:
            conn.close()

    async def _interval_json(self, request):
        if self._config is None or not self._config.chain.contract:
            raise web.HTTPNotFound(text="no settlement contract yet\n")
        readings = await asyncio.to_thread(self._readings, int(request.match_info["interval"]))
        return web.Response(text=json.dumps(readings), content_type="application/json")

    async def _interval(self, request):
        from gateway import units

        if self._config is None or not self._config.chain.contract:
            raise web.HTTPNotFound(text="no settlement contract yet\n")
        try:
            interval = int(request.match_info["interval"])
        except ValueError:
            raise web.HTTPBadRequest(text="interval: a whole number\n") from None
        cfg = self._config
        readings = await asyncio.to_thread(self._readings, interval)
        chain, _ = await asyncio.to_thread(self._chain)
        rpc = chain.port.url if chain is not None else "URL-OF-A-NODE"
        label = units.interval_span(interval, cfg.chain.interval_s, cfg.community.tz)
        return web.Response(text=community_page.render_readings(
            label, readings, cfg.community.tz,
            f"wattshare verify --bundle reading-ID.json --rpc {rpc}"), content_type="text/html")

    def _bundle(self, reading_id):
        from gateway.chain import bundle

        cfg = self._config
        conn = store.connect(self._db_path, readonly=True)
        try:
            # the registry is read from the settlement contract's proven code by `verify`
            return bundle.export_bundle(conn, reading_id, cfg.chain.chain_id)
        finally:
            conn.close()

    async def _proof(self, request):
        if self._config is None:
            raise web.HTTPNotFound(text="no configuration\n")
        try:
            reading_id = int(request.match_info["reading"])
        except ValueError:
            raise web.HTTPBadRequest(text="reading: a whole number\n") from None
        try:
            data = await asyncio.to_thread(self._bundle, reading_id)
        except GatewayError as e:
            raise web.HTTPNotFound(text=f"{e}\n") from None
        return web.Response(
            text=json.dumps(data, indent=1) + "\n", content_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="reading-{reading_id}.json"'})

    async def _asset(self, request):
        name = request.match_info["name"]
        if name not in community_page.ASSETS:
            raise web.HTTPNotFound()
        try:
            body = await asyncio.to_thread(community_page.asset, name)
        except community_page.AssetMissing as e:
            log.error("page asset missing", extra={"fields": {"error": str(e)}})
            raise web.HTTPNotFound(text=f"{e}\n") from None
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return web.Response(body=body, headers={"Content-Type": f"{kind}; charset=utf-8",
                                                "Cache-Control": "max-age=3600"})

    async def start(self):
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/status.json", self._json)
        app.router.add_get("/metrics", self._metrics_text)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/api/devices/{id}", self._device_json)
        app.router.add_get("/community", self._community)
        app.router.add_get("/community.json", self._community_json)
        app.router.add_get(r"/community/interval/{interval:\d+}.json", self._interval_json)
        app.router.add_get(r"/community/interval/{interval:\d+}", self._interval)
        app.router.add_get("/community/proof/{reading}.json", self._proof)
        app.router.add_get("/assets/{name}", self._asset)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind, self._port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self):
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
