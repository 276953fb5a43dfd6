"""The gateway's app factory: wires the pieces from a validated config and runs them.

::

    meters --CoAP/UDP--> coap_lean (default) or coap_server (aiocoap), by [coap] front_end
        --CoapRequest--> ingest.Ingest.handle
        -> verifier_pool (worker processes or inline): verify.check_batch  [stateless]
        -> writer process (writer.serve): seq/counter checks, INSERT, group COMMIT  [stateful]
        <- response after COMMIT
    http_status: /, /status.json, /metrics, /healthz
    housekeeping (1 s): flush reject counters, pick up registry changes from the CLI
"""

import asyncio
import gc
import logging
import signal
import time

from gateway import registry, store
from gateway.http_status import StatusHttp
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics
from gateway.verifier_pool import VerifierPool
from gateway.verify import Policy
from gateway.writer import ReadingWriter

log = logging.getLogger("wattshare.gateway")

HOUSEKEEPING_S = 1.0


class Gateway:
    """One running gateway. ``await start()``, then ``await stop()``."""

    def __init__(self, config, http=True):
        self.config = config
        self.started_ms = None
        self.metrics = GatewayMetrics()
        self.writer = None
        self.pool = None
        self.ingest = None
        self.coap = None
        self.http = None
        self._http_enabled = http
        self._registry_conn = None
        self._registry_version = None
        self._housekeeping_task = None

    @property
    def coap_port(self):
        return self.coap.port

    @property
    def http_port(self):
        return self.http.port if self.http else None

    async def start(self):
        cfg = self.config
        self.started_ms = int(time.time() * 1000)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.writer = ReadingWriter(
            cfg.db_path, cfg.ingest.commit_linger_ms / 1000.0, cfg.ingest.commit_max_rows,
            self.metrics,
        )
        await self.writer.start()  # the writer process opens and migrates the database
        self._registry_conn = store.connect(cfg.db_path)
        self.pool = VerifierPool(
            cfg.ingest.worker_count(),
            Policy(cfg.ingest.max_future_skew_s, cfg.ingest.max_age_s),
        )
        await self.pool.start()
        self.ingest = Ingest(
            self.pool, self.writer, self.metrics,
            max_pending=cfg.ingest.max_pending_readings,
            overload_max_age=cfg.ingest.overload_max_age_s,
        )
        self._refresh_registry()
        server_class = coap_server_class(cfg.coap.front_end)
        self.coap = server_class(self.ingest.handle, cfg.coap.bind, cfg.coap.port,
                                 cfg.coap.receive_buffer_bytes, on_drop=self.metrics.dropped.inc)
        await self.coap.start()
        if self._http_enabled:
            self.http = StatusHttp(cfg.db_path, self.metrics, self.live, cfg.http.bind,
                                   cfg.http.port)
            await self.http.start()
        m = self.metrics
        m.add_gauge("wattshare_verify_queue_depth", "Batches waiting for or in verification.",
                    lambda: self.pool.queued)
        m.add_gauge("wattshare_store_queue_depth", "Verified readings waiting for COMMIT.",
                    lambda: self.writer.pending_rows)
        m.add_gauge("wattshare_devices_active", "Registered devices not revoked.",
                    lambda: sum(not c.revoked for c in self.ingest.credentials.values()))
        self._housekeeping_task = asyncio.create_task(self._housekeeping())
        # Everything allocated so far lives as long as the process: keep the collector
        # from scanning it again (long gen-2 pauses dropped datagrams), collect rarely.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        log.info("gateway ready", extra={"fields": {
            "coap": _endpoint(cfg.coap.bind, self.coap_port),
            "coap_front_end": cfg.coap.front_end,
            "http": _endpoint(cfg.http.bind, self.http_port) if self.http else "off",
            "verify_workers": self.pool.workers,
            "devices": len(self.ingest.credentials),
            "db": str(cfg.db_path),
        }})

    def live(self):
        """In-memory figures for the status page."""
        return {
            "verify_queue": self.pool.queued,
            "store_queue": self.writer.pending_rows,
            "started_ms": self.started_ms,
            "accepted_since_start": self.metrics.accepted.total(),
        }

    def _refresh_registry(self):
        version = registry.registry_version(self._registry_conn)
        if version != self._registry_version:
            creds = registry.credentials(self._registry_conn, self.config.ingest.voltage_max_v)
            self.ingest.set_credentials(creds)
            if self._registry_version is not None:
                log.info("device registry reloaded", extra={"fields": {"devices": len(creds)}})
            self._registry_version = version

    async def _housekeeping(self):
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                self.writer.flush_rejects()
                self._refresh_registry()
            except Exception:  # supervisor: keep serving; the next round retries
                log.exception("housekeeping failed")

    async def stop(self):
        if self._housekeeping_task is not None:
            self._housekeeping_task.cancel()
            self._housekeeping_task = None
        if self.coap is not None:
            await self.coap.close()
        if self.http is not None:
            await self.http.close()
        if self.pool is not None:
            await self.pool.close()
        if self.writer is not None:
            await self.writer.close()
        if self._registry_conn is not None:
            self._registry_conn.close()
            self._registry_conn = None
        gc.unfreeze()
        log.info("gateway stopped")


def coap_server_class(front_end):
    """The CoAP front end class for ``[coap] front_end`` (aiocoap is imported only if used)."""
    if front_end == "lean":
        from gateway.coap_lean import LeanCoapServer

        return LeanCoapServer
    if front_end == "aiocoap":
        from gateway.coap_server import CoapServer

        return CoapServer
    raise ValueError(f"unknown CoAP front end {front_end!r}")


def _endpoint(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(config):
    """Run a gateway until SIGTERM or SIGINT."""
    gateway = Gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
        await stop.wait()
    finally:
        await gateway.stop()
