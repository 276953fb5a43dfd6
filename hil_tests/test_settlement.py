"""The community on chain, three scenarios on one site (the real gateway, the embedded
anvil with the contracts deployed, ``wattshare chain run`` settling interval by
interval), in this order:

1. A small neighbourhood over several settlement intervals, end to end: the PV resident
   (at work by day, 40 % of its surplus to the school), the school and two households,
   each with the real firmware reading its simulated meter, the real gateway, and
   ``wattshare chain run`` settling interval by interval on the embedded anvil.

   What a member can check, and this scenario does: every reading the devices signed was
   stored, verified, none refused; each settled interval's flows on chain are exactly what
   the allocation rule (contracts/allocation_reference.py) gives for the energy the meters
   signed at the interval boundaries (computed here from the stored readings, not taken
   from the gateway's submission); the prepaid balances moved by exactly those payments;
   and sampled readings are proven down to the chain with ``wattshare export-proof`` and
   ``wattshare verify --bundle`` (a tampered bundle is refused).

2. What must not be settled: a forged device (another key under a registered device's
   id, and a device nobody registered), a replayed message (recorded on the wire and sent
   again from elsewhere) and a revoked device. Each is rejected or ignored by the real
   gateway, counted where a technician looks (``gateway status``, ``/metrics``), and
   nothing of it reaches the chain: the honest meter's settled energy is exactly what its
   own readings signed, and the revoked meter is in no interval from its revocation on.

3. The chain node restarted in the middle of an interval: the embedded anvil is killed
   (``wattshare chain run`` restarts it from its state file). Every interval settles,
   each exactly once, none skipped, and ``wattshare chain status --json`` finds the
   outbox and the chain in agreement. (``chain run`` killed with its node, and everything
   at once, is gateway/tests/test_chain_run.py.)
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from contracts import allocation_reference as ref
from hil_tests.conftest import require
from hil_tests.devices import spooled
from hil_tests.rig import (
    FUND,
    INTERVAL_S,
    Link,
    posted_readings,
    replay,
    settlement_balance,
    settlement_logs,
    wait_until,
)

RESIDENT, SCHOOL, NO1, NO2 = "no. 4 (PV, away by day)", "school", "no. 1", "no. 2"
ANCHOR_DELAY = 300  # an anchor is taken within 300 s after its boundary (docs/chain.md)
BAD_STATUS = 0x09FE | 0x0001  # a fault, or a clock not trusted
INTERVALS = 2  # settled with every member in them


def anchor(readings: list[dict], boundary: int) -> dict | None:
    """The meter's first usable reading in [boundary, boundary + 300 s): the reading
    whose signed counters the chain takes for that boundary."""
    start = boundary * INTERVAL_S
    usable = [r for r in readings if start <= r["t"] < start + ANCHOR_DELAY
              and r["ei"] is not None and not r["st"] & BAD_STATUS]
    return min(usable, key=lambda r: (r["t"], r["seq"])) if usable else None


def energy(readings: list[dict], interval: int) -> tuple[int, int] | None:
    """(import, export) Wh the meter signed for ``interval``: the counters of the anchor
    at its end minus those at its start; None without both anchors."""
    a, b = anchor(readings, interval), anchor(readings, interval + 1)
    if a is None or b is None:
        return None
    return b["ei"] - a["ei"], (b["ee"] or 0) - (a["ee"] or 0)


def test_a_small_neighbourhood_settles_interval_by_interval(chain_site, tmp_path):
    site = chain_site
    resident = site.resident_owner()
    site.add_many([((RESIDENT, "sdm120ct", "pv-away-by-day"), dict(seed=4, owner=resident)),
                   ((SCHOOL, "sdm630ct", "school"), dict(seed=20)),
                   ((NO1, "pzem004t-v3", "household"), dict(seed=1)),
                   ((NO2, "sdm120ct", "household"), dict(seed=2))])
    labels = [RESIDENT, SCHOOL, NO1, NO2]
    site.add_on_chain(*labels)
    site.cli("community", "producer-key", "--meter", RESIDENT, "--static", f"{SCHOOL}=4000",
             "--anvil-account", "3")
    owners = {site.members[x]["index"]: site.members[x]["owner"] for x in labels}
    assert len(set(owners.values())) == len(labels), owners
    site.cli("community", "fund", "--account", *owners.values(), "--amount", str(FUND))
    started_in = site.interval_now()  # the site's earlier intervals are not ours
    for label in labels:
        site.members[label]["device"].start()

    def full_intervals():
        return sorted(k for k, s in site.settled().items()
                      if s["meters"] == len(labels) and k >= started_in)

    wait_until(lambda: len(full_intervals()) >= INTERVALS, 120,
               f"{INTERVALS} intervals settled with all {len(labels)} meters",
               lambda: (site.settled(), site.status()["chain"]))
    for label in labels:
        site.members[label]["device"].stop()

    # every reading the devices signed and sent was stored as signed, none refused
    status = site.status()
    assert status["rejects"] == {}, status["rejects"]
    quiet = {label: site.quiet_readings(label) for label in labels}
    stored = {label: quiet[label][0] for label in labels}
    for label in labels:
        dev = site.members[label]["device"]
        signed = dict(spooled(dev.output()))
        got = stored[label]
        seqs = sorted(r["seq"] for r in got)
        assert seqs == list(range(len(seqs))), f"{label}: gap or duplicate in {seqs}"
        assert len(seqs) >= 20, label
        assert {r["seq"]: r["t"] for r in got}.items() <= signed.items(), \
            f"{label}: a stored reading the device did not sign so"
        assert not any(r["st"] & 0x09FE for r in got), label
        assert quiet[label][1]["rejects"] == {}, label
    accepted = site.metric("wattshare_readings_accepted_total")
    assert accepted >= sum(len(v) for v in stored.values()), accepted

    # each settled interval's flows are the allocation rule applied to the energy the
    # meters signed; balances moved by exactly those payments
    logs = settlement_logs(site.rpc_url, site.data)
    price = [f["price"] for name, f, _ in logs if name == "PriceSet"][-1]
    by_index = {site.members[x]["index"]: stored[x] for x in labels}
    keys = {site.members[RESIDENT]["index"]: ref.Key(ref.KEY_STATIC,
                                                     (site.members[SCHOOL]["index"],),
                                                     (4000,))}
    ledger = ref.Ledger(balance=dict.fromkeys(owners.values(), FUND))
    settled = sorted({f["interval"] for name, f, _ in logs if name == "Settled"})
    last_full = full_intervals()[INTERVALS - 1]
    checked = 0
    p2p_to_school = 0
    for interval in settled:
        if interval < started_in:
            continue
        if interval > last_full:
            break
        meters = {}
        for index, readings in by_index.items():
            e = energy(readings, interval)
            if e is not None:
                meters[index] = e
        want = ref.settle(interval, meters, owners, keys, ref.DEFAULT_COMMUNITY_KEY, price,
                          ledger)
        got = [(name, *f.values()) for name, f, _ in logs
               if name not in ("Submitted",) and f.get("interval") == interval]
        assert got == want, f"interval {interval}: chain {got} != rule {want}"
        checked += len(meters) == len(labels)
        p2p_to_school += sum(e[4] for e in want if e[0] == "P2PAllocation"
                             and e[2] == site.members[RESIDENT]["index"]
                             and e[3] == site.members[SCHOOL]["index"])
    assert checked >= INTERVALS
    assert p2p_to_school > 0, "the resident's surplus never reached the school"
    block = max(b for name, f, b in logs if name == "Settled" and f["interval"] == last_full)
    for owner in owners.values():
        assert settlement_balance(site.rpc_url, site.data, owner, block) == \
            ledger.balance[owner], owner

    # a sample of readings proven down to the chain, as anyone can with the bundle
    sample = [stored[RESIDENT][len(stored[RESIDENT]) // 2],
              stored[SCHOOL][len(stored[SCHOOL]) // 3]]
    for r in sample:
        bundle = tmp_path / f"reading-{r['id']}.json"
        site.cli("export-proof", "--reading", str(r["id"]), "-o", str(bundle))
        out = site.cli("verify", "--bundle", str(bundle), "--rpc", site.rpc_url, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(bundle.read_text())
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(_flip_one_digit(data)))
    out = site.cli("verify", "--bundle", str(tampered), "--rpc", site.rpc_url, check=False)
    assert out.returncode != 0, out.stdout


def _flip_one_digit(bundle: dict) -> dict:
    """The bundle with one hex digit of its signed reading (``cose``) changed."""
    value = bundle["cose"]
    i = len(value) // 2
    return {**bundle, "cose": value[:i] + ("0" if value[i] != "0" else "1") + value[i + 1:]}


# ---- 2. forged, replayed, revoked

METER_FIELDS = ("producer", "consumer", "meter")
CHANGED = 0x44  # CoAP 2.04


def meters_in(logs, interval: int) -> set[int]:
    """Meter indices the chain's flows name in ``interval``."""
    return {f[k] for name, f, _ in logs if f.get("interval") == interval
            for k in METER_FIELDS if k in f}


