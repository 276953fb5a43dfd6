"""Read-only HTTP endpoints of the running gateway (aiohttp).

- ``/``            status page (HTML, no JavaScript, refreshes itself every 10 s)
- ``/status.json`` the same data as JSON (used by ``wattshare gateway status``)
- ``/metrics``     Prometheus text format
- ``/healthz``     "ok" while the service runs
- ``/api/devices/ID``  one device as JSON for tools on another machine (the installer's
  laptop): :func:`gateway.status.device_report` (``registered``, ``enrolled``,
  ``last_reading`` with its signature checked again, ``commissioning``); an unknown id
  answers ``{"registered": false, ...}``, a malformed one 400 with ``error``
"""

import asyncio
import html
import json
import time

from aiohttp import web

from gateway import registry, simclock, status, store
from gateway.errors import InvalidDevice


def _when(ms, now_ms):
    if ms is None:
        return "never"
    age = max(0, (now_ms - ms) // 1000)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))
    if age < 120:
        return f"{stamp} ({age} s ago)"
    if age < 7200:
        return f"{stamp} ({age // 60} min ago)"
    return f"{stamp} ({age // 3600} h ago)"


def _n(value, unit=""):
    return "-" if value is None else f"{value}{unit}"


def _kwh(wh):
    return "-" if wh is None else "%.3f kWh" % (wh / 1000)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3}
tr.revoked{color:#999}
h1{font-size:1.4em}
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="10">
<title>Wattshare gateway</title>
<style>{style}</style></head><body>
<h1>Wattshare gateway</h1>
<table id="summary">{summary}</table>
<h2>Devices</h2>
<table id="devices"><tr><th>Label</th><th>Id</th><th>Model</th><th>Status</th>
<th>Last seen</th><th>Readings</th><th>Last seq</th><th>Power</th><th>Import</th>
<th>Export</th><th>Faults</th><th>Rejects</th></tr>
{devices}</table>
<h2>Rejected requests by reason</h2>
<table id="rejects"><tr><th>Reason</th><th>Count</th></tr>{rejects}</table>
</body></html>
"""


def render_page(snapshot, live):
    """HTML status page from a :class:`gateway.status.GatewayStatus` and live figures."""
    e = html.escape
    now = snapshot.now_ms
    rows = []
    for d in snapshot.devices:
        faults = ", ".join(d.last_fault_flags) if d.last_fault_flags else ""
        fault_cell = (
            f"{d.faults} (last: {e(faults)}, {_when(d.last_fault_t * 1000, now)})"
            if d.faults else "0"
        )
        rejects = ", ".join(f"{e(r)}: {n}" for r, n in sorted(d.rejects.items())) or "0"
        cells = (e(d.label), f"<code>{e(d.id)}</code>", e(d.model), e(d.status),
                 _when(d.last_seen_ms, now), d.readings, _n(d.last_seq), _n(d.last_p, " W"),
                 _kwh(d.last_ei), _kwh(d.last_ee), fault_cell, rejects)
        rows.append(f"<tr class='device {e(d.status)}' data-device='{e(d.id)}'>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    reject_rows = "".join(
        f"<tr class='reject'><td>{e(reason)}</td><td>{n}</td></tr>"
        for reason, n in sorted(snapshot.rejects.items())
    ) or "<tr><td colspan='2'>none</td></tr>"
    summary = [
        ("Readings stored", str(snapshot.readings_total)),
        ("Readings/s (last minute)", f"{snapshot.readings_per_s:.2f}"),
        ("Storage", f"{snapshot.storage_bytes / 1e6:.1f} MB"),
        ("Room left", "unknown" if snapshot.storage_free_bytes is None else
         f"{snapshot.storage_free_bytes / 1e6:.1f} MB, about {snapshot.readings_room:,} "
         "readings"),
        ("Chain", snapshot.chain),
        ("Store queue", f"{live['store_queue']} readings"),
        ("Ingest processes", str(live["ingest_processes"] or "none (in the gateway process)")),
        ("Up since", _when(live["started_ms"], now)),
    ]
    summary_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary)
    return _PAGE.format(
        style=_STYLE,
        summary=summary_rows,
        devices="\n".join(rows) or "<tr><td colspan='12'>no devices</td></tr>",
        rejects=reject_rows,
    )


class StatusHttp:
    """The aiohttp site. ``live()`` returns in-memory figures (queue depths, start time)."""

    def __init__(self, db_path, metrics, live, bind, port):
        self._db_path = db_path
        self._metrics = metrics
        self._live = live
        self._bind = bind
        self._port = port
        self._runner = None
        self.port = None

    def _snapshot(self):
        conn = store.connect(self._db_path, readonly=True)
        try:
            return status.collect(conn, self._db_path, simclock.now_ms())
        finally:
            conn.close()

    async def _page(self, request):
        snapshot = await asyncio.to_thread(self._snapshot)
        return web.Response(text=render_page(snapshot, self._live()), content_type="text/html")

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

    async def start(self):
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/status.json", self._json)
        app.router.add_get("/metrics", self._metrics_text)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/api/devices/{id}", self._device_json)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind, self._port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self):
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
