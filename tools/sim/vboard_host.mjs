// The virtual board's "chip": the official MicroPython WebAssembly port plus a HAL (module `vbhal`),
// driven by the Python launcher (tools/sim/vboard.py) over stdin/stdout, one JSON object per line.
//
//   node vboard_host.mjs --flash DIR [--virtual-clock] [--heap BYTES] [--rom machine.py]
//
// Launcher -> host ops: {op:"boot"} {op:"rx",hex} {op:"interrupt"} {op:"exec",id,code}
//   {op:"soft_reset",id,run_main} {op:"power",id,on} {op:"set",id,...} {op:"get",id} {op:"advance",id,ms}
// Host -> launcher events: {ev:"uart",hex} (bytes the board put on its UART/console), {ev:"mode",mode},
//   {ev:"reply",id,...}, {ev:"log",msg}.
// The board's flash is DIR on the host: it is copied into the interpreter's filesystem at every boot,
// and written back after every raw-REPL command and whenever the firmware flushes a file (machine.flash_sync).
// Writes that were not flushed are lost on a power cut, as on real hardware with a write cache.
import { readFileSync, writeFileSync, readdirSync, statSync, mkdirSync, existsSync, unlinkSync, rmSync } from "node:fs";
import { join, dirname } from "node:path";
import { createInterface } from "node:readline";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const argv = process.argv.slice(2);
let flash = null, vclock = false, heap = 512 * 1024, rom = null;
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--flash") flash = argv[++i];
  else if (argv[i] === "--virtual-clock") vclock = true;
  else if (argv[i] === "--heap") heap = parseInt(argv[++i], 10);
  else if (argv[i] === "--rom") rom = argv[++i];
  else { process.stderr.write(`vboard_host: unknown argument ${argv[i]}\n`); process.exit(2); }
}
if (!flash || !rom) { process.stderr.write("vboard_host: --flash DIR and --rom FILE are required\n"); process.exit(2); }

const MASK = 0x3FFFFFFF;
const VALVE_PIN = 5;            // harness wiring: the valve driver input (boards.py "virtual")
const SKIP_TOP = new Set(["dev", "proc", "rom"]);
const t0 = Date.now();
let now = 0;                    // virtual ms since the host started (virtual clock)
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const ms = () => (vclock ? now : Date.now() - t0);

const hw = {
  adc: { 1: 7944, 2: 17210, 3: 30000, 4: 38725 },  // clean air, 2 kPa of 10 kPa, ..., battery ~80 %
  noise: true, n: 0,
  pins: {}, valve: 0,
  rx: [],
  nvs: {},
};
const board = {
  mp: null, gen: 0, mode: "off", interrupt: false, capture: null,
  wdt: null, wdtResets: 0, boots: 0, resetCause: 1, pendingReset: false, sleepers: [],
};
function loadNvs() {  // what was committed; uncommitted NVS writes do not survive a reset
  try { hw.nvs = JSON.parse(readFileSync(join(flash, ".nvs.json"), "utf8")); } catch { hw.nvs = {}; }
}
loadNvs();

function setMode(m) { board.mode = m; emit({ ev: "mode", mode: m }); }

function toHex(str) { return Buffer.from(str, "latin1").toString("hex"); }

function consoleOut(s) {
  if (typeof s !== "string") s = Buffer.from(s).toString("utf8");
  if (board.dead) return;
  if (board.capture) { board.capture.out += s; return; }
  // the console is the UART: a log line reaches the pty like the frames do (SPEC 6: text segments)
  emit({ ev: "uart", hex: Buffer.from(s.replace(/\r?\n/g, "\r\n"), "utf8").toString("hex") });
}

// ---- flash <-> interpreter filesystem ----
function copyIn(FS, hostDir, mpDir) {
  for (const name of readdirSync(hostDir)) {
    if (name.startsWith(".")) continue;
    const h = join(hostDir, name), m = (mpDir === "/" ? "" : mpDir) + "/" + name;
    if (statSync(h).isDirectory()) { try { FS.mkdir(m); } catch {} copyIn(FS, h, m); }
    else FS.writeFile(m, readFileSync(h));
  }
}

