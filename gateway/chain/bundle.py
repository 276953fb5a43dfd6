"""Proof bundles: everything a third party needs to check one reading against the chain.

``export_bundle`` (gateway side, from the SQLite store) -> JSON object::

    version, reading_id, cose (hex, the exact signed bytes), device_id, pubkey (65-byte
    SEC1 hex), meter_index, salt, leaf_index, siblings [hex], root, interval (the first
    interval of the submission whose root commits the reading), intervals (how many),
    gateway, contract (Settlement), chain_id, block_number, block_hash (the block that
    mined the submission), tx_hash, gap (why the gateway left the meter out of the
    reading's own interval in that submission, or null)

Every stored reading gets one once a submission has committed it: the reading's own
interval's, or a later one's if it arrived after its interval was built (it is then
``late``).

``verify_bundle(bundle, port, confirmations=1, second=None)`` trusts the bundle for
nothing and the node(s) for as little as possible:

1. the COSE_Sign1 decodes, its kid names the reading's device, and the ES256 signature
   verifies with the bundle's public key;
2. the Merkle path: ``keccak(salt || sha256(cose))`` at ``leaf_index`` with the siblings
   gives a root (:mod:`gateway.chain.merkle`);
3. the node serves the bundle's chain id and its header of ``block_number`` hashes to
   ``block_hash``; with a ``second`` node, it has that same block at that height (two
   nodes must agree, else the verifier refuses: the one thing taken from nodes is a block
   hash); the block has ``confirmations`` blocks on it (itself included);
4. the settlement contract's code at that block, proven against the header's stateRoot
   (account proof: code hash), is this version's ``Settlement`` byte for byte; its
   constants (interval length, registry, ...) are read from that code, never from the
   bundle;
5. ``Settlement.root_of[root]`` at that block, proven by ``eth_getProof``
   (:func:`gateway.chain.proof.proven_storage`), names the bundle's gateway and its
   intervals: that root was committed by that gateway's submission of those intervals;
6. the reading's time is before that submission's last boundary (plus the anchor
   delay): the submission could commit it; earlier than its first interval: ``late``;
7. ``MeterRegistry.meters[meter_index]`` (the registry named in the settlement's code),
   proven the same way, holds the reading's device id and the bundle's public key
   (without a meter index: a warning, the key was not checked on chain);
8. with ``tx_hash``: the submission transaction, in the proven block, carried the meter's
   import and export for the reading's interval; a meter left out of it (a gap: its
   energy was not settled on chain; ``gap`` says why, as the gateway recorded it) is a
   warning. The transaction's contents come from the node (not proven against the
   block's transactions root).

A check is ok, failed, or a warning: a warning does not make the proof invalid (the
reading is signed and anchored), but says what the proof does not show.

Storage slots come from the compiler's layout (:mod:`gateway.chain.contracts`).
"""

import json
from dataclasses import dataclass, field

from eth_utils import to_checksum_address
from wattcore import cose, reading
from wattcore.errors import DecodeError

from gateway.chain import batcher, contracts, intervals, merkle, proof
from gateway.chain.errors import BundleError, ProofError, RpcError
from gateway.verify import public_key, signature_valid

VERSION = 2


def _leaf(conn, reading_id):
    return conn.execute(
        "SELECT l.contract, l.interval, l.leaf_index, l.salt, o.state, o.root, o.length, "
        "o.intervals, o.sender, o.block_number, o.block_hash, o.tx_hash, o.packed, o.gaps "
        "FROM "
        "chain_leaves l JOIN chain_outbox o ON o.contract = l.contract AND "
        "o.interval = l.interval AND o.part = 0 WHERE l.reading_id = ? "
        "ORDER BY o.state = 'confirmed' DESC, l.interval DESC LIMIT 1",
        (reading_id,)).fetchone()


