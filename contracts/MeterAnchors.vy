# pragma version 0.4.3
"""
@title Wattshare meter anchors
@license MIT
@notice What the meters signed, checked on chain: the energy a settlement
        contract may settle per meter.

        An *anchor* of a meter at interval boundary B is its signed reading
        (COSE_Sign1, ES256) taken in [B, B + ANCHOR_DELAY). This contract
        rebuilds the COSE Sig_structure ["Signature1", h'a10126', h'', payload]
        from the reading's payload bytes, checks the signature with the
        P256VERIFY precompile (address 0x100: EIP-7951 on Ethereum since Osaka,
        RIP-7212 on rollups) against the public key in the meter registry, and
        reads the device id, sequence number, time, status and both energy
        counters out of those same bytes (a minimal deterministic-CBOR reader:
        it never takes a value that is not tied to the signed bytes).

        Two consecutive anchors of a meter at most an hour apart open a
        *window*: the difference of their counters, import and export, is
        exactly what the window's intervals may settle for the meter, in
        order, each interval once (`consume`). Anchors further apart (an
        outage), or after a window that was not settled in full, start afresh:
        the energy in between is a gap, never invented. Sequence numbers,
        boundaries and counters never go backwards.

        Per caller: each settlement contract keeps its meters' anchors under
        its own address (`anchor_of(settlement, meter)`) and passes its own
        registry and interval length with each call. Anyone may call; a call
        only changes the caller's own records, so one deployment serves any
        number of communities and needs no wiring.

        Anchor word of a meter (one storage slot):
            ei (48 bits) | ee << 48 | seq (48) << 96 | boundary (32) << 144
            | intervals left in the window (3) << 176 | import Wh left (32) << 179
            | export Wh left (32) << 211 | id of the gateway that opened it (13) << 243
"""


struct MeterKey:
    key_x: uint256
    key_y: uint256
    device_id: bytes8
    registered_at: uint256
    route: uint256


interface MeterRegistry:
    def meter_keys(indices: DynArray[uint16, MAX_ANCHORS]) -> DynArray[MeterKey, MAX_ANCHORS]: view


# A meter's signed reading at an interval boundary: the COSE_Sign1 payload
# (the deterministic-CBOR reading map, exactly the bytes the meter signed)
# and the ES256 signature r, s. `restart`: the gateway starts a new window
# here and leaves the energy since the meter's last anchor unsettled (a gap:
# a gateway may always withhold, never add). `at` is the settlement's
# (Settlement.vy: when in a submission it is checked); ignored here.
struct Anchor:
    meter: uint16
    restart: bool
    at: uint8
    payload: Bytes[MAX_PAYLOAD]
    r: bytes32
    s: bytes32


MAX_METERS: public(constant(uint256)) = 256
# Signed readings in one call.
MAX_ANCHORS: public(constant(uint256)) = 32
# Longest reading payload (the largest possible reading is 90 bytes).
MAX_PAYLOAD: public(constant(uint256)) = 96
# An anchor for boundary B is a reading taken in [B, B + ANCHOR_DELAY) s.
ANCHOR_DELAY: public(constant(uint256)) = 300
# Longest window between two anchors of a meter, in seconds.
MAX_WINDOW_SECONDS: public(constant(uint256)) = 3600
# Wh one meter may import (or export) in one window.
MAX_WH: public(constant(uint256)) = (1 << 32) - 1

_WH_MASK: constant(uint256) = (1 << 32) - 1
_EE_SHIFT: constant(uint256) = 48
_SEQ_SHIFT: constant(uint256) = 96
_BOUNDARY_SHIFT: constant(uint256) = 144
_OPEN_SHIFT: constant(uint256) = 176
_BUDGET_I_SHIFT: constant(uint256) = 179
_BUDGET_E_SHIFT: constant(uint256) = 211
_GID_SHIFT: constant(uint256) = 243
_COUNTER_MASK: constant(uint256) = (1 << 48) - 1
_SEQ_LIMIT: constant(uint256) = 1 << 48
_BOUNDARY_MASK: constant(uint256) = (1 << 32) - 1
_OPEN_MASK: constant(uint256) = 7
_RESTART: constant(uint256) = 7  # open = 7: the next anchor starts afresh (admin reset)

# registry route word (MeterRegistry.vy): owner | active << 160 | gateway id
# << 161 | since << 174 | previous gateway id << 214
_ROUTE_ACTIVE: constant(uint256) = 1 << 160
_ROUTE_GID_SHIFT: constant(uint256) = 161
_ROUTE_SINCE_SHIFT: constant(uint256) = 174
_ROUTE_PREV_SHIFT: constant(uint256) = 214
_GID_MASK: constant(uint256) = 8191
_SINCE_MASK: constant(uint256) = (1 << 40) - 1

