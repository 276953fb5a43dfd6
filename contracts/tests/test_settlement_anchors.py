"""Energy from device signatures: the contract settles what the meters signed, checked
on chain (P256VERIFY, here the test precompile of contracts.boa_harness), read out of the
signed bytes themselves; and every way a gateway's key alone could bend it fails with a
named error while the honest path still settles."""

import boa
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wattcore import reading

from contracts.allocation_reference import pack_intervals
from contracts.boa_harness import INTERVAL_LENGTH, MAX_WINDOW, PRICE, event_tuples

L = INTERVAL_LENGTH


def _anchored(c):
    return event_tuples(c.settlement, {"AnchorRestarted"}, emitter=c.anchors)


def _settled(c):
    return [e for e in event_tuples(c.settlement) if e[0] == "Settled"]


@pytest.fixture
def window(trio):
    """The resident's PV and the school: a signed one-hour window of four intervals
    (2000 Wh exported, 3000 Wh imported), opened by one anchor each side."""
    c = trio
    c.start = c.next_interval()
    c.open_window(c.start, {c.resident_meter: (0, 2000), c.school_meter: (3000, 0)})
    return c


def _submit_window(c, shares, first=None, anchors=()):
    """Submit consecutive intervals from `first` (default: the window's start):
    shares = [{meter: (import, export)} per interval]."""
    first = c.start if first is None else first
    packed = pack_intervals([[(m, *v[m]) for m in sorted(v)] for v in shares])
    with boa.env.prank(c.gateways[0]):
        c.settlement.submit(first, c.root(), list(anchors), packed)


HONEST = [{1: (0, 500), 2: (750, 0)}, {1: (0, 600), 2: (750, 0)},
          {1: (0, 500), 2: (750, 0)}, {1: (0, 400), 2: (750, 0)}]


def test_an_hour_of_four_intervals_settles_exactly_the_signed_counters(window):
    c = window
    assert c.anchor_state(c.resident_meter)[4:7] == (MAX_WINDOW, 0, 2000)
    _submit_window(c, HONEST)  # four intervals in one transaction
    settled = _settled(c)
    assert [s[1] for s in settled] == [c.start + k for k in range(4)]
    assert sum(s[4] for s in settled) == 2000 and sum(s[3] for s in settled) == 3000
    # the window is closed: nothing left, nothing more to settle
    assert c.anchor_state(c.resident_meter)[4:7] == (0, 0, 0)
    assert c.settlement.cursor(c.gateways[0]) == c.start + 4
    assert c.token.balanceOf(c.settlement.address) > 0
    assert c.settlement.balance_of(c.resident) == 2000 * PRICE


def test_inflated_export_is_refused(window):
    c = window
    inflated = [dict(s) for s in HONEST]
    inflated[0] = {1: (0, 2001), 2: (750, 0)}
    with boa.reverts("settlement: more energy than the meter signed"):
        _submit_window(c, inflated)
    # the attack: 2^32-1 Wh exported by the resident
    with boa.reverts("settlement: more energy than the meter signed"):
        _submit_window(c, [{1: (0, 2**32 - 1), 2: (2**32 - 1, 0)}])
    _submit_window(c, HONEST)  # the honest path still settles


def test_a_window_must_add_up_to_the_signed_counters(window):
    c = window
    short = [dict(s) for s in HONEST]
    short[3] = {1: (0, 399), 2: (750, 0)}
    with boa.reverts("settlement: window does not add up to the signed counters"):
        _submit_window(c, short)
    # a meter must be in every interval of its window, in order
    with boa.reverts("settlement: interval outside the meter's signed window"):
        _submit_window(c, HONEST[1:], first=c.start + 1)
    skipped = [HONEST[0], {2: (750, 0)}, *HONEST[2:]]
    with boa.reverts("settlement: interval outside the meter's signed window"):
        _submit_window(c, skipped)
    # part of a window now, the rest later: still exact
    _submit_window(c, HONEST[:1])
    _submit_window(c, HONEST[1:], first=c.start + 1)
    assert c.anchor_state(c.school_meter)[4:7] == (0, 0, 0)


