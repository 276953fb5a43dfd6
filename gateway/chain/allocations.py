"""Allocations from the chain's events, as CSV rows (``wattshare export-allocations``).

Columns (:data:`COLUMNS`; docs/chain.md lists the same): the exact integers as the
contract has them, ``interval, kind, producer, consumer, wh, tokens``, and readable ones
next to them: ``interval_start`` (local time, ISO 8601 with its offset), ``producer_name``
and ``consumer_name`` (the labels the community gave its meters), ``kwh`` (exact, three
decimals), ``tokens_whole`` (exact, in whole tokens) and ``token`` (its symbol).

- ``p2p``: a producer's own key gave ``wh`` of its export to ``consumer``
  (``P2PAllocation``; tier 1);
- ``pool``: the community key gave ``wh`` of the pooled export to ``consumer``
  (``PoolAllocation``; tier 2); ``producer`` is ``pool``;
- ``pool_contribution``: ``producer`` supplied ``wh`` to the pool in that interval
  (``PoolContribution``); ``consumer`` is ``pool``;
- ``self_supply``: a meter that exported and imported in the same interval covered
  ``wh`` of its own import with its own export (``SelfSupply``): its own consumption,
  not shared energy, never paid (``producer`` = ``consumer`` = that meter, ``tokens`` 0).

The shared energy of an interval (``p2p`` + ``pool``) is its ``Settled.p2p_wh``.
Producers and consumers are meter indices of the community's MeterRegistry; ``tokens`` is
what the consumer was charged (the ``UnpaidAllocation`` events say what was not covered).
"""

import csv

from gateway.chain import contracts

COLUMNS = ("interval", "interval_start", "kind", "producer", "producer_name", "consumer",
           "consumer_name", "wh", "kwh", "tokens", "tokens_whole", "token")
_KINDS = {"P2PAllocation": "p2p", "PoolAllocation": "pool",
          "PoolContribution": "pool_contribution", "SelfSupply": "self_supply"}


def allocation_rows(port, settlement, first, last, from_block=0):
    """Rows (dicts) for intervals ``first..last`` (inclusive), in chain order."""
    topics = ["0x" + contracts.event_topic("Settlement", e).hex() for e in _KINDS]
    logs = port.request("eth_getLogs", [{"address": settlement, "fromBlock": hex(from_block),
                                         "toBlock": "latest", "topics": [topics]}])
    rows = []
    for log in logs:
        name, f = contracts.decode_log("Settlement", log)
        if not first <= f["interval"] <= last:
            continue
        kind = _KINDS[name]
        if kind == "self_supply":
            rows.append({"interval": f["interval"], "kind": kind, "producer": f["meter"],
                         "consumer": f["meter"], "wh": f["wh"], "tokens": 0})
            continue
        rows.append({"interval": f["interval"], "kind": kind,
                     "producer": f.get("producer", "pool"),
                     "consumer": f.get("consumer", "pool"), "wh": f["wh"],
                     "tokens": f["tokens"]})
    return rows


def add_readable(rows, name, token, length, tz):
    """Add the readable columns to ``rows`` (in place): ``name(index)`` names a meter
    (or ``"pool"``); ``token``: :class:`gateway.units.Token`; ``tz``: the local zone."""
    from gateway import units

    for r in rows:
        r["interval_start"] = units.localize(r["interval"] * length, tz).isoformat()
        r["producer_name"] = name(r["producer"])
        r["consumer_name"] = name(r["consumer"])
        r["kwh"] = f"{r['wh'] / 1000:.3f}"
        r["tokens_whole"] = units.token_amount(r["tokens"], token.decimals, token.decimals)
        r["token"] = token.symbol
    return rows


def write_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