_P256VERIFY: constant(address) = 0x0000000000000000000000000000000000000100
# Sig_structure up to the payload's byte-string head: array(4),
# text(10) "Signature1", bstr(3) {1: -7}, bstr(0) (external AAD)
_SIG_PREFIX: constant(Bytes[17]) = b"\x84\x6aSignature1\x43\xa1\x01\x26\x40"
# status flags that disqualify an anchor: CLOCK_UNTRUSTED (0x0001) and every
# fault of docs/protocol.md (0x09FE)
_ANCHOR_BAD_STATUS: constant(uint256) = 2559

# settlement contract -> meter -> anchor word
_anchor: HashMap[address, HashMap[uint16, uint256]]


# an anchor that starts afresh: whatever the meter measured before its
# boundary (since its previous anchor, if any) is a gap, never settled
event AnchorRestarted:
    settlement: indexed(address)
    meter: indexed(uint16)
    boundary: uint256

event AnchorReset:
    settlement: indexed(address)
    meter: indexed(uint16)


@external
def check(
    registry: MeterRegistry,
    interval_length: uint256,
    start_interval: uint256,
    gid: uint256,
    anchors: DynArray[Anchor, MAX_ANCHORS],
    lo: uint256,
    hi: uint256,
):
    """
    @notice Verify signed readings anchors[lo:hi] at interval boundaries, in order, for the
            gateway with registry id `gid`, and open each meter's window from
            its previous anchor (or start afresh). Reverts naming the first
            problem.
    @param registry The caller's meter registry (keys, device ids, bindings).
    @param interval_length The caller's interval length, s (900 or 1800).
    @param start_interval The caller's first interval: no anchor before it.
    @param gid The registry id of the gateway that submits these readings.
    @param anchors The signed readings.
    @param lo First of `anchors` to check.
    @param hi One past the last of `anchors` to check.
    """
    assert interval_length == 900 or interval_length == 1800, "anchor: interval must be 900 or 1800 s"
    max_window: uint256 = MAX_WINDOW_SECONDS // interval_length
    assert lo < hi and hi <= len(anchors), "anchor: empty range"
    indices: DynArray[uint16, MAX_ANCHORS] = []
    for i: uint256 in range(lo, hi, bound=MAX_ANCHORS):
        indices.append(anchors[i].meter)
    keys: DynArray[MeterKey, MAX_ANCHORS] = staticcall registry.meter_keys(indices)
    for i: uint256 in range(lo, hi, bound=MAX_ANCHORS):
        key: MeterKey = keys[i - lo]
        meter: uint16 = anchors[i].meter
        payload: Bytes[MAX_PAYLOAD] = anchors[i].payload
        dev: bytes8 = empty(bytes8)
        fields: uint256[5] = empty(uint256[5])  # seq, t, st, ei, ee
        dev, fields = self._read_reading(payload)
        seq: uint256 = fields[0]
        t: uint256 = fields[1]
        ei: uint256 = fields[3]
        ee: uint256 = fields[4]
        assert dev == key.device_id, "anchor: device id differs from the registry"
        # ES256 over Sig_structure = ["Signature1", h'a10126', h'', payload]
        digest: bytes32 = empty(bytes32)
        if len(payload) < 24:
            digest = sha256(concat(_SIG_PREFIX, convert(convert(64 + len(payload), uint8), bytes1), payload))
        else:
            digest = sha256(concat(_SIG_PREFIX, b"\x58", convert(convert(len(payload), uint8), bytes1), payload))
        verdict: Bytes[32] = raw_call(
            _P256VERIFY,
            concat(digest, anchors[i].r, anchors[i].s, convert(key.key_x, bytes32), convert(key.key_y, bytes32)),
            max_outsize=32,
            is_static_call=True,
        )
        assert len(verdict) == 32 and convert(verdict, uint256) == 1, "anchor: bad device signature"
        assert fields[2] & _ANCHOR_BAD_STATUS == 0, "anchor: reading flagged (fault or untrusted clock)"
        assert key.route & _ROUTE_ACTIVE != 0, "anchor: meter revoked"
        boundary: uint256 = t // interval_length
        assert t % interval_length < ANCHOR_DELAY, "anchor: reading not taken at an interval boundary"
        assert boundary * interval_length <= block.timestamp, "anchor: boundary in the future"
        assert boundary >= start_interval, "anchor: before the community started"
        assert boundary * interval_length >= key.registered_at, "anchor: before the meter's registration"
        assert seq < _SEQ_LIMIT and boundary <= _BOUNDARY_MASK, "anchor: sequence number or time out of range"

        # The previous anchor: a window opens from it when it is recent enough,
        # its own window was settled in full, this gateway reads the meter for
        # the whole window and does not ask to restart; otherwise this anchor
        # starts afresh (a gap).
        word: uint256 = self._anchor[msg.sender][meter]
        window: uint256 = 0
        import_wh: uint256 = 0
        export_wh: uint256 = 0
        if word != 0:
            last: uint256 = (word >> _BOUNDARY_SHIFT) & _BOUNDARY_MASK
            state: uint256 = (word >> _OPEN_SHIFT) & _OPEN_MASK
            assert boundary > last, "anchor: boundary not after the meter's last anchor"
            assert seq > (word >> _SEQ_SHIFT) & (_SEQ_LIMIT - 1), "anchor: sequence number not increasing"
            if state != _RESTART:
                assert ei >= word & _COUNTER_MASK and ee >= (word >> _EE_SHIFT) & _COUNTER_MASK, "anchor: counter went backwards"
                if (
                    not anchors[i].restart
                    and state == 0
                    and boundary - last <= max_window
                    and self._bound(key.route, gid, last * interval_length)
                    and self._bound(key.route, gid, (boundary - 1) * interval_length)
                ):
                    window = boundary - last
                    import_wh = ei - (word & _COUNTER_MASK)
                    export_wh = ee - ((word >> _EE_SHIFT) & _COUNTER_MASK)
                    assert import_wh <= MAX_WH and export_wh <= MAX_WH, "anchor: more than MAX_WH in one window"
        if window == 0:
            assert self._bound(key.route, gid, boundary * interval_length), "anchor: meter not bound to this gateway"
        self._anchor[msg.sender][meter] = (
            ei
            | (ee << _EE_SHIFT)
            | (seq << _SEQ_SHIFT)
            | (boundary << _BOUNDARY_SHIFT)
            | (window << _OPEN_SHIFT)
            | (import_wh << _BUDGET_I_SHIFT)
            | (export_wh << _BUDGET_E_SHIFT)
            | (gid << _GID_SHIFT)
        )
        if window == 0:
            log AnchorRestarted(settlement=msg.sender, meter=meter, boundary=boundary)


