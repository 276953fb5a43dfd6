"""Power cuts at random points (some in the middle of a flash write, some while the
device's link is down so its spool holds readings): the sequence continues, no number
is used twice, and every reading the device ever spooled reaches the real gateway,
oldest first. The 1,000 cuts at random storage writes over the same spool and sequence
modules are the shared test firmware/tests/core/test_app_spool.py (CPython and the
MicroPython VM); here it is the whole device, power and all, against the gateway.

:func:`power_cuts` and :func:`check_power_cuts` are also the rig's own test
(test_rig_catches_broken_firmware.py): a firmware that skips signatures, reuses
sequence numbers or drops its spool at reboot must fail these checks."""

from __future__ import annotations

import random

from hil_tests.devices import spooled
from hil_tests.rig import Link, wait_until

CUTS = 10


def power_cuts(site, dev, link: Link, cuts: int, seed: int) -> int:
    """``cuts`` power-on/power-cut cycles of ``dev``; every fourth cut tears a flash
    write (devices that can), every third happens while its link is down (its spool
    holds readings). Then power for good until the device has sent its newest reading
    (or the gateway refused one). Returns the number of torn writes."""
    rnd = random.Random(seed)
    torn = 0
    for run in range(cuts):
        link.up = True
        before = len(dev.output())
        if run % 4 == 3 and "torn_write" in dev.capabilities:
            torn += dev.power_cut_at_write(rnd.randint(1, 20), seed=run + 1)
            continue
        dev.start()
        wait_until(lambda b=before: any("clock: trusted" in x for x in dev.output()[b:]), 30,
                   f"{dev.label}: the clock after boot {run}", lambda: dev.output()[-5:])
        if run % 3 == 1:
            link.up = False
        site.wait_sim(rnd.uniform(30, 240))
        dev.power_cut()
    link.up = True
    dev.start()
    label = dev.label

    def caught_up():
        newest = max((s for s, _ in spooled(dev.output())), default=-1)
        status = site.device_status(label)
        return status["rejects"] or (status["last_seq"] is not None
                                     and status["last_seq"] >= newest >= 0)

    wait_until(caught_up, 60, f"{label}: the device to send its newest reading",
               lambda: (site.device_status(label), dev.output()[-5:]))
    dev.stop()
    return torn


def check_power_cuts(site, dev) -> None:
    """What the gateway stored against what the device said it spooled; one
    AssertionError listing every check that failed."""
    from hil_tests.test_clock_and_outage import messages

    problems = []
    said = [seq for seq, _ in spooled(dev.output())]
    crashes = [x for x in dev.output() if "crashed" in x or "firmware stopped" in x]
    if crashes:
        problems.append(f"the firmware crashed: {crashes[:3]}")
    if len(said) < 10:
        problems.append(f"only {len(said)} readings spooled")
    status = site.device_status(dev.label)
    if status["rejects"]:
        problems.append(f"the gateway refused readings: {status['rejects']}")
    if len(said) != len(set(said)):
        problems.append("a sequence number was used twice: "
                        f"{sorted({s for s in said if said.count(s) > 1})[:10]}")
    elif said != sorted(said):
        problems.append("the sequence went backwards")
    stored = site.readings(dev.label)
    seqs = {r["seq"] for r in stored}
    lost = sorted(set(said) - seqs)
    if lost:
        problems.append(f"{len(lost)} spooled readings lost (never stored): {lost[:10]}")
    arrival = [seq for m in messages(stored) for seq in m]
    if arrival != sorted(arrival):
        problems.append("readings did not arrive oldest first")
    assert not problems, f"{dev.label}: " + "; ".join(problems)


def test_power_cuts_lose_nothing_and_reuse_no_sequence_number(gateway_site):
    site = gateway_site
    link = Link(site)
    dev = site.add("power cuts", "sdm120ct", "pv-household", seed=4, gateway_port=link.port)
    torn = power_cuts(site, dev, link, CUTS, seed=7)
    if "torn_write" in dev.capabilities:  # a bench relay cuts between writes, wherever
        assert torn >= 1, "no cut tore a flash write"
    assert link.dropped > 0, "the link was never down while the device sent"
    check_power_cuts(site, dev)
