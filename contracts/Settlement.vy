# pragma version 0.4.3
# pragma optimize codesize
"""
@title Wattshare settlement
@license MIT
@notice Settles the energy the meters signed, per interval, once.

        Energy from device signatures. A gateway's submission carries its
        meters' signed readings at interval boundaries (anchors) and the
        per-meter import and export of consecutive intervals. The anchors go
        to the MeterAnchors contract (`anchor_book`), which checks each
        meter's signature and counters on chain and opens a window per meter
        between two anchors; each interval entry takes its share of that
        window there, so what this contract settles for a meter over a window
        is exactly the difference of two counters the meter signed
        (MeterAnchors.vy says how).

        Each interval once and in order. Each gateway has a cursor: it submits
        consecutive intervals from it, moving it forward; nothing before the
        community started (`start_interval`, the first interval after the
        deployment); a meter's window is settled by the gateway that opened it,
        which must be the gateway the registry binds the meter to then.

        When an interval settles. When every authorised gateway expected for it
        has moved its cursor past it (a one-gateway community: in the
        submission). Until then submissions are staged; anyone may `settle`
        an interval with staged data once `deadline(interval)` has passed:
        settle_delay after the later of the interval's end and its first
        submission (so a backlog submitted after an outage gives the other
        gateways the full delay). A gateway that submits an interval already
        settled without it settles its own meters among themselves.

        The allocation (per interval):
        1. tier 1: each producer's own key splits its export among the
           beneficiaries it chose;
        2. self-supply: what a meter still exports and imports in the same
           interval is its own (self-consumption): neither shared nor paid;
        3. tier 2: the community key splits what is left of all producers'
           export (the pool) among the consumers' remaining imports;
        4. what is left of each export is grid export, what is left of each
           import is grid import.

        No consumer is ever allocated more than its measured import. Integer
        Wh; every rounding is a floor and leaves the remainder unallocated
        (tier 1 -> tier 2 -> grid), except PRORATA and pool attribution, which
        use a telescoping floor that hands out the exact budget. Producers are
        paid `p2p_price` token units per Wh out of the consumers' prepaid
        balances; an unfunded consumer is still allocated its energy, and the
        unpaid part becomes its debt and the producer's receivable (see
        docs/chain.md). Settlement moves balances inside this contract only:
        it never creates or destroys tokens.

        Packed interval format (3 meters per 256-bit word):
            entry  = meter_index << 64 | import_wh << 32 | export_wh   (80 bits)
            word   = entry0 | entry1 << 80 | entry2 << 160            (top 16 bits 0)
        meter indices strictly increase through one interval's words; unused
        entries of the last word are 0; a word is never 0. A submission's
        `intervals` array holds, per interval in order, the number of its
        words (0 .. MAX_WORDS) followed by those words.
"""

from ethereum.ercs import IERC20


interface MeterRegistry:
    def owner() -> address: view
    def owner_of(index: uint16) -> address: view
    def owners_of(indices: DynArray[uint16, MAX_METERS]) -> DynArray[address, MAX_METERS]: view
    def owners_packed(words: DynArray[uint256, 16]) -> DynArray[address, MAX_METERS]: view
    def sender_gateway_id(gateway: address) -> uint256: view
    def gateway_list() -> DynArray[uint256, MAX_GATEWAYS]: view


interface MeterAnchors:
    def check(
        registry: MeterRegistry,
        interval_length: uint256,
        start_interval: uint256,
        gid: uint256,
        anchors: DynArray[Anchor, MAX_ANCHORS],
        lo: uint256,
        hi: uint256,
    ): nonpayable
    def consume(interval: uint256, entries: DynArray[uint256, MAX_METERS], gid: uint256): nonpayable
    def reset(meter: uint16): nonpayable


# A meter's signed reading at an interval boundary (MeterAnchors.vy): the
# COSE_Sign1 payload, exactly the bytes the meter signed, and r, s. `at`: it
# is checked before the submission's interval number `at` (the number of
# intervals: after the last), so one submission can carry two windows.
struct Anchor:
    meter: uint16
    restart: bool
    at: uint8
    payload: Bytes[MAX_PAYLOAD]
    r: bytes32
    s: bytes32


# ------------------------------------------------------------------ limits
# Meters in one interval (all gateways together); equals the registry's
# maximum number of active meters.
MAX_METERS: public(constant(uint256)) = 256
# Beneficiaries in one producer's (tier 1) key.
MAX_BENEFICIARIES: public(constant(uint256)) = 8
# Gateways whose data can wait for the others in one interval.
MAX_GATEWAYS: public(constant(uint256)) = 8
# Redistribution rounds of a PERCENT_REDISTRIBUTED key; what a last round
# could not place goes to the next tier.
REDISTRIBUTION_ROUNDS: public(constant(uint256)) = 8
# Intervals that can wait for their last gateway at the same time; the
# settlement delay is at most STAGING_RING interval lengths.
STAGING_RING: public(constant(uint256)) = 96
# Highest P2P price (token units per Wh): keeps every product in 256 bits.
MAX_PRICE: public(constant(uint256)) = (1 << 64) - 1
MAX_WORDS: public(constant(uint256)) = 86  # ceil(MAX_METERS / 3)
# Consecutive intervals in one submission, and words to carry them (four
# intervals of MAX_METERS meters).
MAX_SUBMISSION_INTERVALS: public(constant(uint256)) = 8
MAX_SUBMISSION_WORDS: public(constant(uint256)) = 348  # 4 * (MAX_WORDS + 1)
# Signed readings in one submission (as in MeterAnchors.vy).
MAX_ANCHORS: public(constant(uint256)) = 32
# Longest reading payload (as in MeterAnchors.vy).
MAX_PAYLOAD: public(constant(uint256)) = 96

# ---------------------------------------------------------------- key kinds
KEY_NONE: public(constant(uint8)) = 0
KEY_STATIC: public(constant(uint8)) = 1
KEY_PRORATA: public(constant(uint8)) = 2
KEY_PERCENT_REDISTRIBUTED: public(constant(uint8)) = 3
KEY_PRIORITY: public(constant(uint8)) = 4
KEY_COEFFICIENTS: public(constant(uint8)) = 5
BPS: public(constant(uint256)) = 10_000  # STATIC, PERCENT_REDISTRIBUTED weights
PPM: public(constant(uint256)) = 1_000_000  # COEFFICIENTS weights

