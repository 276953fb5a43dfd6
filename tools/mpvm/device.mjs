// The emulated Wattshare meter: the real firmware files (firmware/main.py,
// firmware/app, firmware/wattcore) running in the MicroPython WebAssembly VM,
// with the ports backed by Node (tools/mpvm/emulated_adapters.py is the VM side):
//   meter bus  a TCP stream of raw RTU frames to the meter simulator
//   UDP        a dgram socket to the gateway named in config/device.json
//   storage    files in a host folder (STORAGE/config, STORAGE/data), so state
//              survives the process: killing it is a power cut
//   clock      real time, or the shared simulated clock of an accelerated run:
//              WATTSHARE_SIM_CLOCK="EPOCH0,REAL0,SPEED" (gateway/simclock.py), the
//              same function of the wall clock the gateway, the chain link and the
//              meter simulator use, so the RTC the gateway sets stays monotonic and in
//              step with the meter's counters. Monotonic time and timers run SPEED
//              times faster. The RTC starts at 2000-01-01 (untrusted) on every start,
//              like a cold ESP32
//   RNG        node:crypto; watchdog: exits with code 3 when not fed in time
//
//   node tools/mpvm/device.mjs --storage DIR --meter-tcp HOST:PORT [--speed X]
//        (--speed only to check it: the speed is WATTSHARE_SIM_CLOCK's)
//        [--hwid 12HEX] [--cut-at-write N] [--seed N] [--provision | --rekey |
//        --identity | --commission POLLS [--scan-timeout MS] | --sign-record JSON]
// The console modes run one of main.py's console functions and exit.
// Power-cut injection: --cut-at-write N tears the N-th storage write (a random
// prefix of an append, or a temporary file never renamed) and exits with code 137.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { meterBus, gatewayUdp } from "./ports.mjs";
import { startVM, REPO } from "./vm.mjs";

function parseArgs(argv) {
  const opts = { speed: null, hwid: "a4c138f1e2d0", cutAtWrite: 0, seed: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => { if (i + 1 >= argv.length) die(`${a} needs a value`); return argv[++i]; };
    if (a === "--storage") opts.storage = path.resolve(next());
    else if (a === "--meter-tcp") opts.meterTcp = next();
    else if (a === "--speed") opts.speed = Number(next());
    else if (a === "--hwid") opts.hwid = next().toLowerCase();
    else if (a === "--cut-at-write") opts.cutAtWrite = Number(next());
    else if (a === "--seed") opts.seed = Number(next());
    else if (a === "--provision") opts.mode = "provision";
    else if (a === "--rekey") opts.mode = "rekey";
    else if (a === "--identity") opts.mode = "identity";
    else if (a === "--commission") { opts.mode = "commission"; opts.polls = Number(next()); }
    else if (a === "--scan-timeout") opts.scanTimeout = Number(next());
    else if (a === "--sign-record") { opts.mode = "sign-record"; opts.record = next(); }
    else die(`unknown option ${a}`);
  }
  if (!opts.storage) die("--storage DIR is required");
  if (!/^[0-9a-f]{12}$/.test(opts.hwid)) die("--hwid: 12 hex digits (6 bytes)");
  if (opts.speed !== null && !(opts.speed > 0)) die("--speed: a number > 0");
  if ((!opts.mode || opts.mode === "commission") && !opts.meterTcp) {
    die("--meter-tcp HOST:PORT is required");
  }
  if (opts.mode === "commission" && !(opts.polls >= 1)) die("--commission: polls >= 1");
  return opts;
}

function die(msg) {
  process.stderr.write(`device.mjs: error: ${msg}\n`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));

// The shared simulated clock (gateway/simclock.py has the same parser and rules).
function simClock() {
  const text = process.env.WATTSHARE_SIM_CLOCK || "";
  if (!text) {
    if (opts.speed !== null && opts.speed !== 1) {
      die(`--speed ${opts.speed} without WATTSHARE_SIM_CLOCK: the gateway would keep real `
        + "time and reset the device's clock at every response; export "
        + "WATTSHARE_SIM_CLOCK=$(python -m gateway.simclock --speed X) to every process "
        + "(docs/firmware.md)");
    }
    return { epoch0: 0, real0: 0, speed: 1 };
  }
  const parts = text.split(",").map((p) => (p.trim() === "" ? NaN : Number(p)));
  if (parts.length !== 3 || parts.some((v) => !Number.isFinite(v))) {
    die(`WATTSHARE_SIM_CLOCK=${JSON.stringify(text)}: expected EPOCH0,REAL0,SPEED (three numbers)`);
  }
  const [epoch0, real0, speed] = parts;
  for (const [name, v] of [["EPOCH0", epoch0], ["REAL0", real0]]) {
    if (!(v >= 0 && v < 2 ** 40)) die(`WATTSHARE_SIM_CLOCK: ${name} ${v} is not a unix time in seconds`);
  }
  if (!(speed > 0 && speed <= 1e6)) die(`WATTSHARE_SIM_CLOCK: SPEED ${speed} is not in (0, 1e6]`);
  if (opts.speed !== null && opts.speed !== speed) {
    die(`--speed ${opts.speed} differs from WATTSHARE_SIM_CLOCK (speed ${speed}); drop --speed`);
  }
  return { epoch0, real0, speed };
}
const sim = simClock();
const speed = sim.speed;
// wall-clock seconds -> simulated unix seconds (identity without a simulated clock)
const simNow = () => sim.epoch0 + (Date.now() / 1000 - sim.real0) * speed;
const t0 = performance.now();
const simMs = () => (performance.now() - t0) * speed;
const RTC_COLD = 946684800; // 2000-01-01T00:00:00Z
let rtcOffset = RTC_COLD - simNow(); // RTC = simulated time + offset
let rng = opts.seed || 1;
const rand = () => { rng = (rng * 1103515245 + 12345) % 2147483648; return rng / 2147483648; };

