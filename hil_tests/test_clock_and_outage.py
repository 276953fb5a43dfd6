"""Nothing is signed before the clock is trusted; after a gateway outage the spool
drains oldest first, in batches of at most 8."""

import time


def test_no_reading_before_the_clock_is_trusted_then_drain_after_outage(rig):
    _, port = rig.meter("sdm120ct", "household", seed=9)
    dev = rig.device("sdm120ct", port)
    rig.endpoint.mode = "mute"  # no gateway, no NTP: the RTC is at 2000-01-01
    dev.start()
    time.sleep(2.0)  # 100 device seconds: ten sampling intervals
    data = dev.storage / "data"
    assert not [p for p in data.iterdir() if p.name.startswith("sp")], "spooled untrusted"
    assert not any("spooled seq=" in line for line in dev.output())
    assert rig.endpoint.log.time_requests == 0

    rig.endpoint.mode = "mute_posts"  # /t answers: the clock is trusted, posts get lost
    trusted_at = rig.sim_time()
    assert dev.wait_for(lambda: sum("spooled seq=" in x for x in dev.output()) >= 20, 30)
    rig.endpoint.mode = "normal"
    assert dev.wait_for(lambda: len(rig.endpoint.readings(dev.device_id)) >= 25, 60)
    dev.stop()

    readings = rig.endpoint.readings(dev.device_id)
    assert all(r.fields[3] >= int(trusted_at) - 1 for r in readings)
    assert all(not r.fields[4] & 0x0001 for r in readings)  # never CLOCK_UNTRUSTED
    log = rig.endpoint.log
    assert max(log.batch_sizes) > 1 and max(log.batch_sizes) <= 8
    firsts = [seq for d, seq in log.first_arrivals if d == dev.device_id]
    assert firsts == sorted(firsts) == list(range(firsts[0], firsts[0] + len(firsts)))
    assert not log.violations and not log.conflicts
