// The virtual board, one life of it: an ESP32 running MicroPython from a reset to
// the next one. tools/virtual_board.py owns the serial port (a pty) and starts this
// process again at every reset, so every reset gets a fresh VM, as on the chip.
//
//   serial   stdin/stdout: the bytes of the board's UART0 console, unchanged
//   control  --control-fd N: one JSON line when this life ends (why, which byte of
//            the input came last, how to start the next life)
//   flash    --flash DIR: the board's filesystem. MicroPython's "/" is the in-memory
//            folder /flash of the VM (Emscripten MEMFS), loaded from DIR at start and
//            written back after each REPL command, every 2 s while a program runs,
//            and before a reset; the firmware's storage port (hal fs_*) writes
//            through to DIR at once. Killing this process is a power cut.
//   hal      the emulated ports of tools/mpvm/emulated_adapters.py, as in
//            device.mjs: the meter bus is a TCP stream of raw RTU frames to the
//            meter simulator (--meter-tcp), UDP goes to the gateway of
//            device.json, node:crypto is the RNG, --hwid the 6-byte hardware id
//   rom      tools/mpvm/board_rom/*.py and emulated_adapters.py are built into the
//            image (imported before the flash is mounted, like frozen modules);
//            `machine` does the resets
//
// The console is MicroPython's: the friendly REPL of the VM, and the raw REPL
// (Ctrl-A) done here so that a command whose asyncio.run(...) has to wait on Node's
// event loop ends only when its coroutines have (see board_rom/_board.py).
// Raw-paste requests (Ctrl-E A Ctrl-A) are answered "R\x00" (not supported):
// mpremote then uses the plain raw REPL. Ctrl-C stops a running program (a new
// life starts at the REPL), Ctrl-D at an empty line soft-resets (boot.py, then
// main.py unless the raw REPL was active), machine.reset() resets the board.
//
//   node tools/mpvm/board.mjs --flash DIR --hwid 12HEX --control-fd N
//        [--start MODE] [--meter-tcp HOST:PORT] [--rtc-offset S]
// MODE: power-on, hard-reset, watchdog, soft-reset, soft-reset-raw, friendly,
//       friendly-prompt, raw
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import { meterBus, gatewayUdp } from "./ports.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROM = [
  [path.join(HERE, "board_rom", "_board.py"), "_board.py"],
  [path.join(HERE, "board_rom", "_flashfs.py"), "_flashfs.py"],
  [path.join(HERE, "board_rom", "machine.py"), "machine.py"],
  [path.join(HERE, "emulated_adapters.py"), "emulated_adapters.py"],
];
const VM_FLASH = "/flash";
const SYNC_TMP = ".~sync"; // suffix of a host file being written back
const RAW_BANNER = "raw REPL; CTRL-B to exit\r\n";
const ROM_BOOT = "ets Jun  8 2016 00:22:57\r\n\r\n";
const RESET_TEXT = {
  "power-on": "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n",
  "hard-reset": "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n",
  watchdog: "rst:0x7 (TG0WDT_SYS_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n",
};
const RESET_CAUSE = { "power-on": 1, "hard-reset": 2, watchdog: 3 }; // machine.*_RESET

