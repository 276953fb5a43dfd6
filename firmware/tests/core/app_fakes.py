# Fakes of the application's ports for the shared app tests (CPython and the
# MicroPython VM). Async fakes never suspend, so run_sync() drives a coroutine
# to its end without an event loop (the VM's asyncio has no run()).


def run_sync(coro):
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    raise AssertionError("coroutine suspended on a fake port")


class PowerCut(Exception):
    pass


class Lcg:
    # small deterministic random numbers, identical on both interpreters
    def __init__(self, seed):
        self.state = seed & 0x7FFFFFFF or 1

    def below(self, n):
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.state >> 8) % n

    def bytes(self, n):
        return bytes(self.below(256) for _ in range(n))


class MemoryStorage:
    # The storage port in RAM. cut_at = k: the k-th write (counted from 1) is torn
    # (a random prefix of an append lands; an atomic write leaves the old file)
    # and raises PowerCut.
    def __init__(self, seed=1):
        self.files = {}
        self.writes = 0
        self.cut_at = 0
        self._rng = Lcg(seed)

    def read(self, name, offset=0, n=-1):
        data = self.files.get(name)
        if data is None:
            return None
        return bytes(data[offset:] if n < 0 else data[offset:offset + n])

    def size(self, name):
        data = self.files.get(name)
        return -1 if data is None else len(data)

    def _tick(self):
        self.writes += 1
        return self.cut_at and self.writes >= self.cut_at

    def append(self, name, data):
        if self._tick():
            self.cut_at = 0
            part = data[:self._rng.below(len(data))]
            self.files[name] = self.files.get(name, b"") + part
            raise PowerCut()
        self.files[name] = self.files.get(name, b"") + bytes(data)

    def write_atomic(self, name, data):
        if self._tick():
            self.cut_at = 0
            raise PowerCut()
        self.files[name] = bytes(data)

    def remove(self, name):
        self.files.pop(name, None)

    def names(self):
        return list(self.files)


class FakeClock:
    def __init__(self, t=0):
        self.ms = 0
        self.rtc = t

    def monotonic_ms(self):
        return self.ms

    async def sleep_ms(self, ms):
        self.ms += ms

    def time(self):
        return self.rtc + self.ms // 1000

    def set_time(self, t):
        self.rtc = t - self.ms // 1000


class FakeBus:
    # A meter bus: reply(request_frame) -> bytes the meter sends back (b"" = silence)
    def __init__(self, reply):
        self._reply = reply
        self._pending = b""
        self.sent = []

    def write(self, frame):
        self.sent.append(bytes(frame))
        self._pending = self._reply(bytes(frame))

    async def read(self, n, timeout_ms):
        out = self._pending[:n]
        self._pending = self._pending[n:]
        return out

    def flush_input(self):
        self._pending = b""


class FakeUdp:
    # A gateway link: respond(datagram) -> list of datagrams sent back
    def __init__(self, clock, respond):
        self._clock = clock
        self._respond = respond
        self._queue = []
        self.sent = []

    def send(self, datagram):
        self.sent.append(bytes(datagram))
        self._queue.extend(self._respond(bytes(datagram)))

    async def recv(self, timeout_ms):
        if self._queue:
            return self._queue.pop(0)
        self._clock.ms += timeout_ms
        return None