// ---- storage ---------------------------------------------------------------------
let writes = 0;
function folderPath(folder, name) {
  if (!/^(config|data)$/.test(folder) || !/^[A-Za-z0-9_.-]+$/.test(name)) {
    throw new Error(`bad storage name ${folder}/${name}`);
  }
  return path.join(opts.storage, folder, name);
}
function ensureFolder(folder) { fs.mkdirSync(path.join(opts.storage, folder), { recursive: true }); }
function powerCut(what) {
  process.stdout.write(`device.mjs: power cut at storage write ${writes} (${what})\n`);
  process.exit(137);
}
const storage = {
  fs_read(folder, name, offset, n) {
    let fd;
    try { fd = fs.openSync(folderPath(folder, name), "r"); } catch (e) { return null; }
    try {
      const size = fs.fstatSync(fd).size;
      const len = Math.max(0, n < 0 ? size - offset : Math.min(n, size - offset));
      const buf = Buffer.alloc(len);
      const got = len ? fs.readSync(fd, buf, 0, len, offset) : 0;
      return buf.subarray(0, got).toString("hex");
    } finally { fs.closeSync(fd); }
  },
  fs_size(folder, name) {
    try { return fs.statSync(folderPath(folder, name)).size; } catch (e) { return -1; }
  },
  fs_append(folder, name, hex) {
    ensureFolder(folder);
    const data = Buffer.from(hex, "hex");
    writes++;
    if (writes === opts.cutAtWrite) {
      fs.appendFileSync(folderPath(folder, name), data.subarray(0, Math.floor(rand() * data.length)));
      powerCut(`append ${name}`);
    }
    fs.appendFileSync(folderPath(folder, name), data);
  },
  fs_write_atomic(folder, name, hex) {
    ensureFolder(folder);
    const data = Buffer.from(hex, "hex");
    const tmp = folderPath(folder, name) + ".tmp";
    writes++;
    if (writes === opts.cutAtWrite) {
      fs.writeFileSync(tmp, data.subarray(0, Math.floor(rand() * data.length)));
      powerCut(`write ${name}`);
    }
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, folderPath(folder, name));
  },
  fs_remove(folder, name) {
    try { fs.unlinkSync(folderPath(folder, name)); } catch (e) { /* absent */ }
  },
  fs_names(folder) {
    try {
      return fs.readdirSync(path.join(opts.storage, folder)).filter((n) => !n.endsWith(".tmp")).join("/");
    } catch (e) { return ""; }
  },
};

// ---- the meter bus and UDP to the gateway (ports.mjs) -----------------------------------
const uart = meterBus(opts.meterTcp);
const udp = gatewayUdp({
  timeScale: speed,
  onError: (e) => process.stdout.write(`device.mjs: udp error ${e.message}\n`),
});

// ---- clock, RNG, watchdog ------------------------------------------------------------
let wdt = null;
const misc = {
  monotonic_ms: () => simMs() + 0.5, // a double: FFI integers are 32-bit
  sleep_ms: (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms / speed))),
  rtc_time: () => simNow() + rtcOffset,
  rtc_set: (t) => { rtcOffset = t - simNow(); },
  random_hex: (n) => crypto.randomBytes(n).toString("hex"),
  hardware_id: () => opts.hwid,
  wdt_start(timeoutMs) {
    wdt = { timeoutMs, last: simMs() };
    setInterval(() => {
      if (simMs() - wdt.last > wdt.timeoutMs) {
        process.stdout.write("device.mjs: watchdog reset (not fed in time)\n");
        process.exit(3);
      }
    }, 50).unref();
  },
  wdt_feed() { if (wdt) wdt.last = simMs(); },
};

// ---- run -------------------------------------------------------------------------------
const mp = await startVM({
  mounts: [
    ["firmware/wattcore", "/lib/wattcore"],
    ["firmware/app", "/lib/app"],
    ["firmware/main.py", "/flash/main.py"],
    ["tools/mpvm/emulated_adapters.py", "/lib/emulated_adapters.py"],
  ],
  sysPath: ["/flash", "/lib"],
});
mp.registerJsModule("hal", { ...storage, ...uart, ...udp, ...misc });
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
const head = "import main, emulated_adapters, json\n";
const code = head + ({
  provision: "main.provision(emulated_adapters)\n",
  rekey: "main.rekey('REKEY', emulated_adapters)\n",
  identity: "main.identity(emulated_adapters)\n",
  // the VM's REPL cannot wait for Node: the console function's coroutine is awaited here
  commission: `print(json.dumps(await main.commission_async(${opts.polls}, emulated_adapters, ` +
    `${opts.scanTimeout || 80})))\n`,
  "sign-record": `main.sign_record(${JSON.stringify(opts.record || "")}, emulated_adapters)\n`,
}[opts.mode] || "await main.run(emulated_adapters)\n");
try {
  await mp.runPythonAsync(code);
  process.exit(0);
} catch (e) {
  process.stdout.write(`device.mjs: firmware stopped: ${e.message}\n`);
  process.exit(1);
}
