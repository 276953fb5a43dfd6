// A real MicroPython VM (the npm WebAssembly port) with project files copied
// into its in-memory filesystem. Used by the core-test runner, the benchmarks
// and the emulated device.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

function mkdirs(FS, dir) {
  let cur = "";
  for (const part of dir.split("/").filter(Boolean)) {
    cur += "/" + part;
    try { FS.mkdir(cur); } catch (e) { /* exists */ }
  }
}

// Copy a host file or folder (only .py/.json/.bin files, recursively) into the VM.
export function copyIn(FS, hostPath, vmPath) {
  const st = fs.statSync(hostPath);
  if (st.isDirectory()) {
    mkdirs(FS, vmPath);
    for (const name of fs.readdirSync(hostPath)) {
      if (name === "__pycache__" || name.startsWith(".")) continue;
      const child = path.join(hostPath, name);
      if (fs.statSync(child).isDirectory() || /\.(py|json|bin|cbor)$/.test(name)) {
        copyIn(FS, child, vmPath + "/" + name);
      }
    }
  } else {
    mkdirs(FS, path.posix.dirname(vmPath));
    FS.writeFile(vmPath, fs.readFileSync(hostPath));
  }
}

// mounts: [[hostPathRelativeToRepo, vmPath], ...]; sysPath: extra import dirs.
export async function startVM({ mounts = [], sysPath = [], stdout, stderr } = {}) {
  const mp = await loadMicroPython({
    stdout: stdout || ((line) => process.stdout.write(line + "\n")),
    stderr: stderr || ((line) => process.stderr.write(line + "\n")),
  });
  for (const [host, vm] of mounts) copyIn(mp.FS, path.resolve(REPO, host), vm);
  mp.runPython("import sys\n" + sysPath.map((p) => `sys.path.append(${JSON.stringify(p)})\n`).join(""));
  return mp;
}

export const STANDARD_MOUNTS = [
  ["firmware/wattcore", "/lib/wattcore"],
  ["firmware/app", "/lib/app"],
  ["firmware/tests/core", "/tests/core"],
  ["docs/vectors", "/vectors"],
];