def export_bundle(conn, reading_id, chain_id):
    """The bundle (dict) of stored reading ``reading_id``; :class:`BundleError` if no
    mined submission commits it yet."""
    row = conn.execute("SELECT r.device, r.cose, d.pubkey FROM readings r JOIN devices d "
                       "ON d.id = r.device WHERE r.id = ?", (reading_id,)).fetchone()
    if row is None:
        raise BundleError(f"no reading with id {reading_id} in the store")
    device, cose_bytes, pubkey = bytes(row[0]), bytes(row[1]), bytes(row[2])
    leaf = _leaf(conn, reading_id)
    if leaf is None:
        raise BundleError(f"reading {reading_id} is under no root yet: the next submission"
                          " commits it (`wattshare chain run`)")
    (contract, interval, leaf_index, salt, state, root, length, count, sender,
     block_number, block_hash, tx_hash, packed, gaps) = leaf
    if state not in ("mined", "confirmed") or block_hash is None:
        raise BundleError(f"reading {reading_id}: the submission of interval {interval} is "
                          f"{state}, not on chain yet (run `wattshare chain run`)")
    header = bytes.fromhex(json.loads(packed)["header"])
    cur = conn.execute(
        "SELECT l.salt, r.cose FROM chain_leaves l JOIN readings r ON r.id = l.reading_id "
        "WHERE l.contract = ? AND l.interval = ? ORDER BY l.leaf_index", (contract, interval))
    tree = merkle.MerkleTree(
        [batcher.header_leaf(header, contract, interval, count)]
        + [merkle.leaf_hash(bytes(s), bytes(c)) for s, c in cur.fetchall()])
    if tree.root != bytes(root):
        raise BundleError(f"interval {interval}: the stored leaves give root"
                          f" 0x{tree.root.hex()}, the outbox holds 0x{bytes(root).hex()}")
    path = tree.proof(leaf_index)
    index_row = conn.execute("SELECT meter_index FROM chain_meters WHERE device = ?",
                             (device,)).fetchone()
    return {
        "version": VERSION, "reading_id": reading_id, "cose": cose_bytes.hex(),
        "device_id": device.hex(), "pubkey": pubkey.hex(),
        "meter_index": index_row[0] if index_row else None,
        "salt": bytes(salt).hex(), "leaf_index": leaf_index,
        "siblings": [s.hex() for s in path.siblings], "root": bytes(root).hex(),
        "interval": interval, "intervals": count,
        "gateway": to_checksum_address(sender), "contract": to_checksum_address(contract),
        "chain_id": chain_id, "block_number": block_number, "block_hash": bytes(block_hash).hex(),
        "tx_hash": bytes(tx_hash).hex() if tx_hash else None,
        "gap": _gap(gaps, device, cose_bytes, length),
    }