def test_forged_replayed_and_revoked_readings_are_refused_and_not_settled(chain_site):
    site = chain_site
    require(site, "forge")
    honest_link, revoked_link = Link(site), Link(site)
    honest, leaving = site.add_many([
        (("honest", "sdm120ct", "household"), dict(seed=40, gateway_port=honest_link.port)),
        (("revoked", "sdm120ct", "pv-household"),
         dict(seed=41, gateway_port=revoked_link.port)),
    ])
    site.add_on_chain("honest", "revoked")
    forger, stranger = site.add_many([
        (("forger of honest", "sdm120ct", "household"), dict(seed=42, register=False,
                                                            hwid=honest.hwid)),
        (("stranger", "sdm120ct", "household"), dict(seed=43, register=False)),
    ])
    assert forger.device_id == honest.device_id and forger.public_key != honest.public_key
    for dev in (honest, leaving, forger, stranger):
        dev.start()
    wait_until(lambda: any(s["meters"] == 2 for s in site.settled().values()), 90,
               "an interval settled with both meters", site.settled)

    def rejects():
        return site.status()["rejects"]

    wait_until(lambda: rejects().get("bad-signature", 0) >= 2
               and rejects().get("unknown-device", 0) >= 2, 60,
               "the forged readings refused", rejects)

    # a replayed message: recorded on the honest device's link, sent again
    recorded = next(d for d in reversed(honest_link.captured) if posted_readings(d))
    stored_before = site.device_status("honest")["readings"]
    duplicates_before = site.metric("wattshare_readings_duplicate_total")
    answer = replay(site.gateway.coap_port, recorded)
    assert answer.code == CHANGED, answer.code
    assert site.metric("wattshare_readings_duplicate_total") >= \
        duplicates_before + len(posted_readings(recorded))
    assert site.device_status("honest")["readings"] >= stored_before

    # a revoked device: its new readings are refused; a replay of its recorded ones
    # stores nothing (they were stored before, once)
    site.cli("device", "revoke", leaving.device_id)
    wait_until(lambda: rejects().get("revoked", 0) >= 1, 60,
               "the revoked device's readings refused", rejects)
    # the gateway picks up the registry within a (real) second: from the first refusal
    # on, nothing more of the device is stored, so no interval from now on has its anchor
    revoked_in = site.interval_now()
    stored_before = site.device_status("revoked")["readings"]
    old = next(d for d in reversed(revoked_link.captured) if posted_readings(d))
    replay(site.gateway.coap_port, old)
    assert site.device_status("revoked")["readings"] == stored_before
    wait_until(lambda: max(site.settled(), default=0) >= revoked_in + 1, 90,
               "the intervals after the revocation settled", site.settled)
    for dev in (honest, leaving, forger, stranger):
        dev.stop()

    # counted where a technician looks
    status = site.status()
    for reason in ("bad-signature", "unknown-device", "revoked"):
        assert status["rejects"].get(reason, 0) >= 1, status["rejects"]
        assert site.metric("wattshare_readings_rejected_total", reason=reason) >= 1, reason
    assert site.device_status("revoked")["status"] == "revoked"

    # nothing forged stored: the honest device's readings are its own, each once
    stored = site.readings("honest")
    signed = dict(spooled(honest.output()))
    assert {r["seq"]: r["t"] for r in stored}.items() <= signed.items()
    assert len({r["seq"] for r in stored}) == len(stored)

    # nothing forged settled: the honest meter's energy on chain is its own signed
    # energy; the revoked meter is in no interval from its revocation on
    logs = settlement_logs(site.rpc_url, site.data)
    index = site.members["honest"]["index"]
    gone = site.members["revoked"]["index"]
    settled = site.settled()
    assert len(settled) >= 3
    for interval in settled:
        e = energy(stored, interval)
        submitted = [f for name, f, _ in logs if name == "GridImport"
                     and f["interval"] == interval and f["meter"] == index]
        if e is None:
            assert index not in meters_in(logs, interval), interval
        else:
            # a household only imports: what it did not get from neighbours it bought
            received = sum(f["wh"] for name, f, _ in logs if f.get("interval") == interval
                           and f.get("consumer") == index and name in
                           ("P2PAllocation", "PoolAllocation"))
            assert sum(f["wh"] for f in submitted) + received == e[0], interval
        if interval >= revoked_in:
            assert gone not in meters_in(logs, interval), interval


