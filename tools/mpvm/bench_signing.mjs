// Times wattcore.p256 signing inside the MicroPython WebAssembly VM: the plain
// double-and-add and the fixed-base comb ("table") methods, interleaved in the same
// run, plus the heap allocated per signature. Prints one JSON line on stdout (VM
// prints go to stderr); bench/bench_signing.py turns it into the benchmark result.
//   node tools/mpvm/bench_signing.mjs [rounds]
import { startVM, STANDARD_MOUNTS } from "./vm.mjs";

const rounds = Number(process.argv[2] || 31);
const mp = await startVM({
  mounts: STANDARD_MOUNTS,
  sysPath: ["/lib"],
  stdout: (line) => process.stderr.write(line + "\n"),
});
mp.runPython(`
import gc, json, sys
from hashlib import sha256

import js

from wattcore import p256

# time.ticks_us() only has millisecond resolution in this port: use the host clock.
_now_ms = js.performance.now

def _median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2

def _heap_per_signature(priv, msg, method):
    # This port's heap grows on demand, so a heap budget cannot show up as MemoryError.
    # Instead: collect, switch the collector off, and read how far gc.mem_alloc()
    # grows over one signature. With no collection in between, that growth is
    # everything the signature allocated (garbage + what it keeps): the heap it needs
    # if the collector never runs during it, an upper bound on its peak demand. The
    # live set at any instant is far smaller (a few hundred bytes of big ints), so on
    # a small heap the collector just runs more often.
    gc.collect()
    gc.disable()
    try:
        a0 = gc.mem_alloc()
        p256.sign(priv, msg, method)
        return gc.mem_alloc() - a0
    finally:
        gc.enable()

def _bench(rounds):
    keys = []
    msgs = []
    for i in range(rounds):
        seed = sha256(b"wattshare bench key %d" % i).digest()
        keys.append(int.from_bytes(seed, "big") % (p256.N - 1) + 1)
        msgs.append(b"wattshare reading %d" % i)
    # Warm-up: imports the table module and lets the WebAssembly engine tier up.
    for i in range(4):
        p256.sign(keys[i], msgs[i], "plain")
        for j in range(4):
            p256.sign(keys[j], msgs[i], "table")
    times = {"plain": [], "table": []}
    for i in range(rounds):
        sigs = []
        for method in ("plain", "table"):
            gc.collect()
            t0 = _now_ms()
            sigs.append(p256.sign(keys[i], msgs[i], method))
            times[method].append(_now_ms() - t0)
        if sigs[0] != sigs[1]:
            raise AssertionError("plain and table signatures differ in round %d" % i)
    heap = {}
    for method in ("plain", "table"):
        heap[method] = max(_heap_per_signature(keys[i], msgs[i], method) for i in range(5))
    return json.dumps({
        "rounds": rounds,
        "plain_ms": _median(times["plain"]),
        "table_ms": _median(times["table"]),
        "plain_heap_bytes": heap["plain"],
        "table_heap_bytes": heap["table"],
        "micropython": sys.version.split(";")[1].strip(),
    })
`);
const result = JSON.parse(mp.globals.get("_bench")(rounds));
result.node = process.version;
process.stdout.write(JSON.stringify(result) + "\n");