_ENTRY_BITS: constant(uint256) = 80
_ENTRY_MASK: constant(uint256) = (1 << 80) - 1
_WH_MASK: constant(uint256) = (1 << 32) - 1
_WEIGHT_MASK: constant(uint256) = (1 << 32) - 1
_CLAIM_MASK: constant(uint256) = (1 << 128) - 1
_KEY_ENTRY_MASK: constant(uint256) = (1 << 48) - 1
_SHARE_MASK: constant(uint256) = (1 << 80) - 1
_ADDRESS_MASK: constant(uint256) = (1 << 160) - 1
_STAGE_STRIDE: constant(uint256) = 128

# interval state: settled | staged submissions << 8 | first submission time << 32
_SETTLED: constant(uint256) = 1

token: public(immutable(IERC20))
registry: public(immutable(MeterRegistry))
anchor_book: public(immutable(MeterAnchors))
interval_length: public(immutable(uint256))
settle_delay: public(immutable(uint256))
# the first interval this contract settles: the first to start at or after
# the deployment
start_interval: public(immutable(uint256))

# root -> gateway | first interval << 160 | intervals << 200: the salted
# Merkle root of the signed readings a gateway committed with a submission.
# Kept in storage for light-client proofs (eth_getProof on this slot); a
# root is accepted once.
root_of: public(HashMap[bytes32, uint256])
# gateway -> next interval it may submit (0: start_interval)
_cursor: HashMap[address, uint256]
# interval -> state (see above); written only when an interval waits for
# another gateway or was settled by the deadline
_state: HashMap[uint256, uint256]

p2p_price: public(uint256)

# Token ledger. Invariants (see docs/chain.md):
#   token.balanceOf(self) == sum(balance_of) + recovered
#   sum(receivable_of)    == sum(debt_of) + recovered
balance_of: public(HashMap[address, uint256])
# account -> debt | receivable << 128 (one slot: an unfunded interval writes once)
_claims: HashMap[address, uint256]
recovered: public(uint256)

# producer meter -> kind | count << 8 | entry j << (16 + 48 j), j < 4
# entry = beneficiary meter << 32 | weight
_key_head: HashMap[uint16, uint256]
# producer meter -> entry j << (48 (j - 4)), 4 <= j < 8
_key_tail: HashMap[uint16, uint256]

community_key_kind: public(uint8)
_community_len: uint256
# word w -> entries 5w .. 5w+4, entry = consumer meter << 32 | weight
_community_words: HashMap[uint256, uint256]

# staging of early submissions while the other gateways are awaited
_stage_interval: HashMap[uint256, uint256]  # ring slot -> interval + 1
_stage_gateways: HashMap[uint256, DynArray[address, MAX_GATEWAYS]]
_stage_words: HashMap[address, HashMap[uint256, uint256]]  # slot * 128 + j
_stage_nwords: HashMap[address, HashMap[uint256, uint256]]

# meter -> settlement tag << 16 | position, valid during one settlement (a
# transaction may settle several intervals, or one interval twice: its deadline
# part, then a late gateway's part)
_position: transient(HashMap[uint16, uint256])
_settle_tag: transient(uint256)
# position -> tokens unpaid by / owed to that meter in the settlement under way
_unpaid_at: transient(HashMap[uint256, uint256])
_owed_at: transient(HashMap[uint256, uint256])
# duplicate detection while checking a key
_seen: transient(HashMap[uint16, uint256])
_seen_tag: transient(uint256)


event Submitted:
    gateway: indexed(address)
    first_interval: indexed(uint256)
    intervals: uint256
    root: bytes32

event Settled:
    interval: indexed(uint256)
    meters: uint256
    import_wh: uint256
    export_wh: uint256
    p2p_wh: uint256
    tokens: uint256
    by_deadline: bool

event P2PAllocation:
    interval: indexed(uint256)
    producer: indexed(uint16)
    consumer: indexed(uint16)
    wh: uint256
    tokens: uint256

event SelfSupply:
    interval: indexed(uint256)
    meter: indexed(uint16)
    wh: uint256

event PoolContribution:
    interval: indexed(uint256)
    producer: indexed(uint16)
    wh: uint256
    tokens: uint256

event PoolAllocation:
    interval: indexed(uint256)
    consumer: indexed(uint16)
    wh: uint256
    tokens: uint256

event GridImport:
    interval: indexed(uint256)
    meter: indexed(uint16)
    wh: uint256

event GridExport:
    interval: indexed(uint256)
    meter: indexed(uint16)
    wh: uint256

event UnpaidAllocation:
    interval: indexed(uint256)
    consumer: indexed(uint16)
    debtor: indexed(address)
    tokens: uint256

event ReceivableRecorded:
    interval: indexed(uint256)
    producer: indexed(uint16)
    creditor: indexed(address)
    tokens: uint256

event Deposited:
    account: indexed(address)
    payer: indexed(address)
    amount: uint256
    debt_repaid: uint256

event Withdrawn:
    account: indexed(address)
    amount: uint256
    debt_repaid: uint256

event DebtRepaid:
    debtor: indexed(address)
    payer: indexed(address)
    amount: uint256

event ReceivableClaimed:
    account: indexed(address)
    amount: uint256

event PriceSet:
    price: uint256

event ProducerKeySet:
    producer: indexed(uint16)
    set_by: indexed(address)
    kind: uint8
    beneficiaries: DynArray[uint16, MAX_BENEFICIARIES]
    weights: DynArray[uint32, MAX_BENEFICIARIES]

event CommunityKeySet:
    kind: uint8
    consumers: DynArray[uint16, MAX_METERS]
    weights: DynArray[uint32, MAX_METERS]


