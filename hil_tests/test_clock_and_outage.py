"""The gateway away: at a device's boot (nothing is signed before the clock is trusted),
for a long outage (the spool drains oldest first, several readings a message, no gap,
no duplicate), and killed in the middle of that catch-up (nothing acknowledged is lost,
nothing stored twice). What is looked at: the device's console, the gateway's stored
readings (``wattshare device readings --json``), the status API and ``/metrics``."""

from __future__ import annotations

import threading

from hil_tests.devices import spooled
from hil_tests.rig import Link, posted_readings, wait_until

ST_CLOCK_UNTRUSTED = 0x0001
MAX_BATCH = 8  # readings per message (docs/protocol.md)
OUTAGE_S = 900  # simulated: 15 minutes without a gateway (90 readings)


def messages(readings: list[dict]) -> list[list[int]]:
    """Stored readings grouped by the request that brought them (one received time per
    request), in arrival order: the sequence numbers of each message."""
    out: list[list[int]] = []
    last = None
    for r in sorted(readings, key=lambda r: (r["received_ms"], r["seq"])):
        if r["received_ms"] != last:
            out.append([])
            last = r["received_ms"]
        out[-1].append(r["seq"])
    return out


def check_complete(site, label: str, dev) -> list[dict]:
    """Every reading the device spooled is stored once (but the newest few, taken after
    the drain): sequence numbers 0..N, no gap, no duplicate, each with the time the
    device signed; returns the stored readings."""
    stored = site.readings(label)
    seqs = [r["seq"] for r in stored]
    assert len(seqs) == len(set(seqs)), f"{label}: a reading stored twice"
    assert sorted(seqs) == list(range(len(seqs))), \
        f"{label}: gap in the stored sequence numbers {sorted(set(range(max(seqs))) - set(seqs))}"
    signed = dict(spooled(dev.output()))
    assert set(seqs) <= set(signed), f"{label}: stored, never signed: {set(seqs) - set(signed)}"
    # the device was stopped after the drain: the readings it took since are still in its
    # spool (sent at its next start), the newest ones only
    unsent = sorted(set(signed) - set(seqs))
    assert unsent == list(range(len(seqs), len(signed))) and len(unsent) <= 3, \
        f"{label}: spooled but not stored: {unsent[:20]}"
    assert all(signed[r["seq"]] == r["t"] for r in stored), f"{label}: other time stored"
    return stored


def drained(site, label: str, dev) -> bool:
    seqs = {seq for seq, _ in spooled(dev.output())}
    return bool(seqs) and site.device_status(label)["readings"] >= len(seqs)


def test_nothing_is_signed_before_the_clock_is_trusted(gateway_site):
    site = gateway_site
    dev = site.add("clock at boot", "sdm120ct", "household", seed=9)
    site.gateway.stop()  # no gateway, no NTP: the device's RTC says 2000-01-01
    try:
        dev.start()
        wait_until(lambda: any("boot:" in x for x in dev.output()), 30,
                   "the device to boot", dev.output)
        site.wait_sim(10 * 60)  # 20 readings' worth of time
        assert spooled(dev.output()) == [], "signed a reading with an untrusted clock"
    finally:
        back_at = site.clock.now()
        site.gateway.start()
    wait_until(lambda: len(spooled(dev.output())) >= 5, 60,
               "readings once the gateway gave the time", lambda: dev.output()[-10:])
    lines = dev.output()
    trusted = next(i for i, x in enumerate(lines) if "clock: trusted" in x)
    first_spooled = next(i for i, x in enumerate(lines) if "spooled seq=" in x)
    assert trusted < first_spooled, lines[:first_spooled + 1]
    wait_until(lambda: drained(site, "clock at boot", dev), 60, "the readings stored")
    stored = check_complete(site, "clock at boot", dev)
    assert all(r["t"] >= int(back_at) - 1 for r in stored), "a reading stamped before"
    assert not any(r["st"] & ST_CLOCK_UNTRUSTED for r in stored)


def test_after_a_long_outage_the_spool_drains_oldest_first(gateway_site):
    site = gateway_site
    dev = site.add("long outage", "sdm120ct", "pv-household", seed=5, interval_s=10)
    dev.start()
    wait_until(lambda: site.device_status("long outage")["readings"] >= 3, 60,
               "the first readings stored", lambda: dev.output()[-10:])
    site.gateway.stop()
    before = len(spooled(dev.output()))
    site.wait_sim(OUTAGE_S)
    during = len(spooled(dev.output())) - before
    assert during >= OUTAGE_S // 10 // 2, f"only {during} readings during the outage"
    site.gateway.start()
    wait_until(lambda: drained(site, "long outage", dev), 90,
               "the spool to drain into the gateway",
               lambda: (site.device_status("long outage"), dev.output()[-5:]))
    dev.stop()
    stored = check_complete(site, "long outage", dev)
    msgs = messages(stored)
    arrival = [seq for m in msgs for seq in m]
    assert arrival == sorted(arrival), "readings did not arrive oldest first"
    assert max(len(m) for m in msgs) > 1, "the catch-up sent one reading per message"
    assert max(len(m) for m in msgs) <= MAX_BATCH, max(len(m) for m in msgs)
    catch_up = [m for m in msgs if m[0] > before - 1]
    assert sum(len(m) for m in catch_up) >= during
    assert site.device_status("long outage")["rejects"] == {}


def test_gateway_killed_in_the_middle_of_a_catch_up(gateway_site):
    site = gateway_site
    link = Link(site)
    dev = site.add("killed catch-up", "sdm120ct", "household", seed=6, interval_s=10,
                   gateway_port=link.port)
    dev.start()
    wait_until(lambda: site.device_status("killed catch-up")["readings"] >= 3, 60,
               "the first readings stored", lambda: dev.output()[-10:])
    site.gateway.stop()
    site.wait_sim(OUTAGE_S)
    backlog = len(spooled(dev.output()))
    posts: list[bytes] = []
    killed = threading.Event()

    def kill_at_third_post(datagram: bytes) -> None:
        # SIGKILL while the gateway holds the catch-up's third message (just forwarded)
        if posted_readings(datagram) and not killed.is_set():
            posts.append(datagram)
            if len(posts) == 3:
                site.gateway.proc.kill()
                killed.set()

    link.up = False  # the catch-up starts once the gateway is up and the hook set
    site.gateway.start()
    link.on_forward = kill_at_third_post
    link.up = True
    wait_until(killed.is_set, 60, "the catch-up's third message", lambda: len(posts))
    link.on_forward = None
    site.gateway.kill()
    at_kill = {r["seq"] for r in site.readings("killed catch-up")}  # read from its files
    assert len(at_kill) < backlog - MAX_BATCH, \
        f"the catch-up was over before the kill ({len(at_kill)} of {backlog} stored)"
    site.gateway.start()
    wait_until(lambda: drained(site, "killed catch-up", dev), 90,
               "the rest of the spool after the gateway's restart",
               lambda: (site.device_status("killed catch-up"), dev.output()[-5:]))
    dev.stop()
    stored = check_complete(site, "killed catch-up", dev)
    assert at_kill <= {r["seq"] for r in stored}, "a reading stored before the kill is gone"
    arrival = [seq for m in messages(stored) for seq in m]
    assert arrival == sorted(arrival), "readings did not arrive oldest first"
