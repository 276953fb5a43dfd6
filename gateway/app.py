"""The gateway's app factory: wires the pieces from a validated config and runs them.

::

    meters --CoAP/UDP--> ingest process 1..N, or the gateway process itself (processes = 0):
        coap_lean (default) or coap_server (aiocoap), by [coap] front_end
        --CoapRequest--> ingest.Ingest.handle
        -> verify.check_batch  [stateless: decode, ES256, policy]
        -> writer.ReadingWriter: seq/counter checks, INSERT, group COMMIT  [stateful]
        <- response after COMMIT
    gateway process: http_status (/, /status.json, /metrics, /healthz), supervision,
        housekeeping (1 s): flush reject counters, pick up registry changes from the CLI

With ``[ingest] processes = N`` (default: one per core) every ingest process has its own
UDP socket on the CoAP port (``SO_REUSEPORT``: the kernel spreads the meters over them by
source address, so one meter's requests stay in one process) and does everything for
its requests in its own event loop: nothing is handed between processes on the way from
datagram to COMMIT (each hand-over cost more CPU than it saved, docs/gateway.md). The
processes share the database (see :mod:`gateway.writer`) and send their metrics to the
gateway process once a second. A process that dies is started again; its meters
retransmit what was not answered.
"""

import asyncio
import errno
import gc
import logging
import signal
import socket

from wattcore import exchange

from gateway import ipc, registry, simclock, store
from gateway.coap_lean import bind_udp
from gateway.commissioning import CommissioningResource
from gateway.enrolment import EnrolmentResource
from gateway.errors import GatewayError
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics
from gateway.verify import Policy
from gateway.writer import ReadingWriter

log = logging.getLogger("wattshare.gateway")

HOUSEKEEPING_S = 1.0
START_TIMEOUT_S = 60.0


def max_per_source(configured):
    """``[coap] max_datagrams_per_source`` for this run. The limit is per second of the
    devices' time: under a simulated clock (``WATTSHARE_SIM_CLOCK``: accelerated runs,
    every emulated device on 127.0.0.1) their seconds pass ``speed`` times faster, so the
    limit per real second is ``speed`` times higher. 0 (no limit) stays 0."""
    return min(int(configured * simclock.speed()), 1 << 20)


def commit_window_s(configured_ms):
    """``[ingest] commit_window_ms`` for this run, in real seconds. A device waits that
    long for its acknowledgement on top of the commit, so the window is in the devices'
    time too: under a simulated clock ``speed`` times shorter (at 300x a device
    retransmits after 7 real ms: a 250 ms window left accelerated devices without answers
    whenever the writer chose to wait)."""
    return configured_ms / 1000.0 / simclock.speed()

class IngestService:
    """Receive, verify and store, in this process: the CoAP front end, the
    :class:`~gateway.ingest.Ingest` handler, the writer and the registry it checks
    against. ``sock``: an already bound UDP socket to serve (lean front end only)."""

    def __init__(self, config, metrics, sock=None):
        self.config = config
        self.metrics = metrics
        self.sock = sock
        self.writer = None
        self.ingest = None
        self.coap = None
        self._registry_conn = None
        self._registry_version = None

    async def start(self):
        cfg = self.config
        self.writer = ReadingWriter(
            cfg.db_path, cfg.ingest.commit_linger_ms / 1000.0, cfg.ingest.commit_max_rows,
            self.metrics, window_s=commit_window_s(cfg.ingest.commit_window_ms),
        )
        self.writer.start()  # opens and migrates the database
        self._registry_conn = store.connect(cfg.db_path)
        self.ingest = Ingest(
            Policy(cfg.ingest.max_future_skew_s, cfg.ingest.max_age_s), self.writer,
            self.metrics, max_pending=cfg.ingest.max_pending_readings,
            overload_max_age=cfg.ingest.overload_max_age_s,
        )
        self.ingest.routes[(exchange.PATH_ENROL,)] = EnrolmentResource(
            cfg.db_path, self.metrics, on_registered=self.refresh_registry).handle
        self.ingest.routes[(exchange.PATH_COMMISSION,)] = CommissioningResource(
            cfg.db_path, self.metrics).handle
        self.refresh_registry()
        server_class = coap_server_class(cfg.coap.front_end)
        extra = {"sock": self.sock} if self.sock is not None else {}
        if cfg.coap.front_end == "lean":
            extra.update(begin=self.ingest.begin, finish=self.ingest.finish,
                         max_per_source=max_per_source(cfg.coap.max_datagrams_per_source),
                         on_limit=self.metrics.limited.inc)
        self.coap = server_class(self.ingest.handle, cfg.coap.bind, cfg.coap.port,
                                 cfg.coap.receive_buffer_bytes, on_drop=self.metrics.dropped.inc,
                                 **extra)
        try:
            await self.coap.start()
        except OSError as e:
            raise port_error(cfg, e) from None
        if cfg.coap.front_end == "lean":
            # while a small group waits for its commit window, the datagrams wait in the
            # socket: read in one go when it ends (gateway.writer, "window")
            self.writer.on_window = self.coap.pause_reading

    def refresh_registry(self):
        version = registry.registry_version(self._registry_conn)
        if version != self._registry_version:
            creds = registry.credentials(self._registry_conn, self.config.ingest.voltage_max_v)
            self.ingest.set_credentials(creds)
            if self._registry_version is not None:
                log.info("device registry reloaded", extra={"fields": {"devices": len(creds)}})
            self._registry_version = version

    def housekeeping(self):
        self.writer.flush_rejects()
        self.refresh_registry()

    async def stop(self):
        if self.coap is not None:
            await self.coap.close()  # answers what is in the handler, then stops
            self.coap = None
        if self.writer is not None:
            await self.writer.close()
            self.writer = None
        if self._registry_conn is not None:
            self._registry_conn.close()
            self._registry_conn = None


