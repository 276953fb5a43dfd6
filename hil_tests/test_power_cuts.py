"""Real process kills of an emulated device (power cuts at any point, some torn in the
middle of a flash write) lose no spooled or acknowledged reading and reuse no sequence
number; afterwards the spool drains oldest first. The 1,000 cuts at random storage writes
over the same spool and sequence modules are the shared test
firmware/tests/core/test_app_spool.py (CPython and the MicroPython VM)."""

import random
import time

from hil_tests.conftest import spooled_seqs

KILLS = 24


def test_power_cuts_lose_nothing_and_reuse_no_sequence_number(rig):
    rnd = random.Random(7)
    _, port = rig.meter("sdm120ct", "pv-household", seed=4)
    dev = rig.device("sdm120ct", port)
    spooled: list[int] = []
    torn = 0
    for run in range(KILLS):
        # the gateway is down during some runs, so the spool holds readings at the cut
        rig.endpoint.mode = "mute_posts" if run % 3 == 1 else "normal"
        before = len(dev.output())
        if run % 4 == 3:
            dev.start(cut_at_write=rnd.randint(1, 25), seed=run + 1)
            dev.wait(30)  # exits by itself at the torn write (or runs on if it never came)
        else:
            dev.start()
            time.sleep(rnd.uniform(0.3, 1.2))
            dev.kill()
        lines = dev.output()[before:]
        torn += any("power cut at storage write" in line for line in lines)
        spooled += spooled_seqs(lines)
        assert not any("firmware stopped" in line for line in lines), lines[-10:]
    assert torn >= 3
    assert len(spooled) == len(set(spooled)), "a sequence number was used twice"
    assert len(spooled) > 20

    # power back for good: everything ever spooled reaches the gateway
    rig.endpoint.mode = "normal"
    dev.start()
    assert dev.wait_for(lambda: set(spooled) <= rig.endpoint.seqs(dev.device_id), 60), \
        sorted(set(spooled) - rig.endpoint.seqs(dev.device_id))[:20]
    dev.stop()
    log = rig.endpoint.log
    assert not log.conflicts, "same seq with other bytes: a sequence number was reused"
    assert not log.violations
    firsts = [seq for d, seq in log.first_arrivals if d == dev.device_id]
    assert firsts == sorted(firsts), "readings did not arrive oldest first"