def test_reading_signed_by_another_devices_key_is_refused(trio):
    c = trio
    k = c.next_interval()
    forged = c.signed(c.resident_meter, (k + 1) * L, ee=10**6, signer=c.school_meter)
    anchors = [c.anchor(c.resident_meter, k, restart=True), forged]
    with boa.reverts("anchor: bad device signature"):
        c.submit(k, {c.resident_meter: (0, 10**6 - 500)}, anchors=anchors)
    # a flipped byte of the signed payload is as bad
    good = c.anchor(c.resident_meter, k + 1, 0, 100)
    meter, restart, at, payload, r, s = good
    tampered = (meter, restart, at, payload[:-1] + bytes([payload[-1] ^ 1]), r, s)
    with boa.reverts("anchor: bad device signature"):
        c.submit(k, {c.resident_meter: (0, 100)}, anchors=[anchors[0], tampered])
    c.submit(k, {c.resident_meter: (0, 100)}, anchors=[anchors[0], good])


def test_reading_of_another_device_is_refused(trio):
    c = trio
    k = c.next_interval()
    # the school's own signed reading, submitted as the resident's meter
    theirs = c.signed(c.school_meter, (k + 1) * L)
    stolen = (c.resident_meter, *theirs[1:])
    with boa.reverts("anchor: device id differs from the registry"):
        c.submit(k, {}, anchors=[c.anchor(c.resident_meter, k, restart=True), stolen])
    # a device id in the payload that is not the registered one, signed by the right key
    renamed = c.signed(c.resident_meter, (k + 1) * L, dev=b"WS\xff\xff\xff\xff\xff\xff")
    with boa.reverts("anchor: device id differs from the registry"):
        c.submit(k, {}, anchors=[renamed])


def test_replayed_older_boundary_reading_is_refused(trio):
    c = trio
    k = c.next_interval()
    start = c.anchor(c.resident_meter, k, restart=True)
    c.submit(k, {c.resident_meter: (0, 300)}, anchors=[start, c.anchor(c.resident_meter, k + 1,
                                                                         0, 300)])
    later = c.next_interval()
    with boa.reverts("anchor: boundary not after the meter's last anchor"):
        c.submit(later, {c.resident_meter: (0, 300)},
                 anchors=[start, c.anchor(c.resident_meter, later + 1, 0, 300)])
    # a reading with a later time but an old sequence number is refused too
    reused = c.signed(c.resident_meter, (later + 1) * L, seq=1)
    with boa.reverts("anchor: sequence number not increasing"):
        c.submit(later, {}, anchors=[reused])


def test_counters_going_backwards_are_refused_until_the_admin_resets(trio):
    c = trio
    k = c.next_interval()
    c.submit(k, {c.school_meter: (400, 0)})
    device = c.devices[c.school_meter]
    nxt = c.next_interval()
    backwards = c.signed(c.school_meter, nxt * L, ei=device.ei - 1)
    with boa.reverts("anchor: counter went backwards"):
        c.submit(nxt, {}, anchors=[backwards])
    # the meter was replaced: its counters restarted; the admin says so, then it goes on
    with boa.env.prank(c.resident), boa.reverts("settlement: caller is not the admin"):
        c.settlement.reset_anchor(c.school_meter)
    with boa.env.prank(c.admin):
        c.settlement.reset_anchor(c.school_meter)
    device.ei = 5
    c.submit(nxt, {c.school_meter: (40, 0)})
    assert c.anchor_state(c.school_meter)[2] == 45


def test_an_outage_is_a_gap_never_settled(trio):
    c = trio
    k = c.next_interval()
    c.submit(k, {c.resident_meter: (0, 100)})
    # no anchor for two hours: the next reading starts afresh
    c.travel_to((k + 1 + 8) * L)
    back = k + 1 + 8
    gap = c.anchor(c.resident_meter, back, 0, 7000)
    with boa.env.prank(c.gateways[0]):
        c.settlement.submit(0, b"\x00" * 32, [gap], [])
    assert _anchored(c) == [("AnchorRestarted", c.settlement.address, c.resident_meter, back)]
    with boa.reverts("settlement: interval outside the meter's signed window"):
        c.submit(back - 1, {c.resident_meter: (0, 7000)}, anchors=[])
    nxt = c.next_interval()
    c.submit(nxt, {c.resident_meter: (0, 50)})