class _Child:
    def __init__(self, index):
        self.index = index
        self.channel = None
        self.ready = None  # future: started (or failed)
        self.state = None  # the last metrics the process sent
        self.pending_rows = 0


class IngestProcesses:
    """``count`` ingest processes serving one UDP port (``SO_REUSEPORT``), supervised:
    each is started again if it dies. Their metrics are summed in :meth:`metrics`."""

    def __init__(self, config, count):
        self.config = config
        self.port = None
        self.restarts = 0
        self._children = [_Child(i) for i in range(count)]
        self._retired = GatewayMetrics()  # the counts of processes that have exited
        self._closing = False

    @property
    def processes(self):
        return [c.channel.process for c in self._children if c.channel is not None]

    @property
    def pending_rows(self):
        return sum(c.pending_rows for c in self._children if c.channel is not None)

    async def start(self):
        # The first socket resolves port 0 and reports a taken port here, in the gateway.
        # SO_REUSEPORT would let this gateway join the sockets of another one running on
        # the same port (meters split between two databases): a plain bind must succeed
        # first, which it does only if nothing at all holds the port.
        cfg = self.config.coap
        try:
            if cfg.port:
                bind_udp(cfg.bind, cfg.port).close()
            first = bind_udp(cfg.bind, cfg.port, cfg.receive_buffer_bytes, reuse_port=True)
        except OSError as e:
            raise port_error(self.config, e) from None
        self.port = first.getsockname()[1]
        try:
            for child in self._children:
                await self._start(child, first if child.index == 0 else None)
        except BaseException:
            await self.close()
            raise

    async def _start(self, child, sock=None):
        cfg = self.config.coap
        if sock is None:
            sock = bind_udp(cfg.bind, self.port, cfg.receive_buffer_bytes, reuse_port=True)
        child.ready = asyncio.get_running_loop().create_future()
        try:
            child.channel = await ipc.Channel.start(
                "ingest", [sock.fileno()],
                lambda message, c=child: self._on_message(c, message),
                lambda c=child: self._on_lost(c),
                pass_fds=(sock.fileno(),),
            )
        finally:
            sock.close()  # the child has its own copy
        child.channel.send(("start", self.config))
        try:
            await asyncio.wait_for(asyncio.shield(child.ready), START_TIMEOUT_S)
        except TimeoutError:
            child.channel.kill()
            raise GatewayError(f"ingest process {child.index} did not start within "
                               f"{START_TIMEOUT_S:g} s") from None

    def _on_message(self, child, message):
        kind = message[0]
        if kind == "ready":
            if not child.ready.done():
                child.ready.set_result(None)
        elif kind == "failed":
            if not child.ready.done():
                child.ready.set_exception(GatewayError(message[1]))
        elif kind == "metrics":
            _, child.state, child.pending_rows = message

    def _on_lost(self, child):
        child.channel = None
        if child.state is not None:
            self._retired.absorb(child.state)
            child.state = None
        child.pending_rows = 0
        if not child.ready.done():  # start-up failed: whoever is starting it handles that
            child.ready.set_exception(GatewayError(
                f"ingest process {child.index} exited at start-up"))
            return
        if self._closing:
            return
        log.error("ingest process exited; restarting it", extra={"fields": {
            "process": child.index}})
        self.restarts += 1
        asyncio.get_running_loop().create_task(self._restart(child))

    async def _restart(self, child):
        while not self._closing:
            try:
                await self._start(child)
                return
            except (GatewayError, OSError):
                log.exception("ingest process could not restart")
                await asyncio.sleep(1.0)

    def states(self):
        """The last metrics state each running process sent."""
        return [c.state for c in self._children if c.channel is not None and c.state]

    def metrics(self):
        """The counts of every ingest process, past and present, summed."""
        total = GatewayMetrics()
        total.absorb(self._retired.state())
        for child in self._children:
            if child.state is not None:
                total.absorb(child.state)
        return total

    async def close(self):
        """Close the pipes: each process answers what it has, commits and exits."""
        self._closing = True
        await asyncio.gather(*[c.channel.stop() for c in self._children if c.channel])
        for child in self._children:
            child.channel = None