function walk(FS, mpDir, out) {
  for (const name of FS.readdir(mpDir)) {
    if (name === "." || name === "..") continue;
    if (mpDir === "/" && SKIP_TOP.has(name)) continue;
    const m = (mpDir === "/" ? "" : mpDir) + "/" + name;
    const st = FS.stat(m);
    if (FS.isDir(st.mode)) { out.dirs.add(m); walk(FS, m, out); } else out.files.add(m);
  }
  return out;
}

function syncFile(FS, m) {
  const h = join(flash, m);
  const data = Buffer.from(FS.readFile(m));
  mkdirSync(dirname(h), { recursive: true });
  let same = false;
  try { same = readFileSync(h).equals(data); } catch {}
  if (!same) writeFileSync(h, data);
}

// A flush of one file also settles its folder's other files (not sub-folders): a file the firmware
// removed (a left-over /gg_state.tmp) is gone from the flash too, as on a real filesystem.
function syncDir(FS, path) {
  syncFile(FS, path);
  const dir = dirname(path);
  const inFs = new Set(FS.readdir(dir));
  for (const name of readdirSync(join(flash, dir))) {
    if (name.startsWith(".") || inFs.has(name)) continue;
    const h = join(flash, dir, name);
    if (!statSync(h).isDirectory()) unlinkSync(h);
  }
}

function syncOut() {
  if (!board.mp) return;
  const FS = board.mp.FS;
  const seen = walk(FS, "/", { files: new Set(), dirs: new Set() });
  for (const m of seen.files) syncFile(FS, m);
  const prune = (hostDir, mpDir) => {
    for (const name of readdirSync(hostDir)) {
      if (name.startsWith(".")) continue;
      const h = join(hostDir, name), m = (mpDir === "/" ? "" : mpDir) + "/" + name;
      if (statSync(h).isDirectory()) {
        if (!seen.dirs.has(m)) rmSync(h, { recursive: true, force: true }); else prune(h, m);
      } else if (!seen.files.has(m)) unlinkSync(h);
    }
  };
  prune(flash, "/");
}

// ---- the HAL seen from Python as `vbhal` ----
function sleepersOf(g) { return board.sleepers.filter((s) => s.g === g); }

const hal = {
  ticks_ms: () => ms() & MASK,
  sleep: (d) => {
    const g = board.gen;
    if (board.hang || board.dead) return new Promise(() => {});  // a hung loop: never resumes, never feeds the watchdog
    if (board.interrupt) { board.interrupt = false; return Promise.resolve(1); }
    return new Promise((res) => {
      const s = { deadline: ms() + Math.max(0, d | 0), res, g };
      board.sleepers.push(s);
      if (!vclock) s.timer = setTimeout(() => wake(s, 0), Math.max(0, d | 0));
    });
  },
  adc: (ch) => {
    let v = hw.adc[ch] ?? 0;
    if (hw.noise && v > 0) { hw.n = (hw.n + 1) % 3; v += hw.n - 1; }  // a live ADC has LSB noise
    return Math.max(0, Math.min(65535, v));
  },
  pin_set: (id, v) => { if (board.dead) return; hw.pins[id] = v ? 1 : 0; if (id === VALVE_PIN) hw.valve = v ? 1 : 0; },
  pin_get: (id) => hw.pins[id] ?? 0,
  uart_any: () => hw.rx.length,
  uart_read: (n) => {
    const k = n < 0 ? hw.rx.length : Math.min(n, hw.rx.length);
    if (!k) return "";
    return Buffer.from(hw.rx.splice(0, k)).toString("hex");
  },
  uart_write: (hex) => { if (board.dead) return hex.length >> 1; emit({ ev: "uart", hex }); return hex.length >> 1; },
  wdt_start: (timeout) => { board.wdt = { timeout, last: ms() }; },
  wdt_feed: () => { if (board.wdt) board.wdt.last = ms(); },
  flash_sync: (path) => {
    if (!board.mp) return;
    if (board.cutAtWrite > 0 && --board.cutAtWrite === 0) { cutMidWrite(path); return; }
    if (path) { try { syncDir(board.mp.FS, path); } catch { syncOut(); } } else syncOut(); },
  hard_reset: () => { board.pendingReset = true; },
  reset_cause: () => board.resetCause,
  nvs_set: (ns, k, v) => { (hw.nvs[ns] ??= {})[k] = v; },
  nvs_get: (ns, k) => (hw.nvs[ns] && k in hw.nvs[ns] ? hw.nvs[ns][k] : null),
  nvs_erase: (ns, k) => { if (hw.nvs[ns]) delete hw.nvs[ns][k]; },
  nvs_commit: () => writeFileSync(join(flash, ".nvs.json"), JSON.stringify(hw.nvs)),
};

