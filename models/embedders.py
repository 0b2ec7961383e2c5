"""MobileFaceNet entries: the dynamic-range file as published, and float + int8 made here."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
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
    key = _embedders_key()
    if not _int8_needs_build(entries, out, key):
        return []
    python = buildenv.ensure(progress=mf.progress)
    dynamic = fetch.mobilefacenet(mfn_path)
    crops = _aligned_crops(entries, out, dynamic)
    float_data, int8_data, counts = _quantize(python, work, dynamic, crops.calib)
    agree = _check_int8(float_data, int8_data, dynamic, crops.held_out)
    calibration = {
        "alignment": crops.method,
        "faces_dir": str(crops.faces),
        "calibration_crops": int(len(crops.calib)),
        "held_out_crops": int(len(crops.held_out)),
        "build_venv": buildenv.installed(),
        **counts,
    }
    _write_float_and_int8(entries, out, key, float_data, int8_data, calibration)
    entries["embedder_int8"]["agreement"] = agree
    return ["embedder_float", "embedder_int8"]


def _int8_needs_build(entries: dict, out: Path, key: str) -> bool:
    """Missing, stale, or calibrated on centre crops while edge.vision can now align faces."""
    int8 = entries.get("embedder_int8")
    fresh = mf.fresh(int8, out, key) and mf.fresh(entries.get("embedder_float"), out, key)
    if not fresh:
        return True
    if int8.get("calibration", {}).get("alignment") == "centre-crop" and _vision_available():
        mf.progress("edge.vision is available now: recalibrating on aligned crops")
        return True
    return False


@dataclass
class _Crops:
    """Aligned 112x112 crops: ``calib`` to calibrate int8 ranges, ``held_out`` to check them."""

    calib: np.ndarray
    held_out: np.ndarray
    method: str  # how the crops were aligned: edge.vision's pipeline or "centre-crop"
    faces: Path


def _aligned_crops(entries: dict, out: Path, dynamic: bytes) -> _Crops:
    """Two disjoint sets of crops from the labelled photos, aligned as the terminal aligns."""
    from models import crops as crops_mod

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
    return _Crops(calib, held_out, method, faces)


def _quantize(
    python: Path, work: Path, dynamic: bytes, calib: np.ndarray
) -> tuple[bytes, bytes, dict]:
    """(float, int8, op counts): the quantizer runs in the build venv on files in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    calib_file = work / "calibration_crops.npy"
    np.save(calib_file, calib)
    src = work / "mobilefacenet_src.tflite"
    src.write_bytes(dynamic)
    float_tmp, int8_tmp = work / "float.tflite", work / "int8.tflite"
    mf.progress(f"quantizing MobileFaceNet to int8 in {buildenv.VENV.name} ({len(calib)} crops)")
    counts = buildenv.quantize(python, src, calib_file, float_tmp, int8_tmp)
    return float_tmp.read_bytes(), int8_tmp.read_bytes(), counts


def _check_int8(float_data: bytes, int8_data: bytes, dynamic: bytes, held_out) -> dict:
    """The int8 file's agreement with float on held-out faces; refuse it if it is off or slow."""
    from models.evaluate import agreement, embed, time_models

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
    return agree


_INT8_DESCRIPTION = (
    "static int8 calibrated by this build: int8 weights and activations in every "
    "convolution and add, int8 input; the 33 PRELU and the final "
    "L2_NORMALIZATION stay float between QUANTIZE/DEQUANTIZE (ai-edge-quantizer "
    "0.10.0 has no int8 recipe for them), so the output is a float32 unit vector"
)


def _write_float_and_int8(
    entries: dict, out: Path, key: str, float_data: bytes, int8_data: bytes, calibration: dict
) -> None:
    for name, data, prefix, desc in (
        ("embedder_float", float_data, "mobilefacenet-float", "float32, PReLU fused"),
        ("embedder_int8", int8_data, "mobilefacenet-int8", _INT8_DESCRIPTION),
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
