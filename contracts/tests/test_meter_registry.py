"""MeterRegistry: admin-only changes, gateways, meters (public keys on P-256), compact
indices, gateway bindings, events."""

import boa
import pytest

from contracts.boa_harness import device_id, event_tuples, key_hash, meter_key, public_key

ZERO = "0x" + "00" * 20


def pub(n):
    return public_key(meter_key(n))


def _admin_calls(c, stranger_gateway, meter):
    return {
        "add_gateway": (c.registry.add_gateway, (stranger_gateway,)),
        "remove_gateway": (c.registry.remove_gateway, (c.gateways[0],)),
        "register_meter": (c.registry.register_meter,
                           (device_id(999), pub(999), c.admin, c.gateways[0])),
        "revoke_meter": (c.registry.revoke_meter, (meter,)),
        "set_meter_owner": (c.registry.set_meter_owner, (meter, stranger_gateway)),
        "set_meter_gateway": (c.registry.set_meter_gateway, (meter, c.gateways[0])),
        "set_meter_key": (c.registry.set_meter_key, (meter, pub(998))),
        "transfer_ownership": (c.registry.transfer_ownership, (stranger_gateway,)),
    }


@pytest.mark.parametrize(
    "name",
    ["add_gateway", "remove_gateway", "register_meter", "revoke_meter", "set_meter_owner",
     "set_meter_gateway", "set_meter_key", "transfer_ownership"],
)
def test_only_admin_changes_the_registry(trio, name):
    c = trio
    outsider = c.new_account("outsider")
    fn, args = _admin_calls(c, outsider, c.resident_meter)[name]
    for caller in (outsider, c.gateways[0], c.resident):
        with boa.env.prank(caller), boa.reverts("ownable: caller is not the owner"):
            fn(*args)


def test_register_assigns_compact_indices_and_logs(community):
    c = community
    owner = c.new_account("owner")
    with boa.env.prank(c.admin):
        first = c.registry.register_meter(device_id(1), pub(1), owner, c.gateways[0])
        logs = event_tuples(c.registry)
        registered_at = boa.env.evm.patch.timestamp
        second = c.registry.register_meter(device_id(2), pub(2), owner, c.gateways[0])
    assert (first, second) == (1, 2)
    assert logs == [("MeterRegistered", 1, device_id(1), key_hash(pub(1)), owner, c.gateways[0])]
    m = c.registry.meters(1)
    x, y = int.from_bytes(pub(1)[1:33], "big"), int.from_bytes(pub(1)[33:], "big")
    assert (m.device_id, m.key_x, m.key_y, m.owner, m.gateway, m.active, m.registered_at) == (
        device_id(1), x, y, owner, c.gateways[0], True, registered_at)
    assert c.registry.index_of(device_id(2)) == 2
    assert c.registry.meter_count() == 2
    assert c.registry.active_meter_count() == 2
    assert c.registry.owner_of(2) == owner
    # what settlement checks a signed reading against: key, device id, registration
    (key,) = c.registry.meter_keys([1])
    assert (key.key_x, key.key_y, key.device_id, key.registered_at) == (
        x, y, device_id(1), registered_at)


def test_revoke_is_final_and_indices_are_not_reused(trio):
    c = trio
    with boa.env.prank(c.admin):
        c.registry.revoke_meter(c.school_meter)
        assert event_tuples(c.registry) == [
            ("MeterRevoked", c.school_meter, device_id(c.school_meter))]
        with boa.reverts("registry: no active meter at this index"):
            c.registry.revoke_meter(c.school_meter)
        with boa.reverts("registry: device already registered"):
            c.registry.register_meter(device_id(c.school_meter), pub(7), c.school,
                                      c.gateways[0])
        fresh = c.registry.register_meter(device_id(100), pub(100), c.school, c.gateways[0])
    assert fresh == 4
    assert not c.registry.meters(c.school_meter).active
    assert c.registry.active_meter_count() == 3  # 3 registered, 1 revoked, 1 new
    # a revoked meter keeps its owner for pending settlements, but is marked inactive
    assert c.registry.owner_of(c.school_meter) == c.school
    assert c.registry.binding(c.school_meter)[3] is False


def test_register_validates_input(community):
    c = community
    owner = c.new_account("owner")
    stranger = c.new_account("stranger")
    off_curve = pub(1)[:64] + bytes([pub(1)[64] ^ 1])
    cases = [
        ((b"\x00" * 8, pub(1), owner, c.gateways[0]), "registry: zero device id"),
        ((device_id(1), pub(1)[:64], owner, c.gateways[0]),
         "registry: public key must be 65 bytes 04||x||y"),
        ((device_id(1), b"\x02" + pub(1)[1:], owner, c.gateways[0]),
         "registry: public key must be 65 bytes 04||x||y"),
        ((device_id(1), off_curve, owner, c.gateways[0]), "registry: public key not on P-256"),
        ((device_id(1), b"\x04" + b"\xff" * 64, owner, c.gateways[0]),
         "registry: public key not on P-256"),
        ((device_id(1), pub(1), ZERO, c.gateways[0]), "registry: zero owner"),
        ((device_id(1), pub(1), owner, stranger), "registry: not a gateway"),
    ]
    with boa.env.prank(c.admin):
        for args, reason in cases:
            with boa.reverts(reason):
                c.registry.register_meter(*args)


