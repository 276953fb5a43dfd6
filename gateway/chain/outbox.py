"""The chain outbox: exactly one settlement submission per interval, across crashes,
restarts, dropped transactions, nonce gaps and a chain node that forgets blocks.

State machine of one ``chain_outbox`` row (one per contract and interval)::

    built --sign--> signed --send--> sent --receipt--> mined --N blocks--> confirmed
      |  ^            (raw tx, hash and nonce are COMMITTED before the first send)
      |  +----------- the node lost it: a row with a transaction goes back to sent
      |               (same bytes), one without back to built
      +--> failed     (the contract refuses the submission for a reason that will
                       not go away: the error is kept; `wattshare chain retry`)

Every row that is ``mined`` or ``confirmed`` has an **anchor**: a block (number and
hash) that holds it. For a row ``submitted`` by its own transaction, the receipt's
block; for a row found on chain another way (``already_submitted``: the contract has our
root, from an earlier transaction or an outbox that was lost and rebuilt;
``settled_without_us``), the block at which the contract was read. A refusal ("already
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

``hook(event, interval)`` is called after each committed transition (tests use it to
crash the process between signing and sending).
"""

import json
import logging
import time

from eth_account import Account

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
ALREADY_SUBMITTED = "already_submitted"  # our root is there (an earlier tx of ours)
SETTLED_WITHOUT_US = "settled_without_us"  # settled by deadline before we got there

_KNOWN = ("already known", "already imported", "known transaction", "already exists")
_NONCE_LOW = ("nonce too low", "nonce is too low", "oldnonce")
_UNDERPRICED = ("underpriced",)
_ALREADY = ("already submitted", "already settled")


def _has(message, needles):
    m = message.lower()
    return any(n in m for n in needles)


