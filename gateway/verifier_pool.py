"""Runs :func:`gateway.verify.check_batch` in worker processes, or inline.

Signature checks and CBOR decoding dominate the gateway's CPU time, so with
``workers > 0`` they run in worker processes (:mod:`gateway.ipc`) and the event loop
only frames CoAP and talks to the writer. Batches travel in chunks whose size adapts
to load: batches that arrive in one turn of the event loop leave together, a worker
has at most two chunks at a time, and what waits is cut into chunks of
waiting / (workers x 2) batches, so every worker gets a share (one large chunk to the
first free worker left the others idle) while the inter-process cost is paid per chunk
rather than per message. At low load a batch leaves at the end of its loop turn.

If a worker dies, its batches fail with :class:`PoolBroken` (answered 5.00: the
meter keeps the readings and retries) and a new worker is started.
"""

import asyncio
import logging

from gateway import ipc, verify

log = logging.getLogger("wattshare.verify")

_CHUNKS_PER_WORKER = 2


class PoolBroken(Exception):
    """A verification worker died while checking this batch, or none is running."""


class _Worker:
    def __init__(self, index):
        self.index = index
        self.channel = None
        self.ready = None  # future: the worker has imported everything
        self.chunks = {}  # chunk id -> [future, ...]


class VerifierPool:
    """``await pool.check(payload, credential, now)`` -> :class:`gateway.verify.BatchCheck`."""

    def __init__(self, workers, policy, max_chunk=256):
        self.workers = workers
        self.policy = policy
        self.max_chunk = max_chunk
        self._workers = [_Worker(i) for i in range(workers)]
        self._waiting = []  # (job, future) not yet sent to a worker
        self._next_chunk = 0
        self._dispatch_soon = False
        self._closing = False
        self.queued = 0  # batches waiting or in a worker
        self.restarts = 0

    @property
    def processes(self):
        return [w.channel.process for w in self._workers if w.channel is not None]

    async def start(self):
        await asyncio.gather(*[self._start_worker(w) for w in self._workers])

    async def _start_worker(self, worker):
        worker.ready = asyncio.get_running_loop().create_future()
        channel = await ipc.Channel.start(
            "verify", list(self.policy),
            lambda message, w=worker: self._on_message(w, message),
            lambda w=worker: self._on_lost(w),
        )
        worker.channel = channel
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), 60)
        except TimeoutError:
            channel.kill()
            raise PoolBroken("a verification worker did not start within 60 s") from None

    async def close(self):
        self._closing = True
        await asyncio.gather(*[w.channel.stop() for w in self._workers if w.channel])
        for w in self._workers:
            w.channel = None

    async def check(self, payload, credential, now):
        if not self.workers:
            return verify.check_batch(payload, credential, now, self.policy)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append(((payload, credential, now), future))
        self.queued += 1
        if not self._dispatch_soon:  # once per loop turn, with every batch of the turn
            self._dispatch_soon = True
            loop.call_soon(self._dispatch)
        try:
            return await future
        finally:
            self.queued -= 1

    def _dispatch(self):
        self._dispatch_soon = False
        while self._waiting:
            running = [w for w in self._workers if w.channel is not None and w.ready.done()]
            free = [w for w in running if len(w.chunks) < _CHUNKS_PER_WORKER]
            if not free:
                if not any(w.channel is not None for w in self._workers):
                    self._fail([f for _, f in self._waiting], "no verification worker runs")
                    self._waiting = []
                return
            worker = min(free, key=lambda w: len(w.chunks))
            share = len(running) * _CHUNKS_PER_WORKER
            size = min(self.max_chunk, -(-len(self._waiting) // share))
            chunk, self._waiting = self._waiting[:size], self._waiting[size:]
            self._next_chunk += 1
            worker.chunks[self._next_chunk] = [future for _, future in chunk]
            worker.channel.send((self._next_chunk, [job for job, _ in chunk]))

    def _on_message(self, worker, message):
        if message == "ready":
            worker.ready.set_result(None)
            self._dispatch()
            return
        chunk_id, results = message
        for future, result in zip(worker.chunks.pop(chunk_id), results, strict=True):
            if not future.done():
                future.set_result(verify.BatchCheck._make(result))
        self._dispatch()

    def _fail(self, futures, reason):
        for future in futures:
            if not future.done():
                future.set_exception(PoolBroken(reason))

    def _on_lost(self, worker):
        worker.channel = None
        if worker.ready is not None and not worker.ready.done():
            # Start-up failed: whoever is starting it (start or _restart) handles that.
            worker.ready.set_exception(PoolBroken("a verification worker exited at start-up"))
            return
        for futures in worker.chunks.values():
            self._fail(futures, "a verification worker died")
        worker.chunks = {}
        if self._closing:
            return
        log.error("verification worker exited; restarting it",
                  extra={"fields": {"worker": worker.index}})
        self.restarts += 1
        asyncio.get_running_loop().create_task(self._restart(worker))

    async def _restart(self, worker):
        while not self._closing:
            try:
                await self._start_worker(worker)
                self._dispatch()
                return
            except PoolBroken:
                log.exception("verification worker could not restart")
                await asyncio.sleep(1.0)
