"""The lossy network's proxy on its own: numbered datagrams through it, both ways, on
loopback. Each impairment is seen on the wire (missing, doubled, out of order, late),
matches the proxy's counters, and the same seed gives the same outcome."""

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil_tests.lossy_proxy import DOWN, UP, Impairer, Impairment, LossyProxy, ProxyThread, main

N = 400


class _Ends:
    """A client socket (the device) and an upstream socket (the gateway) around a proxy;
    both record what they receive: (number, arrival monotonic time)."""

    def __init__(self, impairment: Impairment, seed: int, down: Impairment | None = None):
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.bind(("127.0.0.1", 0))
        self.upstream.setblocking(False)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.client.setblocking(False)
        self.proxy = LossyProxy(self.upstream.getsockname(), impairment, down, seed=seed)
        self.at_upstream: list[tuple[int, float]] = []
        self.at_client: list[tuple[int, float]] = []
        self.flow_address = None  # the proxy's socket for our client, seen upstream
        self.sent_at: dict[int, float] = {}

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        await self.proxy.start()
        loop.add_reader(self.upstream.fileno(), self._drain, self.upstream, self.at_upstream)
        loop.add_reader(self.client.fileno(), self._drain, self.client, self.at_client)
        return self

    async def __aexit__(self, *exc):
        loop = asyncio.get_running_loop()
        for sock in (self.upstream, self.client):
            loop.remove_reader(sock.fileno())
            sock.close()
        self.proxy.close()

    def _drain(self, sock, into):
        while True:
            try:
                data, address = sock.recvfrom(2048)
            except BlockingIOError:
                return
            if sock is self.upstream:
                self.flow_address = address
            into.append((int(data.split(b" ")[0]), time.monotonic()))

    async def send_up(self, count=N, start=0):
        for i in range(start, start + count):
            self.sent_at[i] = time.monotonic()
            self.client.sendto(b"%d datagram from the device" % i, self.proxy.address)
            await asyncio.sleep(0)  # let the proxy read it: no kernel buffer overflow

    async def send_down(self, count=N):
        assert self.flow_address is not None, "send one datagram up first"
        for i in range(count):
            self.sent_at[i] = time.monotonic()
            self.upstream.sendto(b"%d answer from the gateway" % i, self.flow_address)
            await asyncio.sleep(0)

    async def settle(self, direction, expected_received, timeout=10.0):
        """Wait until the proxy read ``expected_received`` datagrams, sent out all it
        will send (what it kept, and the copies) and the far end received them."""
        stats = self.proxy.stats[direction]
        arrivals = self.at_upstream if direction == UP else self.at_client
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = stats["received"] - stats["dropped"] + stats["duplicated"]
            if (stats["received"] == expected_received
                    and stats["sent"] + stats["send_failed"] == out
                    and len(arrivals) >= stats["sent"]):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the proxy did not settle within {timeout} s: "
                             f"{self.proxy.summary()}; {len(arrivals)} arrived")


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def _numbers(arrivals):
    return [n for n, _ in arrivals]


async def _one_way(direction, impairment, seed):
    """N numbered datagrams in ``direction``; (numbers as they arrived, stats)."""
    async with _Ends(Impairment(), seed, down=None) as ends:
        if direction == UP:
            ends.proxy.impairers[UP] = Impairer(impairment, seed, UP)
            await ends.send_up()
            await ends.settle(UP, N)
            return _numbers(ends.at_upstream), dict(ends.proxy.stats[UP])
        # open the flow with one clean datagram up, then impair only the answers
        await ends.send_up(1)
        await ends.settle(UP, 1)
        ends.proxy.impairers[DOWN] = Impairer(impairment, seed, DOWN)
        await ends.send_down()
        await ends.settle(DOWN, N)
        return _numbers(ends.at_client), dict(ends.proxy.stats[DOWN])


@pytest.mark.parametrize("direction", [UP, DOWN])
def test_loss_drops_about_the_rate_and_exactly_what_it_counts(direction):
    arrived, stats = _run(_one_way(direction, Impairment(loss=0.3), seed=11))
    assert stats["received"] == N
    assert len(arrived) == N - stats["dropped"] == stats["sent"]
    assert 0.22 * N <= stats["dropped"] <= 0.38 * N  # binomial(400, 0.3): +-4.4 sd
    assert arrived == sorted(arrived) and len(set(arrived)) == len(arrived)  # nothing else


@pytest.mark.parametrize("direction", [UP, DOWN])
def test_duplicates_arrive_twice_and_are_counted(direction):
    arrived, stats = _run(_one_way(direction, Impairment(duplicate=0.2), seed=12))
    twice = [n for n in set(arrived) if arrived.count(n) == 2]
    assert set(arrived) == set(range(N)) and max(arrived.count(n) for n in arrived) <= 2
    assert len(twice) == stats["duplicated"] > 0.1 * N
    assert stats["sent"] == N + stats["duplicated"]


@pytest.mark.parametrize("direction", [UP, DOWN])
def test_reordered_datagrams_are_overtaken_by_the_next(direction):
    arrived, stats = _run(_one_way(direction, Impairment(reorder=0.2, hold_ms=2000), seed=13))
    assert sorted(arrived) == list(range(N))  # none lost, none doubled
    # a held datagram goes out right after the one that overtook it: one inversion each
    inversions = sum(1 for a, b in zip(arrived, arrived[1:], strict=False) if b < a)
    assert inversions == stats["reordered"] > 0.1 * N
    assert arrived != sorted(arrived)


