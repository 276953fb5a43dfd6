"""Tried as an attacker holding a gateway's key would, on a real anvil (osaka: the real
P256VERIFY precompile, the 2^24 gas cap per transaction): every way of bending the
settlement of issue 12 is refused by the contract with a named reason, and the honest
submission, built by the gateway from the same stored readings, still settles; the
export for the grid operator agrees with what settled, self-supply apart."""

import json
import time

import pytest
from chain_community import Community, L
from eth_account import Account
from wattcore import cose, reading

from gateway.chain import allocations, contracts, deploy, rpc
from gateway.chain.errors import RpcError
from gateway.chain.outbox import Outbox


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    # a resident who also draws a little (self-supply), the school, a household
    community = Community(tmp_path_factory.mktemp("attacks"), members=(
        ("producer", 800, 20_000), ("school", 6_000, 0), ("household", 1_500, 0)))
    producer, school = community.member("producer"), community.member("school")
    deploy.set_producer_key(community.port, producer.owner_key, community.settlement,
                            producer.index, "static", [school.index], [4000])
    first = community.first
    community.store_readings(first * L, (first + 2) * L)
    community.honest = community.batcher().build(first, first + 2)
    assert [(b.part, b.intervals) for b in community.honest] == [(0, 2)]
    yield community
    community.close()


def _call(c, first=None, root=None, anchors=None, intervals=None):
    """The honest row's submit call, with parts replaced."""
    row = c.conn.execute("SELECT interval, root, packed FROM chain_outbox WHERE part = 0 "
                         "ORDER BY interval LIMIT 1").fetchone()
    call = json.loads(row[2])
    a = [(m, r, at, bytes.fromhex(p), bytes.fromhex(x), bytes.fromhex(y))
         for m, r, at, p, x, y in call["anchors"]] if anchors is None else anchors
    words = [int(w, 16) for w in call["intervals"]] if intervals is None else intervals
    return rpc.encode_call(contracts.SUBMIT, [row[0] if first is None else first,
                                              bytes(row[1]) if root is None else root,
                                              a, words])


def _refused(c, data, sender_key=None):
    """The contract's reason for refusing ``data`` from the gateway (or ``sender_key``)."""
    key = sender_key or c.gateway_key
    with pytest.raises(RpcError) as e:
        rpc.send_transaction(c.port, key, c.settlement, data)
    return str(e.value)


def _honest_anchors(c):
    row = c.conn.execute("SELECT packed FROM chain_outbox WHERE part = 0 ORDER BY interval "
                         "LIMIT 1").fetchone()
    return [(m, r, at, bytes.fromhex(p), bytes.fromhex(x), bytes.fromhex(y))
            for m, r, at, p, x, y in json.loads(row[0])["anchors"]]


def _entries(c):
    row = c.conn.execute("SELECT packed FROM chain_outbox WHERE part = 0 ORDER BY interval "
                         "LIMIT 1").fetchone()
    return contracts.unpack_intervals([int(w, 16) for w in json.loads(row[0])["intervals"]])


def _with_entry(per_interval, k, meter, imp=None, exp=None):
    out = [list(x) for x in per_interval]
    out[k] = [(m, imp if (m == meter and imp is not None) else i,
               exp if (m == meter and exp is not None) else e) for m, i, e in out[k]]
    return contracts.pack_intervals(out)


def test_1_attacks_before_the_honest_submission_are_refused(c):
    producer, school = c.member("producer"), c.member("school")
    honest = _entries(c)
    # inflated export (one Wh more than the meter signed), and the 2^32-1 attack
    assert "settlement: more energy than the meter signed" in _refused(
        c, _call(c, intervals=_with_entry(honest, 0, producer.index,
                                          exp=honest[0][0][2] + 1)))
    huge = _with_entry(_entries(c), 0, producer.index, exp=2**32 - 1)
    huge = _with_entry(contracts.unpack_intervals(huge), 0, school.index, imp=2**32 - 1)
    assert "settlement: more energy than the meter signed" in _refused(c, _call(
        c, intervals=huge))
    # a window that does not add up: the energy moved between meters' intervals
    shifted = _with_entry(honest, 1, producer.index, exp=honest[1][0][2] - 1)
    assert "settlement: window does not add up to the signed counters" in _refused(
        c, _call(c, intervals=shifted))
    # fabricated past intervals: 1970 and 1998
    for first in (1, 1_000_000):
        assert "settlement: interval before the community started" in _refused(
            c, _call(c, first=first))
    # an empty root, an empty submission
    assert "settlement: zero root" in _refused(c, _call(c, root=bytes(32)))
    assert "settlement: empty submission" in _refused(
        c, rpc.encode_call(contracts.SUBMIT, [c.first, bytes(32), [], []]))
    # a reading signed by another device's key (the school's key, the producer's reading)
    anchors = _honest_anchors(c)
    m, restart, at, payload, _, _ = anchors[1]
    assert m == producer.index
    forged = school.meter.sign(cose.sig_structure(cose.PROTECTED_ES256, payload))
    anchors[1] = (m, restart, at, payload, forged[:32], forged[32:])
    assert "anchor: bad device signature" in _refused(c, _call(c, anchors=anchors))
    # a signed reading of another meter presented as this one's
    anchors = _honest_anchors(c)
    anchors[1] = (school.index, *anchors[1][1:])
    assert "anchor: device id differs from the registry" in _refused(c, _call(
        c, anchors=anchors))
    # another gateway (authorised, but not the meters' own) with the meters' readings
    other = Account.create()
    deploy.add_gateway(c.port, c.admin_key, c.deployment.registry, other.address)
    rpc.send_transaction(c.port, c.admin_key, other.address, b"", value=10**18, gas=21_000)
    assert "anchor: meter not bound to this gateway" in _refused(c, _call(c), other.key)