// Fault injection: power fails while the firmware writes a file. What reaches the flash is a torn copy of
// the file's temp sibling (half its bytes); the file itself keeps its old content. The interpreter that
// was cut is dead: until its next await (where it stays forever) its UART writes, pin changes and console
// output go nowhere, as nothing leaves a chip without power. (A JS exception cannot unwind it: the port
// does not turn a host function's throw into a Python exception.)
function cutMidWrite(path) {
  const FS = board.mp.FS;
  let data = Buffer.alloc(0);
  try { data = Buffer.from(FS.readFile(path)); } catch {}
  const tmp = path.replace(/\.json$/, ".tmp");
  writeFileSync(join(flash, tmp), data.subarray(0, data.length >> 1));
  emit({ ev: "log", msg: `power cut while writing ${path} (torn ${tmp} left on flash)` });
  board.cuts = (board.cuts || 0) + 1;
  powerOff();
  board.dead = true;
}

function wake(s, v) {
  const i = board.sleepers.indexOf(s);
  if (i < 0) return;
  board.sleepers.splice(i, 1);
  if (s.timer) clearTimeout(s.timer);
  if (s.g === board.gen) s.res(v);
}

// ---- power, reset, firmware ----
function powerOff() {
  board.gen++;
  for (const s of board.sleepers) if (s.timer) clearTimeout(s.timer);
  board.sleepers = [];
  board.mp = null; board.wdt = null; board.interrupt = false; board.capture = null; board.hang = false;
  board.halted = false;
  for (const k of Object.keys(hw.pins)) hw.pins[k] = 0;  // lines float low; a latching valve keeps its position
  hw.rx = [];
  loadNvs();
  setMode("off");
}

async function start(runMain, cause) {
  powerOff();
  board.dead = false;
  // collect the previous interpreter now (node --expose-gc): its memory goes back at once, and any
  // finalizer of its objects runs at a known point, before the next interpreter exists
  if (globalThis.gc) globalThis.gc();
  const g = board.gen;
  board.boots++; board.resetCause = cause;
  const mp = await loadMicroPython({ heapsize: heap, linebuffer: false, stdout: consoleOut, stderr: consoleOut });
  if (g !== board.gen) return;
  isolateFinalizers(mp, g);
  for (const d of ["/home/web_user", "/home", "/tmp"]) { try { mp.FS.rmdir(d); } catch {} }
  mp.FS.mkdirTree("/rom");
  mp.FS.writeFile("/rom/machine.py", readFileSync(rom));
  mp.FS.writeFile("/rom/esp32.py", "from machine import NVS  # esp32.NVS on a real ESP32\n");
  copyIn(mp.FS, flash, "/");
  mp.registerJsModule("vbhal", hal);
  // machine/esp32 are built in on a real board: import the shims once with /rom on the path and take it off
  // again, so they win over any file (as built-ins do) and sys.path is a board's ['', '.frozen', '/lib'];
  // leaving '/rom' at sys.path[0] broke code that expects the current directory there (mpremote, mip)
  mp.runPython("import sys\nsys.path.insert(0, '/rom')\nimport machine, esp32\ndel machine, esp32\nsys.path.remove('/rom')\n" +
               "if '/lib' not in sys.path: sys.path.append('/lib')");
  board.mp = mp;
  if (runMain && existsSync(join(flash, "main.py"))) runFirmware(g);
  else setMode("repl");
}

