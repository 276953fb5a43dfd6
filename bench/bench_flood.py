"""An honest meter's acknowledgements while the gateway is flooded (issue 15).

The gateway runs as installed (`python -m gateway run`, default `[coap]` and `[ingest]`
settings: one ingest process per core, `max_datagrams_per_source = 200`). An honest meter
on 127.0.0.1 sends one reading every 0.1 s, one message outstanding, retransmitting as a
device does (first timeout 2 s, doubling). It is measured quiet, then during each flood
(tools/flood.py, in its own process):

- `one_source`: 50 unknown device ids from one address (127.0.0.2), paced at 60,000
  datagrams/s: the per-source limit drops all but 200 a second before decoding;
- `many_sources`: unknown device ids from 400 addresses (127.0.1.x, 127.0.2.x) as fast as
  the flooder can send, each source under its limit: only the cheap 4.03 answer (no
  signature check, no task) stands between the flood and the meter.

Figures: the meter's messages sent/acknowledged/lost, its latency p50/p99/max (first
transmission to acknowledgement), the flood's datagrams sent and answered, what the
gateway limited, and the gateway's resident memory after each flood. Before the fix
(same flood, same machine class): p50/p99 412 ms / 6.8 s, worst 38.6 s.
"""

import tempfile
import time
from pathlib import Path

from tools import flood

FLOOD_S = 10.0


def _ms(value):
    return None if value is None else round(value * 1000, 1)


def _meter_figures(result):
    lat = result["latencies"]
    return {"sent": result["sent"], "acked": result["acked"], "lost": result["lost"],
            "retransmissions": result["retransmissions"],
            "p50_ms": _ms(flood.percentile(lat, 0.5)), "p99_ms": _ms(flood.percentile(lat, 0.99)),
            "max_ms": _ms(max(lat) if lat else None)}


def _rss_total(proc):
    total = flood.rss_bytes(proc.pid)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        try:
            total += flood.rss_bytes(int(pid))
        except (FileNotFoundError, RuntimeError):
            pass
    return total


def run():
    meter = flood.MeterKey()
    proc, port, http_port, cfg = flood.start_gateway(
        Path(tempfile.mkdtemp(prefix="bench-flood-")), [meter],
        ingest={"processes": "auto"})
    out = {"flood_seconds": FLOOD_S, "ingest_processes": cfg.ingest.process_count()}
    seq = 1
    try:
        quiet = flood.honest_meter(meter, port, 5.0, interval=0.1, first_seq=seq,
                                   ack_timeout=2.0)
        seq += quiet["sent"] + 1
        out["quiet"] = _meter_figures(quiet)
        out["rss_mb_quiet"] = round(_rss_total(proc) / 1e6, 1)
        floods = {
            "one_source": dict(rate=60_000, sources=["127.0.0.2"], sockets=50),
            "many_sources": dict(rate=0, sources=[f"127.0.{1 + i // 200}.{1 + i % 200}"
                                                  for i in range(400)], sockets=1),
        }
        for name, kw in floods.items():
            before = flood.metrics(http_port)
            flooder = flood.start_flood(port, FLOOD_S, **kw)
            time.sleep(0.5)
            honest = flood.honest_meter(meter, port, FLOOD_S - 1.0, interval=0.1,
                                        first_seq=seq, ack_timeout=2.0)
            seq += honest["sent"] + 1
            sent = flood.flood_result(flooder)
            time.sleep(1.0)
            after = flood.metrics(http_port)

            def grew(key, before=before, after=after):
                return int(after.get(key, 0) - before.get(key, 0))

            out[name] = {
                "meter": _meter_figures(honest),
                "flood_sent": sent["sent"], "flood_answered": sent["replies"],
                "flood_per_s": round(sent["sent"] / sent["seconds"]),
                "limited": grew("wattshare_coap_datagrams_limited_total"),
                "unknown_device_answers": grew(
                    'wattshare_readings_rejected_total{reason="unknown-device"}'),
                "rss_mb_after": round(_rss_total(proc) / 1e6, 1),
            }
    finally:
        flood.stop_gateway(proc)
    out["one_source_p50_ms"] = out["one_source"]["meter"]["p50_ms"]
    return out
