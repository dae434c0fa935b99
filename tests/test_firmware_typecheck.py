"""The firmware type-checks against the MicroPython stubs (micropython-esp32-stubs + micropython-stdlib-stubs).

mypy sees exactly what a board sees: the MicroPython standard library (custom typeshed from
micropython-stdlib-stubs), the ESP32 port's modules (machine, time.ticks_ms, ...) and the package laid out
as on the board's /lib (gasguard/protocol, gasguard/firmware).
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE = next(Path(p) for p in sys.path if p.endswith("site-packages") and (Path(p) / "stdlib" / "VERSIONS").exists())
MYPY = Path(sys.executable).parent / "mypy"


def _board_tree(root: Path):
    stubs = root / "stubs"
    stubs.mkdir()
    for dist in ("micropython_esp32_stubs", "micropython_stdlib_stubs"):
        record = next(SITE.glob(dist + "-*.dist-info")) / "RECORD"
        for line in record.read_text().splitlines():
            rel = line.split(",")[0]
            if rel.endswith(".pyi") and not rel.startswith(("..", "stubs/", "stdlib/")):
                dst = stubs / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(SITE / rel, dst)
    lib = root / "lib" / "gasguard"
    lib.mkdir(parents=True)
    os.symlink(REPO / "gasguard" / "__init__.py", lib / "__init__.py")
    for pkg in ("protocol", "firmware"):
        os.symlink(REPO / pkg, lib / pkg)
    # The stubs' own lint findings are not ours, and protocol/ is checked by its owners: report the firmware.
    third = sorted({p.name.split(".")[0] for p in stubs.iterdir()})
    cfg = "[mypy]\n" + "".join(f"[mypy-{m}.*]\nignore_errors = True\n[mypy-{m}]\nignore_errors = True\n" for m in third)
    cfg += "[mypy-gasguard.protocol.*]\nignore_errors = True\n"
    (root / "mypy.ini").write_text(cfg)
    return stubs, root / "lib"


def test_firmware_typechecks_against_micropython_stubs(tmp_path):
    stubs, lib = _board_tree(tmp_path)
    env = dict(os.environ, MYPYPATH=f"{lib}{os.pathsep}{stubs}")
    p = subprocess.run([str(MYPY), "--custom-typeshed-dir", str(SITE), "--no-incremental", "--check-untyped-defs",
                        "--no-site-packages", "--config-file", str(tmp_path / "mypy.ini"), "--cache-dir", str(tmp_path / "cache"), "-p", "gasguard.firmware"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Success" in p.stdout
