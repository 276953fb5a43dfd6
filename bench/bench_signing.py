"""P-256 signing speed and heap inside the MicroPython WebAssembly VM.

Runs tools/mpvm/bench_signing.mjs, which signs with wattcore.p256 in a real MicroPython
1.27 VM (npm WebAssembly port under Node): the plain double-and-add method and the
fixed-base comb ("table") method, interleaved in one run, median of several signatures
each (after a warm-up). Both methods must produce the same signatures.

peak_heap_bytes is, for the table method (the one the firmware uses), the growth of
gc.mem_alloc() over one signature with the collector disabled: all the heap a
signature allocates (garbage + retained). That VM's heap grows on demand, so this is
the upper bound on the heap a signature needs between two collections; see the
comment in the .mjs script. plain_peak_heap_bytes is the same for the plain method.
"""

import json

from bench.mpvm_script import run_mpvm_script

ROUNDS = 31


def run() -> dict:
    raw = run_mpvm_script("bench_signing.mjs", ROUNDS)
    plain_ms = raw["plain_ms"]
    table_ms = raw["table_ms"]
    return {
        "plain_ms": round(plain_ms, 3),
        "table_ms": round(table_ms, 3),
        "speedup": round(plain_ms / table_ms, 2),
        "peak_heap_bytes": raw["table_heap_bytes"],
        "plain_peak_heap_bytes": raw["plain_heap_bytes"],
        "signatures_per_method": raw["rounds"],
        "runtime": f"{raw['micropython']} WebAssembly under Node {raw['node']}",
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