// micropython.mjs keeps its PyProxy bookkeeping in globals: a FinalizationRegistry whose callback frees the
// collected proxy's reference number through globalThis.Module, which is always the NEWEST interpreter.
// After a soft reset V8 still collects the previous interpreter's proxies (e.g. of the interrupted firmware),
// and that callback then freed live objects of the new interpreter by number: every REPL command after it
// failed ("Traceback ... in" and nothing more), depending on GC timing. Each interpreter gets its own
// registry bound to its own module and generation; frees through the package's shared path are dropped.
function isolateFinalizers(mp, g) {
  const mod = mp._module;
  const ccall = mod.ccall.bind(mod);
  const map = globalThis.proxy_js_map;
  const del = Map.prototype.delete.bind(map);
  mod.ccall = (name, ...rest) => (name === "proxy_c_free_obj" ? null : ccall(name, ...rest));
  map.delete = () => false;  // only the package's (stale) finalizers call it
  globalThis.pyProxyFinalizationRegistry = new FinalizationRegistry((cRef) => {
    if (g !== board.gen) return;  // a previous boot's proxy: its interpreter is gone with it
    del(cRef);
    ccall("proxy_c_free_obj", "null", ["number"], [cRef]);
  });
}

async function runFirmware(g) {
  setMode("firmware");
  try {
    // /main.py is the stub `from gasguard.firmware import main; main.run()`; on this port run() returns the
    // coroutine, which only a top-level await can drive (no asyncio.run on WebAssembly).
    await board.mp.runPythonAsync("from gasguard.firmware import main as _gg_main\nawait _gg_main.arun()\n");
  } catch (e) {
    if (g !== board.gen) return;
    consoleOut(String(e && e.message ? e.message : e) + "\n");
  }
  if (g !== board.gen) return;
  if (board.pendingReset) { board.pendingReset = false; return start(true, 2); }
  setMode("repl");
}

async function settle(g, before) {
  // let the resumed Python task run until it awaits again (it registers a new sleeper) or stops
  for (let i = 0; i < 50; i++) {
    await new Promise((r) => setImmediate(r));
    if (g !== board.gen || board.mode !== "firmware" || sleepersOf(g).length >= before) return;
  }
}

function checkWdt() {
  // the watchdog counts while the firmware runs, and after it died (a crashed loop must be reset); once a
  // technician interrupts it (Ctrl-C) the chip is treated as halted by a debugger, so REPL sessions
  // (mpremote) are not cut by a reset
  if (board.wdt && board.mp && !board.halted && ms() - board.wdt.last > board.wdt.timeout) {
    board.wdtResets++;
    board.wdt = null;
    emit({ ev: "log", msg: "watchdog reset" });
    start(true, 3);
    return true;
  }
  return false;
}

async function advance(d) {
  const target = now + d;
  for (;;) {
    const g = board.gen;
    const due = sleepersOf(g).filter((s) => s.deadline <= target).sort((a, b) => a.deadline - b.deadline);
    if (!due.length) break;
    const s = due[0];
    now = Math.max(now, s.deadline);
    if (checkWdt()) { await new Promise((r) => setTimeout(r, 0)); continue; }
    const before = sleepersOf(g).length;
    wake(s, 0);
    await settle(g, before);
  }
  now = target;
  checkWdt();
}

function snapshot() {
  return {
    now: ms(), mode: board.mode, pins: hw.pins, valve: hw.valve, adc: hw.adc, noise: hw.noise,
    boots: board.boots, wdt_resets: board.wdtResets, reset_cause: board.resetCause, rx_pending: hw.rx.length,
    virtual_clock: vclock, cut_at_write: board.cutAtWrite || 0, power_cuts: board.cuts || 0,
  };
}

