"""What the gateway knows about the Wattshare contracts (contracts/*.vy): compiled
artifacts, the function signatures it calls, the packed submission format, storage slots
and event decoding.

Artifacts: ``out/contracts/<Name>.json`` from ``contracts/build.py`` when it is newer
than the source, else compiled here with vyper's Python API (about 12 s for all three)
and cached in ``out/contracts/.cache/<Name>-<sha256 of the source>.json``.
"""

import hashlib
import json
import os
import sys
from functools import cache
from pathlib import Path

import eth_abi
from eth_abi.exceptions import DecodingError
from eth_utils import keccak

from gateway.chain import proof

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = REPO_ROOT / "contracts"
OUT_DIR = REPO_ROOT / "out" / "contracts"
NAMES = ("CommunityToken", "MeterRegistry", "MeterAnchors", "Settlement")

# ---- function signatures (canonical ABI types)
# Anchor = (meter, restart, at, payload, r, s): see Settlement.vy / MeterAnchors.vy
ANCHOR_TYPE = "(uint16,bool,uint8,bytes,bytes32,bytes32)"
SUBMIT = f"submit(uint256,bytes32,{ANCHOR_TYPE}[],uint256[])"
SETTLE = "settle(uint256)"
ROOT_OF = "root_of(bytes32)"
CURSOR = "cursor(address)"
SETTLED = "settled(uint256)"
SUBMISSION_COUNT = "submission_count(uint256)"
START_INTERVAL = "start_interval()"
ANCHOR_BOOK = "anchor_book()"
ANCHOR_OF = "anchor_of(address,uint16)"
ANCHOR_OF_TYPES = ["uint256"] * 8  # boundary, seq, ei, ee, open, import left, export left, gw
TOKEN = "token()"
REGISTRY = "registry()"
INTERVAL_LENGTH = "interval_length()"
SETTLE_DELAY = "settle_delay()"
P2P_PRICE = "p2p_price()"
SET_PRICE = "set_price(uint256)"
SET_PRODUCER_KEY = "set_producer_key(uint16,uint8,uint16[],uint32[])"
SET_PRODUCER_COEFFICIENTS = "set_producer_coefficients(uint16,uint16[],uint32[])"
SET_COMMUNITY_KEY = "set_community_key(uint8,uint16[],uint32[])"
DEPOSIT_FOR = "deposit_for(address,uint256)"
BALANCE_OF = "balance_of(address)"
ADD_GATEWAY = "add_gateway(address)"
IS_GATEWAY = "is_gateway(address)"
REGISTER_METER = "register_meter(bytes8,bytes,address,address)"
GATEWAY_ID = "gateway_id(address)"
INDEX_OF = "index_of(bytes8)"
METERS = "meters(uint16)"
OWNER = "owner()"
APPROVE = "approve(address,uint256)"
TRANSFER = "transfer(address,uint256)"
ERC20_BALANCE = "balanceOf(address)"

KEY_KINDS = {"none": 0, "static": 1, "prorata": 2, "percent": 3, "priority": 4,
             "coefficients": 5}

# ---- packed intervals (see Settlement.vy): 3 entries of 80 bits per word,
# entry = meter_index << 64 | import_wh << 32 | export_wh; a submission's `intervals`
# array holds per interval the number of its words, then the words
ENTRY_BITS = 80
ENTRIES_PER_WORD = 3
MAX_METERS = 256
MAX_WH = (1 << 32) - 1
MAX_WORDS = 86
# per submission (Settlement.vy): intervals, words of `intervals`, anchors
MAX_SUBMISSION_INTERVALS = 8
MAX_SUBMISSION_WORDS = 348
MAX_ANCHORS = 32
# MeterAnchors.vy: an anchor for boundary B is a reading taken in [B, B + ANCHOR_DELAY)
ANCHOR_DELAY = 300
MAX_WINDOW_SECONDS = 3600
RESTART_PENDING = 7  # anchor_of()'s `open` after the admin's reset_anchor
# Osaka (EIP-7825): no transaction may use more gas than this
TX_GAS_CAP = 1 << 24


def pack_totals(totals):
    """``[(meter_index, import_wh, export_wh)]`` -> one interval's packed words.

    Sorted by meter index (the contract wants strictly increasing indices)."""
    entries = sorted(totals)
    if len(entries) > MAX_METERS:
        raise ValueError(f"{len(entries)} meters: the contract takes at most {MAX_METERS}")
    words, previous = [], 0
    for k, (index, imp, exp) in enumerate(entries):
        if not 1 <= index <= 0xFFFF or index <= previous:
            raise ValueError(f"meter index {index}: must be 1..65535 and strictly increasing")
        if not (0 <= imp <= MAX_WH and 0 <= exp <= MAX_WH):
            raise ValueError(f"meter {index}: import {imp} / export {exp} Wh outside 32 bits")
        previous = index
        entry = index << 64 | imp << 32 | exp
        if k % ENTRIES_PER_WORD == 0:
            words.append(0)
        words[-1] |= entry << (ENTRY_BITS * (k % ENTRIES_PER_WORD))
    return words


def unpack_totals(words):
    """The inverse of :func:`pack_totals`."""
    out = []
    for word in words:
        for k in range(ENTRIES_PER_WORD):
            entry = (word >> (ENTRY_BITS * k)) & ((1 << ENTRY_BITS) - 1)
            if entry:
                out.append((entry >> 64, (entry >> 32) & MAX_WH, entry & MAX_WH))
    return out