def _gap(gaps, device, cose_bytes, length):
    # why the gateway left the meter out of the reading's own interval (if it did)
    t = reading.decode_payload(cose.decode_sign1(cose_bytes).payload)["t"]
    return json.loads(gaps or "{}").get(device.hex(), {}).get(str(t // length))


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warn: bool = False  # ok, but says what the proof does not show


@dataclass
class Report:
    fields: dict = field(default_factory=dict)  # the decoded reading
    checks: list = field(default_factory=list)
    bundle: dict = field(default_factory=dict)
    length: int | None = None  # the interval length, from the proven contract code

    @property
    def ok(self):
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def warnings(self):
        return [c for c in self.checks if c.ok and c.warn]

    def add(self, name, ok, detail, warn=False):
        self.checks.append(Check(name, ok, detail, warn))
        return ok


def _hex(bundle, key, size=None):
    value = bundle.get(key)
    try:
        data = bytes.fromhex(value.removeprefix("0x"))
    except (AttributeError, ValueError):
        raise BundleError(f"bundle field {key!r} is not hex: {value!r}") from None
    if size is not None and len(data) != size:
        raise BundleError(f"bundle field {key!r} must be {size} bytes, got {len(data)}")
    return data


def _address(bundle, key, optional=False):
    value = bundle.get(key)
    if optional and value is None:
        return None
    try:
        return to_checksum_address(value)
    except (TypeError, ValueError):
        raise BundleError(f"bundle field {key!r} is not an account address: {value!r}"
                          ) from None


def _public_key(bundle):
    data = _hex(bundle, "pubkey", 65)
    try:
        public_key(data)  # on the curve, uncompressed
    except ValueError:
        raise BundleError("bundle field 'pubkey' is not a P-256 public key (a point on "
                          "the curve, 65 bytes uncompressed)") from None
    return data


def _int(bundle, key):
    value = bundle.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BundleError(f"bundle field {key!r} must be an integer >= 0, got {value!r}")
    return value


def check_fields(bundle):
    """Every field of ``bundle`` read and typed, or :class:`BundleError` naming the first
    that is not what a bundle holds (no node is asked anything)."""
    verify_bundle(bundle, None)


def settlement_constants(code):
    """The immutables of a ``Settlement`` from its deployed code, if that code is this
    version's Settlement (the compiled runtime, then the immutables); else None."""
    artifact = contracts.artifact("Settlement")
    runtime = bytes.fromhex(artifact["bytecode_runtime"].removeprefix("0x"))
    layout = artifact["layout"]["code_layout"]
    size = sum(item["length"] for item in layout.values())
    if len(code) != len(runtime) + size or code[:len(runtime)] != runtime:
        return None
    data = code[len(runtime):]
    out = {}
    for name, item in layout.items():
        word = data[item["offset"]:item["offset"] + 32]
        out[name] = (int.from_bytes(word, "big") if item["type"] == "uint256"
                     else to_checksum_address(word[12:]))  # a contract: an address
    return out


def verify_bundle(bundle, port, confirmations=1, second=None):
    """Run every check (see the module docstring); returns a :class:`Report`.

    Malformed bundles raise :class:`BundleError`; node failures :class:`RpcError`.
    ``port`` None: read the fields only (:func:`check_fields`). ``second``: another node
    that must have the same block at that height."""
    if not isinstance(bundle, dict) or bundle.get("version") != VERSION:
        raise BundleError(f"not a version {VERSION} proof bundle")
    report = Report(bundle=bundle)
    cose_bytes = _hex(bundle, "cose")
    pubkey = _public_key(bundle)
    salt = _hex(bundle, "salt", merkle.SALT_SIZE)
    siblings = bundle.get("siblings") or []
    if not isinstance(siblings, list):
        raise BundleError(f"bundle field 'siblings' must be a list, got {siblings!r}")
    siblings = tuple(_hex({"s": s}, "s", 32) for s in siblings)
    interval, count = _int(bundle, "interval"), _int(bundle, "intervals")
    leaf_index, block_number = _int(bundle, "leaf_index"), _int(bundle, "block_number")
    block_hash = _hex(bundle, "block_hash", 32)
    gateway, contract = _address(bundle, "gateway"), _address(bundle, "contract")
    index = bundle.get("meter_index")
    if index is not None:
        index = _int(bundle, "meter_index")
    if port is None:
        return report

    # 1. the signed reading
    try:
        sign1 = cose.decode_sign1(cose_bytes)
        fields = reading.decode_payload(sign1.payload)
    except DecodeError as e:
        report.add("reading", False, f"not a valid signed reading: {e}")
        return report
    report.fields = fields
    report.add("reading", sign1.kid == fields["dev"],
               f"device {fields['dev'].hex()}, seq {fields['seq']}, t {fields['t']}")
    report.add("signature", signature_valid(pubkey, sign1),
               "ES256 signature with the bundle's device key")

    # 2. Merkle path
    computed = merkle.root_from_proof(merkle.leaf_hash(salt, cose_bytes),
                                      merkle.MerkleProof(leaf_index, siblings))
    if computed is None:
        report.add("merkle", False, f"leaf index {leaf_index} does not fit {len(siblings)}"
                   " siblings")
        return report
    claimed = bundle.get("root")
    report.add("merkle", claimed is None or computed.hex() == str(claimed).removeprefix("0x"),
               f"path of {len(siblings)} siblings gives root 0x{computed.hex()}")

    # 3. the chain, the block, its confirmations, a second node's word
    chain_id = port.get_chain_id()
    expected_chain = bundle.get("chain_id")
    if not report.add("chain", expected_chain in (None, chain_id),
                      f"node serves chain id {chain_id}"
                      + ("" if expected_chain is None else f", bundle says {expected_chain}")):
        return report
    if second is not None:
        other = second.get_chain_id()
        try:
            theirs = second.get_block_header(block_number).get("hash", "")
        except RpcError as e:
            theirs = f"none ({e})"
        same = other == chain_id and str(theirs).lower() == "0x" + block_hash.hex()
        if not report.add("second node", same,
                          f"{getattr(second, 'url', 'second node')}: chain id {other}, block"
                          f" {block_number} is {theirs}" + ("" if same else
                                                            ": THE NODES DISAGREE")):
            return report
    head = port.get_block_number()
    depth = head - block_number + 1
    report.add("confirmations", depth >= confirmations,
               f"block {block_number} has {depth} confirmations (head {head}), "
               f"{confirmations} required")

    # 4. the settlement contract's code and constants
    slot = contracts.root_slot(computed)
    try:
        stored = proof.proven_storage(port, contract, slot, block_number, block_hash)
        constants = settlement_constants(proof.proven_code(port, stored))
    except ProofError as e:
        report.add("storage", False, f"proof rejected: {e}")
        return report
    if not report.add("contract", constants is not None,
                      f"{contract}: code proven against stateRoot"
                      f" 0x{stored.state_root.hex()[:16]}.. "
                      + ("is this version's Settlement" if constants else
                         "IS NOT this version's Settlement")):
        return report
    length = report.length = constants["interval_length"]

    # 5. the root, committed by that gateway for those intervals
    word = stored.value
    got = (word & ((1 << 160) - 1), (word >> 160) & ((1 << 40) - 1), word >> 200)
    wanted = (int(gateway, 16), interval, count)
    report.add("storage", got == wanted,
               f"Settlement root_of[0x{computed.hex()[:16]}..] at block {block_number}: "
               + (f"gateway {gateway}, intervals {interval}..{interval + count - 1}"
                  if got == wanted else f"{word:#x}, not the bundle's gateway and intervals"))

    # 6. the reading's time against that submission (interval length from the code)
    t = fields["t"]
    end = (interval + count) * length + intervals.ANCHOR_DELAY
    late = t < interval * length
    report.add("interval", t < end,
               f"t {t} ({length} s intervals): committed with intervals {interval}.."
               f"{interval + count - 1}" + (", LATE: it arrived after its own interval "
                                            f"{t // length} was submitted" if late else ""))

    # 7. the device key registered on chain
    registry = constants["registry"]
    if index:
        id_slot, x_slot, y_slot = contracts.meter_slots(index)
        try:
            words = [proof.proven_storage(port, registry, s, block_number, block_hash).word
                     for s in (id_slot, x_slot, y_slot)]
        except ProofError as e:
            report.add("device key", False, f"registry proof rejected: {e}")
            return report
        report.add("device key", words[0] == fields["dev"].ljust(32, b"\0")
                   and b"\x04" + words[1] + words[2] == pubkey,
                   f"MeterRegistry {registry} meter {index}: device id and public key")
    else:
        report.add("device key", True, "NOT checked on chain: the bundle names no meter "
                   "index, so nothing shows the key was the meter's registered one", warn=True)

    # 8. the meter's energy in the submission (or a gap)
    if report.ok and index and bundle.get("tx_hash") is not None:
        _check_submitted(report, port, bundle, t // length, index, block_hash)
    return report


def _check_submitted(report, port, bundle, interval, index, block_hash):
    tx_hash = "0x" + _hex(bundle, "tx_hash", 32).hex()
    why = bundle.get("gap") if isinstance(bundle.get("gap"), str) else None
    try:
        tx = port.get_transaction(tx_hash)
    except RpcError as e:
        report.add("settled", True, f"NOT checked: the node gives no transaction {tx_hash}"
                   f" ({e})", warn=True)
        return
    try:
        if not isinstance(tx, dict) or _node_hex(tx.get("blockHash")) != block_hash:
            raise ValueError(f"the node does not show transaction {tx_hash} in block"
                             f" 0x{block_hash.hex()}")
        first, _root, _anchors, per_interval = contracts.decode_submit(
            _node_hex(tx.get("input")))
    except ValueError as e:
        report.add("settled", True, f"NOT checked: {e}", warn=True)
        return
    if not first <= interval < first + len(per_interval):
        report.add("settled", True, f"interval {interval} is not in this submission (of "
                   f"intervals {first}..{first + len(per_interval) - 1}): the reading "
                   "came late, or is the signed reading after its last boundary")
        return
    mine = [t for t in per_interval[interval - first] if t[0] == index]
    if mine:
        _, imp, exp = mine[0]
        report.add("settled", True, f"meter {index}'s import {imp} Wh and export {exp} Wh"
                   f" in interval {interval} were submitted in transaction {tx_hash}")
    else:
        report.add("settled", True,
                   f"meter {index} was LEFT OUT of interval {interval}'s submission (a gap"
                   + (f": {batcher_reason(why)}" if why else "")
                   + "): the reading is anchored, but its energy was not settled on chain",
                   warn=True)


def _node_hex(value):
    # a 0x-hex string from the node (which may lie): bytes, or ValueError
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"the node's answer {value!r} is not 0x-hex")
    return bytes.fromhex(value[2:])


def batcher_reason(quality):
    from gateway.chain.batcher import gap_reason

    return gap_reason(quality)


def format_report(report, tz=None):
    """The report for people: the reading in human units (local times in ``tz``, None =
    this machine's), each check ok / FAIL / warn, and the verdict."""
    from gateway import units

    lines = []
    if report.fields:
        f = report.fields
        flags = reading.flag_names(f.get("st", 0))
        when = units.local_time(f["t"], tz, seconds=True)
        lines.append(f"reading {report.bundle.get('reading_id', '?')}: meter "
                     f"{f['dev'].hex()}, seq {f['seq']}, {when}"
                     + (f" ({', '.join(flags)})" if flags else ""))
        measured = []
        if f.get("p") is not None:
            measured.append(f"power {f['p'] / 1000:.3f} kW" + (
                " (exporting)" if f["p"] < 0 else ""))
        if f.get("u") is not None:
            measured.append(f"{f['u'] / 10:.1f} V")
        if f.get("ei") is not None:
            measured.append(f"import counter {units.kwh(f['ei'])}")
        if f.get("ee") is not None:
            measured.append(f"export counter {units.kwh(f['ee'])}")
        if measured:
            lines.append("  " + ", ".join(measured))
        length, k = report.length, f["t"] // report.length if report.length else None
        if isinstance(length, int) and isinstance(k, int) and length > 0:
            lines.append(f"  settlement interval {k}: {units.interval_span(k, length, tz)}")
    for c in report.checks:
        mark = "FAIL" if not c.ok else "warn" if c.warn else "ok"
        lines.append(f"  [{mark}] {c.name}: {c.detail}")
    if not report.ok:
        lines.append("INVALID")
    elif report.warnings:
        n = len(report.warnings)
        lines.append(f"VALID, WITH {n} WARNING{'S' if n > 1 else ''}: the reading is signed by"
                     " its meter and anchored on chain; read the warning"
                     f"{'s' if n > 1 else ''} above")
    else:
        lines.append("VALID: the reading is signed by its meter and anchored on chain")
    return "\n".join(lines)