class Outbox:
    """Drives the rows of one settlement contract. Call :meth:`step` repeatedly."""

    def __init__(self, conn, port, key, contract, *, confirmations=1, rebroadcast_s=60,
                 gas_margin=DEFAULT_GAS_MARGIN, durable=None, clock=time.time, hook=None):
        self.conn = conn
        self.port = port
        self.key = key
        self.sender = Account.from_key(key).address
        self.contract = contract
        self.confirmations = confirmations
        self.rebroadcast_s = rebroadcast_s
        self.gas_margin = gas_margin
        self._durable = durable or (lambda block: None)
        self._clock = clock
        self._hook = hook or (lambda event, interval: None)
        self._seen = None  # (number, hash) of the node's head at the end of the last step
        self._pending = 0  # the node's pending nonce for us, read at the start of a step

    # ---- helpers

    def _now(self):
        return int(self._clock())

    def _update(self, interval, **fields):
        fields["updated_at"] = self._now()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE chain_outbox SET {cols} WHERE contract = ? AND interval = ?",
                          (*fields.values(), self.contract, interval))

    _COLUMNS = ("interval", "state", "root", "packed", "nonce", "raw_tx", "tx_hash",
                "sent_at", "block_number", "block_hash")

    def rows(self, states):
        marks = ",".join("?" * len(states))
        cur = self.conn.execute(
            f"SELECT {', '.join(self._COLUMNS)} FROM chain_outbox WHERE contract = ? AND "
            f"state IN ({marks}) ORDER BY coalesce(nonce, 1 << 62), interval",
            (self.contract, *states))
        return [dict(zip(self._COLUMNS, r, strict=True)) for r in cur.fetchall()]

    def _row(self, interval):
        r = self.conn.execute(
            f"SELECT {', '.join(self._COLUMNS)} FROM chain_outbox WHERE contract = ? AND "
            "interval = ?", (self.contract, interval)).fetchone()
        if r is None:
            raise KeyError(interval)
        return dict(zip(self._COLUMNS, r, strict=True))

    def call_data(self, row):
        words = [int(w, 16) for w in json.loads(row["packed"])]
        return rpc.encode_call(contracts.SUBMIT, [row["interval"], bytes(row["root"]), words])

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

    def _on_chain(self, row):
        """(outcome, block number, block hash) if the contract, read at the node's latest
        block, has this interval from us or settled it without us; else None."""
        number, block_hash = self._head()
        interval = row["interval"]
        root = rpc.decode_output(["bytes32"], self.port.call(
            self.contract, rpc.encode_call(contracts.ROOTS, [interval, self.sender]),
            number))[0]
        if root != bytes(32):
            # ours; another root only if the outbox was lost and rebuilt (new salts)
            return ALREADY_SUBMITTED, number, block_hash
        settled = rpc.decode_output(["bool"], self.port.call(
            self.contract, rpc.encode_call(contracts.SETTLED, [interval]), number))[0]
        if settled:
            return SETTLED_WITHOUT_US, number, block_hash
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
                if changed.get(row["interval"]) == "signed":
                    self._send(self._row(row["interval"]), changed)
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
        for interval, has_tx in self.conn.execute(
                "SELECT interval, raw_tx IS NOT NULL FROM chain_outbox WHERE contract = ? AND "
                "state = 'confirmed' AND block_number IS NULL", (self.contract,)).fetchall():
            self._reopen(interval, has_tx, "confirmed without a block", changed)
        # highest anchor first; the sort is done before the first row comes, so the
        # updates below do not disturb the cursor
        cur = self.conn.execute(
            "SELECT interval, raw_tx IS NOT NULL, block_number, block_hash FROM chain_outbox "
            "WHERE contract = ? AND state = 'confirmed' AND block_number IS NOT NULL "
            "ORDER BY block_number DESC", (self.contract,))
        try:
            while batch := cur.fetchmany(64):
                for interval, has_tx, number, block_hash in batch:
                    if self._is_block(number, block_hash):
                        return  # this block is the node's, so is every block below it
                    self._reopen(interval, has_tx,
                                 f"block {number} is no longer the node's", changed)
        finally:
            cur.close()

    def _audit_nonces(self, latest, changed):
        for interval, nonce in self.conn.execute(
                "SELECT interval, nonce FROM chain_outbox WHERE contract = ? AND sender = ? "
                "AND state IN ('mined', 'confirmed') AND raw_tx IS NOT NULL AND nonce >= ? "
                "ORDER BY nonce", (self.contract, self.sender, latest)).fetchall():
            self._reopen(interval, True,
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

    def _reopen(self, interval, has_tx, reason, changed):
        if has_tx:  # the same signed transaction goes again
            self._update(interval, state="sent", sent_at=None, block_number=None,
                         block_hash=None, gas_used=None, outcome=None)
            changed[interval] = "sent"
        else:  # found on chain without a transaction of ours: simulated again
            self._update(interval, state="built", block_number=None, block_hash=None,
                         gas_used=None, outcome=None)
            changed[interval] = "built"
        log.warning("submission lost by the node; submitting it again", extra={"fields": {
            "interval": interval, "reason": reason}})

    # ---- rows

    def _sign(self, row, changed):
        interval = row["interval"]
        data = self.call_data(row)
        try:
            gas = self.port.estimate_gas(self.sender, self.contract, data)
        except RpcError as e:
            message = str(e)
            if "interval not over" in message:
                return  # the node's clock is behind ours: later
            if "revert" not in message.lower() and "execution" not in message.lower():
                raise  # node trouble, not a refusal
            found = self._on_chain(row)
            if found is not None:
                self._found(interval, found, changed)
            elif _has(message, _ALREADY):
                # the refusal says it is there, the contract at a fixed block says not
                log.warning("refusal not confirmed by the contract; trying again",
                            extra={"fields": {"interval": interval, "error": message}})
            else:
                self._update(interval, state="failed", error=message[:500])
                changed[interval] = "failed"
                log.error("submission refused", extra={"fields": {
                    "interval": interval, "error": message}})
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
                data=data, gas=int(gas * self.gas_margin), fees=fees)
            self._update(interval, state="signed", sender=self.sender, nonce=nonce,
                         raw_tx=signed.raw, tx_hash=signed.tx_hash, sent_at=None,
                         block_number=None, block_hash=None, outcome=None,
                         attempts=0, error=None)
        changed[interval] = "signed"
        self._hook("signed", interval)

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
        interval = row["interval"]
        result = self._broadcast(row)
        self._hook("broadcast", interval)
        if result == "nonce_used":
            self._nonce_used(row, changed)
            return
        self.conn.execute(
            "UPDATE chain_outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, "
            "updated_at = ? WHERE contract = ? AND interval = ?",
            (self._now(), self._now(), self.contract, interval))
        changed[interval] = "sent"
        self._hook("sent", interval)
        if result == "mined":
            self._track_sent(self._row(interval), changed)

    def _sign_again(self, row, reason, changed):
        interval = row["interval"]
        conn = self.conn
        with store.immediate(conn):
            conn.execute(
                "INSERT INTO chain_tx_history (contract, interval, nonce, tx_hash, replaced_at,"
                " reason) VALUES (?, ?, ?, ?, ?, ?)",
                (self.contract, interval, row["nonce"], row["tx_hash"], self._now(), reason))
            self._update(interval, state="built", nonce=None, raw_tx=None, tx_hash=None,
                         sent_at=None, block_number=None, block_hash=None, outcome=None)
        changed[interval] = "built"
        log.warning("signing the submission again", extra={"fields": {
            "interval": interval, "nonce": row["nonce"], "reason": reason}})

    def _nonce_used(self, row, changed):
        if self.port.get_receipt(bytes(row["tx_hash"])) is not None:
            return  # ours after all (the node indexed it late): tracked at the next step
        found = self._on_chain(row)
        if found is not None:
            self._found(row["interval"], found, changed)
            return
        self._sign_again(row, "nonce used by another transaction", changed)

    def _found(self, interval, found, changed):
        """The contract holds the interval (``found`` from :meth:`_on_chain`): mined at
        the block it was read at, confirmed like a receipt."""
        outcome, number, block_hash = found
        self._update(interval, state="mined", outcome=outcome, block_number=number,
                     block_hash=block_hash, error=None)
        changed[interval] = "mined"
        log.info("interval found on chain", extra={"fields": {
            "interval": interval, "outcome": outcome, "block": number}})
        self._track_mined(self._row(interval), changed)

    def _track_sent(self, row, changed):
        interval = row["interval"]
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
            self._update(interval, state="mined", block_number=receipt.block_number,
                         block_hash=receipt.block_hash, gas_used=receipt.gas_used,
                         outcome=SUBMITTED)
            changed[interval] = "mined"
        else:
            found = self._on_chain(row)
            if found is not None:
                self._update(interval, gas_used=receipt.gas_used)
                self._found(interval, found, changed)
                return
            self._reverted(row, receipt, changed)
            return
        self._track_mined(self._row(interval), changed)

    def _reverted(self, row, receipt, changed):
        interval = row["interval"]
        signed = self.conn.execute(
            "SELECT count(*) FROM chain_tx_history WHERE contract = ? AND interval = ?",
            (self.contract, interval)).fetchone()[0] + 1
        reason = f"transaction reverted in block {receipt.block_number}"
        if signed < RESIGN_LIMIT:
            self._sign_again(row, reason, changed)  # simulated again: a lasting refusal
            return  # then fails in _sign with the contract's reason
        self._update(interval, state="failed", block_number=receipt.block_number,
                     block_hash=receipt.block_hash, gas_used=receipt.gas_used,
                     error=f"{reason} (signed {signed} times)")
        changed[interval] = "failed"
        log.error("submission reverted", extra={"fields": {
            "interval": interval, "block": receipt.block_number, "signed": signed}})

    def _track_mined(self, row, changed):
        interval = row["interval"]
        if not self._is_block(row["block_number"], row["block_hash"]):
            self._reopen(interval, row["raw_tx"] is not None,
                         f"block {row['block_number']} is no longer the node's", changed)
            return
        head = self.port.get_block_number()
        if head - row["block_number"] + 1 >= self.confirmations:
            self._durable(row["block_number"])
            self._update(interval, state="confirmed")
            changed[interval] = "confirmed"
            self._hook("confirmed", interval)