@deploy
def __init__(
    token_: IERC20,
    registry_: MeterRegistry,
    anchor_book_: MeterAnchors,
    interval_length_: uint256,
    settle_delay_: uint256,
    p2p_price_: uint256,
):
    """
    @param token_ The community token (payments).
    @param registry_ The community's meter registry (admin, gateways, meters).
    @param anchor_book_ The MeterAnchors contract that checks the meters'
           signed readings (one deployment serves any number of communities).
    @param interval_length_ Settlement interval in seconds: 900 or 1800.
    @param settle_delay_ Seconds after an interval's end (or its first
           submission, if later) after which anyone may settle it without
           waiting for missing gateways (1 .. STAGING_RING * interval_length_ / 2).
    @param p2p_price_ Token units paid per Wh shared (<= MAX_PRICE).
    """
    assert interval_length_ == 900 or interval_length_ == 1800, "settlement: interval must be 900 or 1800 s"
    assert settle_delay_ > 0 and 2 * settle_delay_ <= STAGING_RING * interval_length_, "settlement: bad settle delay"
    assert p2p_price_ <= MAX_PRICE, "settlement: price too high"
    token = token_
    registry = registry_
    anchor_book = anchor_book_
    interval_length = interval_length_
    settle_delay = settle_delay_
    start_interval = (block.timestamp + interval_length_ - 1) // interval_length_
    self.p2p_price = p2p_price_
    self.community_key_kind = KEY_PRORATA
    log PriceSet(price=p2p_price_)


# ============================================================ submission


@external
def submit(
    first: uint256,
    root: bytes32,
    anchors: DynArray[Anchor, MAX_ANCHORS],
    intervals: DynArray[uint256, MAX_SUBMISSION_WORDS],
):
    """
    @notice A gateway's submission: signed anchors (checked first, in order),
            then the consecutive intervals `first`, `first` + 1, ... of its
            meters. Either part may be empty, not both. An interval settles
            in this transaction when every other gateway expected for it has
            passed it.
    @param first The first interval: interval start (unix seconds) // interval_length.
    @param root Salted Merkle root of the signed readings the gateway commits
           with these intervals (non-zero, never used before; ignored when
           there are no intervals).
    @param anchors Meters' signed readings at interval boundaries.
    @param intervals Per interval: its number of packed words, then the words
           (its meters' import/export Wh, see above).
    """
    # how many intervals: walk the headers
    n: uint256 = 0
    offset: uint256 = 0
    for _: uint256 in range(MAX_SUBMISSION_INTERVALS):
        if offset == len(intervals):
            break
        count: uint256 = intervals[offset]
        assert count <= MAX_WORDS and offset + count < len(intervals), "settlement: malformed intervals"
        offset += 1 + count
        n += 1
    assert offset == len(intervals), "settlement: malformed intervals"
    assert len(anchors) > 0 or n > 0, "settlement: empty submission"
    # reverts unless msg.sender is an authorised gateway
    gid: uint256 = staticcall registry.sender_gateway_id(msg.sender)
    gateways: DynArray[uint256, MAX_GATEWAYS] = []
    if n > 0:
        assert root != empty(bytes32), "settlement: zero root"
        assert self.root_of[root] == 0, "settlement: root already used"
        assert first >= start_interval, "settlement: interval before the community started"
        assert first >= self._cursor[msg.sender], "settlement: interval already submitted by this gateway"
        assert (first + n) * interval_length <= block.timestamp, "settlement: interval not over"
        self._cursor[msg.sender] = first + n
        self.root_of[root] = convert(msg.sender, uint256) | (first << 160) | (n << 200)
        log Submitted(gateway=msg.sender, first_interval=first, intervals=n, root=root)
        gateways = staticcall registry.gateway_list()
    lo: uint256 = 0
    offset = 0
    for j: uint256 in range(MAX_SUBMISSION_INTERVALS + 1):
        # the anchors that come before interval j
        hi: uint256 = lo
        for _: uint256 in range(MAX_ANCHORS):
            if hi == len(anchors) or convert(anchors[hi].at, uint256) != j:
                break
            hi += 1
        if hi > lo:
            extcall anchor_book.check(registry, interval_length, start_interval, gid, anchors, lo, hi)
            lo = hi
        if j == n:
            break
        # interval j: its entries, strictly increasing meter indices
        entries: DynArray[uint256, MAX_METERS] = []
        previous: uint256 = 0
        padding: bool = False
        for i: uint256 in range(intervals[offset], bound=MAX_WORDS):
            word: uint256 = intervals[offset + 1 + i]
            assert word != 0 and word >> 240 == 0, "settlement: malformed packed word"
            for k: uint256 in range(3):
                entry: uint256 = (word >> (_ENTRY_BITS * k)) & _ENTRY_MASK
                if entry == 0:
                    padding = True
                    continue
                assert not padding, "settlement: entry after padding"
                assert entry >> 64 > previous, "settlement: meter indices must strictly increase"
                assert len(entries) < MAX_METERS, "settlement: too many meters"
                previous = entry >> 64
                entries.append(entry)
        offset += 1 + intervals[offset]
        interval: uint256 = first + j
        extcall anchor_book.consume(interval, entries, gid)
        # settled by the deadline without this gateway: its meters settle among
        # themselves; else now if every other gateway passed the interval; else
        # staged until they do (an older interval still holding the ring slot
        # settles first, by its deadline)
        state: uint256 = self._state[interval]
        by_deadline: bool = state & _SETTLED != 0
        if not by_deadline:
            if not self._all_passed(interval, gateways):
                if len(entries) > 0:
                    blocker: uint256 = self._stage_slot_blocker(interval, gateways)
                    if blocker != max_value(uint256):
                        self._state[blocker] |= _SETTLED
                        self._settle(blocker, self._gather(blocker, []), True)
                    self._stage(interval, entries, state)
                continue
            if (state >> 8) & 255 != 0:
                self._state[interval] = state | _SETTLED
                entries = self._gather(interval, entries)
        if len(entries) > 0:
            self._settle(interval, entries, by_deadline)
    assert lo == len(anchors), "settlement: anchors out of order"