@external
def consume(interval: uint256, entries: DynArray[uint256, MAX_METERS], gid: uint256):
    """
    @notice Each entry (meter << 64 | import Wh << 32 | export Wh) takes its
            interval's share of the meter's open window: the window's next
            interval, from the gateway that opened it, no more than what is
            left of the signed counters, and exactly what is left in the
            window's last interval.
    """
    for entry: uint256 in entries:
        meter: uint16 = convert(entry >> 64, uint16)
        word: uint256 = self._anchor[msg.sender][meter]
        assert word >> _GID_SHIFT == gid, "settlement: meter not bound to this gateway"
        open: uint256 = (word >> _OPEN_SHIFT) & _OPEN_MASK
        boundary: uint256 = (word >> _BOUNDARY_SHIFT) & _BOUNDARY_MASK
        assert open != 0 and open != _RESTART and boundary - open == interval, "settlement: interval outside the meter's signed window"
        budget_i: uint256 = (word >> _BUDGET_I_SHIFT) & _WH_MASK
        budget_e: uint256 = (word >> _BUDGET_E_SHIFT) & _WH_MASK
        import_wh: uint256 = (entry >> 32) & _WH_MASK
        export_wh: uint256 = entry & _WH_MASK
        assert import_wh <= budget_i and export_wh <= budget_e, "settlement: more energy than the meter signed"
        budget_i -= import_wh
        budget_e -= export_wh
        open -= 1
        assert open != 0 or (budget_i == 0 and budget_e == 0), "settlement: window does not add up to the signed counters"
        self._anchor[msg.sender][meter] = (
            (word & ((1 << _OPEN_SHIFT) - 1))
            | (open << _OPEN_SHIFT)
            | (budget_i << _BUDGET_I_SHIFT)
            | (budget_e << _BUDGET_E_SHIFT)
            | (gid << _GID_SHIFT)
        )


@external
def reset(meter: uint16):
    """
    @notice The meter's next anchor starts afresh whatever its counters (a
            replaced meter whose counters restarted); what is left of its
            window is not settled. The caller (a settlement contract) decides
            who may ask for this.
    """
    word: uint256 = self._anchor[msg.sender][meter]
    self._anchor[msg.sender][meter] = (word & ~(_OPEN_MASK << _OPEN_SHIFT)) | (_RESTART << _OPEN_SHIFT)
    log AnchorReset(settlement=msg.sender, meter=meter)


