"""The chain outbox: every built submission sent exactly once, in order, across crashes,
restarts, dropped transactions, nonce gaps and a chain node that forgets blocks.

A row is one transaction (:mod:`gateway.chain.batcher` builds them): keyed by its first
interval and a part, 0 for a row of intervals, -n .. -1 for rows of signed readings only
that go before the intervals row of that interval (rows are signed in (interval, part)
order, so in the order the contract needs them). Its label in what :meth:`Outbox.step`
returns and in the hooks is the interval for part 0, (interval, part) otherwise.

State machine of one ``chain_outbox`` row::

    built --sign--> signed --send--> sent --receipt--> mined --N blocks--> confirmed
      |  ^            (raw tx, hash and nonce are COMMITTED before the first send)
      |  +----------- the node lost it: a row with a transaction goes back to sent
      |               (same bytes), one without back to built
      +--> failed     (the contract refuses the submission for a reason that will
                       not go away: the error is kept; `wattshare chain retry`)

Every row that is ``mined`` or ``confirmed`` has an **anchor**: a block (number and
hash) that holds it. For a row ``submitted`` by its own transaction, the receipt's
block; for a row found on chain another way (``already_submitted``: the contract has our
root, or the meter anchors of a row of signed readings, from an earlier transaction;
``superseded``: our cursor passed the row's intervals under another root, after an
outbox that was lost and rebuilt), the block at which the contract was read. A refusal ("already
submitted") or a spent nonce is never trusted by itself: the contract is read at a
fixed block, and that block must get ``confirmations`` blocks on top like a receipt.

Each :meth:`Outbox.step` first **reconciles** the outbox with what the node holds now:

- anchors: if the block seen at the end of the last step is gone (the node restarted
  from an older state, or a reorganisation), confirmed rows are walked from the
  highest anchor down; every row whose anchor block is no longer the node's is
  reopened; the walk stops at the first anchor still there (block hashes chain, so
  every block below it is the node's too);
- nonces: a mined or confirmed row whose nonce the node has not mined (the node's
  ``latest`` nonce is at or below it) is reopened, and its stored transaction sent again;
- holes: a nonce between the node's ``pending`` nonce and our highest nonce in flight
  that no row in flight holds (a transaction of someone else with the gateway key, or an
  earlier signature of a row, that the node forgot) is filled with an empty transaction
  (0 wei to ourselves), so the later nonces are not stuck behind it.

Rules:

- A row is signed once; its raw transaction is re-sent byte for byte (same hash, so a
  resend is idempotent) after a crash (``signed`` rows are sent on restart), when the
  node does not hold it (its ``pending`` nonce is not past ours), when no receipt came
  within ``rebroadcast_s``, and when the node forgot it (above).
- Nonces come from the outbox: ``max(node's mined nonce, 1 + highest nonce the outbox
  ever signed with)``, allocated and stored in one IMMEDIATE transaction; never from the
  node's pending count alone, and never one a row still holds.
- If our nonce was used by another transaction (the node's mined nonce passed it
  without a receipt for ours), the contract is read: if it holds our root, the row is
  ``mined`` as ``already_submitted`` at that block; else the old hash goes to
  ``chain_tx_history`` and the row is signed again with a new nonce. A transaction that
  reverted while the contract does not hold our root is simulated and signed again (at
  most ``RESIGN_LIMIT`` times), so a refusal that will not go away ends ``failed`` with
  the contract's reason.
- ``durable(block)`` (given by the node's owner) is called before a row is counted as
  confirmed: for the embedded anvil it writes the node's state to disk, so a confirmed
  settlement survives a SIGKILL or power cut of the node.
- A row whose gas estimate is above the per-transaction cap (2^24 since Osaka) is split in
  two by ``split(interval, part)`` (given by the batcher's owner) before it is signed.

``hook(event, interval)`` is called after each committed transition (tests use it to
crash the process between signing and sending).
"""

import json
import logging
import time

from eth_account import Account
from wattcore import reading

from gateway import store
from gateway.chain import contracts, rpc
from gateway.chain.errors import RpcError

log = logging.getLogger("wattshare.chain")

IN_FLIGHT = ("signed", "sent", "mined")
OPEN = ("built",) + IN_FLIGHT
DEFAULT_GAS_MARGIN = 1.3
RESIGN_LIMIT = 3  # signatures of one interval after reverted transactions, then failed
MAX_FILLERS = 16  # hole-filling transactions per step
FILLER_GAS = 21_000

