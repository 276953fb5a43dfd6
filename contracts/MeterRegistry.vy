# pragma version 0.4.3
"""
@title Wattshare meter registry
@license MIT
@notice Who may submit (gateways) and what is measured (meters) in one
        community. Only the community admin (snekmate `ownable` owner, the
        deployer at first) changes the registry; every change is an event.

        A meter is identified by its 8-byte device id (the COSE `kid` the
        firmware signs with: "WS" + a 6-byte hardware id) and carries the
        SHA-256 of its P-256 public key (65-byte uncompressed SEC1 point), its
        owner account (pays and is paid), the gateway that reads it, and an
        active flag. The registry gives each meter a compact index (uint16,
        1..65535, handed out in order, never reused; 0 means "no meter") that
        settlement data uses instead of the device id.

        Limits: at most MAX_METERS active meters and MAX_GATEWAYS authorised
        gateways at a time; at most 65535 meters ever registered.
"""

from snekmate.auth import ownable

initializes: ownable

exports: (ownable.owner, ownable.transfer_ownership)

MAX_METERS: public(constant(uint256)) = 256
MAX_GATEWAYS: public(constant(uint256)) = 8
MAX_INDEX: public(constant(uint256)) = 65535

_ADDRESS_MASK: constant(uint256) = (1 << 160) - 1
_ACTIVE_BIT: constant(uint256) = 1 << 160
_GATEWAY_ID_SHIFT: constant(uint256) = 161


struct Meter:
    device_id: bytes8
    key_hash: bytes32
    owner: address
    gateway: address
    active: bool


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
_gateway_ids_issued: uint256
# gateway -> active meters it reads
gateway_meter_count: public(HashMap[address, uint256])

# index -> owner | active << 160 | gateway id << 161: one slot read per meter
# when settlement checks a submission
_route: HashMap[uint16, uint256]


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
        self._gateway_ids_issued = gid
        self.gateway_id[gateway] = gid
    self.is_gateway[gateway] = True
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
def register_meter(device_id: bytes8, key_hash: bytes32, owner: address, gateway: address) -> uint16:
    """
    @notice Registers an active meter and returns its compact index.
    @param device_id 8-byte device id (COSE kid), never registered before.
    @param key_hash sha256 of the meter's 65-byte uncompressed P-256 public key.
    @param owner Account that pays for imports and is paid for exports.
    @param gateway Authorised gateway that reads and submits this meter.
    """
    ownable._check_owner()
    assert device_id != empty(bytes8), "registry: zero device id"
    assert key_hash != empty(bytes32), "registry: zero key hash"
    assert owner != empty(address), "registry: zero owner"
    assert self.is_gateway[gateway], "registry: not a gateway"
    assert self.index_of[device_id] == 0, "registry: device already registered"
    assert self.active_meter_count < MAX_METERS, "registry: too many active meters"
    assert convert(self.meter_count, uint256) < MAX_INDEX, "registry: meter indices exhausted"
    index: uint16 = self.meter_count + 1
    self.meter_count = index
    self.index_of[device_id] = index
    self.meters[index] = Meter(
        device_id=device_id, key_hash=key_hash, owner=owner, gateway=gateway, active=True
    )
    self._route[index] = self._route_word(owner, gateway, True)
    self.active_meter_count += 1
    self.gateway_meter_count[gateway] += 1
    log MeterRegistered(
        index=index, device_id=device_id, key_hash=key_hash, owner=owner, gateway=gateway
    )
    return index


@external
def revoke_meter(index: uint16):
    """
    @notice Revoked meters are rejected in new submissions; their index and
            device id are never reused. Revocation is final.
    """
    ownable._check_owner()
    m: Meter = self._active_meter(index)
    self.meters[index].active = False
    self._route[index] = self._route_word(m.owner, m.gateway, False)
    self.active_meter_count -= 1
    self.gateway_meter_count[m.gateway] -= 1
    log MeterRevoked(index=index, device_id=m.device_id)


@external
def set_meter_owner(index: uint16, owner: address):
    ownable._check_owner()
    assert owner != empty(address), "registry: zero owner"
    m: Meter = self._active_meter(index)
    self.meters[index].owner = owner
    self._route[index] = self._route_word(owner, m.gateway, True)
    log MeterOwnerChanged(index=index, previous_owner=m.owner, new_owner=owner)


@external
def set_meter_gateway(index: uint16, gateway: address):
    ownable._check_owner()
    assert self.is_gateway[gateway], "registry: not a gateway"
    m: Meter = self._active_meter(index)
    self.meters[index].gateway = gateway
    self._route[index] = self._route_word(m.owner, gateway, True)
    self.gateway_meter_count[m.gateway] -= 1
    self.gateway_meter_count[gateway] += 1
    log MeterGatewayChanged(index=index, previous_gateway=m.gateway, new_gateway=gateway)


@external
def set_meter_key(index: uint16, key_hash: bytes32):
    """
    @notice Key rotation (device re-provisioned with a new key pair).
    """
    ownable._check_owner()
    assert key_hash != empty(bytes32), "registry: zero key hash"
    self._active_meter(index)
    self.meters[index].key_hash = key_hash
    log MeterKeyChanged(index=index, key_hash=key_hash)


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
def route(indices: DynArray[uint16, MAX_METERS], gateway: address) -> DynArray[address, MAX_METERS]:
    """
    @notice Checks a submission: `gateway` is authorised and every meter is
            active and bound to it. Returns the owner of each meter.
    """
    assert self.is_gateway[gateway], "registry: not a gateway"
    expected: uint256 = _ACTIVE_BIT | (self.gateway_id[gateway] << _GATEWAY_ID_SHIFT)
    owners: DynArray[address, MAX_METERS] = []
    for index: uint16 in indices:
        word: uint256 = self._route[index]
        assert word & ~_ADDRESS_MASK == expected, "registry: meter not active on this gateway"
        owners.append(convert(convert(word & _ADDRESS_MASK, uint160), address))
    return owners


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


# ---------------------------------------------------------------- internal


@internal
@view
def _active_meter(index: uint16) -> Meter:
    m: Meter = self.meters[index]
    assert m.active, "registry: no active meter at this index"
    return m


@internal
@view
def _route_word(owner: address, gateway: address, active: bool) -> uint256:
    word: uint256 = convert(owner, uint256) | (self.gateway_id[gateway] << _GATEWAY_ID_SHIFT)
    if active:
        word |= _ACTIVE_BIT
    return word
