"""The separate build venv (`.venv-build`) in which the embedder is quantized.

The terminal's own venv never holds the quantizer: the build makes this one on first use, with
pinned requirements, and remakes it when the pins change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from models import pins
from models.fetch import BuildError

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-build"
STAMP = ".bansos-requirements.json"


def _tail(text: str, n: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


def ensure(venv: Path = VENV, progress=print) -> Path:
    """The venv's python, creating or refreshing the venv when its pinned requirements changed."""
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    want = list(pins.BUILD_REQUIREMENTS)
    if python.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text())["requirements"] == want:
                return python
        except (ValueError, KeyError):
            pass
    progress(f"creating build venv {venv.name} with {', '.join(want)} (one-off, about a minute)")
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *want],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"build venv: `{' '.join(cmd[:4])} ...` failed: {_tail(proc.stderr)}")
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    stamp.write_text(json.dumps({"requirements": want, "freeze": freeze}, indent=1))
    return python


def installed(venv: Path = VENV) -> list[str]:
    """`pip freeze` of the build venv as recorded when it was made."""
    try:
        return json.loads((venv / STAMP).read_text())["freeze"]
    except (OSError, ValueError, KeyError):
        return []


def quantize(python: Path, src: Path, calib: Path, float_out: Path, int8_out: Path) -> dict:
    """Run models.quantize in the build venv; returns the counts it reports."""
    cmd = [
        str(python),
        "-m",
        "models.quantize",
        str(src),
        str(calib),
        str(float_out),
        str(int8_out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"quantization failed (exit {proc.returncode}): {_tail(proc.stderr)}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BuildError(f"quantization printed no result: {_tail(proc.stdout)}") from exc
