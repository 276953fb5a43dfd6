// Runs the shared core tests (firmware/tests/core/test_*.py) inside a real
// MicroPython VM: every module-level function named test_*; prints one line
// per failure and a closing "N passed, N failed" line; exits 1 on any failure.
//   node tools/mpvm/run_core_tests.mjs [-k substring]
import fs from "node:fs";
import path from "node:path";
import { startVM, REPO, STANDARD_MOUNTS } from "./vm.mjs";

const args = process.argv.slice(2);
const kIdx = args.indexOf("-k");
const filter = kIdx >= 0 ? args[kIdx + 1] : "";

const testDir = path.join(REPO, "firmware/tests/core");
const modules = fs.readdirSync(testDir).filter((n) => /^test_.*\.py$/.test(n)).map((n) => n.slice(0, -3)).sort();

const mp = await startVM({ mounts: STANDARD_MOUNTS, sysPath: ["/lib", "/tests/core"] });
mp.runPython(`
import sys, gc
def _run_module(modname, filt):
    mod = __import__(modname)
    results = []
    for name in sorted(dir(mod)):
        if not name.startswith("test_") or (filt and filt not in modname + "." + name):
            continue
        fn = getattr(mod, name)
        if not callable(fn):
            continue
        gc.collect()
        try:
            fn()
            results.append((name, None))
        except Exception as e:
            import io
            buf = io.StringIO()
            sys.print_exception(e, buf)
            results.append((name, buf.getvalue()))
    return results
`);
const run = mp.globals.get("_run_module");
let passed = 0, failed = 0;
for (const mod of modules) {
  let results;
  try {
    results = run(mod, filter);
  } catch (e) {
    console.log(`FAILED ${mod} (import): ${e.message}`);
    failed++;
    continue;
  }
  for (const [name, err] of results) {
    if (err === null) { passed++; }
    else { failed++; console.log(`FAILED ${mod}.${name}\n${err}`); }
  }
}
console.log(`micropython ${mp.pyimport("sys").version.split(";")[1].trim()}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed || passed === 0 ? 1 : 0);