class Gateway:
    """One running gateway. ``await start()``, then ``await stop()``."""

    def __init__(self, config, http=True):
        self.config = config
        self.started_ms = None
        self.service = None  # IngestService, when ingest runs in this process
        self.processes = None  # IngestProcesses, when it runs in ingest processes
        self.http = None
        self._metrics = GatewayMetrics()
        self._http_enabled = http
        self._registry_conn = None
        self._housekeeping_task = None

    @property
    def coap(self):
        return self.service.coap if self.service else None

    @property
    def writer(self):
        return self.service.writer if self.service else None

    @property
    def coap_port(self):
        return self.service.coap.port if self.service else self.processes.port

    @property
    def http_port(self):
        return self.http.port if self.http else None

    @property
    def metrics(self):
        """The gateway's metrics; with ingest processes, their last reports summed."""
        if self.processes is None:
            return self._metrics
        total = self.processes.metrics()
        total.gauges = self._metrics.gauges
        return total

    def ingest_process_count(self):
        if self.config.coap.front_end != "lean":
            return 0  # aiocoap binds its own socket: it serves from this process
        return self.config.ingest.process_count()

    async def start(self):
        cfg = self.config
        self.started_ms = simclock.now_ms()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if self._http_enabled:
            # imported before the CoAP front end starts (importing aiohttp once aiocoap
            # serves left aiocoap deaf: no answer to any request of a `gateway run`
            # process), and only here: the ingest processes never load aiohttp (~15 MB each)
            from gateway.http_status import StatusHttp
        count = self.ingest_process_count()
        if count:
            store.open_store(cfg.db_path).close()  # migrate once, before the processes
            self.processes = IngestProcesses(cfg, count)
            await self.processes.start()
        else:
            self.service = IngestService(cfg, self._metrics)
            await self.service.start()
        self._registry_conn = store.connect(cfg.db_path, readonly=True)
        if self._http_enabled:
            http = StatusHttp(cfg.db_path, _MetricsView(self), self.live, cfg.http.bind,
                              cfg.http.port, config=cfg)
            try:
                await http.start()
            except OSError as e:
                await http.close()
                raise port_error(cfg, e, "http") from None
            self.http = http
        m = self._metrics
        m.add_gauge("wattshare_store_queue_depth", "Verified readings waiting for COMMIT.",
                    self.pending_rows)
        m.add_gauge("wattshare_devices_active", "Registered devices not revoked.",
                    lambda: registry.active_count(self._registry_conn))
        m.add_gauge("wattshare_ingest_processes", "Ingest processes running (0: ingest runs "
                    "in the gateway process).", self.running_processes)
        self._housekeeping_task = asyncio.create_task(self._housekeeping())
        _freeze_startup_objects()
        log.info("gateway ready", extra={"fields": {
            "coap": _endpoint(cfg.coap.bind, self.coap_port),
            "coap_front_end": cfg.coap.front_end,
            "http": _endpoint(cfg.http.bind, self.http_port) if self.http else "off",
            "ingest_processes": count,
            "devices": registry.active_count(self._registry_conn),
            "db": str(cfg.db_path),
            **_sim_clock_field(),
        }})
        if registry.active_count(self._registry_conn) == 0:
            log.warning("no devices registered: every reading is refused (4.03 "
                        "unknown-device) until one is added with `wattshare device add`")

    def pending_rows(self):
        return self.service.writer.pending_rows if self.service else self.processes.pending_rows

    def running_processes(self):
        return len(self.processes.processes) if self.processes else 0

    def live(self):
        """In-memory figures for the status page."""
        return {
            "store_queue": self.pending_rows(),
            "ingest_processes": self.running_processes(),
            "started_ms": self.started_ms,
            "accepted_since_start": self.metrics.accepted.total(),
        }

    async def _housekeeping(self):
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            if self.service is None:
                continue  # the ingest processes keep house themselves
            try:
                self.service.housekeeping()
            except Exception:  # supervisor: keep serving; the next round retries
                log.exception("housekeeping failed")

    async def stop(self):
        if self._housekeeping_task is not None:
            self._housekeeping_task.cancel()
            self._housekeeping_task = None
        if self.http is not None:
            await self.http.close()
        if self.service is not None:
            await self.service.stop()
        if self.processes is not None:
            await self.processes.close()
        if self._registry_conn is not None:
            self._registry_conn.close()
            self._registry_conn = None
        gc.unfreeze()
        log.info("gateway stopped")