function die(msg) {
  process.stderr.write(`board.mjs: error: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { start: "power-on", rtcOffset: 946684800 - Date.now() / 1000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => { if (i + 1 >= argv.length) die(`${a} needs a value`); return argv[++i]; };
    if (a === "--flash") opts.flash = path.resolve(next());
    else if (a === "--hwid") opts.hwid = next().toLowerCase();
    else if (a === "--control-fd") opts.controlFd = Number(next());
    else if (a === "--start") opts.start = next();
    else if (a === "--meter-tcp") opts.meterTcp = next();
    else if (a === "--rtc-offset") opts.rtcOffset = Number(next());
    else die(`unknown option ${a}`);
  }
  if (!opts.flash) die("--flash DIR is required");
  if (!/^[0-9a-f]{12}$/.test(opts.hwid || "")) die("--hwid: 12 hex digits (6 bytes)");
  if (!Number.isInteger(opts.controlFd)) die("--control-fd N is required");
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const t0 = performance.now();

// ---- serial output -----------------------------------------------------------------
// Written synchronously (fs.writeSync), so nothing is lost when this life ends.
let out = [];
let outLen = 0;
let lastByte = 0;
let muted = false;
let flushQueued = false;

function writeAll(fd, data) {
  let off = 0;
  while (off < data.length) {
    try {
      off += fs.writeSync(fd, data, off);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2); // pipe full
    }
  }
}

function flushOut() {
  flushQueued = false;
  if (!outLen) return;
  const data = Buffer.concat(out, outLen);
  out = [];
  outLen = 0;
  writeAll(1, data);
}

function emit(bytes) {
  if (muted || !bytes.length) return;
  const buf = typeof bytes === "string" ? Buffer.from(bytes, "latin1") : Buffer.from(bytes);
  out.push(buf);
  outLen += buf.length;
  lastByte = buf[buf.length - 1];
  if (outLen > 65536) flushOut();
  else if (!flushQueued) { flushQueued = true; setImmediate(flushOut); }
}

// VM output. MicroPython's UART console is "cooked": print's "\n" goes out as
// "\r\n" (the VM writes its REPL's own "\r\n" itself).
function emitCooked(bytes) {
  if (muted) return;
  const buf = [];
  for (const b of bytes) {
    if (b === 10 && lastByte !== 13) buf.push(13);
    buf.push(b);
    lastByte = b;
  }
  emit(Uint8Array.from(buf));
}

// ---- the flash: MEMFS in the VM, written back to the host folder ---------------------
let mp = null;
const shadow = new Map(); // VM path -> Buffer as last written to the host
const shadowDirs = new Set();

function hostPath(vmPath) {
  return path.join(opts.flash, vmPath.slice(VM_FLASH.length));
}

function writeHostAtomic(file, data) {
  const tmp = file + SYNC_TMP;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

function loadFlash(hostDir, vmDir) {
  for (const name of fs.readdirSync(hostDir)) {
    const host = path.join(hostDir, name);
    const vm = `${vmDir}/${name}`;
    if (name.endsWith(SYNC_TMP)) { fs.rmSync(host, { force: true }); continue; } // torn write-back
    if (fs.statSync(host).isDirectory()) {
      mp.FS.mkdir(vm);
      shadowDirs.add(vm);
      loadFlash(host, vm);
    } else {
      const data = fs.readFileSync(host);
      mp.FS.writeFile(vm, data);
      shadow.set(vm, data);
    }
  }
}

function walkVm(dir, files, dirs) {
  for (const name of mp.FS.readdir(dir)) {
    if (name === "." || name === "..") continue;
    const p = `${dir}/${name}`;
    if (mp.FS.isDir(mp.FS.stat(p).mode)) { dirs.add(p); walkVm(p, files, dirs); }
    else files.push(p);
  }
}

// Write what changed in the VM's filesystem back to the host folder.
function syncFlash() {
  if (!mp) return;
  const files = [];
  const dirs = new Set();
  walkVm(VM_FLASH, files, dirs);
  for (const d of [...dirs].sort()) {
    if (!shadowDirs.has(d)) { fs.mkdirSync(hostPath(d), { recursive: true }); shadowDirs.add(d); }
  }
  const seen = new Set(files);
  for (const f of files) {
    const data = Buffer.from(mp.FS.readFile(f));
    const old = shadow.get(f);
    if (!old || !old.equals(data)) { writeHostAtomic(hostPath(f), data); shadow.set(f, data); }
  }
  for (const f of [...shadow.keys()]) {
    if (!seen.has(f)) { fs.rmSync(hostPath(f), { force: true }); shadow.delete(f); }
  }
  for (const d of [...shadowDirs].sort().reverse()) {
    if (!dirs.has(d)) { fs.rmSync(hostPath(d), { recursive: true, force: true }); shadowDirs.delete(d); }
  }
}

// ---- hal: the ports of emulated_adapters.py --------------------------------------------
function storagePath(folder, name) {
  if (!/^(config|data)$/.test(folder) || !/^[A-Za-z0-9_.-]+$/.test(name)) {
    throw new Error(`bad storage name ${folder}/${name}`);
  }
  return `${VM_FLASH}/${folder}/${name}`;
}
function vmExists(p) { try { mp.FS.stat(p); return true; } catch (e) { return false; } }
function ensureVmDir(folder) {
  const d = `${VM_FLASH}/${folder}`;
  if (!vmExists(d)) { mp.FS.mkdir(d); fs.mkdirSync(hostPath(d), { recursive: true }); shadowDirs.add(d); }
}
const storage = {
  fs_read(folder, name, offset, n) {
    const p = storagePath(folder, name);
    if (!vmExists(p)) return null;
    const data = mp.FS.readFile(p);
    const end = n < 0 ? data.length : Math.min(data.length, offset + n);
    return Buffer.from(data.subarray(Math.min(offset, data.length), end)).toString("hex");
  },
  fs_size(folder, name) {
    const p = storagePath(folder, name);
    return vmExists(p) ? mp.FS.stat(p).size : -1;
  },
  fs_append(folder, name, hex) {
    ensureVmDir(folder);
    const p = storagePath(folder, name);
    const data = Buffer.from(hex, "hex");
    fs.appendFileSync(hostPath(p), data);
    const old = vmExists(p) ? Buffer.from(mp.FS.readFile(p)) : Buffer.alloc(0);
    const now = Buffer.concat([old, data]);
    mp.FS.writeFile(p, now);
    shadow.set(p, now);
  },
  fs_write_atomic(folder, name, hex) {
    ensureVmDir(folder);
    const p = storagePath(folder, name);
    const data = Buffer.from(hex, "hex");
    const tmp = hostPath(p) + ".tmp";
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, hostPath(p));
    mp.FS.writeFile(p, data);
    shadow.set(p, data);
  },
  fs_remove(folder, name) {
    const p = storagePath(folder, name);
    fs.rmSync(hostPath(p), { force: true });
    if (vmExists(p)) mp.FS.unlink(p);
    shadow.delete(p);
  },
  fs_names(folder) {
    const d = `${VM_FLASH}/${folder}`;
    if (!vmExists(d)) return "";
    return mp.FS.readdir(d).filter((n) => n !== "." && n !== ".." && !n.endsWith(".tmp")).join("/");
  },
};

const uart = meterBus(opts.meterTcp); // ports.mjs
const udp = gatewayUdp(); // a socket error: the datagram is lost, CoAP retransmits

let rtcOffset = opts.rtcOffset; // RTC seconds minus host seconds: kept across resets
let wdt = null;
const elapsedMs = () => performance.now() - t0;
const misc = {
  monotonic_ms: () => elapsedMs() + 0.5, // a double: FFI integers are 32-bit
  sleep_ms: (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms))),
  rtc_time: () => Date.now() / 1000 + rtcOffset,
  rtc_set: (t) => { rtcOffset = t - Date.now() / 1000; },
  random_hex: (n) => crypto.randomBytes(n).toString("hex"),
  hardware_id: () => opts.hwid,
  wdt_start(timeoutMs) {
    if (wdt) { wdt.timeoutMs = timeoutMs; return; }
    wdt = { timeoutMs, last: elapsedMs() };
    setInterval(() => {
      if (elapsedMs() - wdt.last > wdt.timeoutMs) {
        emit("\r\nE (watchdog) task_wdt: Task watchdog got triggered\r\n");
        finish("watchdog", "watchdog");
      }
    }, 100).unref();
  },
  wdt_feed() { if (wdt) wdt.last = elapsedMs(); },
  board_reset(kind) {
    if (kind === "soft") { emit("MPY: soft reboot\r\n"); finish("soft-reset", state === "exec" ? "soft-reset-raw" : "soft-reset"); }
    finish("hard-reset", "hard-reset");
  },
  reset_cause: () => RESET_CAUSE[opts.start] || 5,
};

// ---- end of this life -----------------------------------------------------------------
let consumed = 0; // input bytes this life has taken from stdin
let state = "starting"; // starting, program, friendly, raw, exec, ended

function finish(reason, next) {
  if (state === "ended") return;
  state = "ended";
  try { syncFlash(); } catch (e) { process.stderr.write(`board.mjs: flash write-back failed: ${e.message}\n`); }
  flushOut();
  writeAll(opts.controlFd, Buffer.from(JSON.stringify({ reason, next, consumed, rtc_offset: rtcOffset }) + "\n"));
  process.exit(0);
}

// ---- running Python ----------------------------------------------------------------------
function tracebackText(e) {
  // the board's own frames are not the program's
  const lines = String(e.message).split("\n").filter((l) => !l.includes('"/rom/'));
  return lines.join("\n").replace(/\n*$/, "\n");
}

let programName = "";
let syncTimer = null;

// Run code (which awaits the coroutines handed to asyncio.run) as the program;
// -> null, or the PythonError it ended with.
async function runProgram(name, code) {
  state = "program";
  programName = name;
  syncTimer = setInterval(syncFlash, 2000);
  let error = null;
  try {
    await mp.runPythonAsync(code);
  } catch (e) {
    if (e.name !== "PythonError") throw e;
    error = e;
  } finally {
    clearInterval(syncTimer);
  }
  if (state === "ended") return null;
  mp.runPython("import _board\n_board.discard()");
  syncFlash();
  return error;
}

async function runFile(name) {
  if (!vmExists(`${VM_FLASH}/${name}`)) return "absent";
  const error = await runProgram(name, `import _board\n_board.run_file(${JSON.stringify(name)})\nawait _board.drain()\n`);
  if (!error) return "ok";
  if (error.type === "SystemExit") return "exit";
  emitCooked(Buffer.from(tracebackText(error)));
  return "error";
}

function interrupt() {
  if (state === "exec") {
    emit('\x04Traceback (most recent call last):\r\n  File "<stdin>", in <module>\r\nKeyboardInterrupt: \r\n\x04>');
    finish("interrupt", "raw");
  }
  emit(`Traceback (most recent call last):\r\n  File "${programName}", in <module>\r\nKeyboardInterrupt: \r\n`);
  finish("interrupt", programName === "<stdin>" ? "friendly-prompt" : "friendly");
}

function enterFriendly(banner) {
  muted = !banner;
  mp.replInit(); // the VM's friendly REPL: banner and prompt
  muted = false;
  if (!banner) emit(">>> ");
  state = "friendly";
}

function enterRaw(banner) {
  if (banner) emit(RAW_BANNER + ">");
  rawLine = [];
  state = "raw";
}

// ---- the console -----------------------------------------------------------------------
let input = Buffer.alloc(0);
let rawLine = [];

function pump() {
  while (input.length && (state === "friendly" || state === "raw" || state === "program" || state === "exec")) {
    if (state === "program" || state === "exec") {
      const i = input.indexOf(3); // Ctrl-C interrupts; anything else waits for the REPL
      if (i < 0) return;
      consumed += i + 1;
      input = input.subarray(i + 1);
      interrupt();
      return;
    }
    const c = input[0];
    input = input.subarray(1);
    consumed += 1;
    if (state === "raw") rawChar(c);
    else friendlyChar(c);
  }
}

function friendlyChar(c) {
  if (c === 0x01) { emit("\r\n"); enterRaw(true); return; }
  const ret = mp.replProcessChar(c);
  if (ret) { emit("MPY: soft reboot\r\n"); finish("soft-reset", "soft-reset"); }
  if (c === 0x0d || c === 0x04) {
    if (mp.runPython("import _board\n_board.pending()")) {
      runProgram("<stdin>", "import _board\nawait _board.drain()\n").then((error) => {
        if (error) emitCooked(Buffer.from(tracebackText(error)));
        if (state === "ended") return;
        state = "friendly";
        pump();
      });
    } else {
      syncFlash();
    }
  }
}

function rawChar(c) {
  if (c === 0x01) {
    if (rawLine.length === 2 && rawLine[0] === 0x05) { emit("R\x00"); rawLine = []; return; } // raw-paste: not supported
    enterRaw(true);
  } else if (c === 0x02) {
    rawLine = [];
    enterFriendly(true);
  } else if (c === 0x03) {
    rawLine = [];
  } else if (c === 0x04) {
    emit("OK");
    if (!rawLine.length) { emit("\r\nMPY: soft reboot\r\n"); finish("soft-reset", "soft-reset-raw"); }
    const code = Buffer.from(rawLine).toString("utf8");
    rawLine = [];
    execRaw(code);
  } else {
    rawLine.push(c);
  }
}

async function execRaw(code) {
  state = "exec";
  let error = null;
  try {
    // the command, then its asyncio.run coroutines; an added last line keeps the
    // command's own line numbers in its traceback
    await mp.runPythonAsync(`${code}\nimport _board\nawait _board.drain()\n`);
  } catch (e) {
    if (e.name !== "PythonError") throw e;
    error = e;
  }
  if (state === "ended") return;
  mp.runPython("import _board\n_board.discard()");
  if (error && error.type === "SystemExit") {
    emit("\x04\x04");
    emit("MPY: soft reboot\r\n");
    finish("soft-reset", "soft-reset-raw");
  }
  emit("\x04");
  if (error) emitCooked(Buffer.from(tracebackText(error)));
  emit("\x04>");
  syncFlash();
  state = "raw";
  pump();
}

// ---- start -----------------------------------------------------------------------------
async function boot(runMain) {
  const boot = await runFile("boot.py");
  if (boot === "exit") { emit("MPY: soft reboot\r\n"); finish("soft-reset", runMain ? "soft-reset" : "soft-reset-raw"); }
  if (runMain) {
    const main = await runFile("main.py");
    if (main === "exit") { emit("MPY: soft reboot\r\n"); finish("soft-reset", "soft-reset"); }
    enterFriendly(true);
  } else {
    enterRaw(true);
  }
  pump();
}

function firstBoot() {
  // A blank flash: MicroPython formats it and writes boot.py, as on an ESP32.
  fs.mkdirSync(opts.flash, { recursive: true });
  if (fs.readdirSync(opts.flash).length === 0) {
    writeHostAtomic(path.join(opts.flash, "boot.py"),
      "# This file is executed on every boot (including wake-boot from deepsleep)\n" +
      "#import esp\n#esp.osdebug(None)\n#import webrepl\n#webrepl.start()\n");
  }
}

process.stdin.on("data", (d) => { input = Buffer.concat([input, d]); pump(); });
process.stdin.on("end", () => process.exit(0)); // the supervisor is gone: power off
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));

firstBoot();
mp = await loadMicroPython({ stdout: emitCooked, stderr: emitCooked, linebuffer: false });
mp.registerJsModule("hal", { ...storage, ...uart, ...udp, ...misc });
mp.FS.mkdir("/rom");
for (const [host, name] of ROM) mp.FS.writeFile(`/rom/${name}`, fs.readFileSync(host));
mp.FS.mkdir(VM_FLASH);
loadFlash(opts.flash, VM_FLASH);
mp.runPython(
  "import sys, os\n" +
  "sys.path.insert(0, '/rom')\n" +
  "import _board, _flashfs, machine, emulated_adapters\n" +
  "sys.path.remove('/rom')\n" +
  `_flashfs.mount('${VM_FLASH}')\n`);

const start = opts.start;
if (RESET_TEXT[start]) emit(ROM_BOOT + RESET_TEXT[start]);
if (start === "friendly") enterFriendly(true);
else if (start === "friendly-prompt") enterFriendly(false);
else if (start === "raw") enterRaw(false);
else if (start === "soft-reset-raw") await boot(false);
else if (start === "soft-reset" || RESET_TEXT[start]) await boot(true);
else die(`--start: unknown mode ${start}`);
pump();