# ---- 3. the chain node restarted

def anvil_pid(parent: int) -> int | None:
    """The anvil process ``chain run`` (pid ``parent``) runs, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"anvil" in cmdline:
            return int(entry.name)
    return None


def mid_interval(site) -> None:
    """Wait for the middle third of the current interval (simulated time)."""
    wait_until(lambda: INTERVAL_S // 3 < site.clock.now() % INTERVAL_S < 2 * INTERVAL_S // 3,
               INTERVAL_S / site.speed + 5, "the middle of an interval")


def test_chain_node_restarted_mid_interval_settles_each_interval_once(chain_site):
    site = chain_site
    dev = site.add("roof", "sdm120ct", "pv-household", seed=50, on_chain=True)
    started_in = site.interval_now()  # the site's earlier intervals are not ours
    dev.start()

    def settled_with_meter():
        return sorted(k for k, s in site.settled().items()
                      if s["meters"] == 1 and k >= started_in)

    wait_until(lambda: site.device_status("roof")["readings"] >= 3, 60,
               "the meter's first readings", lambda: dev.output()[-5:])

    # the node alone, killed mid-interval: chain run restarts it from its state
    mid_interval(site)
    killed_in = site.interval_now()
    chain_run = site.procs["chain run"]
    pid = anvil_pid(chain_run.pid)
    assert pid is not None, "no anvil under chain run"
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: (anvil_pid(chain_run.pid) or pid) != pid, 60,
               "chain run to restart its node", lambda: site.log_tail("chain run"))
    wait_until(lambda: max(settled_with_meter(), default=0) >= killed_in + 1, 90,
               "intervals settled after the node's restart", site.settled)

    dev.stop()

    settled = settled_with_meter()  # site.settled() fails on an interval settled twice
    assert settled == list(range(settled[0], settled[-1] + 1)), f"skipped: {settled}"
    submitted = [(f["gateway"], f["first_interval"])
                 for name, f, _ in settlement_logs(site.rpc_url, site.data)
                 if name == "Submitted"]
    assert len(submitted) == len(set(submitted)), "an interval submitted twice"
    status = site.cli_json("chain", "status")
    agreement = status["agreement"]
    assert agreement.get("agree") is True, agreement
    assert "embedded chain node" in site.log_tail("chain run", 100_000)
