# pragma version 0.4.3
"""
@title Wattshare meter registry
@license MIT
@notice Who may submit (gateways) and what is measured (meters) in one
        community. Only the community admin (snekmate `ownable` owner, the
        deployer at first) changes the registry; every change is an event.

        A meter is identified by its 8-byte device id (the COSE `kid` the
        firmware signs with: "WS" + a 6-byte hardware id) and carries its
        P-256 public key (x, y: settlement verifies the meter's signed
        readings against it), its owner account (pays and is paid), the
        gateway that reads it, when it was registered, and an active flag.
        The registry gives each meter a compact index (uint16, 1..65535,
        handed out in order, never reused; 0 means "no meter") that
        settlement data uses instead of the device id.

        Binding: a meter is read by one gateway at a time. When the admin
        moves it, the previous gateway keeps the intervals that start before
        the move and the new one takes those that start at or after it
        (`binding`), so a backlog the old gateway submits late still counts.

        Limits: at most MAX_METERS active meters and MAX_GATEWAYS authorised
        gateways at a time; at most 65535 meters and 8191 gateways ever.
"""

from snekmate.auth import ownable

initializes: ownable

exports: (ownable.owner, ownable.transfer_ownership)

MAX_METERS: public(constant(uint256)) = 256
MAX_GATEWAYS: public(constant(uint256)) = 8
MAX_INDEX: public(constant(uint256)) = 65535
MAX_GATEWAY_ID: public(constant(uint256)) = 8191
# meters per `meter_keys` call (a submission's signed readings)
MAX_KEYS: public(constant(uint256)) = 64

# P-256 (secp256r1): y^2 = x^3 - 3x + b over the prime field p
_P256_P: constant(uint256) = 115792089210356248762697446949407573530086143415290314195533631308867097853951
_P256_B: constant(uint256) = 41058363725152142129326129780047268409114441015993725554835256314039467401291

# route word: owner | active << 160 | gateway id << 161 | since << 174
#             | previous gateway id << 214
_ADDRESS_MASK: constant(uint256) = (1 << 160) - 1
_ACTIVE_BIT: constant(uint256) = 1 << 160
_GID_SHIFT: constant(uint256) = 161
_GID_MASK: constant(uint256) = 8191
_SINCE_SHIFT: constant(uint256) = 174
_SINCE_MASK: constant(uint256) = (1 << 40) - 1
_PREV_SHIFT: constant(uint256) = 214


struct Meter:
    device_id: bytes8
    key_x: uint256
    key_y: uint256
    owner: address
    gateway: address
    active: bool
    registered_at: uint256


# What settlement reads to check a signed reading of a meter (one call for
# all the readings of a submission).
struct MeterKey:
    key_x: uint256
    key_y: uint256
    device_id: bytes8
    registered_at: uint256
    route: uint256


# index -> meter (index 0 is never used)
meters: public(HashMap[uint16, Meter])
# device id -> index (0: never registered); a device id is never reused
index_of: public(HashMap[bytes8, uint16])
# indices handed out so far: meters are 1..meter_count
meter_count: public(uint16)
active_meter_count: public(uint256)

is_gateway: public(HashMap[address, bool])
gateways: public(DynArray[address, MAX_GATEWAYS])
gateway_count: public(uint256)
# gateway -> small id, assigned when first added and kept if re-added
gateway_id: public(HashMap[address, uint256])
# gateway -> when it was (last) authorised
gateway_added_at: public(HashMap[address, uint256])
_gateway_ids_issued: uint256
# gateway -> active meters it reads
gateway_meter_count: public(HashMap[address, uint256])

# index -> route word (see above): one slot read per meter when settlement
# checks a submission
_route: HashMap[uint16, uint256]
# index -> device id << 192 | registration time: with the key, what a signed
# reading is checked against
_ident: HashMap[uint16, uint256]


event GatewayAdded:
    gateway: indexed(address)
    gateway_id: uint256

event GatewayRemoved:
    gateway: indexed(address)

event MeterRegistered:
    index: indexed(uint16)
    device_id: indexed(bytes8)
    key_hash: bytes32
    owner: indexed(address)
    gateway: address

event MeterRevoked:
    index: indexed(uint16)
    device_id: indexed(bytes8)

event MeterOwnerChanged:
    index: indexed(uint16)
    previous_owner: indexed(address)
    new_owner: indexed(address)

event MeterGatewayChanged:
    index: indexed(uint16)
    previous_gateway: indexed(address)
    new_gateway: indexed(address)

event MeterKeyChanged:
    index: indexed(uint16)
    key_hash: bytes32


@deploy
def __init__():
    ownable.__init__()


# ---------------------------------------------------------------- gateways


@external
def add_gateway(gateway: address):
    ownable._check_owner()
    assert gateway != empty(address), "registry: zero gateway"
    assert not self.is_gateway[gateway], "registry: gateway already authorised"
    assert self.gateway_count < MAX_GATEWAYS, "registry: too many gateways"
    gid: uint256 = self.gateway_id[gateway]
    if gid == 0:
        gid = self._gateway_ids_issued + 1
        assert gid <= MAX_GATEWAY_ID, "registry: gateway ids exhausted"
        self._gateway_ids_issued = gid
        self.gateway_id[gateway] = gid
    self.is_gateway[gateway] = True
    self.gateway_added_at[gateway] = block.timestamp
    self.gateways.append(gateway)
    self.gateway_count += 1
    log GatewayAdded(gateway=gateway, gateway_id=gid)