@external
@view
def anchor_of(settlement: address, meter: uint16) -> (uint256, uint256, uint256, uint256, uint256, uint256, uint256, uint256):
    """
    @notice A meter's last verified anchor and its open window, for a
            settlement contract: (boundary, seq, import counter, export
            counter, intervals still to settle in the window, import Wh
            left, export Wh left, gateway id). All 0 before its first anchor;
            intervals = 7 after `reset`.
    """
    word: uint256 = self._anchor[settlement][meter]
    return (
        (word >> _BOUNDARY_SHIFT) & _BOUNDARY_MASK,
        (word >> _SEQ_SHIFT) & (_SEQ_LIMIT - 1),
        word & _COUNTER_MASK,
        (word >> _EE_SHIFT) & _COUNTER_MASK,
        (word >> _OPEN_SHIFT) & _OPEN_MASK,
        (word >> _BUDGET_I_SHIFT) & _WH_MASK,
        (word >> _BUDGET_E_SHIFT) & _WH_MASK,
        word >> _GID_SHIFT,
    )


@external
@pure
def read_reading(payload: Bytes[MAX_PAYLOAD]) -> (bytes8, uint256, uint256, uint256, uint256, uint256):
    """
    @notice (dev, seq, t, st, ei, ee) as this contract reads them out of a
            reading payload; reverts where `check` would.
    """
    dev: bytes8 = empty(bytes8)
    values: uint256[5] = empty(uint256[5])
    dev, values = self._read_reading(payload)
    return dev, values[0], values[1], values[2], values[3], values[4]


# ---------------------------------------------------------------- internal


@internal
@pure
def _read_reading(payload: Bytes[MAX_PAYLOAD]) -> (bytes8, uint256[5]):
    # (dev, [seq, t, st, ei, ee]) out of a reading payload (docs/protocol.md,
    # section 2): a deterministic CBOR map whose keys are sorted, so keys
    # 1 (dev, 8-byte string), 2 (seq), 3 (t), 4 (st), 5 (ei), 6 (ee) come
    # first, in this order, when present; 1 to 5 must be, 6 is absent for a
    # meter without an export register (0). Only these bytes are read; each
    # unsigned integer must be in its shortest form.
    buf: Bytes[MAX_PAYLOAD + 32] = concat(payload, empty(bytes32))
    word: uint256 = extract32(buf, 0, output_type=uint256)
    head: uint256 = word >> 248
    assert head >= 161 and head <= 173, "anchor: payload is not a reading map"  # map(1)..map(13)
    assert (word >> 232) & 65535 == 328, "anchor: reading does not start with an 8-byte device id"  # 01 48
    dev: bytes8 = convert(convert((word >> 168) & ((1 << 64) - 1), uint64), bytes8)
    values: uint256[5] = empty(uint256[5])
    offset: uint256 = 11
    for k: uint256 in range(5):
        word = extract32(buf, offset, output_type=uint256)
        if k == 4 and (word >> 248 != 6 or offset == len(payload)):
            break  # an import-only meter (PZEM-004T) signs no export counter: 0
        assert word >> 248 == k + 2, "anchor: reading lacks a field (seq, t, st, ei) or is out of order"
        head = (word >> 240) & 255
        assert head >> 5 == 0, "anchor: payload field is not an unsigned integer"
        info: uint256 = head & 31
        size: uint256 = 1
        value: uint256 = info
        if info == 24:
            value = (word >> 232) & 255
            size = 2
            assert value >= 24, "anchor: payload is not deterministic CBOR"
        elif info == 25:
            value = (word >> 224) & 65535
            size = 3
            assert value > 255, "anchor: payload is not deterministic CBOR"
        elif info == 26:
            value = (word >> 208) & ((1 << 32) - 1)
            size = 5
            assert value > 65535, "anchor: payload is not deterministic CBOR"
        elif info == 27:
            value = (word >> 176) & ((1 << 64) - 1)
            size = 9
            assert value > (1 << 32) - 1, "anchor: payload is not deterministic CBOR"
        else:
            assert info < 24, "anchor: payload field is not an unsigned integer"
        values[k] = value
        offset += 1 + size
    assert offset <= len(payload), "anchor: payload ends inside a field"
    return dev, values


@internal
@pure
def _bound(route: uint256, gid: uint256, interval_start: uint256) -> bool:
    # Is gateway `gid` the one the registry binds the meter to for the
    # interval starting at `interval_start`?
    since: uint256 = (route >> _ROUTE_SINCE_SHIFT) & _SINCE_MASK
    if interval_start >= since:
        return (route >> _ROUTE_GID_SHIFT) & _GID_MASK == gid
    return (route >> _ROUTE_PREV_SHIFT) & _GID_MASK == gid
