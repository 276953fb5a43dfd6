"""What must not be settled: a forged device (another key under a registered device's
id, and a device nobody registered), a replayed message (recorded on the wire and sent
again from elsewhere) and a revoked device. Each is rejected or ignored by the real
gateway, counted where a technician looks (``gateway status``, ``/metrics``), and
nothing of it reaches the chain: the honest meter's settled energy is exactly what its
own readings signed, and the revoked meter is in no interval from its revocation on."""

from __future__ import annotations

from hil_tests.devices import spooled
from hil_tests.rig import Link, posted_readings, replay, settlement_logs, wait_until
from hil_tests.test_neighbourhood import energy

METER_FIELDS = ("producer", "consumer", "meter")
CHANGED, FORBIDDEN = 0x44, 0x83  # CoAP 2.04, 4.03


def meters_in(logs, interval: int) -> set[int]:
    """Meter indices the chain's flows name in ``interval``."""
    return {f[k] for name, f, _ in logs if f.get("interval") == interval
            for k in METER_FIELDS if k in f}


def test_forged_replayed_and_revoked_readings_are_refused_and_not_settled(chain_site):
    site = chain_site
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
    for dev in (honest, leaving):
        dev.start()
    wait_until(lambda: any(s["meters"] == 2 for s in site.settled().values()), 90,
               "an interval settled with both meters", site.settled)

    # forged devices
    forger.start()
    stranger.start()

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

    # a revoked device: its own readings and a replay of them are refused
    site.cli("device", "revoke", leaving.device_id)
    revoked_in = site.interval_now()
    old = next(d for d in reversed(revoked_link.captured) if posted_readings(d))
    assert replay(site.gateway.coap_port, old).code == FORBIDDEN
    wait_until(lambda: rejects().get("revoked", 0) >= 2, 60,
               "the revoked device's readings refused", rejects)
    wait_until(lambda: max(site.settled(), default=0) >= revoked_in + 2, 90,
               "two intervals settled after the revocation", site.settled)
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