def test_anchor_must_be_a_trusted_reading_at_a_boundary(trio):
    c = trio
    k = c.next_interval()
    m = c.resident_meter
    cases = [
        (c.signed(m, k * L + 300), "anchor: reading not taken at an interval boundary"),
        (c.signed(m, k * L, st=reading.ST_CLOCK_UNTRUSTED),
         "anchor: reading flagged (fault or untrusted clock)"),
        (c.signed(m, k * L, st=reading.ST_METER_NO_REPLY),
         "anchor: reading lacks a field (seq, t, st, ei) or is out of order"),
        (c.signed(m, (k + 2) * L), "anchor: boundary in the future"),
        (c.signed(m, (c.settlement.start_interval() - 1) * L),
         "anchor: before the community started"),
    ]
    for anchor, reason in cases:
        with boa.reverts(reason), boa.env.prank(c.gateways[0]):
            c.settlement.submit(0, b"\x00" * 32, [anchor], [])
    with boa.env.prank(c.admin):
        c.registry.revoke_meter(m)
    with boa.reverts("anchor: meter revoked"), boa.env.prank(c.gateways[0]):
        c.settlement.submit(0, b"\x00" * 32, [c.signed(m, k * L)], [])


def test_restart_leaves_the_energy_since_the_last_anchor_unsettled(trio):
    c = trio
    k = c.next_interval()
    c.submit(k, {c.school_meter: (100, 0)})
    c.travel_to((k + 3) * L)
    # the gateway skips interval k+1 and restarts the window at k+2: k+1 is a gap
    c.submit(k + 2, {c.school_meter: (200, 0)}, anchors=[
        c.anchor(c.school_meter, k + 2, 999, 0, restart=True),
        c.anchor(c.school_meter, k + 3, 200, 0)])
    # only the restart is an event; the window it opens is the anchor book's state
    assert [e[3] for e in _anchored(c)] == [k + 2]
    d = c.devices[c.school_meter]
    assert c.anchor_state(c.school_meter)[:5] == (k + 3, d.seq, d.ei, d.ee, 0)
    assert [s[3] for s in _settled(c)] == [200]


# ------------------------------------------------------------- the CBOR reader


readings = st.fixed_dictionaries(
    {
        "dev": st.binary(min_size=8, max_size=8),
        "seq": st.integers(0, 2**64 - 1),
        "t": st.integers(0, 2**40 - 1),
        "st": st.sampled_from([0, reading.ST_BOOT, reading.ST_SPOOL_OVERFLOW]),
        "ei": st.integers(0, 2**48 - 1),
        "mdl": st.integers(0, 255),
    },
    optional={
        "ee": st.integers(0, 2**48 - 1),  # absent: a meter without export register
        "p": st.integers(-(2**31), 2**31 - 1),
        "u": st.integers(0, 2**16 - 1),
        "i": st.integers(0, 2**32 - 1),
        "f": st.integers(0, 2**16 - 1),
        "pf": st.integers(-1000, 1000),
        "sn": st.integers(0, 2**32 - 1),
    },
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=readings)
def test_reader_reads_what_an_independent_decoder_reads(community, fields):
    # a pure view: the function-scoped fixture's state is never changed
    payload = reading.encode_payload(fields)
    decoded = cbor2.loads(payload)  # independent implementation
    got = community.anchors.read_reading(payload)
    assert got == (decoded[1], decoded[2], decoded[3], decoded[4], decoded[5],
                   decoded.get(6, 0))


@pytest.mark.parametrize("payload, reason", [
    # seq 5 as a 1-byte integer (0x18 0x05): not the shortest form
    (bytes.fromhex("a7014857530000000000010218050300040005000600") + b"\x0c\x01",
     "anchor: payload is not deterministic CBOR"),
    # keys out of order (t before seq)
    (bytes.fromhex("a701485753000000000001030002000400050006000c01"),
     "anchor: reading lacks a field (seq, t, st, ei) or is out of order"),
    # a negative counter
    (bytes.fromhex("a701485753000000000001020003000400052006000c01"),
     "anchor: payload field is not an unsigned integer"),
    # not a map / a map too small to be a reading
    (bytes.fromhex("8701485753000000000001020003000400050006000c01"),
     "anchor: payload is not a reading map"),
    # the device id is not an 8-byte string
    (bytes.fromhex("a70147575300000000000102000300040005000600"),
     "anchor: reading does not start with an 8-byte device id"),
    # cut inside the export counter
    (bytes.fromhex("a7014857530000000000010200030004000500061901"),
     "anchor: payload ends inside a field"),
])
def test_reader_refuses_what_a_meter_never_signs(community, payload, reason):
    with boa.reverts(reason):
        community.anchors.read_reading(payload)
