"""A seeded userspace UDP impairment proxy: a lossy network between devices and gateway.

Kernel netem is not available on these machines, so the lossy-network scenario puts this
between the devices and the gateway. Devices send to the proxy's ``listen`` address;
each device (client address) gets its own socket towards ``upstream``, as behind a NAT,
so the gateway sees one source port per device and its answers find their way back.

Every datagram, in both directions, goes through one :class:`Impairment`:

- ``loss``: dropped;
- ``duplicate``: sent twice (the copy a little later);
- ``reorder``: held back until the next datagram of the same flow and direction has
  gone out, then sent right after it (released after ``hold_ms`` if none comes);
- ``delay_ms`` (lo, hi): each datagram waits a uniform random time in that range.

Decisions come from one random stream per direction (``random.Random(f"{seed}:up")``,
``...:down``), four draws per datagram whatever the outcome: the same seed and the
same datagram order give the same impairments. :attr:`LossyProxy.stats` counts what
was done, per direction (``up``: device to gateway, ``down``: gateway to device).

By hand::

    python -m hil_tests.lossy_proxy --listen 127.0.0.1:5684 --upstream 127.0.0.1:5683 \\
        --loss 0.3 --duplicate 0.05 --reorder 0.05 --delay-ms 0 20 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass

UP, DOWN = "up", "down"
DIRECTIONS = (UP, DOWN)
# every counter exists from the start (readers in other threads never see a key appear)
# held: held back to be overtaken; reordered: of those, overtaken (the rest go out late)
COUNTERS = ("received", "dropped", "duplicated", "held", "reordered", "delayed", "sent",
            "send_failed")
_MAX_DATAGRAM = 65535
_DUPLICATE_GAP_S = 0.002  # the copy follows the original this much later


@dataclass(frozen=True)
class Impairment:
    """What happens to datagrams in one direction; rates are probabilities per datagram."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_ms: tuple[float, float] = (0.0, 0.0)
    hold_ms: float = 50.0  # longest a reordered datagram waits for one to overtake it

    def __post_init__(self):
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} = {value}: a probability, in 0..1")
        lo, hi = self.delay_ms
        if not 0.0 <= lo <= hi:
            raise ValueError(f"delay_ms = {self.delay_ms}: needs 0 <= lo <= hi")
        if self.hold_ms <= 0:
            raise ValueError(f"hold_ms = {self.hold_ms}: must be > 0")


@dataclass(frozen=True)
class Decision:
    """What the proxy does with one datagram."""

    drop: bool
    copies: int  # 1, or 2 when duplicated
    hold: bool  # reorder: wait for the next datagram to overtake
    delay_s: float


class Impairer:
    """The seeded decisions of one direction, sans-IO: ``decide()`` per datagram."""

    def __init__(self, impairment: Impairment, seed: int, direction: str):
        self.impairment = impairment
        self._rng = random.Random(f"{seed}:{direction}")

    def decide(self) -> Decision:
        imp, rng = self.impairment, self._rng
        # always four draws, so one outcome never shifts the stream of the next datagrams
        drop = rng.random() < imp.loss
        duplicate = rng.random() < imp.duplicate
        hold = rng.random() < imp.reorder
        lo, hi = imp.delay_ms
        delay_s = (lo + (hi - lo) * rng.random()) / 1000.0
        if drop:
            return Decision(True, 0, False, 0.0)
        return Decision(False, 2 if duplicate else 1, hold, delay_s)


class _Flow:
    """One client (device) address and its own socket towards the upstream."""

    def __init__(self, client: tuple[str, int], sock: socket.socket):
        self.client = client
        self.sock = sock
        # per direction: a datagram held back for reordering, and its release timer
        self.held: dict[str, tuple[bytes, int, asyncio.TimerHandle] | None] = {
            UP: None, DOWN: None}


