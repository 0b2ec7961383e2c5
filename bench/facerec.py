"""face_recognition 1.3 (dlib) on the same photos, in its own venv (.venv-bench), over JSON.

The venv is created on first use from bench/requirements-dlib.txt: ``dlib-bin`` (a prebuilt
dlib) and then face_recognition and its models with ``--no-deps``, since face_recognition
declares the source package ``dlib``, which would try to compile. The worker
(bench/facerec_worker.py) runs as one process; its CPU/wall ratio shows it used one core.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, Context, Missing

log = logging.getLogger(__name__)

REQUIREMENTS = ROOT / "bench" / "requirements-dlib.txt"
FACEREC_NODEPS = ("face_recognition==1.3.0", "face_recognition_models==0.3.0")
WORKER = ROOT / "bench" / "facerec_worker.py"


def venv_python(venv: Path) -> Path:
    """The interpreter of the bench venv."""
    return venv / "bin" / "python"


def ensure_venv(venv: Path, install: bool) -> Path:
    """Return the venv's python, creating and filling the venv when allowed; else raise Missing."""
    py = venv_python(venv)
    check = [str(py), "-c", "import face_recognition, dlib"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    if not install:
        raise Missing(
            f"{venv} has no face_recognition; run `python -m bench` once without --no-install"
        )
    log.info("creating %s (dlib-bin, face_recognition): a few minutes the first time", venv)
    t0 = time.monotonic()
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        [str(py), "-m", "pip", "install", "--quiet", "--no-deps", *FACEREC_NODEPS],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise Missing(f"could not set up {venv}: {' '.join(cmd[-2:])}: {' | '.join(tail)}")
    if subprocess.run(check, capture_output=True).returncode != 0:
        raise Missing(f"{venv} was set up but face_recognition does not import")
    log.info("%s ready in %.0f s", venv, time.monotonic() - t0)
    return py


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(ctx: Context) -> dict:
    """Seconds per photo and per stage for face_recognition; keeps its encodings for scoring."""
    py = ensure_venv(ctx.opts.bench_venv, ctx.opts.install)
    photos = ctx.need_photos()
    ctx.opts.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ctx.opts.out_dir) as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps({"root": str(photos.root), "photos": photos.photos}))
        core = min(os.sched_getaffinity(0))
        cpu0 = _children_cpu_s()
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(py), str(WORKER), str(req), str(res)],
            capture_output=True,
            text=True,
            timeout=3600,
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if ctx.opts.pin else None,
        )
        wall = time.monotonic() - t0
        cpu = _children_cpu_s() - cpu0
        if proc.returncode != 0 or not res.is_file():
            tail = proc.stderr.strip().splitlines()[-3:]
            raise RuntimeError(
                f"face_recognition worker failed ({proc.returncode}): {' | '.join(tail)}"
            )
        result = json.loads(res.read_text())
    vectors: dict[str, np.ndarray | None] = {}
    per_photo: dict[str, tuple[float, str]] = {}
    stage: dict[str, list[float]] = {"decode": [], "detect": [], "encode": [], "total": []}
    no_face = 0
    for r in result["results"]:
        enc = r["encoding"]
        vectors[r["path"]] = None if enc is None else np.asarray(enc, np.float32)
        per_photo[r["path"]] = (r["total_s"] * 1000.0, "embedded" if enc else "no_face")
        no_face += enc is None
        for k in stage:
            stage[k].append(r[f"{k}_s"] * 1000.0)
    ctx.vectors["facerec"] = vectors
    ctx.per_photo["facerec"] = per_photo
    from bench.stats import summarise_ms

    n = len(result["results"])
    return {
        "status": "ok",
        "info": result["info"],
        "photos": n,
        "no_face": no_face,
        "seconds_per_photo_mean": round(sum(stage["total"]) / max(n, 1) / 1000.0, 4),
        "stages_ms": {k: summarise_ms(v) for k, v in stage.items()},
        "wall_s": round(wall, 1),
        # CPU seconds over wall seconds: about 1 means dlib computed on one core at a time.
        "cpu_per_wall": round(cpu / wall, 2) if wall > 0 else None,
        "pinned_core": core if ctx.opts.pin else None,
    }
