# The sampling loop: nothing before the clock is trusted; timestamps never go back
# when a gateway response sets the RTC behind a reading already signed.
from app.device_clock import DeviceClock
from app.sampler import Sampler
from app.sequence import SequenceAllocator
from app.spool import Spool
from app_fakes import FakeClock, MemoryStorage, run_sync


class _Poller:
    def __init__(self):
        self.energy = 1000

    async def poll(self):
        self.energy += 5
        return {"import_Wh": self.energy, "power_W": 600}, 0


class _Signer:
    def __init__(self):
        self.signed = []

    def sign(self, seq, t, st, values):
        self.signed.append((seq, t, values["import_Wh"]))
        return b"signed %d" % seq


def _sampler():
    clock = FakeClock(t=946684800)
    storage = MemoryStorage()
    spool = Spool(storage, 4)
    signer = _Signer()
    device_clock = DeviceClock(clock)
    sampler = Sampler(_Poller(), SequenceAllocator(storage), spool, signer, clock,
                      device_clock, 10000)
    return sampler, clock, device_clock, signer


def test_nothing_is_signed_before_the_clock_is_trusted():
    sampler, clock, device_clock, signer = _sampler()
    assert run_sync(sampler.sample_once()) is None
    assert sampler.skipped_untrusted == 1 and not signer.signed
    device_clock.set(1750161600, "gateway")
    assert run_sync(sampler.sample_once()) == 0
    assert signer.signed == [(0, 1750161600, 1005)]


def test_timestamps_never_go_back_when_the_clock_is_set_behind():
    sampler, clock, device_clock, signer = _sampler()
    device_clock.set(1750161600, "gateway")
    run_sync(sampler.sample_once())
    clock.ms += 10000
    run_sync(sampler.sample_once())  # t = ...610
    device_clock.set(1750161605, "gateway")  # a response taken before that reading
    run_sync(sampler.sample_once())  # the RTC says ...605: keeps ...610
    clock.ms += 10000
    run_sync(sampler.sample_once())  # ...615
    stamps = [t for _, t, _ in signer.signed]
    assert stamps == [1750161600, 1750161610, 1750161610, 1750161615]
    energies = [e for _, _, e in signer.signed]
    assert energies == sorted(energies)