class LossyProxy:
    """UDP proxy from ``listen`` to ``upstream`` with seeded impairments both ways.

    ``up`` applies to datagrams from the devices, ``down`` to the gateway's answers
    (``down`` defaults to ``up``). Start it inside a running event loop with
    :meth:`start`, or in a thread of its own with :class:`ProxyThread`.
    """

    def __init__(self, upstream: tuple[str, int], up: Impairment,
                 down: Impairment | None = None, seed: int = 0,
                 listen: tuple[str, int] = ("127.0.0.1", 0)):
        self.upstream = upstream
        self.listen = listen
        self.seed = seed
        self.impairers = {UP: Impairer(up, seed, UP),
                          DOWN: Impairer(down if down is not None else up, seed, DOWN)}
        self.stats: dict[str, Counter[str]] = {d: Counter({k: 0 for k in COUNTERS})
                                               for d in DIRECTIONS}
        self._flows: dict[tuple[str, int], _Flow] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where devices send (the bound listen address)."""
        assert self._sock is not None, "start() the proxy first"
        return self._sock.getsockname()[:2]

    async def start(self) -> LossyProxy:
        self._loop = asyncio.get_running_loop()
        self._sock = self._udp_socket()
        self._sock.bind(self.listen)
        self._loop.add_reader(self._sock.fileno(), self._from_clients)
        return self

    def close(self) -> None:
        if self._loop is None:
            return
        for flow in self._flows.values():
            for held in flow.held.values():
                if held is not None:
                    held[2].cancel()
            self._loop.remove_reader(flow.sock.fileno())
            flow.sock.close()
        self._flows.clear()
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def summary(self) -> str:
        """One line per direction, e.g. ``up: received 120, dropped 37, ...``."""
        return "; ".join(f"{d}: " + ", ".join(f"{k} {self.stats[d][k]}" for k in COUNTERS)
                         for d in DIRECTIONS)

    # ---- I/O ------------------------------------------------------------------------

    @staticmethod
    def _udp_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock

    def _from_clients(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data, client = self._sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable reported on the socket
                continue
            flow = self._flows.get(client)
            if flow is None:
                flow = self._new_flow(client)
            self._impair(UP, flow, data)

    def _new_flow(self, client: tuple[str, int]) -> _Flow:
        assert self._loop is not None
        sock = self._udp_socket()
        sock.bind((self.listen[0], 0))
        sock.connect(self.upstream)
        flow = _Flow(client, sock)
        self._flows[client] = flow
        self._loop.add_reader(sock.fileno(), self._from_upstream, flow)
        return flow

    def _from_upstream(self, flow: _Flow) -> None:
        while True:
            try:
                data = flow.sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the gateway's port is closed (it is down): nothing came
                continue
            self._impair(DOWN, flow, data)

    def _send(self, direction: str, flow: _Flow, data: bytes) -> None:
        try:
            if direction == UP:
                flow.sock.send(data)
            elif self._sock is not None:
                self._sock.sendto(data, flow.client)
            self.stats[direction]["sent"] += 1
        except OSError:  # a full buffer or a closed peer: lost, as on a network
            self.stats[direction]["send_failed"] += 1

    # ---- impairments ------------------------------------------------------------------

    def _impair(self, direction: str, flow: _Flow, data: bytes) -> None:
        assert self._loop is not None
        stats = self.stats[direction]
        stats["received"] += 1
        decision = self.impairers[direction].decide()
        if decision.drop:
            stats["dropped"] += 1
            return
        if decision.copies > 1:
            stats["duplicated"] += 1
        if decision.delay_s > 0:
            stats["delayed"] += 1
            self._loop.call_later(decision.delay_s, self._release, direction, flow, data,
                                  decision)
        else:  # at once: timers due at the same moment may fire in any order
            self._release(direction, flow, data, decision)

    def _release(self, direction: str, flow: _Flow, data: bytes, decision: Decision) -> None:
        """After its delay: hold the datagram back, or send it (and then the held one)."""
        assert self._loop is not None
        if decision.hold and flow.held[direction] is None:
            hold_s = self.impairers[direction].impairment.hold_ms / 1000.0
            timer = self._loop.call_later(hold_s, self._flush, direction, flow)
            flow.held[direction] = (data, decision.copies, timer)
            self.stats[direction]["held"] += 1
            return
        self._send_copies(direction, flow, data, decision.copies)
        held = flow.held[direction]
        if held is not None:  # overtaken: the held datagram goes out after this one
            flow.held[direction] = None
            held[2].cancel()
            self.stats[direction]["reordered"] += 1
            self._send_copies(direction, flow, held[0], held[1])

    def _send_copies(self, direction: str, flow: _Flow, data: bytes, copies: int) -> None:
        assert self._loop is not None
        self._send(direction, flow, data)
        for _ in range(copies - 1):
            self._loop.call_later(_DUPLICATE_GAP_S, self._send, direction, flow, data)

    def _flush(self, direction: str, flow: _Flow) -> None:
        """Nothing overtook the held datagram within hold_ms: send it, late."""
        held = flow.held[direction]
        if held is not None:
            flow.held[direction] = None
            self._send_copies(direction, flow, held[0], held[1])


class ProxyThread:
    """A :class:`LossyProxy` served by an event loop in a background thread (for tests
    that drive other processes synchronously)::

        with ProxyThread(LossyProxy(("127.0.0.1", 5683), Impairment(loss=0.3))) as proxy:
            port = proxy.address[1]

    or :meth:`start` and :meth:`close`. Other servers of the test (meter simulators) may
    run on the same loop: :meth:`run`.
    """

    def __init__(self, proxy: LossyProxy):
        self.proxy = proxy
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="lossy-proxy")

    def start(self) -> LossyProxy:
        self._thread.start()
        return self.run(self.proxy.start(), 10)

    def run(self, coro, timeout: float = 30.0):
        """Run ``coro`` on the proxy's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stats(self) -> dict[str, dict[str, int]]:
        """A consistent copy of the counters, taken on the proxy's loop."""
        async def copy():
            return {d: dict(c) for d, c in self.proxy.stats.items()}
        return self.run(copy(), 10)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.proxy.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> LossyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# ---- command line ---------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:5684)")
    return host, int(port)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in 0..1")
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil_tests.lossy_proxy",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), metavar="HOST:PORT",
                    help="where devices send (default: a free loopback port)")
    ap.add_argument("--upstream", type=_host_port, required=True, metavar="HOST:PORT",
                    help="the gateway's CoAP address")
    ap.add_argument("--loss", type=_probability, default=0.0)
    ap.add_argument("--duplicate", type=_probability, default=0.0)
    ap.add_argument("--reorder", type=_probability, default=0.0)
    ap.add_argument("--delay-ms", type=float, nargs=2, default=(0.0, 0.0), metavar=("LO", "HI"))
    ap.add_argument("--hold-ms", type=float, default=50.0,
                    help="longest a reordered datagram waits to be overtaken")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        impairment = Impairment(args.loss, args.duplicate, args.reorder,
                                tuple(args.delay_ms), args.hold_ms)
    except ValueError as exc:
        ap.error(str(exc))

    async def serve() -> None:
        proxy = await LossyProxy(args.upstream, impairment, seed=args.seed,
                                 listen=args.listen).start()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        host, port = proxy.address
        print(f"lossy_proxy: listening udp {host}:{port} -> {args.upstream[0]}:"
              f"{args.upstream[1]}", flush=True)
        await stop.wait()
        proxy.close()
        print(f"lossy_proxy: {proxy.summary()}", flush=True)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
