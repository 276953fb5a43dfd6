"""Runs :func:`gateway.verify.check_batch` on worker processes, or inline.

Signature checks and CBOR decoding dominate the gateway's CPU time, so with
``workers > 0`` they run in a process pool and the event loop only frames CoAP and
feeds the writer. Batches are sent in chunks whose size adapts to load: while every
worker is busy, new batches wait and leave together in the next chunk, so the
inter-process cost is paid per chunk rather than per message; at low load a batch
leaves at once.

Workers are spawned (not forked: the parent has threads), ignore SIGINT (the parent
handles shutdown) and die with their parent (``PR_SET_PDEATHSIG`` on Linux, plus a
watchdog thread elsewhere). If a worker dies, the pool is rebuilt and the affected
requests fail with :class:`PoolBroken` (answered 5.03: the meter retries).
"""

import asyncio
import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

from gateway import verify


class PoolBroken(Exception):
    """A verification worker died while checking this batch."""


def _watch_parent(parent_pid):
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _init_worker(parent_pid):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(0)


def _warm_up():
    return os.getpid()


class VerifierPool:
    """``await pool.check(payload, credential, now)`` -> :class:`gateway.verify.BatchCheck`."""

    def __init__(self, workers, policy, max_chunk=256):
        self.workers = workers
        self.policy = policy
        self.max_chunk = max_chunk
        self._executor = None
        self._waiting = []  # (job, future) not yet sent to a worker
        self._in_flight = 0  # chunks sent and not answered
        self._max_in_flight = 2 * workers
        self.queued = 0  # batches waiting or in flight

    async def start(self):
        if self.workers:
            self._executor = self._new_executor()
            loop = asyncio.get_running_loop()
            await asyncio.gather(*[
                loop.run_in_executor(self._executor, _warm_up) for _ in range(self.workers)
            ])

    def _new_executor(self):
        return concurrent.futures.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )

    async def close(self):
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)

    async def check(self, payload, credential, now):
        if not self.workers:
            return verify.check_batch(payload, credential, now, self.policy)
        if self._executor is None:
            raise PoolBroken("the verification pool is not running")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(((payload, credential, now), future))
        self.queued += 1
        try:
            self._dispatch()
            return await future
        finally:
            self.queued -= 1

    def _dispatch(self):
        while self._waiting and self._in_flight < self._max_in_flight:
            per_worker = -(-len(self._waiting) // self.workers)
            size = max(1, min(self.max_chunk, per_worker))
            chunk, self._waiting = self._waiting[:size], self._waiting[size:]
            self._in_flight += 1
            executor = self._executor
            try:
                done = executor.submit(
                    verify.check_batches, [job for job, _ in chunk], self.policy
                )
            except (BrokenProcessPool, RuntimeError) as e:
                done = concurrent.futures.Future()
                done.set_exception(e)
            asyncio.wrap_future(done).add_done_callback(
                lambda f, c=chunk, e=executor: self._done(c, f, e)
            )

    def _done(self, chunk, done, executor):
        self._in_flight -= 1
        error = done.exception()
        if error is None:
            for (_, future), result in zip(chunk, done.result(), strict=True):
                if not future.done():
                    future.set_result(result)
        else:
            if isinstance(error, BrokenProcessPool):
                if executor is self._executor:  # rebuild once per broken pool
                    self._executor = self._new_executor()
                    executor.shutdown(wait=False, cancel_futures=True)
                error = PoolBroken("a verification worker died")
            for _, future in chunk:
                if not future.done():
                    future.set_exception(error)
        if self._executor is not None:
            self._dispatch()
