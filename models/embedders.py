"""MobileFaceNet entries: the dynamic-range file as published, and float + int8 made here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from models import buildenv, fetch, pins
from models import manifest as mf
from models.fetch import BuildError

CROPS_PER_SPLIT = 200

EMBEDDER_FILES = {
    "embedder_int8": "mobilefacenet_int8.tflite",
    "embedder_float": "mobilefacenet_float.tflite",
    "embedder_dynamic": "mobilefacenet_dynamic.tflite",
}


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
    key = mf.key(mf.RECIPE_VERSION, pins.MOBILEFACENET_SHA256)
    name = "embedder_dynamic"
    if mf.fresh(entries.get(name), out, key):
        return []
    data = fetch.mobilefacenet(mfn_path)
    mf.write(out, EMBEDDER_FILES[name], data)
    entries[name] = mf.entry(
        EMBEDDER_FILES[name],
        data,
        "mobilefacenet-dynamic",
        key,
        description="MobileFaceNet, dynamic-range (int8 weights, float activations)",
        **_mobilefacenet_fields(),
    )
    mf.progress(f"{name}: {EMBEDDER_FILES[name]} copied")
    return [name]


def _vision_available() -> bool:
    try:
        return importlib.util.find_spec("edge.vision.pipeline") is not None
    except ModuleNotFoundError:
        return False


def _embedders_key() -> str:
    sources = mf.source_key("quantize.py", "crops.py")
    return mf.key(mf.RECIPE_VERSION, pins.MOBILEFACENET_SHA256, pins.BUILD_REQUIREMENTS, sources)


def build_int8(entries: dict, out: Path, mfn_path: Path, work: Path) -> list[str]:
    """Float (fused PReLU) and int8 MobileFaceNet, checked against each other on real faces."""
    from models import crops as crops_mod
    from models.evaluate import agreement, embed, time_models

    key = _embedders_key()
    int8 = entries.get("embedder_int8")
    fresh = mf.fresh(int8, out, key) and mf.fresh(entries.get("embedder_float"), out, key)
    upgrade = (
        fresh
        and int8.get("calibration", {}).get("alignment") == "centre-crop"
        and _vision_available()
    )
    if fresh and not upgrade:
        return []
    if upgrade:
        mf.progress("edge.vision is available now: recalibrating on aligned crops")
    python = buildenv.ensure(progress=mf.progress)
    dynamic = fetch.mobilefacenet(mfn_path)
    faces = crops_mod.faces_dir()
    calib_paths, agree_paths = crops_mod.photo_split(faces, CROPS_PER_SPLIT)
    aligner, method = crops_mod.make_aligner(
        (out / entries["detector"]["file"]).read_bytes(),
        (out / entries["landmarks"]["file"]).read_bytes(),
        dynamic,
    )
    mf.progress(f"aligning {len(calib_paths) + len(agree_paths)} photos from {faces} ({method})")
    try:
        calib = crops_mod.aligned_crops(calib_paths, aligner)
        held_out = crops_mod.aligned_crops(agree_paths, aligner)
    except BuildError:
        raise
    except Exception as exc:  # edge.vision is another engineer's module, still moving
        if method == "centre-crop":
            raise
        mf.progress(f"edge.vision failed ({type(exc).__name__}: {exc}); using centre crops")
        aligner, method = crops_mod.centre_crop, "centre-crop"
        calib = crops_mod.aligned_crops(calib_paths, aligner)
        held_out = crops_mod.aligned_crops(agree_paths, aligner)
    work.mkdir(parents=True, exist_ok=True)
    calib_file = work / "calibration_crops.npy"
    np.save(calib_file, calib)
    src = work / "mobilefacenet_src.tflite"
    src.write_bytes(dynamic)
    float_tmp, int8_tmp = work / "float.tflite", work / "int8.tflite"
    mf.progress(f"quantizing MobileFaceNet to int8 in {buildenv.VENV.name} ({len(calib)} crops)")
    counts = buildenv.quantize(python, src, calib_file, float_tmp, int8_tmp)
    float_data, int8_data = float_tmp.read_bytes(), int8_tmp.read_bytes()

    mf.progress(f"checking int8 against float on {len(held_out)} held-out aligned crops")
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
    mf.progress(
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
            "convolution and add, int8 input; the 33 PRELU and the final "
            "L2_NORMALIZATION stay float between QUANTIZE/DEQUANTIZE (ai-edge-quantizer "
            "0.10.0 has no int8 recipe for them), so the output is a float32 unit vector",
        ),
    ):
        mf.write(out, EMBEDDER_FILES[name], data)
        entries[name] = mf.entry(
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