def test_a_held_datagram_nothing_overtakes_still_arrives():
    async def scenario():
        async with _Ends(Impairment(reorder=1.0, hold_ms=30), seed=1) as ends:
            await ends.send_up(1)
            await ends.settle(UP, 1)
            return _numbers(ends.at_upstream), dict(ends.proxy.stats[UP])

    arrived, stats = _run(scenario())
    assert arrived == [0] and stats["reordered"] == 0 and stats["sent"] == 1
    assert stats["held"] == 1


@pytest.mark.parametrize("direction", [UP, DOWN])
def test_delay_holds_every_datagram_at_least_the_lower_bound(direction):
    async def scenario():
        async with _Ends(Impairment(), 14) as ends:
            if direction == DOWN:  # open the flow first
                await ends.send_up(1)
                await ends.settle(UP, 1)
            ends.proxy.impairers[direction] = Impairer(Impairment(delay_ms=(40, 60)), 14,
                                                       direction)
            if direction == UP:
                await ends.send_up(50)
                arrivals = ends.at_upstream
            else:
                await ends.send_down(50)
                arrivals = ends.at_client
            await ends.settle(direction, 50)
            return arrivals, dict(ends.sent_at), dict(ends.proxy.stats[direction])

    arrivals, sent_at, stats = _run(scenario())
    assert len(arrivals) == 50 and stats["delayed"] == 50
    waits = [at - sent_at[n] for n, at in arrivals]
    assert min(waits) >= 0.039  # a lower bound (the timer never fires early), not a speed


def test_same_seed_same_outcome_other_seed_other_outcome():
    mixed = Impairment(loss=0.3, duplicate=0.1, reorder=0.1, hold_ms=2000)
    first = _run(_one_way(UP, mixed, seed=21))
    again = _run(_one_way(UP, mixed, seed=21))
    other = _run(_one_way(UP, mixed, seed=22))
    # the copies' arrival order against later datagrams is timing; which datagrams
    # are lost, doubled and held, and every count, are the seed's
    assert sorted(first[0]) == sorted(again[0]) and first[1] == again[1]
    assert sorted(first[0]) != sorted(other[0])
    for key in ("dropped", "duplicated", "reordered"):
        assert first[1][key] > 0, key


def test_directions_have_their_own_streams_and_settings():
    async def scenario():
        async with _Ends(Impairment(loss=0.5), 5, down=Impairment(duplicate=0.5)) as ends:
            await ends.send_up(N)
            await ends.settle(UP, N)
            await ends.send_down(N)
            await ends.settle(DOWN, N)
            return ends.proxy.stats

    stats = _run(scenario())
    assert stats[UP]["dropped"] > 0.35 * N and stats[UP]["duplicated"] == 0
    assert stats[DOWN]["duplicated"] > 0.35 * N and stats[DOWN]["dropped"] == 0


def test_each_client_gets_its_own_upstream_socket_and_answers():
    async def scenario():
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        upstream.bind(("127.0.0.1", 0))
        proxy = await LossyProxy(upstream.getsockname(), Impairment(), seed=0).start()
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        loop = asyncio.get_running_loop()
        try:
            for i, c in enumerate(clients):
                c.bind(("127.0.0.1", 0))
                c.setblocking(False)
                c.sendto(b"from %d" % i, proxy.address)
            seen = {}
            upstream.setblocking(False)
            deadline = time.monotonic() + 5
            while len(seen) < 3 and time.monotonic() < deadline:
                try:
                    data, address = upstream.recvfrom(100)
                    seen[data] = address
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            assert len(set(seen.values())) == 3, seen  # one source port per device
            for data, address in seen.items():
                upstream.sendto(b"answer to " + data, address)
            answers = []
            for c in clients:
                answers.append(await asyncio.wait_for(loop.sock_recv(c, 100), 5))
            return answers
        finally:
            proxy.close()
            upstream.close()
            for c in clients:
                c.close()

    assert _run(scenario()) == [b"answer to from 0", b"answer to from 1", b"answer to from 2"]


def test_impairment_rates_are_checked():
    with pytest.raises(ValueError, match="loss = 1.5: a probability"):
        Impairment(loss=1.5)
    with pytest.raises(ValueError, match="delay_ms"):
        Impairment(delay_ms=(10, 5))
    with pytest.raises(SystemExit):
        main(["--upstream", "127.0.0.1:5683", "--loss", "2"])


def test_proxy_thread_serves_a_synchronous_caller():
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    upstream.settimeout(5)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    thread = ProxyThread(LossyProxy(upstream.getsockname(), Impairment(), seed=0))
    try:
        with thread as proxy:
            client.sendto(b"reading", proxy.address)
            data, flow = upstream.recvfrom(100)
            upstream.sendto(b"ack", flow)
            assert (data, client.recvfrom(100)[0]) == (b"reading", b"ack")
            stats = thread.stats()
        assert stats[UP]["sent"] == stats[DOWN]["sent"] == 1
    finally:
        upstream.close()
        client.close()


def test_command_line_proxies_and_reports_what_it_did():
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    upstream.settimeout(10)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil_tests.lossy_proxy", "--upstream",
         f"127.0.0.1:{upstream.getsockname()[1]}", "--loss", "0.5", "--seed", "3"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("lossy_proxy: listening udp 127.0.0.1:"), line
        port = int(line.split()[3].rpartition(":")[2])
        for i in range(40):
            client.sendto(b"%d" % i, ("127.0.0.1", port))
        arrived = 0
        with contextlib.suppress(TimeoutError):
            upstream.settimeout(2)
            while arrived < 40:
                upstream.recv(100)
                arrived += 1
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert f"up: received 40, dropped {40 - arrived}, " in out, (arrived, out)
        assert 0 < arrived < 40
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        upstream.close()
        client.close()
