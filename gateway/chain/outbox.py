"""The chain outbox: exactly one settlement submission per interval, across crashes,
restarts, dropped transactions, nonce gaps and a chain node that lost blocks.

State machine of one ``chain_outbox`` row (one per contract and interval)::

    built --sign--> signed --send--> sent --receipt--> mined --N blocks--> confirmed
      |               (raw tx, hash and nonce are COMMITTED before the first send)
      +--> failed     (the contract refuses the submission for a reason that will
                       not go away: the error is kept; `wattshare chain retry`)

Rules:

- A row is signed once; its raw transaction is re-sent byte for byte (same hash, so a
  resend is idempotent) after a crash (``signed`` rows are sent on restart), when no
  receipt came within ``rebroadcast_s``, and when the node forgot it (a receipt that
  disappears, or a block hash that changed at the mined height: back to ``sent``).
- Nonces come from the outbox: ``max(node's mined nonce, 1 + highest nonce of our rows in
  flight)``, allocated and stored in one IMMEDIATE transaction; never from the node's
  pending count alone.
- If our nonce was used by another transaction (the node's mined nonce passed it
  without a receipt for ours), the contract is asked: if it holds our root for the
  interval, the row is done (``already_submitted``); else the old hash goes to
  ``chain_tx_history`` and the row is signed again with a new nonce.
- A submission the contract refuses because it is already there ("already submitted",
  or the interval was settled without us) counts as done: ``outcome`` says which.
- A ``confirmed`` row is re-checked (receipt still there, same block hash) for
  ``audit_rows`` of the latest confirmed rows on each step, so a node restarted from an
  older state gets the lost submissions again.

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

# outcomes of a row that left the machine
SUBMITTED = "submitted"
ALREADY_SUBMITTED = "already_submitted"  # our root is there (an earlier tx of ours)
SETTLED_WITHOUT_US = "settled_without_us"  # settled by deadline before we got there

_KNOWN = ("already known", "already imported", "known transaction", "already exists")
_NONCE_LOW = ("nonce too low", "nonce is too low", "oldnonce")


def _has(message, needles):
    m = message.lower()
    return any(n in m for n in needles)


class Outbox:
    """Drives the rows of one settlement contract. Call :meth:`step` repeatedly."""

    def __init__(self, conn, port, key, contract, *, confirmations=1, rebroadcast_s=60,
                 gas_margin=DEFAULT_GAS_MARGIN, audit_rows=8, clock=time.time, hook=None):
        self.conn = conn
        self.port = port
        self.key = key
        self.sender = Account.from_key(key).address
        self.contract = contract
        self.confirmations = confirmations
        self.rebroadcast_s = rebroadcast_s
        self.gas_margin = gas_margin
        self.audit_rows = audit_rows
        self._clock = clock
        self._hook = hook or (lambda event, interval: None)

    # ---- helpers

    def _now(self):
        return int(self._clock())

    def _update(self, interval, **fields):
        fields["updated_at"] = self._now()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE chain_outbox SET {cols} WHERE contract = ? AND interval = ?",
                          (*fields.values(), self.contract, interval))

    def rows(self, states):
        marks = ",".join("?" * len(states))
        cur = self.conn.execute(
            f"SELECT interval, state, root, packed, nonce, raw_tx, tx_hash, sent_at, "
            f"block_number, block_hash FROM chain_outbox WHERE contract = ? AND state IN "
            f"({marks}) ORDER BY coalesce(nonce, 1 << 62), interval",
            (self.contract, *states))
        keys = ("interval", "state", "root", "packed", "nonce", "raw_tx", "tx_hash",
                "sent_at", "block_number", "block_hash")
        return [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]

    def call_data(self, row):
        words = [int(w, 16) for w in json.loads(row["packed"])]
        return rpc.encode_call(contracts.SUBMIT, [row["interval"], bytes(row["root"]), words])

    def _contract_view(self, interval):
        """(our root on chain for this interval, settled?)."""
        root = rpc.decode_output(["bytes32"], self.port.call(
            self.contract, rpc.encode_call(contracts.ROOTS, [interval, self.sender])))[0]
        settled = rpc.decode_output(["bool"], self.port.call(
            self.contract, rpc.encode_call(contracts.SETTLED, [interval])))[0]
        return root, settled

    def _done_elsewhere(self, row):
        """The outcome if the contract already has this interval from us, or settled it
        without us; else None."""
        root, settled = self._contract_view(row["interval"])
        if root == bytes(row["root"]):
            return ALREADY_SUBMITTED
        if root != bytes(32):
            # a root of ours, but another one: only if the outbox was lost and rebuilt
            return ALREADY_SUBMITTED
        if settled:
            return SETTLED_WITHOUT_US
        return None

    # ---- the machine

    def step(self):
        """One pass over the open rows; returns {interval: new state} of what changed.

        Node errors (unreachable, timeouts) leave rows where they are for the next step.
        """
        changed = {}
        try:
            self._audit(changed)
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
        except RpcError as e:
            log.warning("chain node error; will retry", extra={"fields": {"error": str(e)}})
        return changed

    def _row(self, interval):
        for r in self.rows(OPEN + ("confirmed", "failed")):
            if r["interval"] == interval:
                return r
        raise KeyError(interval)

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
            outcome = self._done_elsewhere(row)
            if outcome is not None:
                self._finish(interval, outcome, changed)
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
                "SELECT max(nonce) FROM chain_outbox WHERE sender = ? AND state IN "
                "('signed', 'sent', 'mined')", (self.sender,)).fetchone()[0]
            nonce = max(chain_nonce, -1 if top is None else top + 1)
            signed = rpc.sign_transaction(
                self.key, chain_id=self.port.chain_id, nonce=nonce, to=self.contract,
                data=data, gas=int(gas * self.gas_margin), fees=fees)
            self._update(interval, state="signed", sender=self.sender, nonce=nonce,
                         raw_tx=signed.raw, tx_hash=signed.tx_hash, sent_at=None,
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

    def _nonce_used(self, row, changed):
        interval = row["interval"]
        outcome = self._done_elsewhere(row)
        if outcome is not None:
            self._finish(interval, outcome, changed)
            return
        conn = self.conn
        with store.immediate(conn):
            conn.execute(
                "INSERT INTO chain_tx_history (contract, interval, nonce, tx_hash, replaced_at,"
                " reason) VALUES (?, ?, ?, ?, ?, 'nonce used by another transaction')",
                (self.contract, interval, row["nonce"], row["tx_hash"], self._now()))
            self._update(interval, state="built", nonce=None, raw_tx=None, tx_hash=None,
                         sent_at=None)
        changed[interval] = "built"
        log.warning("nonce taken by another transaction; signing again", extra={"fields": {
            "interval": interval, "nonce": row["nonce"]}})

    def _track_sent(self, row, changed):
        interval = row["interval"]
        receipt = self.port.get_receipt(bytes(row["tx_hash"]))
        if receipt is None:
            if self.port.get_nonce(self.sender, "latest") > row["nonce"]:
                # our nonce is spent but not by this transaction (or the node is
                # behind on receipts: then the contract shows our root)
                self._nonce_used(row, changed)
            elif row["sent_at"] is None or self._now() - row["sent_at"] >= self.rebroadcast_s:
                self._send(row, changed)
            return
        if receipt.status == 1:
            self._update(interval, state="mined", block_number=receipt.block_number,
                         block_hash=receipt.block_hash, gas_used=receipt.gas_used,
                         outcome=SUBMITTED)
            changed[interval] = "mined"
        else:
            outcome = self._done_elsewhere(row)
            if outcome is None:
                self._update(interval, state="failed", block_number=receipt.block_number,
                             block_hash=receipt.block_hash, gas_used=receipt.gas_used,
                             error=f"transaction reverted in block {receipt.block_number}")
                changed[interval] = "failed"
                return
            self._update(interval, state="mined", block_number=receipt.block_number,
                         block_hash=receipt.block_hash, gas_used=receipt.gas_used,
                         outcome=outcome)
            changed[interval] = "mined"
        self._track_mined(self._row(interval), changed)

    def _canonical(self, row):
        try:
            header = self.port.get_block_header(row["block_number"])
        except RpcError as e:
            if "no block" in str(e):
                return False
            raise
        return bytes.fromhex(header["hash"][2:]) == bytes(row["block_hash"])

    def _track_mined(self, row, changed):
        interval = row["interval"]
        if not self._canonical(row):
            self._reopen(row, "block no longer canonical", changed)
            return
        head = self.port.get_block_number()
        if head - row["block_number"] + 1 >= self.confirmations:
            self._update(interval, state="confirmed")
            changed[interval] = "confirmed"
            self._hook("confirmed", interval)

    def _finish(self, interval, outcome, changed):
        self._update(interval, state="confirmed", outcome=outcome, error=None)
        changed[interval] = "confirmed"
        log.info("interval already on chain", extra={"fields": {
            "interval": interval, "outcome": outcome}})

    def _reopen(self, row, reason, changed):
        interval = row["interval"]
        self._update(interval, state="sent", sent_at=None, block_number=None, block_hash=None)
        changed[interval] = "sent"
        log.warning("submission lost by the node; re-sending the same transaction",
                    extra={"fields": {"interval": interval, "reason": reason}})

    def _audit(self, changed):
        if not self.audit_rows:
            return
        cur = self.conn.execute(
            "SELECT interval, tx_hash, block_number, block_hash, outcome FROM chain_outbox "
            "WHERE contract = ? AND state = 'confirmed' AND tx_hash IS NOT NULL "
            "ORDER BY interval DESC LIMIT ?", (self.contract, self.audit_rows))
        for interval, tx_hash, _number, block_hash, outcome in cur.fetchall():
            if outcome != SUBMITTED:
                continue
            receipt = self.port.get_receipt(bytes(tx_hash))
            if receipt is None or receipt.block_hash != bytes(block_hash):
                self._reopen({"interval": interval}, "receipt missing after confirmation",
                             changed)

def retry(conn, contract, interval, now=None):
    """Put a ``failed`` row back to ``built`` (it is simulated and signed again)."""
    cur = conn.execute(
        "UPDATE chain_outbox SET state = 'built', nonce = NULL, raw_tx = NULL, "
        "tx_hash = NULL, sent_at = NULL, error = NULL, updated_at = ? "
        "WHERE contract = ? AND interval = ? AND state = 'failed'",
        (int(time.time()) if now is None else now, contract, interval))
    return cur.rowcount == 1


def counts(conn, contract):
    """{state: rows} of a contract's outbox."""
    return dict(conn.execute(
        "SELECT state, count(*) FROM chain_outbox WHERE contract = ? GROUP BY state",
        (contract,)).fetchall())
