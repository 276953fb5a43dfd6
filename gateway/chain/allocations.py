"""Allocations from the chain's events, as CSV rows (``wattshare export-allocations``).

Columns: ``interval, kind, producer, consumer, wh, tokens``

- ``p2p``: a producer's own key gave ``wh`` of its export to ``consumer``
  (``P2PAllocation``; tier 1);
- ``pool``: the community key gave ``wh`` of the pooled export to ``consumer``
  (``PoolAllocation``; tier 2); ``producer`` is ``pool``;
- ``pool_contribution``: ``producer`` supplied ``wh`` to the pool in that interval
  (``PoolContribution``); ``consumer`` is ``pool``.

Producers and consumers are meter indices of the community's MeterRegistry; ``tokens`` is
what the consumer was charged (the ``UnpaidAllocation`` events say what was not covered).
"""

import csv

from gateway.chain import contracts

COLUMNS = ("interval", "kind", "producer", "consumer", "wh", "tokens")
_KINDS = {"P2PAllocation": "p2p", "PoolAllocation": "pool",
          "PoolContribution": "pool_contribution"}


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
        rows.append({"interval": f["interval"], "kind": kind,
                     "producer": f.get("producer", "pool"),
                     "consumer": f.get("consumer", "pool"), "wh": f["wh"],
                     "tokens": f["tokens"]})
    return rows


def write_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