class _MetricsView:
    # What the status site renders at /metrics: the gateway's metrics at that moment.
    def __init__(self, gateway):
        self._gateway = gateway

    def render(self):
        return self._gateway.metrics.render()


def coap_server_class(front_end):
    """The CoAP front end class for ``[coap] front_end`` (aiocoap is imported only if used)."""
    if front_end == "lean":
        from gateway.coap_lean import LeanCoapServer

        return LeanCoapServer
    if front_end == "aiocoap":
        from gateway.coap_server import CoapServer

        return CoapServer
    raise ValueError(f"unknown CoAP front end {front_end!r}")


def port_error(config, error, section="coap"):
    """A :class:`GatewayError` for a socket of ``[coap]`` or ``[http]`` that cannot be bound."""
    listen = getattr(config, section)
    where = _endpoint(listen.bind, listen.port)
    hint = (f" (is another gateway running? else choose [{section}] port)"
            if error.errno == errno.EADDRINUSE else "")
    return GatewayError(f"{config.path}: [{section}] {where}: cannot bind: "
                        f"{error.strerror or error}{hint}")


def _freeze_startup_objects():
    # Everything allocated so far lives as long as the process: keep the collector from
    # scanning it again (long gen-2 pauses dropped datagrams), and collect rarely
    # (checking a batch allocates a lot).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _sim_clock_field():
    clock = simclock.active()
    return {} if clock is None else {"sim_clock": clock.value()}


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


async def serve_ingest_process(control, udp_fd):
    """An ingest process (``python -m gateway.worker ingest``): serve the UDP socket
    ``udp_fd`` with the config the gateway sends over ``control``, report metrics once a
    second, and stop (answering what is in hand, committing) when the pipe closes."""
    from gateway import logs

    loop = asyncio.get_running_loop()
    messages = asyncio.Queue()
    closed = asyncio.Event()
    transport, _ = await loop.connect_accepted_socket(
        lambda: ipc.FrameProtocol(messages.put_nowait, closed.set), control)
    udp = socket.socket(fileno=udp_fd)
    got = asyncio.ensure_future(messages.get())
    await asyncio.wait([got, asyncio.ensure_future(closed.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    if not got.done():
        udp.close()
        return 0
    _, config = got.result()
    logs.setup(config.log.level, config.log.format)
    metrics = GatewayMetrics()
    service = IngestService(config, metrics, sock=udp)
    try:
        await service.start()
    except (GatewayError, OSError) as e:
        transport.write(ipc.encode(("failed", str(e))))
        await service.stop()
        return 1
    transport.write(ipc.encode(("ready",)))
    _freeze_startup_objects()
    try:
        while not closed.is_set():
            try:
                await asyncio.wait_for(closed.wait(), HOUSEKEEPING_S)
            except TimeoutError:
                pass
            try:
                service.housekeeping()
            except Exception:  # keep serving; the next round retries
                log.exception("housekeeping failed")
            if not transport.is_closing():
                transport.write(ipc.encode(("metrics", metrics.state(),
                                            service.writer.pending_rows)))
    finally:
        await service.stop()
    return 0