@external
def remove_gateway(gateway: address):
    """
    @notice A gateway can only be removed once no active meter is bound to
            it (move its meters with `set_meter_gateway` or revoke them).
    """
    ownable._check_owner()
    assert self.is_gateway[gateway], "registry: not a gateway"
    assert self.gateway_meter_count[gateway] == 0, "registry: gateway still has meters"
    self.is_gateway[gateway] = False
    n: uint256 = len(self.gateways)
    for i: uint256 in range(n, bound=MAX_GATEWAYS):
        if self.gateways[i] == gateway:
            self.gateways[i] = self.gateways[n - 1]
            self.gateways.pop()
            break
    self.gateway_count -= 1
    log GatewayRemoved(gateway=gateway)


# ------------------------------------------------------------------ meters


@external
def register_meter(device_id: bytes8, public_key: Bytes[65], owner: address, gateway: address) -> uint16:
    """
    @notice Registers an active meter and returns its compact index.
    @param device_id 8-byte device id (COSE kid), never registered before.
    @param public_key The meter's P-256 public key, 65-byte uncompressed SEC1
           (0x04 || x || y), a point on the curve.
    @param owner Account that pays for imports and is paid for exports.
    @param gateway Authorised gateway that reads and submits this meter.
    """
    ownable._check_owner()
    assert device_id != empty(bytes8), "registry: zero device id"
    assert owner != empty(address), "registry: zero owner"
    assert self.is_gateway[gateway], "registry: not a gateway"
    assert self.index_of[device_id] == 0, "registry: device already registered"
    assert self.active_meter_count < MAX_METERS, "registry: too many active meters"
    assert convert(self.meter_count, uint256) < MAX_INDEX, "registry: meter indices exhausted"
    x: uint256 = 0
    y: uint256 = 0
    x, y = self._point(public_key)
    index: uint16 = self.meter_count + 1
    self.meter_count = index
    self.index_of[device_id] = index
    self.meters[index] = Meter(
        device_id=device_id,
        key_x=x,
        key_y=y,
        owner=owner,
        gateway=gateway,
        active=True,
        registered_at=block.timestamp,
    )
    self._route[index] = self._route_word(owner, self.gateway_id[gateway], True, block.timestamp, 0)
    self._ident[index] = (convert(convert(device_id, bytes32), uint256)) | block.timestamp
    self.active_meter_count += 1
    self.gateway_meter_count[gateway] += 1
    log MeterRegistered(
        index=index, device_id=device_id, key_hash=sha256(public_key), owner=owner, gateway=gateway
    )
    return index


@external
def revoke_meter(index: uint16):
    """
    @notice Revoked meters get no new signed window; their index and device
            id are never reused. Revocation is final.
    """
    ownable._check_owner()
    m: Meter = self._active_meter(index)
    self.meters[index].active = False
    self._route[index] = self._route[index] & ~_ACTIVE_BIT
    self.active_meter_count -= 1
    self.gateway_meter_count[m.gateway] -= 1
    log MeterRevoked(index=index, device_id=m.device_id)


@external
def set_meter_owner(index: uint16, owner: address):
    ownable._check_owner()
    assert owner != empty(address), "registry: zero owner"
    m: Meter = self._active_meter(index)
    self.meters[index].owner = owner
    self._route[index] = (self._route[index] & ~_ADDRESS_MASK) | convert(owner, uint256)
    log MeterOwnerChanged(index=index, previous_owner=m.owner, new_owner=owner)


@external
def set_meter_gateway(index: uint16, gateway: address):
    """
    @notice Moves a meter to another gateway from now on: intervals that
            start before this block stay with the previous gateway.
    """
    ownable._check_owner()
    assert self.is_gateway[gateway], "registry: not a gateway"
    m: Meter = self._active_meter(index)
    assert gateway != m.gateway, "registry: meter already on this gateway"
    self.meters[index].gateway = gateway
    previous: uint256 = (self._route[index] >> _GID_SHIFT) & _GID_MASK
    self._route[index] = self._route_word(m.owner, self.gateway_id[gateway], True, block.timestamp, previous)
    self.gateway_meter_count[m.gateway] -= 1
    self.gateway_meter_count[gateway] += 1
    log MeterGatewayChanged(index=index, previous_gateway=m.gateway, new_gateway=gateway)


@external
def set_meter_key(index: uint16, public_key: Bytes[65]):
    """
    @notice Key rotation (device re-provisioned with a new key pair; its
            sequence numbers and the meter's counters carry on).
    """
    ownable._check_owner()
    self._active_meter(index)
    x: uint256 = 0
    y: uint256 = 0
    x, y = self._point(public_key)
    self.meters[index].key_x = x
    self.meters[index].key_y = y
    log MeterKeyChanged(index=index, key_hash=sha256(public_key))