# outcomes of a row that left the machine
SUBMITTED = "submitted"
ALREADY_SUBMITTED = "already_submitted"  # our root (or anchors) is there: an earlier tx
SUPERSEDED = "superseded"  # our cursor passed its intervals under another root of ours

_KNOWN = ("already known", "already imported", "known transaction", "already exists")
_NONCE_LOW = ("nonce too low", "nonce is too low", "oldnonce")
_UNDERPRICED = ("underpriced",)
_ALREADY = ("already submitted", "not after the meter's last anchor")
_TOO_BIG = ("exceeds", "gas limit", "gas required", "out of gas", "intrinsic gas")


def label(interval, part):
    """How a row is named in what :meth:`Outbox.step` returns and in the hooks."""
    return interval if part == 0 else (interval, part)


def _has(message, needles):
    m = message.lower()
    return any(n in m for n in needles)


class Outbox:
    """Drives the rows of one settlement contract. Call :meth:`step` repeatedly."""

    def __init__(self, conn, port, key, contract, *, confirmations=1, rebroadcast_s=60,
                 gas_margin=DEFAULT_GAS_MARGIN, durable=None, split=None, clock=time.time,
                 hook=None):
        self.conn = conn
        self.port = port
        self.key = key
        self.sender = Account.from_key(key).address
        self.contract = contract
        self.confirmations = confirmations
        self.rebroadcast_s = rebroadcast_s
        self.gas_margin = gas_margin
        self._durable = durable or (lambda block: None)
        self._split = split or (lambda interval, part: False)
        self._book = None  # the MeterAnchors address, read once
        self._clock = clock
        self._hook = hook or (lambda event, interval: None)
        self._seen = None  # (number, hash) of the node's head at the end of the last step
        self._pending = 0  # the node's pending nonce for us, read at the start of a step

    # ---- helpers

    def _now(self):
        return int(self._clock())

    def _update(self, key, **fields):
        fields["updated_at"] = self._now()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(
            f"UPDATE chain_outbox SET {cols} WHERE contract = ? AND interval = ? AND part = ?",
            (*fields.values(), self.contract, *key))

    _COLUMNS = ("interval", "part", "intervals", "state", "root", "packed", "nonce",
                "raw_tx", "tx_hash", "sent_at", "block_number", "block_hash")

    def _dict(self, r):
        row = dict(zip(self._COLUMNS, r, strict=True))
        row["key"] = (row["interval"], row["part"])
        row["label"] = label(row["interval"], row["part"])
        return row

    def rows(self, states):
        marks = ",".join("?" * len(states))
        cur = self.conn.execute(
            f"SELECT {', '.join(self._COLUMNS)} FROM chain_outbox WHERE contract = ? AND "
            f"state IN ({marks}) ORDER BY coalesce(nonce, 1 << 62), interval, part",
            (self.contract, *states))
        return [self._dict(r) for r in cur.fetchall()]

    def _row(self, key):
        r = self.conn.execute(
            f"SELECT {', '.join(self._COLUMNS)} FROM chain_outbox WHERE contract = ? AND "
            "interval = ? AND part = ?", (self.contract, *key)).fetchone()
        if r is None:
            raise KeyError(key)
        return self._dict(r)

    def call_data(self, row):
        """The ``submit`` call of a row: its signed readings (anchors), then its
        intervals (none for a row of signed readings only)."""
        call = json.loads(row["packed"])
        anchors = [(m, restart, at, bytes.fromhex(p), bytes.fromhex(r), bytes.fromhex(s))
                   for m, restart, at, p, r, s in call["anchors"]]
        words = [int(w, 16) for w in call["intervals"]]
        root = bytes(row["root"]) if row["root"] is not None else bytes(32)
        return rpc.encode_call(contracts.SUBMIT, [row["interval"], root, anchors, words])

    def _head(self):
        header = self.port.get_block_header("latest")
        return int(header["number"], 16), bytes.fromhex(header["hash"][2:])

    def _is_block(self, number, block_hash):
        """Is ``block_hash`` the node's block at height ``number``?"""
        try:
            header = self.port.get_block_header(number)
        except RpcError as e:
            if "no block" in str(e):
                return False
            raise
        return bytes.fromhex(header["hash"][2:]) == bytes(block_hash)

    def _view(self, to, signature, args, types, block):
        return rpc.decode_output(types, self.port.call(to, rpc.encode_call(signature, args),
                                                       block))

    def _on_chain(self, row):
        """(outcome, block number, block hash) if the contract, read at the node's latest
        block, holds this row's effect already; else None. Intervals: our root is there
        (already submitted), or our cursor passed them (superseded). Signed readings only:
        the last one's meter is anchored at its sequence number or later."""
        number, block_hash = self._head()
        call = json.loads(row["packed"])
        if row["intervals"]:
            word = self._view(self.contract, contracts.ROOT_OF, [bytes(row["root"])],
                              ["uint256"], number)[0]
            if word != 0 and word & ((1 << 160) - 1) == int(self.sender, 16):
                return ALREADY_SUBMITTED, number, block_hash
            cursor = self._view(self.contract, contracts.CURSOR, [self.sender],
                                ["uint256"], number)[0]
            if cursor >= row["interval"] + row["intervals"]:
                return SUPERSEDED, number, block_hash
            return None
        if self._book is None:
            self._book = self._view(self.contract, contracts.ANCHOR_BOOK, [], ["address"],
                                    number)[0]
        meter, _restart, _at, payload, _r, _s = call["anchors"][-1]
        seq = reading.decode_payload(bytes.fromhex(payload))["seq"]
        state = self._view(self._book, contracts.ANCHOR_OF, [self.contract, meter],
                           contracts.ANCHOR_OF_TYPES, number)
        if state[1] >= seq:
            return ALREADY_SUBMITTED, number, block_hash
        return None

    # ---- the machine

    def step(self):
        """Reconcile with the node, then one pass over the open rows; returns
        {interval: new state} of what changed.

        Node errors (unreachable, timeouts) raise :class:`RpcError`; every transition
        before it is committed, and the rows carry on from there at the next step.
        """
        changed = {}
        self._reconcile(changed)
        for row in self.rows(OPEN):
            state = row["state"]
            if state == "built":
                self._sign(row, changed)
                if changed.get(row["label"]) == "signed":
                    self._send(self._row(row["key"]), changed)
            elif state == "signed":
                self._send(row, changed)
            elif state == "sent":
                self._track_sent(row, changed)
            elif state == "mined":
                self._track_mined(row, changed)
        self._seen = self._head()
        return changed

    # ---- reconciliation

    def _reconcile(self, changed):
        if self._seen is None or not self._is_block(*self._seen):
            self._audit_anchors(changed)
        latest = self.port.get_nonce(self.sender, "latest")
        self._pending = self.port.get_nonce(self.sender, "pending")
        self._audit_nonces(latest, changed)
        self._fill_holes(self._pending)

    def _audit_anchors(self, changed):
        # confirmed without an anchor: written by an earlier version of the outbox
        for interval, part, has_tx in self.conn.execute(
                "SELECT interval, part, raw_tx IS NOT NULL FROM chain_outbox WHERE "
                "contract = ? AND state = 'confirmed' AND block_number IS NULL",
                (self.contract,)).fetchall():
            self._reopen((interval, part), has_tx, "confirmed without a block", changed)
        # highest anchor first; the sort is done before the first row comes, so the
        # updates below do not disturb the cursor
        cur = self.conn.execute(
            "SELECT interval, part, raw_tx IS NOT NULL, block_number, block_hash FROM "
            "chain_outbox WHERE contract = ? AND state = 'confirmed' AND block_number IS NOT "
            "NULL ORDER BY block_number DESC", (self.contract,))
        try:
            while batch := cur.fetchmany(64):
                for interval, part, has_tx, number, block_hash in batch:
                    if self._is_block(number, block_hash):
                        return  # this block is the node's, so is every block below it
                    self._reopen((interval, part), has_tx,
                                 f"block {number} is no longer the node's", changed)
        finally:
            cur.close()

    def _audit_nonces(self, latest, changed):
        for interval, part, nonce in self.conn.execute(
                "SELECT interval, part, nonce FROM chain_outbox WHERE contract = ? AND "
                "sender = ? AND state IN ('mined', 'confirmed') AND raw_tx IS NOT NULL AND "
                "nonce >= ? ORDER BY nonce", (self.contract, self.sender, latest)).fetchall():
            self._reopen((interval, part), True,
                         f"the node has not mined nonce {nonce} (its next is {latest})",
                         changed)

    def _fill_holes(self, pending):
        # rows of another contract (an earlier deployment) are driven by nobody: holes
        held = {n for (n,) in self.conn.execute(
            "SELECT nonce FROM chain_outbox WHERE contract = ? AND sender = ? AND state IN "
            "('signed', 'sent') AND nonce >= ?", (self.contract, self.sender, pending))}
        if not held:
            return
        holes = [n for n in range(pending, max(held)) if n not in held]
        for nonce in holes[:MAX_FILLERS]:
            self._send_filler(nonce)

    def _send_filler(self, nonce):
        signed = rpc.sign_transaction(
            self.key, chain_id=self.port.chain_id, nonce=nonce, to=self.sender, data=b"",
            gas=FILLER_GAS, fees=self.port.suggest_fees())
        try:
            self.port.send_raw(signed.raw)
        except RpcError as e:
            if not _has(str(e), _KNOWN + _NONCE_LOW + _UNDERPRICED):
                raise
            return  # something holds that nonce now
        log.warning("nonce hole filled with an empty transaction", extra={"fields": {
            "nonce": nonce, "tx": "0x" + signed.tx_hash.hex()}})

    def _reopen(self, key, has_tx, reason, changed):
        if has_tx:  # the same signed transaction goes again
            self._update(key, state="sent", sent_at=None, block_number=None,
                         block_hash=None, gas_used=None, outcome=None)
            changed[label(*key)] = "sent"
        else:  # found on chain without a transaction of ours: simulated again
            self._update(key, state="built", block_number=None, block_hash=None,
                         gas_used=None, outcome=None)
            changed[label(*key)] = "built"
        log.warning("submission lost by the node; submitting it again", extra={"fields": {
            "interval": key[0], "part": key[1], "reason": reason}})

    # ---- rows

    def _sign(self, row, changed):
        key, name = row["key"], row["label"]
        data = self.call_data(row)
        try:
            gas = self.port.estimate_gas(self.sender, self.contract, data)
        except RpcError as e:
            message = str(e)
            if "interval not over" in message or "boundary in the future" in message:
                return  # the node's clock is behind ours: later
            if _has(message, _TOO_BIG) and "revert" not in message.lower():
                gas = contracts.TX_GAS_CAP + 1  # over the cap: split below
            elif "revert" not in message.lower() and "execution" not in message.lower():
                raise  # node trouble, not a refusal
            else:
                found = self._on_chain(row)
                if found is not None:
                    self._found(key, found, changed)
                elif _has(message, _ALREADY):
                    # the refusal says it is there, the contract at a fixed block says not
                    log.warning("refusal not confirmed by the contract; trying again",
                                extra={"fields": {"interval": key[0], "part": key[1],
                                                  "error": message}})
                else:
                    self._update(key, state="failed", error=message[:500])
                    changed[name] = "failed"
                    log.error("submission refused", extra={"fields": {
                        "interval": key[0], "part": key[1], "error": message}})
                return
        if gas > contracts.TX_GAS_CAP * 0.95:  # no room left for estimate drift
            if self._split(*key):
                changed[name] = "split"
                return
            self._update(key, state="failed",
                         error=f"needs {gas} gas, more than a transaction may use "
                               f"({contracts.TX_GAS_CAP}), and cannot be split")
            changed[name] = "failed"
            return
        fees = self.port.suggest_fees()
        chain_nonce = self.port.get_nonce(self.sender, "latest")
        conn = self.conn
        with store.immediate(conn):
            top = conn.execute(
                "SELECT max(n) FROM (SELECT nonce AS n FROM chain_outbox WHERE sender = ? "
                "UNION ALL SELECT h.nonce FROM chain_tx_history h JOIN chain_outbox o ON "
                "o.contract = h.contract AND o.interval = h.interval WHERE o.sender = ?)",
                (self.sender, self.sender)).fetchone()[0]
            nonce = max(chain_nonce, -1 if top is None else top + 1)
            signed = rpc.sign_transaction(
                self.key, chain_id=self.port.chain_id, nonce=nonce, to=self.contract,
                data=data, gas=min(int(gas * self.gas_margin), contracts.TX_GAS_CAP),
                fees=fees)
            self._update(key, state="signed", sender=self.sender, nonce=nonce,
                         raw_tx=signed.raw, tx_hash=signed.tx_hash, sent_at=None,
                         block_number=None, block_hash=None, outcome=None,
                         attempts=0, error=None)
        changed[name] = "signed"
        self._hook("signed", name)

    def _broadcast(self, row):
        """Send the stored raw tx. Returns "sent", "mined" (a receipt exists),
        or "nonce_used" (another transaction took our nonce)."""
        try:
            self.port.send_raw(bytes(row["raw_tx"]))
            return "sent"
        except RpcError as e:
            message = str(e)
            if _has(message, _KNOWN):
                return "sent"
            if not _has(message, _NONCE_LOW):
                raise
        if self.port.get_receipt(bytes(row["tx_hash"])) is not None:
            return "mined"
        return "nonce_used"

    def _send(self, row, changed):
        key, name = row["key"], row["label"]
        result = self._broadcast(row)
        self._hook("broadcast", name)
        if result == "nonce_used":
            self._nonce_used(row, changed)
            return
        self.conn.execute(
            "UPDATE chain_outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, "
            "updated_at = ? WHERE contract = ? AND interval = ? AND part = ?",
            (self._now(), self._now(), self.contract, *key))
        changed[name] = "sent"
        self._hook("sent", name)
        if result == "mined":
            self._track_sent(self._row(key), changed)

    def _sign_again(self, row, reason, changed):
        key = row["key"]
        conn = self.conn
        with store.immediate(conn):
            conn.execute(
                "INSERT INTO chain_tx_history (contract, interval, part, nonce, tx_hash, "
                "replaced_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.contract, *key, row["nonce"], row["tx_hash"], self._now(), reason))
            self._update(key, state="built", nonce=None, raw_tx=None, tx_hash=None,
                         sent_at=None, block_number=None, block_hash=None, outcome=None)
        changed[row["label"]] = "built"
        log.warning("signing the submission again", extra={"fields": {
            "interval": key[0], "part": key[1], "nonce": row["nonce"], "reason": reason}})

    def _nonce_used(self, row, changed):
        if self.port.get_receipt(bytes(row["tx_hash"])) is not None:
            return  # ours after all (the node indexed it late): tracked at the next step
        found = self._on_chain(row)
        if found is not None:
            self._found(row["key"], found, changed)
            return
        self._sign_again(row, "nonce used by another transaction", changed)

    def _found(self, key, found, changed):
        """The contract holds the row (``found`` from :meth:`_on_chain`): mined at the
        block it was read at, confirmed like a receipt."""
        outcome, number, block_hash = found
        self._update(key, state="mined", outcome=outcome, block_number=number,
                     block_hash=block_hash, error=None)
        changed[label(*key)] = "mined"
        log.info("submission found on chain", extra={"fields": {
            "interval": key[0], "part": key[1], "outcome": outcome, "block": number}})
        self._track_mined(self._row(key), changed)

    def _track_sent(self, row, changed):
        key, name = row["key"], row["label"]
        receipt = self.port.get_receipt(bytes(row["tx_hash"]))
        if receipt is None:
            if self.port.get_nonce(self.sender, "latest") > row["nonce"]:
                # our nonce is spent but not by this transaction (or the node is
                # behind on receipts: then the contract shows our root)
                self._nonce_used(row, changed)
            elif (self._pending <= row["nonce"] or row["sent_at"] is None
                  or self._now() - row["sent_at"] >= self.rebroadcast_s):
                # the node does not hold it (lost, or waiting behind a hole), or it is due
                self._send(row, changed)
            return
        if receipt.status == 1:
            self._update(key, state="mined", block_number=receipt.block_number,
                         block_hash=receipt.block_hash, gas_used=receipt.gas_used,
                         outcome=SUBMITTED)
            changed[name] = "mined"
        else:
            found = self._on_chain(row)
            if found is not None:
                self._update(key, gas_used=receipt.gas_used)
                self._found(key, found, changed)
                return
            self._reverted(row, receipt, changed)
            return
        self._track_mined(self._row(key), changed)

    def _reverted(self, row, receipt, changed):
        key = row["key"]
        signed = self.conn.execute(
            "SELECT count(*) FROM chain_tx_history WHERE contract = ? AND interval = ? AND "
            "part = ?", (self.contract, *key)).fetchone()[0] + 1
        reason = f"transaction reverted in block {receipt.block_number}"
        if signed < RESIGN_LIMIT:
            self._sign_again(row, reason, changed)  # simulated again: a lasting refusal
            return  # then fails in _sign with the contract's reason
        self._update(key, state="failed", block_number=receipt.block_number,
                     block_hash=receipt.block_hash, gas_used=receipt.gas_used,
                     error=f"{reason} (signed {signed} times)")
        changed[row["label"]] = "failed"
        log.error("submission reverted", extra={"fields": {
            "interval": key[0], "part": key[1], "block": receipt.block_number,
            "signed": signed}})

    def _track_mined(self, row, changed):
        key, name = row["key"], row["label"]
        if not self._is_block(row["block_number"], row["block_hash"]):
            self._reopen(key, row["raw_tx"] is not None,
                         f"block {row['block_number']} is no longer the node's", changed)
            return
        head = self.port.get_block_number()
        if head - row["block_number"] + 1 >= self.confirmations:
            self._durable(row["block_number"])
            self._update(key, state="confirmed")
            changed[name] = "confirmed"
            self._hook("confirmed", name)


def retry(conn, contract, interval, now=None):
    """Drop the ``failed`` rows from ``interval`` on, and their leaves: the batcher builds
    those intervals again from the chain's state and the stored readings (the contract
    may refuse the old call for good, e.g. after a meter's key changed). Spent nonces
    stay on record. Returns False if no failed row is there."""
    now = int(time.time()) if now is None else now
    with store.immediate(conn):
        rows = conn.execute(
            "SELECT interval, part, nonce, tx_hash FROM chain_outbox WHERE contract = ? AND "
            "interval >= ? AND state = 'failed'", (contract, interval)).fetchall()
        if not any(k == interval for k, *_ in rows):
            return False
        for k, part, nonce, tx_hash in rows:
            if nonce is not None:  # keep the spent nonce on record (never reused)
                conn.execute(
                    "INSERT INTO chain_tx_history (contract, interval, part, nonce, tx_hash, "
                    "replaced_at, reason) VALUES (?, ?, ?, ?, ?, ?, 'retried after failure')",
                    (contract, k, part, nonce, tx_hash, now))
            conn.execute("DELETE FROM chain_leaves WHERE contract = ? AND interval = ?",
                         (contract, k))
            conn.execute("DELETE FROM chain_outbox WHERE contract = ? AND interval = ? AND "
                         "part = ?", (contract, k, part))
    return True


def counts(conn, contract):
    """{state: rows} of a contract's outbox."""
    return dict(conn.execute(
        "SELECT state, count(*) FROM chain_outbox WHERE contract = ? GROUP BY state",
        (contract,)).fetchall())


def agreement(conn, port, contract, sender, *, confirmations=1, from_block=0):
    """Compare the outbox with the chain: the contract's ``Submitted`` events of
    ``sender`` up to the latest confirmed block against the confirmed rows.

    Returns ``{"block", "confirmed", "on_chain", "missing_on_chain", "other_root",
    "on_chain_not_confirmed", "agree"}``: intervals the outbox counts as submitted that
    the chain does not hold, that it holds with another root, and that it holds while
    the outbox does not count them (yet) as confirmed.
    """
    head = port.get_block_number()
    at = max(0, head - confirmations + 1)
    topic = contracts.event_topic("Settlement", "Submitted")
    gateway_topic = bytes(12) + bytes.fromhex(sender.removeprefix("0x"))
    on_chain = {}
    for entry in port.get_logs(contract, [topic, gateway_topic], from_block, at):
        decoded = contracts.decode_log("Settlement", entry)
        if decoded is not None:
            on_chain[decoded[1]["first_interval"]] = bytes(decoded[1]["root"])
    confirmed = {k: bytes(root) for k, root in conn.execute(
        "SELECT interval, root FROM chain_outbox WHERE contract = ? AND state = 'confirmed' "
        "AND intervals > 0 AND outcome IN (?, ?)", (contract, SUBMITTED, ALREADY_SUBMITTED))}
    missing = sorted(k for k in confirmed if k not in on_chain)
    other = sorted(k for k, root in confirmed.items() if k in on_chain and on_chain[k] != root)
    unconfirmed = sorted(k for k in on_chain if k not in confirmed)
    return {"block": at, "confirmed": len(confirmed), "on_chain": len(on_chain),
            "missing_on_chain": missing, "other_root": other,
            "on_chain_not_confirmed": unconfirmed,
            "agree": not (missing or other or unconfirmed)}
