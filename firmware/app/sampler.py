# The sampling loop: every interval, poll the meter, take the next sequence
# number, sign the reading and append it to the spool. Nothing is polled or
# signed before the clock is trusted (those intervals are skipped, counted).
# Timestamps never go back: a gateway response can set the RTC a little behind
# a reading already signed (its time is from when the gateway took the request,
# sent before that reading), and counters that rise while t falls would read as
# a counter decrease at settlement; such a reading keeps the last one's t.
import gc

from wattcore import reading


class Sampler:
    def __init__(self, poller, sequence, spool, signer, clock, device_clock, interval_ms,
                 log=None):
        self._poller = poller
        self._sequence = sequence
        self._spool = spool
        self._signer = signer
        self._clock = clock
        self._device_clock = device_clock
        self._interval = interval_ms
        self._log = log or (lambda msg: None)
        self._boot = True  # the first reading after a restart carries ST_BOOT
        self._new = False
        self.skipped_untrusted = 0
        self.readings = 0
        self._last_t = 0

    def take_new(self):
        # True once after each new reading (wakes the uplink)
        new = self._new
        self._new = False
        return new

    async def sample_once(self):
        if not self._device_clock.trusted:
            self.skipped_untrusted += 1
            return None
        values, st = await self._poller.poll()
        t = self._device_clock.now()
        if t < self._last_t:
            t = self._last_t
        self._last_t = t
        seq = self._sequence.next()
        if self._spool.make_room():
            st |= reading.ST_SPOOL_OVERFLOW
        if self._boot:
            st |= reading.ST_BOOT
        signed = self._signer.sign(seq, t, st, values)
        self._spool.append(seq, signed)
        self._boot = False
        self._new = True
        self.readings += 1
        self._log("spooled seq=%d t=%d st=0x%04x" % (seq, t, st))
        return seq

    async def run(self, liveness):
        clock = self._clock
        due = clock.monotonic_ms()
        while True:
            now = clock.monotonic_ms()
            if due > now:
                await clock.sleep_ms(due - now)
            due += self._interval
            if due <= clock.monotonic_ms():  # fell behind: no burst of catch-up polls
                due = clock.monotonic_ms() + self._interval
            await self.sample_once()
            liveness.beat("sampler", 3 * self._interval + 30000)
            gc.collect()