# ------------------------------------------------------- settlement lookups


@external
@view
def owner_of(index: uint16) -> address:
    """
    @notice Owner account of a registered (active or revoked) meter.
    """
    word: uint256 = self._route[index]
    assert word != 0, "registry: unknown meter"
    return convert(convert(word & _ADDRESS_MASK, uint160), address)


@external
@view
def owners_of(indices: DynArray[uint16, MAX_METERS]) -> DynArray[address, MAX_METERS]:
    """
    @notice Owner of each registered (active or revoked) meter.
    """
    owners: DynArray[address, MAX_METERS] = []
    for index: uint16 in indices:
        word: uint256 = self._route[index]
        assert word != 0, "registry: unknown meter"
        owners.append(convert(convert(word & _ADDRESS_MASK, uint160), address))
    return owners


@external
@view
def owners_packed(words: DynArray[uint256, 16]) -> DynArray[address, MAX_METERS]:
    """
    @notice `owners_of` with the indices packed 16 to a word (index k of word
            w in bits 16 k .. 16 k + 15), up to the first 0: a small call
            buffer for settlement, which asks once per interval.
    """
    owners: DynArray[address, MAX_METERS] = []
    for word: uint256 in words:
        for k: uint256 in range(16):
            index: uint16 = convert((word >> (16 * k)) & 65535, uint16)
            if index == 0:
                break
            route: uint256 = self._route[index]
            assert route != 0, "registry: unknown meter"
            owners.append(convert(convert(route & _ADDRESS_MASK, uint160), address))
    return owners


@external
@view
def sender_gateway_id(gateway: address) -> uint256:
    """
    @notice The id of an authorised gateway; reverts for anyone else.
    """
    assert self.is_gateway[gateway], "registry: not a gateway"
    return self.gateway_id[gateway]


@external
@view
def gateway_list() -> DynArray[uint256, MAX_GATEWAYS]:
    """
    @notice The authorised gateways: address | authorised-at time << 160.
    """
    out: DynArray[uint256, MAX_GATEWAYS] = []
    for gateway: address in self.gateways:
        out.append(convert(gateway, uint256) | (self.gateway_added_at[gateway] << 160))
    return out


@external
@view
def meter_keys(indices: DynArray[uint16, MAX_KEYS]) -> DynArray[MeterKey, MAX_KEYS]:
    """
    @notice What a meter's signed readings are checked against: its public
            key, device id, registration time and route word (owner, active
            flag, gateway binding: see `binding`).
    """
    out: DynArray[MeterKey, MAX_KEYS] = []
    for index: uint16 in indices:
        route: uint256 = self._route[index]
        assert route != 0, "registry: unknown meter"
        ident: uint256 = self._ident[index]
        out.append(MeterKey(
            key_x=self.meters[index].key_x,
            key_y=self.meters[index].key_y,
            device_id=convert(convert(ident >> 192, uint64), bytes8),
            registered_at=ident & ((1 << 192) - 1),
            route=route,
        ))
    return out


@external
@view
def binding(index: uint16) -> (uint256, uint256, uint256, bool):
    """
    @notice (gateway id, since, previous gateway id, active) of a meter: the
            gateway with id `gateway id` reads intervals starting at or after
            `since`, the previous one those that start before.
    """
    route: uint256 = self._route[index]
    return (
        (route >> _GID_SHIFT) & _GID_MASK,
        (route >> _SINCE_SHIFT) & _SINCE_MASK,
        (route >> _PREV_SHIFT) & _GID_MASK,
        route & _ACTIVE_BIT != 0,
    )


# ---------------------------------------------------------------- internal


@internal
@view
def _active_meter(index: uint16) -> Meter:
    m: Meter = self.meters[index]
    assert m.active, "registry: no active meter at this index"
    return m


@internal
@pure
def _route_word(owner: address, gid: uint256, active: bool, since: uint256, previous: uint256) -> uint256:
    word: uint256 = convert(owner, uint256) | (gid << _GID_SHIFT) | (since << _SINCE_SHIFT) | (previous << _PREV_SHIFT)
    if active:
        word |= _ACTIVE_BIT
    return word


@internal
@pure
def _point(public_key: Bytes[65]) -> (uint256, uint256):
    # (x, y) of an uncompressed SEC1 P-256 point; reverts if it is not one
    assert len(public_key) == 65 and slice(public_key, 0, 1) == b"\x04", "registry: public key must be 65 bytes 04||x||y"
    x: uint256 = extract32(public_key, 1, output_type=uint256)
    y: uint256 = extract32(public_key, 33, output_type=uint256)
    assert x < _P256_P and y < _P256_P, "registry: public key not on P-256"
    x3: uint256 = uint256_mulmod(uint256_mulmod(x, x, _P256_P), x, _P256_P)
    rhs: uint256 = uint256_addmod(
        uint256_addmod(x3, _P256_P - uint256_mulmod(3, x, _P256_P), _P256_P), _P256_B, _P256_P
    )
    assert uint256_mulmod(y, y, _P256_P) == rhs and x != 0, "registry: public key not on P-256"
    return x, y