def test_gateway_lifecycle_and_limits(community):
    c = community
    extra = [c.new_account(f"gw{k}") for k in range(8)]
    with boa.env.prank(c.admin):
        for gw in extra[:7]:
            c.registry.add_gateway(gw)
        assert c.registry.gateway_count() == 8
        with boa.reverts("registry: too many gateways"):
            c.registry.add_gateway(extra[7])
        with boa.reverts("registry: gateway already authorised"):
            c.registry.add_gateway(extra[0])
        gid = c.registry.gateway_id(extra[0])
        c.registry.remove_gateway(extra[0])
        assert event_tuples(c.registry) == [("GatewayRemoved", extra[0])]
        assert not c.registry.is_gateway(extra[0])
        c.registry.add_gateway(extra[0])  # re-added: keeps its id
        assert c.registry.gateway_id(extra[0]) == gid
        with boa.reverts("registry: not a gateway"):
            c.registry.remove_gateway(c.new_account("never"))
    assert sorted(c.registry.gateways(i) for i in range(8)) == sorted([c.gateways[0], *extra[:7]])


def test_gateway_with_meters_cannot_be_removed(trio):
    c = trio
    spare = c.new_account("spare")
    with boa.env.prank(c.admin):
        c.registry.add_gateway(spare)
        with boa.reverts("registry: gateway still has meters"):
            c.registry.remove_gateway(c.gateways[0])
        for meter in (c.resident_meter, c.school_meter):
            c.registry.set_meter_gateway(meter, spare)
        assert event_tuples(c.registry) == [
            ("MeterGatewayChanged", c.school_meter, c.gateways[0], spare)]
        with boa.reverts("registry: meter already on this gateway"):
            c.registry.set_meter_gateway(c.school_meter, spare)
        c.registry.revoke_meter(c.neighbour_meter)
        c.registry.remove_gateway(c.gateways[0])
    assert c.registry.gateway_meter_count(spare) == 2
    assert c.registry.owners_of([c.resident_meter, c.school_meter]) == [c.resident, c.school]


def test_owner_and_key_changes(trio):
    c = trio
    buyer = c.new_account("buyer")
    with boa.env.prank(c.admin):
        c.registry.set_meter_owner(c.resident_meter, buyer)
        assert event_tuples(c.registry) == [
            ("MeterOwnerChanged", c.resident_meter, c.resident, buyer)]
        c.registry.set_meter_key(c.resident_meter, pub(77))
        assert event_tuples(c.registry) == [
            ("MeterKeyChanged", c.resident_meter, key_hash(pub(77)))]
        with boa.reverts("registry: public key not on P-256"):
            c.registry.set_meter_key(c.resident_meter, pub(77)[:64] + b"\x00")
    assert c.registry.owner_of(c.resident_meter) == buyer
    assert c.registry.meters(c.resident_meter).key_x == int.from_bytes(pub(77)[1:33], "big")
    # the owner change keeps the binding; the key change keeps the device id
    assert c.registry.binding(c.resident_meter)[0] == c.registry.gateway_id(c.gateways[0])
    assert c.registry.meter_keys([c.resident_meter])[0].device_id == device_id(
        c.resident_meter)


def test_binding_follows_the_gateway_move(trio):
    c = trio
    other = c.new_account("other")
    added_at = boa.env.evm.patch.timestamp
    with boa.env.prank(c.admin):
        c.registry.add_gateway(other)
    first, second = c.registry.gateway_id(c.gateways[0]), c.registry.gateway_id(other)
    registered = c.registry.meters(c.school_meter).registered_at
    assert c.registry.binding(c.school_meter) == (first, registered, 0, True)
    boa.env.time_travel(seconds=1000)
    moved_at = boa.env.evm.patch.timestamp
    with boa.env.prank(c.admin):
        c.registry.set_meter_gateway(c.school_meter, other)
    # intervals starting before the move stay with the first gateway
    assert c.registry.binding(c.school_meter) == (second, moved_at, first, True)
    with boa.reverts("registry: not a gateway"):
        c.registry.sender_gateway_id(c.new_account("never"))
    assert c.registry.sender_gateway_id(other) == second
    listed = c.registry.gateway_list()
    assert [w & ((1 << 160) - 1) for w in listed] == [int(c.gateways[0], 16), int(other, 16)]
    assert listed[1] >> 160 == added_at


def test_at_most_max_meters_active(community):
    c = community
    owner = c.new_account("owner")
    limit = c.registry.MAX_METERS()
    assert limit == 256
    for _ in range(limit):
        c.register_meter(owner)
    with boa.env.prank(c.admin):
        with boa.reverts("registry: too many active meters"):
            c.registry.register_meter(device_id(5000), pub(5000), owner, c.gateways[0])
        c.registry.revoke_meter(17)
        index = c.registry.register_meter(device_id(5000), pub(5000), owner, c.gateways[0])
    assert index == limit + 1  # indices keep growing, never reused


def test_admin_handover(community):
    c = community
    new_admin = c.new_account("new_admin")
    with boa.env.prank(c.admin):
        c.registry.transfer_ownership(new_admin)
    assert c.registry.owner() == new_admin
    with boa.env.prank(c.admin), boa.reverts("ownable: caller is not the owner"):
        c.registry.add_gateway(new_admin)
