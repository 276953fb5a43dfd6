// Measures the firmware's reading cycle inside the MicroPython WebAssembly VM with
// the real app modules (firmware/app) on in-memory fake ports
// (firmware/tests/core/app_fakes.py): poll a simulated SDM120CT frame, sign, spool,
// send and get acknowledged. Prints one JSON line on stdout (VM prints go to stderr).
//   node tools/mpvm/bench_firmware.mjs [readings]
import { startVM, STANDARD_MOUNTS } from "./vm.mjs";

const readings = Number(process.argv[2] || 1000);
const mp = await startVM({
  mounts: STANDARD_MOUNTS,
  sysPath: ["/lib", "/tests/core"],
  stdout: (line) => process.stderr.write(line + "\n"),
});
mp.runPython(`
import gc, json, struct, sys
import js
from app.coap_uplink import CoapUplink
from app.device_clock import DeviceClock
from app.meter_poller import MeterPoller
from app.reading_signer import ReadingSigner
from app.sampler import Sampler
from app.sequence import SequenceAllocator
from app.spool import Spool
from app_fakes import FakeBus, FakeClock, FakeUdp, Lcg, MemoryStorage, run_sync
from wattcore import cbor, coap, exchange, modbus_rtu, p256

_now_ms = js.performance.now  # ticks_ms has only millisecond steps in this port
SDM120 = {"id": "sdm120ct", "model": 1, "phases": 1, "baud": 9600, "parity": "N",
          "stop_bits": 1, "slave": 1, "function": 4, "blocks": [[0, 76]], "ct_rating_A": 100,
          "fields": {"voltage_dV": [0, 0, "f32", 10, 1], "current_mA": [0, 12, "f32", 1000, 1],
                     "power_W": [0, 24, "f32", 1, 1], "frequency_cHz": [0, 140, "f32", 100, 1],
                     "power_factor_milli": [0, 60, "f32", 1000, 1],
                     "import_Wh": [0, 144, "f32", 1000, 1],
                     "export_Wh": [0, 148, "f32", 1000, 1]}}
IP_UDP = 28  # IPv4 + UDP headers per datagram

class Meter:
    def __init__(self):
        self.ei = 1234.5
    def reply(self, req):
        self.ei += 0.25
        regs = bytearray(152)
        for off, x in ((0, 230.5), (12, 5.25), (24, 1207.0), (60, 0.875), (140, 50.0),
                       (144, self.ei), (148, 12.25)):
            regs[off:off + 4] = struct.pack(">f", x)
        frame = bytes((1, 4, 152)) + regs
        c = modbus_rtu.crc16(frame)
        return frame + bytes((c & 0xFF, c >> 8))

class Gateway:
    def __init__(self):
        self.bytes_in = 0
        self.bytes_out = 0
    def __call__(self, datagram):
        req = coap.decode(datagram, 8192)
        items = exchange.decode_batch(req.payload) if req.payload else []
        ack = cbor.loads(cbor.loads(items[-1]).value[2])[2] if items else None
        resp = coap.encode(coap.ACK, coap.CHANGED if items else coap.CONTENT, req.mid,
                           req.token, [(coap.OPT_CONTENT_FORMAT, b"\\x3c")],
                           exchange.encode_response(1750000000, ack=ack))
        self.bytes_in += len(datagram) + IP_UDP
        self.bytes_out += len(resp) + IP_UDP
        return [resp]

def rig(batch):
    clock = FakeClock(1750000000)
    dclock = DeviceClock(clock)
    dclock.set(1750000000, "gateway")
    storage = MemoryStorage()
    spool = Spool(storage)
    seq = SequenceAllocator(storage, floor=spool.max_seq + 1)
    poller = MeterPoller(FakeBus(Meter().reply), clock, SDM120, 1, 100)
    priv = p256.private_key_from_random(Lcg(3).bytes)
    signer = ReadingSigner(priv, b"WS\\xa4\\xc1\\x38\\xf1\\xe2\\xd0", 1)
    sampler = Sampler(poller, seq, spool, signer, clock, dclock, 10000)
    gw = Gateway()
    uplink = CoapUplink(FakeUdp(clock, gw), clock, dclock, spool, Lcg(4).bytes, batch)
    return sampler, uplink, storage, gw

_stage_rig = None
_held = {}

def _live():
    gc.collect()
    return gc.mem_alloc()

def _stage(i):
    # one stage of a reading cycle; what it returns is held, as the firmware holds it
    global _stage_rig
    if _stage_rig is None:
        _stage_rig = rig(8)
        run_sync(_stage_rig[0].sample_once())
        run_sync(_stage_rig[1].step())
    sampler = _stage_rig[0]
    if i == 0:
        _held["values"] = run_sync(sampler._poller.poll())
    elif i == 1:
        values, st = _held["values"]
        seq = sampler._sequence.next()
        _held["signed"] = (seq, sampler._signer.sign(seq, sampler._device_clock.now(), st,
                                                      values))
    elif i == 2:
        sampler._spool.append(*_held["signed"])
        _held.clear()
    else:
        run_sync(_stage_rig[1].step())

def _bench(n):
    sampler, uplink, storage, gw = rig(8)
    for _ in range(5):  # warm-up: imports, the comb table, the JIT of the wasm engine
        run_sync(sampler.sample_once())
        run_sync(uplink.step())
    # cycle time: read + sign + encode + spool, gc between cycles as the firmware does
    times = []
    for _ in range(31):
        gc.collect()
        t0 = _now_ms()
        run_sync(sampler.sample_once())
        times.append(_now_ms() - t0)
        run_sync(uplink.step())
    times.sort()
    # everything one cycle allocates (collector off): the garbage the collector clears
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    run_sync(sampler.sample_once())
    allocated = gc.mem_alloc() - a0
    gc.enable()
    # bytes on air and flash writes: n readings each sent alone (steady state), then
    # n readings sent in batches of 8 (catching up after an outage)
    out = {}
    for batch, key in ((1, "single"), (8, "batched")):
        sampler, uplink, storage, gw = rig(batch)
        writes0 = storage.writes
        if batch == 1:
            for _ in range(n):
                run_sync(sampler.sample_once())
                run_sync(uplink.step())
        else:
            for i in range(n):
                run_sync(sampler.sample_once())
                if i % 8 == 7:
                    run_sync(uplink.step())
        out[key] = ((gw.bytes_in + gw.bytes_out) / n, (storage.writes - writes0) / n)
    return json.dumps({
        "cycle_ms": times[len(times) // 2],
        "allocated_per_cycle_bytes": allocated,
        "bytes_per_reading_single": out["single"][0],
        "bytes_per_reading_batched": out["batched"][0],
        "flash_writes_per_reading": out["single"][1],
        "flash_writes_per_reading_batched": out["batched"][1],
        "readings": n,
        "micropython": sys.version.split(";")[1].strip(),
    })
`);
// Heap: in this port gc.collect() frees nothing while Python code is running (the
// collector scans the whole WebAssembly stack conservatively), but it does from a
// fresh call out of JS. So JS drives a cycle stage by stage (poll, sign, spool,
// send + ack), collecting between stages: the live heap above idle at each stage
// boundary. The signer's own transient big integers are not sampled; the garbage a
// cycle leaves for the collector is allocated_per_cycle_bytes.
const stage = mp.globals.get("_stage");
const live = mp.globals.get("_live");
stage(3);
const idle = live();
let peak = 0;
for (let c = 0; c < 10; c++) {
  for (let i = 0; i < 4; i++) {
    stage(i);
    peak = Math.max(peak, live() - idle);
  }
}
const result = JSON.parse(mp.globals.get("_bench")(readings));
result.peak_heap_above_idle_bytes = peak;
result.idle_heap_bytes = idle;
result.node = process.version;
process.stdout.write(JSON.stringify(result) + "\n");