// The WebAssembly port reports emscripten errno numbers (ENOENT = 44); a real board reports the POSIX
// ones, and tools such as mpremote look for "[Errno 2] ENOENT" in a traceback.
const ERRNO = { 44: [2, "ENOENT"], 20: [17, "EEXIST"], 54: [20, "ENOTDIR"], 31: [21, "EISDIR"], 28: [22, "EINVAL"],
  55: [39, "ENOTEMPTY"], 2: [13, "EACCES"], 29: [5, "EIO"], 10: [16, "EBUSY"], 51: [28, "ENOSPC"] };
function posixErrors(text) {
  return text.replace(/OSError: (\d+)$/gm, (m, n) => (ERRNO[n] ? `OSError: [Errno ${ERRNO[n][0]}] ${ERRNO[n][1]}` : m));
}

async function execCode(id, code) {
  if (!board.mp) { emit({ ev: "reply", id, out: "", err: "the board is powered off\n" }); return; }
  board.capture = { out: "" };
  let err = "";
  try { await board.mp.runPythonAsync(code); }
  catch (e) { err = posixErrors(String(e && e.message ? e.message : e)); if (!err.endsWith("\n")) err += "\n"; }
  const out = board.capture.out;
  board.capture = null;
  try { syncOut(); } catch (e) { err += `vboard: flash write-back failed: ${e}\n`; }
  if (board.pendingReset) { board.pendingReset = false; err = ""; emit({ ev: "reply", id, out, err }); return start(true, 2); }
  emit({ ev: "reply", id, out: out.replace(/\r?\n/g, "\r\n"), err: err.replace(/\r?\n/g, "\r\n") });
}

// ---- the launcher's commands ----
const rl = createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  let m;
  try { m = JSON.parse(line); } catch { emit({ ev: "log", msg: `bad line from launcher: ${line.slice(0, 80)}` }); return; }
  const id = m.id;
  switch (m.op) {
    case "boot": await start(true, 1); break;
    case "rx": if (board.mode === "firmware") for (const b of Buffer.from(m.hex, "hex")) if (hw.rx.length < 512) hw.rx.push(b); break;
    case "interrupt":
      board.halted = true;
      if (board.mode === "firmware") {
        board.interrupt = true;
        const g = board.gen;
        for (const s of sleepersOf(g)) { board.interrupt = false; wake(s, 1); }
      }
      break;
    case "exec": await execCode(id, m.code); break;
    case "soft_reset": {
      if (board.mp) { try { syncOut(); } catch {} }
      await start(!!m.run_main, 5);
      emit({ ev: "reply", id, ok: true });
      break;
    }
    case "power":
      if (m.on) { if (!board.mp) await start(true, 1); } else powerOff();
      emit({ ev: "reply", id, ok: true, ...snapshot() });
      break;
    case "set":
      for (const k of ["gas", "pressure", "inlet", "battery"]) {
        if (m[k] !== undefined) hw.adc[{ gas: 1, pressure: 2, inlet: 3, battery: 4 }[k]] = m[k] | 0;
      }
      if (m.noise !== undefined) hw.noise = !!m.noise;
      emit({ ev: "reply", id, ok: true, ...snapshot() });
      break;
    case "get": emit({ ev: "reply", id, ok: true, ...snapshot() }); break;
    case "cut_at_write": board.cutAtWrite = Math.max(0, m.n | 0); emit({ ev: "reply", id, ok: true, ...snapshot() }); break;
    case "hang": board.hang = true; emit({ ev: "reply", id, ok: true, ...snapshot() }); break;
    case "advance":
      if (!vclock) { emit({ ev: "reply", id, ok: false, error: "start the board with --virtual-clock to advance time" }); break; }
      await advance(Math.max(0, m.ms | 0));
      emit({ ev: "reply", id, ok: true, ...snapshot() });
      break;
    default: emit({ ev: "reply", id, ok: false, error: `unknown op ${m.op}` });
  }
});
rl.on("close", () => process.exit(0));
if (!vclock) setInterval(checkWdt, 100);