@external
def settle(interval: uint256):
    """
    @notice Anyone may settle an interval with staged submissions once
            `deadline(interval)` has passed, or as soon as every authorised
            gateway has moved past it. Gateways that have not submitted by
            then settle their meters for it on their own later.
    """
    state: uint256 = self._state[interval]
    assert state & _SETTLED == 0, "settlement: interval already settled"
    assert (state >> 8) & 255 != 0, "settlement: nothing submitted"
    passed: bool = self._all_passed(interval, staticcall registry.gateway_list())
    assert passed or block.timestamp >= self._deadline(interval, state), "settlement: deadline not reached"
    self._state[interval] = state | _SETTLED
    self._settle(interval, self._gather(interval, []), not passed)


@external
def reset_anchor(meter: uint16):
    """
    @notice Admin: the meter's next anchor starts a new window whatever its
            counters (a replaced meter whose counters restarted); what is
            left of its window is not settled.
    """
    self._check_admin()
    extcall anchor_book.reset(meter)


@external
@view
def cursor(gateway: address) -> uint256:
    """
    @notice The next interval `gateway` may submit.
    """
    return max(self._cursor[gateway], start_interval)


@external
@view
def settled(interval: uint256) -> bool:
    """
    @notice True once nothing more waits for the interval: settled (by its
            last gateway or the deadline), or passed by every gateway with
            nothing staged.
    """
    state: uint256 = self._state[interval]
    if state & _SETTLED != 0:
        return True
    return (state >> 8) & 255 == 0 and self._all_passed(interval, staticcall registry.gateway_list())


@external
@view
def submission_count(interval: uint256) -> uint256:
    """
    @notice Submissions staged for the interval (waiting for other gateways).
    """
    return (self._state[interval] >> 8) & 255


@external
@view
def deadline(interval: uint256) -> uint256:
    return self._deadline(interval, self._state[interval])


@external
def set_producer_key(
    producer: uint16,
    kind: uint8,
    beneficiaries: DynArray[uint16, MAX_BENEFICIARIES],
    weights: DynArray[uint32, MAX_BENEFICIARIES],
):
    """
    @notice The producer (owner of the meter) chooses how its export is
            shared first (tier 1). STATIC, PERCENT_REDISTRIBUTED: weights in
            basis points of the export, sum <= 10000; COEFFICIENTS: parts per
            million, sum <= 1e6; PRORATA, PRIORITY: weights 0 (PRIORITY
            serves beneficiaries in list order). KEY_NONE with empty lists
            sends the whole export to the community pool.
    """
    assert msg.sender == staticcall registry.owner_of(producer), "settlement: caller does not own the producer meter"
    self._set_producer_key(producer, kind, beneficiaries, weights)


@external
def set_producer_coefficients(
    producer: uint16,
    beneficiaries: DynArray[uint16, MAX_BENEFICIARIES],
    coefficients: DynArray[uint32, MAX_BENEFICIARIES],
):
    """
    @notice Full dynamic key: the admin (organiser) sets a producer's
            per-consumer coefficients (parts per million of its export),
            typically before each interval. The producer can replace it with
            its own key.
    """
    self._check_admin()
    self._set_producer_key(producer, KEY_COEFFICIENTS, beneficiaries, coefficients)


