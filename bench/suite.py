"""Runs the sections in order, each only when its part exists, and checks the budgets.

A section whose part has not landed reports ``status: missing`` with the reason; one that fails
reports ``status: error`` with the message; neither stops the others.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import time
import traceback
from pathlib import Path

from bench import (
    compare,
    daemon_bench,
    facerec,
    ledger_bench,
    matcher_bench,
    memory_bench,
    models_bench,
    pipeline_bench,
    qr_bench,
)
from bench.common import SECTION_NAMES, Context, Missing, Options
from bench.data import default_faces_dir, load_photos
from edge.events import iso_utc

log = logging.getLogger(__name__)

QUICK_PER_SOURCE = 6
SCHEMA = "bansos.bench/1"


def _mqtt(ctx: Context) -> dict:
    try:
        mqtt_bench = importlib.import_module("bench.mqtt_bench")
    except ModuleNotFoundError as exc:
        if exc.name == "bench.mqtt_bench":
            raise Missing("bench/mqtt_bench.py not there yet (MQTT)") from None
        raise
    result = mqtt_bench.run(50 if ctx.opts.quick else 1000)
    return {"status": "ok", **result} if "status" not in result else result


def _outage(ctx: Context) -> dict:
    from bench import outage_bench

    return {"status": "ok", **outage_bench.run(300 if ctx.opts.quick else 5000)}


# (name, function, what it measures); order matters: compare uses pipeline and facerec.
SECTIONS = (
    ("pipeline", pipeline_bench.run, "per-stage ms per embedder and thread count"),
    ("models", models_bench.run, "bare interpreter invoke ms per model"),
    ("facerec", facerec.run, "face_recognition 1.3 (dlib) on the same photos"),
    ("compare", compare.run, "accuracy on the same pairs and ours/theirs ratios"),
    ("qr", qr_bench.run, "idle frame of the qr flow: QR detection on 640x480"),
    ("matcher", matcher_bench.run, "1:N search over 1k/10k/100k templates"),
    ("ledger", ledger_bench.run, "durable ledger commits per second"),
    ("mqtt", _mqtt, "events per second through MQTT"),
    ("outage", _outage, "catch-up after a day offline: outbox drain and recovery loop"),
    ("daemon", daemon_bench.run, "start to READY and steady RSS of `edge run`"),
    ("memory", memory_bench.run, "RSS of `edge run` against decisions: flat or not"),
)
assert tuple(s[0] for s in SECTIONS) == SECTION_NAMES, "bench.common.SECTION_NAMES is stale"

# Issue 7, on one x86 core. (name, limit, unit, where the figure is, how it was taken)
BUDGETS = (
    (
        "detect+align+embed per face",
        15.0,
        "ms",
        ("pipeline", "face_ms"),
        "int8, 1 thread (one core), median",
    ),
    (
        "1:N search over 10,000",
        5.0,
        "ms",
        ("matcher", "search_10k_ms"),
        "float32, 1 BLAS thread, median",
    ),
    ("daemon RSS at steady state", 150.0, "MB", ("daemon", "rss_mb"), "VmRSS"),
    ("start to READY", 3.0, "s", ("daemon", "ready_s"), "exec to READY=1"),
)


def _dig(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def budget_figures(sections: dict) -> dict[str, float | None]:
    """The figure each budget is judged on, taken from the section results."""
    return {
        "face_ms": _dig(
            sections, "pipeline", "variants", "int8/1t", "analyse_ms_embedded", "median"
        ),
        "search_10k_ms": _dig(
            sections, "matcher", "sizes", "10000", "float32", "search_ms", "median"
        ),
        "rss_mb": _dig(sections, "daemon", "rss_mb"),
        "ready_s": _dig(sections, "daemon", "ready_s"),
    }


def check_budgets(sections: dict) -> list[dict]:
    """PASS / MISS per budget, or NOT MEASURED when its section did not run."""
    figures = budget_figures(sections)
    out = []
    for name, limit, unit, (section, key), how in BUDGETS:
        value = figures[key]
        if value is None:
            verdict = "NOT MEASURED"
            why = _dig(sections, section, "reason") or f"{section} has no figure"
        else:
            verdict = "PASS" if value < limit else "MISS"
            why = how
        out.append(
            {
                "budget": name,
                "limit": limit,
                "unit": unit,
                "value": value,
                "verdict": verdict,
                "how": why,
            }
        )
    return out


def machine() -> dict:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from edge.vision.runtime import RUNTIME
    except ImportError:
        RUNTIME = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tflite_runtime": RUNTIME,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_suite(opts: Options, progress=print) -> dict:
    """Run the selected sections; return the full result (also what goes into the JSON)."""
    ctx = Context(opts)
    faces_dir = opts.faces_dir or default_faces_dir()
    per_source = opts.photos_per_source or (QUICK_PER_SOURCE if opts.quick else None)
    result: dict = {
        "schema": SCHEMA,
        "started": iso_utc(time.time(), "seconds"),
        "mode": "quick" if opts.quick else "full",
        "machine": machine(),
        "faces_dir": str(faces_dir),
        "sections": {},
    }
    result["photos"] = _load_photos(ctx, faces_dir, per_source)
    wanted = opts.sections or list(SECTION_NAMES)
    for name, fn, what in SECTIONS:
        if name not in wanted:
            continue
        progress(f"[bench] {name}: {what} ...")
        t0 = time.monotonic()
        no_photos = result["photos"].get("reason") if ctx.photos is None else None
        res = _run_section(ctx, name, fn, no_photos)
        res["seconds"] = round(time.monotonic() - t0, 1)
        # Others share this machine: the load says how much to trust the figures.
        res["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        result["sections"][name] = res
        progress(f"[bench] {name}: {res['status']} in {res['seconds']} s")
    result["budgets"] = check_budgets(result["sections"])
    result["finished"] = iso_utc(time.time(), "seconds")
    return result


def _load_photos(ctx: Context, faces_dir: Path, per_source: int | None) -> dict:
    """Set ``ctx.photos`` (None when the folder is not there); the result's photos figures."""
    try:
        ctx.photos = load_photos(faces_dir, per_source)
    except FileNotFoundError as exc:
        ctx.photos = None
        return {"count": 0, "reason": str(exc)}
    return {
        "count": len(ctx.photos.photos),
        "pairs": len(ctx.photos.pairs),
        "per_source": {
            s: sum(v == s for v in ctx.photos.source.values()) for s in ctx.photos.sources()
        },
    }


def _run_section(ctx: Context, name: str, fn, no_photos: str | None) -> dict:
    """One section's result; a missing part or a failure becomes a status with a reason."""
    try:
        if no_photos is not None and name in ("pipeline", "facerec", "compare", "daemon"):
            raise Missing(no_photos)
        return fn(ctx)
    except Missing as exc:
        return {"status": "missing", "reason": str(exc)}
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith(("edge", "bench")):
            raise
        return {"status": "missing", "reason": f"module {exc.name} not there yet"}
    except Exception as exc:  # one broken part must not hide the figures of the others
        log.debug("section %s failed", name, exc_info=True)
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return {
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})",
        }


def write_json(result: dict, path: Path | None, out_dir: Path) -> Path:
    """Write the result to ``path`` (or bench/out/bench-<mode>-<time>.json and latest-<mode>)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if path is None:
        stamp = result["started"].replace(":", "").replace("-", "")
        path = out_dir / f"bench-{result['mode']}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, sort_keys=False)
    path.write_text(text + "\n")
    (out_dir / f"latest-{result['mode']}.json").write_text(text + "\n")
    return path