def retry(conn, contract, interval, now=None):
    """Put a ``failed`` row back to ``built`` (it is simulated and signed again)."""
    now = int(time.time()) if now is None else now
    with store.immediate(conn):
        row = conn.execute(
            "SELECT nonce, tx_hash FROM chain_outbox WHERE contract = ? AND interval = ? AND "
            "state = 'failed'", (contract, interval)).fetchone()
        if row is None:
            return False
        if row[0] is not None:  # keep the spent nonce on record (the outbox never reuses it)
            conn.execute(
                "INSERT INTO chain_tx_history (contract, interval, nonce, tx_hash, "
                "replaced_at, reason) VALUES (?, ?, ?, ?, ?, 'retried after failure')",
                (contract, interval, row[0], row[1], now))
        conn.execute(
            "UPDATE chain_outbox SET state = 'built', nonce = NULL, raw_tx = NULL, "
            "tx_hash = NULL, sent_at = NULL, block_number = NULL, block_hash = NULL, "
            "outcome = NULL, error = NULL, updated_at = ? "
            "WHERE contract = ? AND interval = ?", (now, contract, interval))
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
    for entry in port.get_logs(contract, [topic, None, gateway_topic], from_block, at):
        decoded = contracts.decode_log("Settlement", entry)
        if decoded is not None:
            on_chain[decoded[1]["interval"]] = bytes(decoded[1]["root"])
    confirmed = {k: bytes(root) for k, root in conn.execute(
        "SELECT interval, root FROM chain_outbox WHERE contract = ? AND state = 'confirmed' "
        "AND outcome IN (?, ?)", (contract, SUBMITTED, ALREADY_SUBMITTED))}
    missing = sorted(k for k in confirmed if k not in on_chain)
    other = sorted(k for k, root in confirmed.items() if k in on_chain and on_chain[k] != root)
    unconfirmed = sorted(k for k in on_chain if k not in confirmed)
    return {"block": at, "confirmed": len(confirmed), "on_chain": len(on_chain),
            "missing_on_chain": missing, "other_root": other,
            "on_chain_not_confirmed": unconfirmed,
            "agree": not (missing or other or unconfirmed)}