def pack_intervals(per_interval):
    """``[[(meter_index, import_wh, export_wh)], ...]`` (consecutive intervals) -> the
    ``intervals`` array of ``submit``: per interval its word count, then its words."""
    out = []
    for totals in per_interval:
        words = pack_totals(totals)
        out += [len(words), *words]
    return out


def decode_submit(data):
    """Call data of :data:`SUBMIT` -> (first interval, root, [(meter, restart, at, payload,
    r, s)], [[(meter_index, import_wh, export_wh)] per interval]): what a gateway
    submitted (``verify`` reads it from the transaction)."""
    data = bytes(data)
    if data[:4] != keccak(text=SUBMIT)[:4]:
        raise ValueError("the transaction is not a submission (another function)")
    try:
        first, root, anchors, words = eth_abi.decode(
            ["uint256", "bytes32", f"{ANCHOR_TYPE}[]", "uint256[]"], data[4:])
        per_interval = unpack_intervals(words)
    except (DecodingError, IndexError) as e:
        raise ValueError(f"the submission's call data does not decode: {e}") from None
    return first, root, list(anchors), per_interval


def unpack_intervals(data):
    """The inverse of :func:`pack_intervals`."""
    out, k = [], 0
    while k < len(data):
        count = data[k]
        out.append(unpack_totals(data[k + 1:k + 1 + count]))
        k += 1 + count
    return out


# ---- artifacts


def _source_hash(name):
    return hashlib.sha256((CONTRACTS_DIR / f"{name}.vy").read_bytes()).hexdigest()


@cache
def artifact(name):
    """abi, bytecode (hex), layout of contracts/<name>.vy (see the module docstring)."""
    if name not in NAMES:
        raise ValueError(f"unknown contract {name!r}; known: {', '.join(NAMES)}")
    source = CONTRACTS_DIR / f"{name}.vy"
    built = OUT_DIR / f"{name}.json"
    if built.is_file() and built.stat().st_mtime >= source.stat().st_mtime:
        return json.loads(built.read_text())
    cached = OUT_DIR / ".cache" / f"{name}-{_source_hash(name)[:16]}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from contracts.build import compile_contract

    result = compile_contract(name)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(cached)
    return result


def storage_slot(name, variable):
    """Base slot of a top-level storage variable, from the compiler's layout."""
    layout = artifact(name)["layout"]["storage_layout"]
    if variable not in layout:
        raise KeyError(f"{name}: no storage variable {variable!r}")
    return layout[variable]["slot"]


def root_slot(root):
    """Storage slot of ``Settlement.root_of[root]`` (gateway | first interval << 160 |
    intervals << 200: which submission committed the root)."""
    return proof.vyper_hashmap_slot(storage_slot("Settlement", "root_of"), bytes(root))


def root_word(gateway, first, intervals):
    """The value ``Settlement.root_of`` holds for a submission."""
    return int(gateway, 16) | first << 160 | intervals << 200


def meter_slots(index):
    """Storage slots of ``MeterRegistry.meters[index]``: (device_id, key_x, key_y).

    A struct in a HashMap takes consecutive slots from ``keccak(slot || key)`` in field
    order; ``bytes8`` sits left-aligned in its word."""
    base = proof.vyper_hashmap_slot(storage_slot("MeterRegistry", "meters"), index)
    return base, base + 1, base + 2


def deploy_data(name, args):
    """Deployment bytecode followed by the ABI-encoded constructor arguments."""
    a = artifact(name)
    ctor = next((e for e in a["abi"] if e.get("type") == "constructor"), None)
    types = [_abi_type(i) for i in ctor["inputs"]] if ctor else []
    return bytes.fromhex(a["bytecode"][2:]) + eth_abi.encode(types, list(args))


def _abi_type(item):
    if item["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item["components"])
        return f"({inner}){item['type'][5:]}"
    return item["type"]


# ---- events


@cache
def _events(name):
    out = {}
    for e in artifact(name)["abi"]:
        if e.get("type") != "event":
            continue
        sig = f"{e['name']}({','.join(_abi_type(i) for i in e['inputs'])})"
        out[keccak(text=sig)] = e
    return out


def event_topic(name, event):
    for topic, e in _events(name).items():
        if e["name"] == event:
            return topic
    raise KeyError(f"{name}: no event {event}")


def decode_log(name, log):
    """A JSON-RPC log of contract ``name`` -> (event name, {field: value}), or None."""
    topics = [bytes.fromhex(t[2:]) for t in log["topics"]]
    if not topics:
        return None
    e = _events(name).get(topics[0])
    if e is None:
        return None
    indexed = [i for i in e["inputs"] if i["indexed"]]
    plain = [i for i in e["inputs"] if not i["indexed"]]
    fields = {}
    for item, topic in zip(indexed, topics[1:], strict=True):
        fields[item["name"]] = eth_abi.decode([_abi_type(item)], topic)[0]
    data = bytes.fromhex(log["data"][2:]) if log.get("data") not in (None, "0x") else b""
    values = eth_abi.decode([_abi_type(i) for i in plain], data) if plain else ()
    for item, value in zip(plain, values, strict=True):
        fields[item["name"]] = value
    return e["name"], fields
