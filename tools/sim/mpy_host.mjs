// Runs MicroPython code in the official WebAssembly port under Node, with GasGuard's modules importable.
//
//   node mpy_host.mjs [--heap BYTES] [--file HOST_PATH=MP_PATH ...] < code.py
//
// Each --file copies one host file into the interpreter's filesystem (e.g. into /lib/gasguard/protocol/),
// so imports work exactly as on a board whose flash holds the same files. The code on stdin runs with
// runPythonAsync (top-level await works; this port has no asyncio.run). A Python exception prints its
// traceback on stderr and exits 1; anything else that goes wrong exits 2.
import { readFileSync } from "node:fs";
import { dirname } from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

let heap = 1024 * 1024;
const files = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--heap") heap = parseInt(argv[++i], 10);
  else if (argv[i] === "--file") files.push(argv[++i]);
  else { console.error(`mpy_host: unknown argument ${argv[i]}`); process.exit(2); }
}

const code = readFileSync(0, "utf8");
const mp = await loadMicroPython({ heapsize: heap, linebuffer: false, stdout: (s) => process.stdout.write(s), stderr: (s) => process.stderr.write(s) });
for (const spec of files) {
  const eq = spec.indexOf("=");
  const host = spec.slice(0, eq), target = spec.slice(eq + 1);
  mp.FS.mkdirTree(dirname(target));
  mp.FS.writeFile(target, readFileSync(host));
}
try {
  await mp.runPythonAsync(code);
} catch (e) {
  process.stdout.write("");
  process.stderr.write(String(e && e.message ? e.message : e) + "\n");
  process.exit(e && e.constructor && e.constructor.name === "PythonError" ? 1 : 2);
}