@external
def set_community_key(
    kind: uint8, consumers: DynArray[uint16, MAX_METERS], weights: DynArray[uint32, MAX_METERS]
):
    """
    @notice The admin sets the tier 2 key over the pooled remainder of all
            producers. PRORATA with an empty list (the default) shares the
            pool pro rata among every consumer with remaining import.
    """
    self._check_admin()
    self._check_key(kind, consumers, weights, 0)
    n: uint256 = len(consumers)
    for w: uint256 in range((n + 4) // 5, bound=(MAX_METERS + 4) // 5):
        word: uint256 = 0
        for k: uint256 in range(5):
            i: uint256 = w * 5 + k
            if i >= n:
                break
            entry: uint256 = (convert(consumers[i], uint256) << 32) | convert(weights[i], uint256)
            word |= entry << (48 * k)
        self._community_words[w] = word
    self._community_len = n
    self.community_key_kind = kind
    log CommunityKeySet(kind=kind, consumers=consumers, weights=weights)


@external
def set_price(price: uint256):
    self._check_admin()
    assert price <= MAX_PRICE, "settlement: price too high"
    self.p2p_price = price
    log PriceSet(price=price)


@external
@view
def producer_key(
    producer: uint16,
) -> (uint8, DynArray[uint16, MAX_BENEFICIARIES], DynArray[uint32, MAX_BENEFICIARIES]):
    head: uint256 = self._key_head[producer]
    tail: uint256 = self._key_tail[producer]
    members: DynArray[uint16, MAX_BENEFICIARIES] = []
    weights: DynArray[uint32, MAX_BENEFICIARIES] = []
    for j: uint256 in range((head >> 8) & 255, bound=MAX_BENEFICIARIES):
        entry: uint256 = self._key_entry(head, tail, j)
        members.append(convert(entry >> 32, uint16))
        weights.append(convert(entry & _WH_MASK, uint32))
    return convert(head & 255, uint8), members, weights


@external
@view
def community_key() -> (uint8, DynArray[uint16, MAX_METERS], DynArray[uint32, MAX_METERS]):
    members: DynArray[uint16, MAX_METERS] = []
    weights: DynArray[uint32, MAX_METERS] = []
    for i: uint256 in range(self._community_len, bound=MAX_METERS):
        entry: uint256 = (self._community_words[i // 5] >> (48 * (i % 5))) & _KEY_ENTRY_MASK
        members.append(convert(entry >> 32, uint16))
        weights.append(convert(entry & _WH_MASK, uint32))
    return self.community_key_kind, members, weights


# ================================================================ ledger


@external
@nonreentrant
def deposit(amount: uint256):
    """
    @notice Prepay for imports. Pulls `amount` with transferFrom (approve
            first); any debt of the caller is repaid first.
    """
    self._deposit(msg.sender, amount)


@external
@nonreentrant
def deposit_for(account: address, amount: uint256):
    """
    @notice Prepay on behalf of `account` (e.g. the treasury for the school).
    """
    assert account != empty(address), "settlement: zero account"
    self._deposit(account, amount)


@external
@nonreentrant
def withdraw(amount: uint256):
    """
    @notice Withdraw from the prepaid balance. The balance first pays any
            debt of the caller.
    """
    repaid: uint256 = self._net_debt(msg.sender)
    balance: uint256 = self.balance_of[msg.sender]
    assert balance >= amount, "settlement: balance too low"
    self.balance_of[msg.sender] = balance - amount
    assert extcall token.transfer(msg.sender, amount, default_return_value=True), "settlement: transfer failed"
    log Withdrawn(account=msg.sender, amount=amount, debt_repaid=repaid)


@external
@nonreentrant
def repay_debt(debtor: address, amount: uint256):
    """
    @notice Anyone may repay (part of) a debt; pulls at most the debt.
    """
    claims: uint256 = self._claims[debtor]
    paid: uint256 = min(amount, claims & _CLAIM_MASK)
    assert paid > 0, "settlement: no debt to repay"
    assert extcall token.transferFrom(msg.sender, self, paid, default_return_value=True), "settlement: transferFrom failed"
    self._claims[debtor] = claims - paid
    self.recovered += paid
    log DebtRepaid(debtor=debtor, payer=msg.sender, amount=paid)


@external
@nonreentrant
def claim_receivable() -> uint256:
    """
    @notice Moves repaid debt to the caller's balance, up to its receivable.
            First come, first served among creditors.
    """
    claims: uint256 = self._claims[msg.sender]
    amount: uint256 = min(claims >> 128, self.recovered)
    if amount > 0:
        self._claims[msg.sender] = claims - (amount << 128)
        self.recovered -= amount
        self.balance_of[msg.sender] += amount
        log ReceivableClaimed(account=msg.sender, amount=amount)
    return amount


@external
@view
def debt_of(account: address) -> uint256:
    """
    @notice Tokens the account owes for energy it was allocated unfunded.
    """
    return self._claims[account] & _CLAIM_MASK


@external
@view
def receivable_of(account: address) -> uint256:
    """
    @notice Tokens owed to the account for energy consumers did not pay yet.
    """
    return self._claims[account] >> 128



# ============================================================== internal


@internal
@view
def _check_admin():
    assert msg.sender == staticcall registry.owner(), "settlement: caller is not the admin"


@internal
@view
def _deadline(interval: uint256, state: uint256) -> uint256:
    return max((interval + 1) * interval_length, state >> 32) + settle_delay


@internal
@view
def _all_passed(interval: uint256, gateways: DynArray[uint256, MAX_GATEWAYS]) -> bool:
    # every authorised gateway that was authorised before the interval ended
    # has moved its cursor past it
    end: uint256 = (interval + 1) * interval_length
    for word: uint256 in gateways:
        if word >> 160 >= end:
            continue
        gateway: address = convert(convert(word & _ADDRESS_MASK, uint160), address)
        if max(self._cursor[gateway], start_interval) <= interval:
            return False
    return True


@internal
def _deposit(account: address, amount: uint256):
    assert amount > 0, "settlement: zero amount"
    assert extcall token.transferFrom(msg.sender, self, amount, default_return_value=True), "settlement: transferFrom failed"
    claims: uint256 = self._claims[account]
    repaid: uint256 = min(claims & _CLAIM_MASK, amount)
    if repaid > 0:
        self._claims[account] = claims - repaid
        self.recovered += repaid
    self.balance_of[account] += amount - repaid
    log Deposited(account=account, payer=msg.sender, amount=amount, debt_repaid=repaid)


# ---------------------------------------------------------------- intervals


@internal
def _net_debt(account: address) -> uint256:
    claims: uint256 = self._claims[account]
    if claims & _CLAIM_MASK == 0:
        return 0
    balance: uint256 = self.balance_of[account]
    repaid: uint256 = min(claims & _CLAIM_MASK, balance)
    if repaid > 0:
        self._claims[account] = claims - repaid
        self.balance_of[account] = balance - repaid
        self.recovered += repaid
    return repaid


@internal
def _set_producer_key(
    producer: uint16,
    kind: uint8,
    beneficiaries: DynArray[uint16, MAX_BENEFICIARIES],
    weights: DynArray[uint32, MAX_BENEFICIARIES],
):
    members: DynArray[uint16, MAX_METERS] = []
    ws: DynArray[uint32, MAX_METERS] = []
    for b: uint16 in beneficiaries:
        members.append(b)
    for w: uint32 in weights:
        ws.append(w)
    # checks the lengths agree too
    self._check_key(kind, members, ws, producer)
    head: uint256 = convert(kind, uint256) | (len(beneficiaries) << 8)
    tail: uint256 = 0
    for j: uint256 in range(len(beneficiaries), bound=MAX_BENEFICIARIES):
        entry: uint256 = (convert(beneficiaries[j], uint256) << 32) | convert(weights[j], uint256)
        if j < 4:
            head |= entry << (16 + 48 * j)
        else:
            tail |= entry << (48 * (j - 4))
    self._key_head[producer] = head
    self._key_tail[producer] = tail
    log ProducerKeySet(
        producer=producer, set_by=msg.sender, kind=kind, beneficiaries=beneficiaries, weights=weights
    )


@internal
def _check_key(
    kind: uint8,
    members: DynArray[uint16, MAX_METERS],
    weights: DynArray[uint32, MAX_METERS],
    exclude: uint16,
):
    assert kind <= KEY_COEFFICIENTS, "settlement: unknown key kind"
    assert len(members) == len(weights), "settlement: members and weights differ in length"
    if kind == KEY_NONE:
        assert len(members) == 0, "settlement: KEY_NONE takes no members"
        return
    tag: uint256 = self._seen_tag + 1
    self._seen_tag = tag
    total: uint256 = 0
    for i: uint256 in range(len(members), bound=MAX_METERS):
        m: uint16 = members[i]
        assert m != 0, "settlement: meter index 0"
        assert m != exclude, "settlement: a producer cannot be its own beneficiary"
        assert self._seen[m] != tag, "settlement: duplicate member"
        self._seen[m] = tag
        w: uint256 = convert(weights[i], uint256)
        if kind == KEY_PRORATA or kind == KEY_PRIORITY:
            assert w == 0, "settlement: PRORATA and PRIORITY take weight 0"
        total += w
    if kind == KEY_STATIC or kind == KEY_PERCENT_REDISTRIBUTED:
        assert total <= BPS, "settlement: weights exceed 10000 basis points"
    elif kind == KEY_COEFFICIENTS:
        assert total <= PPM, "settlement: coefficients exceed 1e6 ppm"
    if len(members) > 0:
        # reverts on an unregistered meter
        registered: DynArray[address, MAX_METERS] = staticcall registry.owners_of(members)


@internal
@pure
def _key_entry(head: uint256, tail: uint256, j: uint256) -> uint256:
    if j < 4:
        return (head >> (16 + 48 * j)) & _KEY_ENTRY_MASK
    return (tail >> (48 * (j - 4))) & _KEY_ENTRY_MASK


@internal
def _stage_slot_blocker(interval: uint256, gateways: DynArray[uint256, MAX_GATEWAYS]) -> uint256:
    # An older interval whose staged data still holds the ring slot that
    # `interval` needs: it must be settled first, which it may be once its
    # deadline has passed or every gateway passed it. max_value if none.
    held: uint256 = self._stage_interval[interval % STAGING_RING]
    if held == 0 or held == interval + 1:
        return max_value(uint256)
    older: uint256 = held - 1
    state: uint256 = self._state[older]
    if state & _SETTLED != 0:
        return max_value(uint256)
    assert block.timestamp >= self._deadline(older, state) or self._all_passed(older, gateways), "settlement: staging slot busy"
    return older


@internal
def _stage(interval: uint256, entries: DynArray[uint256, MAX_METERS], state: uint256):
    # the entries, packed three per word again; the interval's state counts
    # one more submission, and knows when the first came
    # (at most MAX_METERS meters: every meter of the interval was active at its
    # start, since its window opened from a reading signed then or before)
    submissions: uint256 = ((state >> 8) & 255) + 1
    assert submissions <= MAX_GATEWAYS, "settlement: too many submissions"
    since: uint256 = state >> 32
    if since == 0:
        since = block.timestamp
    self._state[interval] = (submissions << 8) | (since << 32)
    slot: uint256 = interval % STAGING_RING
    if self._stage_interval[slot] != interval + 1:
        self._stage_interval[slot] = interval + 1
        self._stage_gateways[slot] = []
    self._stage_gateways[slot].append(msg.sender)
    n: uint256 = (len(entries) + 2) // 3
    for j: uint256 in range(n, bound=MAX_WORDS):
        word: uint256 = 0
        for k: uint256 in range(3):
            if 3 * j + k < len(entries):
                word |= entries[3 * j + k] << (_ENTRY_BITS * k)
        self._stage_words[msg.sender][slot * _STAGE_STRIDE + j] = word
    self._stage_nwords[msg.sender][slot] = n


@internal
def _gather(interval: uint256, submitted: DynArray[uint256, MAX_METERS]) -> DynArray[uint256, MAX_METERS]:
    # All entries of the interval, sorted by meter: a k-way merge of the staged
    # submissions (read from storage, in staging order) and `submitted` (last).
    # A meter is in one submission only: its window's interval is consumed by
    # the first.
    slot: uint256 = interval % STAGING_RING
    sources: DynArray[address, MAX_GATEWAYS] = []
    if self._stage_interval[slot] == interval + 1:
        sources = self._stage_gateways[slot]
    k: uint256 = len(sources)
    # per source: next entry, current word, words staged
    cursor: uint256[MAX_GATEWAYS + 1] = empty(uint256[MAX_GATEWAYS + 1])
    word: uint256[MAX_GATEWAYS + 1] = empty(uint256[MAX_GATEWAYS + 1])
    nwords: uint256[MAX_GATEWAYS + 1] = empty(uint256[MAX_GATEWAYS + 1])
    for g: uint256 in range(k, bound=MAX_GATEWAYS):
        nwords[g] = self._stage_nwords[sources[g]][slot]
        if nwords[g] > 0:
            word[g] = self._stage_words[sources[g]][slot * _STAGE_STRIDE]
    if len(submitted) > 0:
        word[k] = submitted[0]
    merged: DynArray[uint256, MAX_METERS] = []
    for _: uint256 in range(MAX_METERS + 1):
        best: uint256 = MAX_GATEWAYS + 1
        best_entry: uint256 = 0
        for g: uint256 in range(k + 1, bound=MAX_GATEWAYS + 1):
            head: uint256 = word[g]
            if g < k:
                head = (head >> (_ENTRY_BITS * (cursor[g] % 3))) & _ENTRY_MASK
            if head == 0:
                continue
            if best == MAX_GATEWAYS + 1 or head >> 64 < best_entry >> 64:
                best = g
                best_entry = head
        if best == MAX_GATEWAYS + 1:
            break
        merged.append(best_entry)
        cursor[best] += 1
        if best == k:
            word[best] = 0
            if cursor[best] < len(submitted):
                word[best] = submitted[cursor[best]]
        else:
            word[best] = self._staged_word(sources[best], slot, cursor[best], nwords[best], word[best])
    return merged


@internal
@view
def _staged_word(gateway: address, slot: uint256, cursor: uint256, nwords: uint256, current: uint256) -> uint256:
    # the staged word holding entry number `cursor` (0: no more entries)
    if cursor % 3 != 0:
        return current
    if cursor // 3 >= nwords:
        return 0
    return self._stage_words[gateway][slot * _STAGE_STRIDE + cursor // 3]


@internal
@pure
def _split(kind: uint256, budget: uint256, members: DynArray[uint256, MAX_METERS]) -> DynArray[uint256, MAX_METERS]:
    # Shares of `budget` Wh among members (need << 128 | position << 32 |
    # weight): returns the members with their share added in bits 48..127;
    # share <= need and sum(shares) <= budget always. Mirrors
    # allocation_reference.split().
    n: uint256 = len(members)
    out: DynArray[uint256, MAX_METERS] = members
    if kind == convert(KEY_STATIC, uint256) or kind == convert(KEY_COEFFICIENTS, uint256):
        denominator: uint256 = BPS
        if kind == convert(KEY_COEFFICIENTS, uint256):
            denominator = PPM
        for i: uint256 in range(n, bound=MAX_METERS):
            out[i] |= min(budget * (members[i] & _WEIGHT_MASK) // denominator, members[i] >> 128) << 48
    elif kind == convert(KEY_PRIORITY, uint256):
        remaining: uint256 = budget
        for i: uint256 in range(n, bound=MAX_METERS):
            share: uint256 = min(remaining, members[i] >> 128)
            remaining -= share
            out[i] |= share << 48
    elif kind == convert(KEY_PRORATA, uint256):
        total: uint256 = 0
        for member: uint256 in members:
            total += member >> 128
        handed: uint256 = min(budget, total)
        running: uint256 = 0
        previous: uint256 = 0
        for i: uint256 in range(n, bound=MAX_METERS):
            running += members[i] >> 128
            current: uint256 = 0
            if total > 0:
                current = handed * running // total
            out[i] |= (current - previous) << 48
            previous = current
    elif kind == convert(KEY_PERCENT_REDISTRIBUTED, uint256):
        # a member takes part while it has a weight and room (need - share) left
        weight_sum: uint256 = 0
        for member: uint256 in members:
            weight_sum += member & _WEIGHT_MASK
        pot: uint256 = budget * weight_sum // BPS
        for _: uint256 in range(REDISTRIBUTION_ROUNDS):
            if pot == 0:
                break
            live_weight: uint256 = 0
            for i: uint256 in range(n, bound=MAX_METERS):
                if members[i] >> 128 > (out[i] >> 48) & _SHARE_MASK:
                    live_weight += members[i] & _WEIGHT_MASK
            if live_weight == 0:
                break
            running: uint256 = 0
            previous: uint256 = 0
            excess: uint256 = 0
            for i: uint256 in range(n, bound=MAX_METERS):
                weight: uint256 = members[i] & _WEIGHT_MASK
                room: uint256 = (members[i] >> 128) - ((out[i] >> 48) & _SHARE_MASK)
                if weight == 0 or room == 0:
                    continue
                running += weight
                current: uint256 = pot * running // live_weight
                share: uint256 = current - previous
                previous = current
                if share >= room:
                    out[i] += room << 48
                    excess += share - room
                else:
                    out[i] += share << 48
            pot = excess
    return out


@internal
def _lookup(tag: uint256, meter: uint16) -> uint256:
    # position of `meter` in this settlement, or MAX_METERS if absent
    tagged: uint256 = self._position[meter]
    if tagged >> 16 != tag:
        return MAX_METERS
    return tagged & 65535


@internal
def _charge(debtor: address, tokens: uint256, position: uint256) -> uint256:
    # Takes `tokens` from the debtor's balance; returns the unpaid part, which
    # is added to the meter's unpaid total (debt, booked at the end).
    if tokens == 0:
        return 0
    balance: uint256 = self.balance_of[debtor]
    if balance >= tokens:
        self.balance_of[debtor] = balance - tokens
        return 0
    if balance > 0:
        self.balance_of[debtor] = 0
    unpaid: uint256 = tokens - balance
    self._unpaid_at[position] += unpaid
    return unpaid


@internal
def _credit(creditor: address, tokens: uint256, unpaid: uint256, position: uint256):
    # Pays the producer what was paid; the rest is added to the meter's owed
    # total (receivable, booked at the end).
    if tokens > unpaid:
        self.balance_of[creditor] += tokens - unpaid
    if unpaid > 0:
        self._owed_at[position] += unpaid


@internal
def _settle(interval: uint256, entries: DynArray[uint256, MAX_METERS], by_deadline: bool):
    # flow[p] = meter << 64 | import not yet covered << 32 | export not yet allocated
    flow: DynArray[uint256, MAX_METERS] = entries
    meters: DynArray[uint256, 16] = []  # 16 meter indices a word
    for p: uint256 in range(len(entries), bound=MAX_METERS):
        if p % 16 == 0:
            meters.append(0)
        meters[p // 16] |= ((entries[p] >> 64) & 65535) << (16 * (p % 16))
    owners: DynArray[address, MAX_METERS] = staticcall registry.owners_packed(meters)

    n: uint256 = len(flow)
    price: uint256 = self.p2p_price
    import_wh: uint256 = 0
    export_wh: uint256 = 0
    tag: uint256 = self._settle_tag + 1
    self._settle_tag = tag
    for p: uint256 in range(n, bound=MAX_METERS):
        entry: uint256 = flow[p]
        import_wh += (entry >> 32) & _WH_MASK
        export_wh += entry & _WH_MASK
        self._position[convert(entry >> 64, uint16)] = (tag << 16) | p

    p2p_wh: uint256 = 0
    any_unpaid: bool = False
    # need << 128 | share << 48 | position << 32 | weight (see _split)
    members: DynArray[uint256, MAX_METERS] = []

    # ---- tier 1: each producer's own key
    for p: uint256 in range(n, bound=MAX_METERS):
        producer: uint16 = convert(flow[p] >> 64, uint16)
        if flow[p] & _WH_MASK == 0:
            continue
        head: uint256 = self._key_head[producer]
        if head & 255 == 0:
            continue
        count: uint256 = (head >> 8) & 255
        tail: uint256 = 0
        if count > 4:
            tail = self._key_tail[producer]
        members = []
        for j: uint256 in range(count, bound=MAX_BENEFICIARIES):
            key_entry: uint256 = self._key_entry(head, tail, j)
            q: uint256 = self._lookup(tag, convert(key_entry >> 32, uint16))
            if q == MAX_METERS:
                continue
            members.append((((flow[q] >> 32) & _WH_MASK) << 128) | (q << 32) | (key_entry & _WEIGHT_MASK))
        if len(members) == 0:
            continue
        members = self._split(head & 255, flow[p] & _WH_MASK, members)
        for j: uint256 in range(len(members), bound=MAX_BENEFICIARIES):
            wh: uint256 = (members[j] >> 48) & _SHARE_MASK
            if wh == 0:
                continue
            q: uint256 = (members[j] >> 32) & 65535
            consumer: uint16 = convert(flow[q] >> 64, uint16)
            flow[q] -= wh << 32
            flow[p] -= wh
            p2p_wh += wh
            tokens: uint256 = wh * price
            unpaid: uint256 = self._charge(owners[q], tokens, q)
            self._credit(owners[p], tokens, unpaid, p)
            any_unpaid = any_unpaid or unpaid > 0
            log P2PAllocation(interval=interval, producer=producer, consumer=consumer, wh=wh, tokens=tokens)

    # ---- self-supply: what a meter still exports and imports in this
    # interval is its own (self-consumption), never pooled back to it
    for p: uint256 in range(n, bound=MAX_METERS):
        entry: uint256 = flow[p]
        own: uint256 = min(entry & _WH_MASK, (entry >> 32) & _WH_MASK)
        if own > 0:
            flow[p] = entry - own - (own << 32)
            log SelfSupply(interval=interval, meter=convert(entry >> 64, uint16), wh=own)

    # ---- tier 2: the community key over the pooled remainder
    kind: uint256 = convert(self.community_key_kind, uint256)
    pool: uint256 = 0
    for entry: uint256 in flow:
        pool += entry & _WH_MASK
    if kind != 0 and pool > 0:
        members = []
        listed: uint256 = self._community_len
        if listed == 0:
            if kind == convert(KEY_PRORATA, uint256):
                for q: uint256 in range(n, bound=MAX_METERS):
                    need: uint256 = (flow[q] >> 32) & _WH_MASK
                    if need > 0:
                        members.append((need << 128) | (q << 32))
        else:
            word: uint256 = 0
            for i: uint256 in range(listed, bound=MAX_METERS):
                if i % 5 == 0:
                    word = self._community_words[i // 5]
                key_entry: uint256 = (word >> (48 * (i % 5))) & _KEY_ENTRY_MASK
                q: uint256 = self._lookup(tag, convert(key_entry >> 32, uint16))
                if q == MAX_METERS:
                    continue
                members.append((((flow[q] >> 32) & _WH_MASK) << 128) | (q << 32) | (key_entry & _WEIGHT_MASK))
        members = self._split(kind, pool, members)
        pooled_wh: uint256 = 0
        pool_unpaid: uint256 = 0
        for member: uint256 in members:
            wh: uint256 = (member >> 48) & _SHARE_MASK
            if wh == 0:
                continue
            q: uint256 = (member >> 32) & 65535
            consumer: uint16 = convert(flow[q] >> 64, uint16)
            flow[q] -= wh << 32
            pooled_wh += wh
            tokens: uint256 = wh * price
            pool_unpaid += self._charge(owners[q], tokens, q)
            log PoolAllocation(interval=interval, consumer=consumer, wh=wh, tokens=tokens)
        if pooled_wh > 0:
            # producers supply the pool in proportion to what they put in
            # (telescoping floor: the parts add up to pooled_wh exactly); the
            # unpaid tokens are shared the same way
            pool_tokens: uint256 = pooled_wh * price
            running: uint256 = 0
            previous: uint256 = 0
            running_tokens: uint256 = 0
            previous_unpaid: uint256 = 0
            for p: uint256 in range(n, bound=MAX_METERS):
                put_in: uint256 = flow[p] & _WH_MASK
                if put_in == 0:
                    continue
                running += put_in
                current: uint256 = pooled_wh * running // pool
                wh: uint256 = current - previous
                previous = current
                if wh == 0:
                    continue
                producer: uint16 = convert(flow[p] >> 64, uint16)
                flow[p] -= wh
                tokens: uint256 = wh * price
                unpaid: uint256 = 0
                if pool_unpaid > 0:
                    running_tokens += tokens
                    current_unpaid: uint256 = pool_unpaid * running_tokens // pool_tokens
                    unpaid = current_unpaid - previous_unpaid
                    previous_unpaid = current_unpaid
                self._credit(owners[p], tokens, unpaid, p)
                log PoolContribution(interval=interval, producer=producer, wh=wh, tokens=tokens)
            p2p_wh += pooled_wh
            any_unpaid = any_unpaid or pool_unpaid > 0

    # ---- what is left is market: grid export and grid import; then the
    # unfunded part of the interval, per meter: the debtor's debt and the
    # creditor's receivable
    for p: uint256 in range(n, bound=MAX_METERS):
        entry: uint256 = flow[p]
        m: uint16 = convert(entry >> 64, uint16)
        if entry & _WH_MASK > 0:
            log GridExport(interval=interval, meter=m, wh=entry & _WH_MASK)
        if (entry >> 32) & _WH_MASK > 0:
            log GridImport(interval=interval, meter=m, wh=(entry >> 32) & _WH_MASK)
        if any_unpaid:
            unpaid: uint256 = self._unpaid_at[p]
            owed: uint256 = self._owed_at[p]
            if unpaid > 0 or owed > 0:
                claims: uint256 = self._claims[owners[p]]
                debt: uint256 = (claims & _CLAIM_MASK) + unpaid
                receivable: uint256 = (claims >> 128) + owed
                assert debt <= _CLAIM_MASK and receivable <= _CLAIM_MASK, "settlement: claim overflow"
                self._claims[owners[p]] = debt | (receivable << 128)
            if unpaid > 0:
                self._unpaid_at[p] = 0
                log UnpaidAllocation(interval=interval, consumer=m, debtor=owners[p], tokens=unpaid)
            if owed > 0:
                self._owed_at[p] = 0
                log ReceivableRecorded(interval=interval, producer=m, creditor=owners[p], tokens=owed)

    log Settled(
        interval=interval,
        meters=n,
        import_wh=import_wh,
        export_wh=export_wh,
        p2p_wh=p2p_wh,
        tokens=p2p_wh * price,
        by_deadline=by_deadline,
    )
