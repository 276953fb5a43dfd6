"""A small neighbourhood over several settlement intervals, end to end: the PV resident
(at work by day, 40 % of its surplus to the school), the school and two households,
each with the real firmware reading its simulated meter, the real gateway, and
``wattshare chain run`` settling interval by interval on the embedded anvil.

What a member can check, and this scenario does: every reading the devices signed was
stored, verified, none refused; each settled interval's flows on chain are exactly what
the allocation rule (contracts/allocation_reference.py) gives for the energy the meters
signed at the interval boundaries (computed here from the stored readings, not taken
from the gateway's submission); the prepaid balances moved by exactly those payments;
and sampled readings are proven down to the chain with ``wattshare export-proof`` and
``wattshare verify --bundle`` (a tampered bundle is refused)."""

from __future__ import annotations

import json

from contracts import allocation_reference as ref
from hil_tests.devices import spooled
from hil_tests.rig import (
    FUND,
    INTERVAL_S,
    settlement_balance,
    settlement_logs,
    wait_until,
)

RESIDENT, SCHOOL, NO1, NO2 = "no. 4 (PV, away by day)", "school", "no. 1", "no. 2"
ANCHOR_DELAY = 300  # an anchor is taken within 300 s after its boundary (docs/chain.md)
BAD_STATUS = 0x09FE | 0x0001  # a fault, or a clock not trusted
INTERVALS = 3  # settled with every member in them


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
    site.add(RESIDENT, "sdm120ct", "pv-away-by-day", seed=4, owner=resident)
    site.add(SCHOOL, "sdm630ct", "school", seed=20)
    site.add(NO1, "pzem004t-v3", "household", seed=1)
    site.add(NO2, "sdm120ct", "household", seed=2)
    labels = [RESIDENT, SCHOOL, NO1, NO2]
    site.add_on_chain(*labels)
    site.cli("community", "producer-key", "--meter", RESIDENT, "--static", f"{SCHOOL}=4000",
             "--anvil-account", "3")
    owners = {site.members[x]["index"]: site.members[x]["owner"] for x in labels}
    site.cli("community", "fund", "--account", *owners.values(), "--amount", str(FUND))
    for label in labels:
        site.members[label]["device"].start()

    def full_intervals():
        return [k for k, s in site.settled().items() if s["meters"] == len(labels)]

    wait_until(lambda: len(full_intervals()) >= INTERVALS, 120,
               f"{INTERVALS} intervals settled with all {len(labels)} meters",
               lambda: (site.settled(), site.status()["chain"]))
    for label in labels:
        site.members[label]["device"].stop()

    # every reading the devices signed and sent was stored as signed, none refused
    status = site.status()
    assert status["rejects"] == {}, status["rejects"]
    stored = {label: site.readings(label) for label in labels}
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
        dev_status = site.device_status(label)
        assert dev_status["readings"] == len(got) and dev_status["rejects"] == {}
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