def test_2_the_honest_submission_settles(c):
    box = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    for _ in range(10):
        box.step()
    assert c.conn.execute("SELECT state FROM chain_outbox").fetchall() == [("confirmed",)]
    settled = c.logs("Settled")
    assert [e["interval"] for e in settled] == [c.first, c.first + 1]
    expected = [c.expected_totals(k) for k in (c.first, c.first + 1)]
    assert [e["export_wh"] for e in settled] == [sum(x for _, x in t.values())
                                                 for t in expected]
    # the grid operator's export agrees with what settled: shared = p2p + pool
    rows = allocations.allocation_rows(c.port, c.settlement, c.first, c.first + 1)
    for e in settled:
        shared = sum(r["wh"] for r in rows if r["interval"] == e["interval"]
                     and r["kind"] in ("p2p", "pool"))
        assert shared == e["p2p_wh"] > 0
    own = [r for r in rows if r["kind"] == "self_supply"]
    producer = c.member("producer")
    assert own and all(r["producer"] == r["consumer"] == producer.index for r in own)
    # the pool never hands the producer its own export back
    assert not [r for r in rows if r["kind"] == "pool" and r["consumer"] == producer.index]


def test_3_attacks_after_it_are_refused(c):
    producer = c.member("producer")
    # the same submission again, and again with a fresh root: each interval once
    assert "settlement: root already used" in _refused(c, _call(c))
    assert "settlement: interval already submitted by this gateway" in _refused(
        c, _call(c, root=b"\x01" * 32))
    # the root of this submission for the next intervals
    nxt = c.first + 2
    assert "settlement: root already used" in _refused(c, _call(c, first=nxt, anchors=[]))
    # a replayed older boundary reading of the producer (its anchor at `first`)
    old = _honest_anchors(c)[0]
    assert old[0] == producer.index and old[1]  # its first anchor (a restart)
    empty = contracts.pack_intervals([[]])
    assert "anchor: boundary not after the meter's last anchor" in _refused(
        c, _call(c, first=nxt, root=b"\x02" * 32, anchors=[old], intervals=empty))
    # counters going backwards: the producer's device signs a later reading with less
    producer.seq += 1
    t = (c.first + 3) * L
    c.port.request("evm_setTime", [max(t + 10, int(time.time()))])
    low = producer.meter.reading(producer.seq, t=t, ei=5, ee=5, p=0)
    s = cose.decode_sign1(low)
    assert reading.decode_payload(s.payload)["t"] == t
    back = (producer.index, False, 0, s.payload, s.signature[:32], s.signature[32:])
    assert "anchor: counter went backwards" in _refused(
        c, _call(c, first=nxt, root=b"\x03" * 32, anchors=[back], intervals=empty))


def test_4_early_settle_by_a_third_party_is_refused(tmp_path):
    # two gateways: the second's meter is in the interval too; a stranger cannot settle
    # it before the deadline of the last gateway expected, then can
    d = Community(tmp_path, members=(("producer", 0, 20_000), ("school", 6_000, 0)))
    try:
        other = Account.create()
        first = d.first
        d.port.request("evm_setTime", [first * L - 60])  # authorised before the interval
        deploy.add_gateway(d.port, d.admin_key, d.deployment.registry, other.address)
        d.port.request("evm_setTime", [int(time.time())])
        d.store_readings(first * L, (first + 1) * L)
        d.batcher().build(first, first + 1)
        box = Outbox(d.conn, d.port, d.gateway_key, d.settlement)
        for _ in range(10):
            box.step()
        assert d.logs("Settled") == []  # staged: the other gateway is expected
        stranger = Account.create()
        rpc.send_transaction(d.port, d.admin_key, stranger.address, b"", value=10**18,
                             gas=21_000)
        data = rpc.encode_call(contracts.SETTLE, [first])
        with pytest.raises(RpcError, match="settlement: deadline not reached"):
            rpc.send_transaction(d.port, stranger.key, d.settlement, data)
        deadline = deploy.view(d.port, d.settlement, "deadline(uint256)", [first],
                               ["uint256"])
        assert deadline > int(time.time())
        d.port.request("evm_setTime", [deadline])
        rpc.send_transaction(d.port, stranger.key, d.settlement, data)
        (settled,) = d.logs("Settled")
        assert settled["by_deadline"] and settled["meters"] == 2
    finally:
        d.close()
