"""The firmware's reading cycle inside the MicroPython WebAssembly VM.

Runs tools/mpvm/bench_firmware.mjs: the real app modules (firmware/app) and cores on
in-memory fake ports, a simulated SDM120CT reply frame, a fake gateway that
acknowledges. Results:

- cycle_ms: median time of one reading cycle (poll + decode + sign + encode + spool)
  in the VM on this machine; an ESP32 is slower (the signature dominates: see
  bench_signing).
- peak_heap_above_idle_bytes: live heap above the idle heap at each stage boundary of
  a cycle (poll, sign, spool, send + ack), collected between stages; the signer's own
  transient integers are not sampled. Budget: < 48 KB.
- allocated_per_cycle_bytes: everything one cycle allocates with the collector off
  (the garbage the collector clears between cycles).
- bytes_per_reading_single / _batched: CoAP request + response per reading, IPv4 and
  UDP headers included (802.11 framing not), one reading per message vs 8.
- flash_writes_per_reading: storage writes per reading over `readings` readings each
  acknowledged on its own (steady state: one append + one head write, one sequence
  block write per 1000); _batched: acknowledged in batches of 8 (catching up).
"""

import json

from bench.mpvm_script import run_mpvm_script

READINGS = 1000


def run() -> dict:
    raw = run_mpvm_script("bench_firmware.mjs", READINGS)
    keys = ("cycle_ms", "peak_heap_above_idle_bytes", "allocated_per_cycle_bytes",
            "idle_heap_bytes", "bytes_per_reading_single", "bytes_per_reading_batched",
            "flash_writes_per_reading", "flash_writes_per_reading_batched", "readings",
            "micropython", "node")
    out = {k: raw[k] for k in keys}
    out["cycle_ms"] = round(out["cycle_ms"], 2)
    out["heap_budget_bytes"] = 48 * 1024
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
