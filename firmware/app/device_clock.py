# Wall-clock time the device may sign with. The RTC starts wherever the chip
# left it (an ESP32 boots at 2000-01-01); it becomes trusted only once NTP or a
# gateway response has set it. Readings are never signed before that.
#
# Port: clock.time() -> int unix seconds (RTC), clock.set_time(unix_seconds).


class DeviceClock:
    def __init__(self, clock, log=None):
        self._clock = clock
        self._log = log or (lambda msg: None)
        self.trusted = False
        self.source = None

    def now(self):
        return int(self._clock.time())

    def set(self, unix_seconds, source):
        # source: "ntp" or "gateway"
        if not self.trusted:
            self._log("clock: trusted from %s: %d" % (source, unix_seconds))
        if not self.trusted or self.now() != unix_seconds:
            self._clock.set_time(unix_seconds)
        self.trusted = True
        self.source = source
