# Runs the loops, restarts one that raised (logging why), and feeds the
# hardware watchdog only while every loop makes progress: each loop promises
# its next beat within a deadline; a missed deadline starves the watchdog and
# the chip resets.
import asyncio


class Liveness:
    def __init__(self, clock):
        self._clock = clock
        self._deadlines = {}

    def beat(self, name, within_ms):
        self._deadlines[name] = self._clock.monotonic_ms() + within_ms

    def late(self):
        # names of the loops past their deadline
        now = self._clock.monotonic_ms()
        return [n for n in self._deadlines if self._deadlines[n] < now]


async def feed_watchdog(watchdog, liveness, clock, period_ms, log):
    starving = False
    while True:
        late = liveness.late()
        if late:
            if not starving:
                log("watchdog: not fed, no progress in %s" % ", ".join(late))
            starving = True
        else:
            starving = False
            watchdog.feed()
        await clock.sleep_ms(period_ms)


async def guarded(name, make_coro, clock, log):
    # The one broad except of the firmware: log, pause, restart the loop.
    while True:
        try:
            await make_coro()
            return
        except Exception as e:  # noqa: BLE001 - supervisor keeps the device alive
            log("supervisor: %s crashed: %s %s; restarting" % (name, type(e).__name__, e))
            await clock.sleep_ms(5000)


async def run_all(loops, clock, log):
    # loops: list of (name, make_coro)
    tasks = [asyncio.create_task(guarded(name, make, clock, log)) for name, make in loops]
    for t in tasks:
        await t
