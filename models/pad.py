"""Build step: MiniFASNet V2 + V1SE (ONNX) to TFLite, checked against the ONNX model.

Called by ``python -m models.build`` as ``build(out_dir, shared_models_dir, work_dir)``. The
conversion needs onnx2tf, which pins TensorFlow 2.19 and numpy 1.26, so it runs in its own venv
(``.venv-build-pad``); the terminal itself never needs TensorFlow. The step is idempotent: when
the outputs match the stamp left by the last build, it only re-hashes them.

Each TFLite model is run on fixed probe crops next to onnxruntime's output of the ONNX model;
the ONNX logits of those probes go into the manifest entry so tests can check the converted file
without onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILD_VENV = PROJECT_ROOT / ".venv-build-pad"
# onnx2tf pins every dependency exactly (tensorflow, onnx, onnxruntime, numpy), so this one pin
# fixes the whole build environment.
REQUIREMENTS = ("onnx2tf==1.29.24",)
RECIPE_VERSION = 1
# The converter's measured error is ~2e-7 on logits of magnitude ~1-10; anything near this bound
# means a wrong layout or a broken op, not rounding.
MAX_LOGIT_DIFF = 1e-3
CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"

UPSTREAM = (
    "ONNX export from the public repository yakhyo/face-anti-spoofing, tag weights (commit "
    "c175efef505bc275f7835cc9aa2aecab305ac184), weights/{onnx}; weights of "
    "minivision-ai/Silent-Face-Anti-Spoofing (commit f679b7c9) resources/anti_spoof_models/{pth}; "
    "converted with onnx2tf 1.29.24"
)
CLASSES = ["attack_2d", "real", "attack_3d"]

PAD_MODELS = {
    "pad_v2": {
        "onnx": "MiniFASNetV2.onnx",
        "onnx_sha256": "4eed38f0bde33c9b805942a5f25e42ce1161e2bda545254be622be957727794e",
        "onnx_bytes": 1743561,
        "file": "minifasnet_v2.tflite",
        "pth": "2.7_80x80_MiniFASNetV2.pth",
        "crop_scale": 2.7,
        "id_prefix": "minifasnet-v2",
    },
    "pad_v1se": {
        "onnx": "MiniFASNetV1SE.onnx",
        "onnx_sha256": "d819a69bac6b9ade2a0f4d9b60b618e1260f7bf3ba1fddff6c5d82131cb1083f",
        "onnx_bytes": 1742315,
        "file": "minifasnet_v1se.tflite",
        "pth": "4_0_0_80x80_MiniFASNetV1SE.pth",
        "crop_scale": 4.0,
        "id_prefix": "minifasnet-v1se",
    },
}

# Runs inside the build venv: ONNX logits of the probe crops (NHWC float32 in, NCHW to the model).
_ONNX_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2]).transpose(0, 3, 1, 2).copy()
name = sess.get_inputs()[0].name
out = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
np.save(sys.argv[3], out.astype(np.float32))
"""


class PadBuildError(RuntimeError):
    """The PAD models could not be built or failed their check."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def probe_scene() -> np.ndarray:
    """A fixed 360x640 RGB test scene made from integer arithmetic (same on every machine)."""
    y, x = np.mgrid[0:360, 0:640]
    r = (x * 3 + y) % 256
    g = (x * y // 7 + 40) % 256
    b = ((x // 16 + y // 16) % 2) * 180 + (x + 2 * y) % 60
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


# Face boxes for the probes: one central, one clipped at the top-left, one at the bottom-right.
PROBE_BOXES = ((270.0, 110.0, 370.0, 230.0), (5.0, 8.0, 95.0, 110.0), (560.0, 250.0, 636.0, 355.0))


def probe_crops(scale: float) -> np.ndarray:
    """The probe inputs [N, 80, 80, 3] float32 of a model with context ``scale``."""
    from edge.vision.pad import make_input

    scene = probe_scene()
    crops = [make_input(scene, np.array(b, np.float32), scale)[0] for b in PROBE_BOXES]
    return np.stack(crops).astype(np.float32)


def _stamp_key() -> dict:
    return {
        "recipe": RECIPE_VERSION,
        "requirements": list(REQUIREMENTS),
        "onnx": {name: spec["onnx_sha256"] for name, spec in PAD_MODELS.items()},
    }


def _ensure_venv(venv: Path) -> Path:
    """The build venv's python, creating or updating the venv when its requirements changed."""
    python = venv / "bin" / "python"
    marker = venv / ".pad-requirements"
    wanted = "\n".join(REQUIREMENTS)
    if python.exists() and marker.is_file() and marker.read_text() == wanted:
        return python
    log.info("creating PAD build venv at %s (onnx2tf and TensorFlow: a few minutes)", venv)
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)], "create the PAD build venv")
    _run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], "install onnx2tf")
    marker.write_text(wanted)
    return python


def _run(cmd: list[str], what: str, cwd: Path | None = None, log_file: Path | None = None) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if log_file is not None:
        log_file.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise PadBuildError(
            f"PAD build: could not {what} (exit {proc.returncode}):\n" + "\n".join(tail)
        )


def _check_onnx(pad_dir: Path) -> None:
    for name, spec in PAD_MODELS.items():
        path = pad_dir / spec["onnx"]
        if not path.is_file():
            raise PadBuildError(f"{name}: {path} is missing")
        digest = _sha256(path)
        if digest != spec["onnx_sha256"]:
            raise PadBuildError(
                f"{name}: {path} has sha256 {digest}, expected {spec['onnx_sha256']}"
            )


def _tensor_specs(model: bytes) -> tuple[list[dict], list[dict]]:
    from edge.vision.runtime import make_interpreter

    interp = make_interpreter(model)

    def spec(d: dict) -> dict:
        return {
            "name": d["name"],
            "shape": [int(v) for v in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
        }

    return [spec(d) for d in interp.get_input_details()], [
        spec(d) for d in interp.get_output_details()
    ]


def _tflite_logits(model: bytes, crops: np.ndarray) -> np.ndarray:
    from edge.vision.runtime import TensorIO

    io = TensorIO(model)
    return np.concatenate([io.run(crops[i : i + 1])[0].reshape(1, -1) for i in range(len(crops))])


def _convert_one(
    python: Path, name: str, spec: dict, pad_dir: Path, work: Path
) -> tuple[bytes, dict]:
    """Convert one ONNX model, compare it with onnxruntime, return (tflite bytes, check record)."""
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    # onnx2tf overwrites its input with the onnxsim-simplified graph: hand it a copy, never the
    # pinned original.
    src = work / spec["onnx"]
    shutil.copyfile(pad_dir / spec["onnx"], src)
    onnx2tf = python.parent / "onnx2tf"
    _run(
        [str(onnx2tf), "-i", str(src), "-o", str(out), "-n"],
        f"convert {spec['onnx']} with onnx2tf",
        cwd=work,
        log_file=work / f"{name}.onnx2tf.log",
    )
    produced = out / (Path(spec["onnx"]).stem + "_float32.tflite")
    if not produced.is_file():
        raise PadBuildError(f"{name}: onnx2tf did not write {produced.name}")
    model = produced.read_bytes()

    crops = probe_crops(spec["crop_scale"])
    np.save(work / f"{name}.probes.npy", crops)
    _run(
        [str(python), "-c", _ONNX_SCRIPT, str(pad_dir / spec["onnx"]),
         str(work / f"{name}.probes.npy"), str(work / f"{name}.onnx_logits.npy")],
        f"run {spec['onnx']} on onnxruntime",
    )  # fmt: skip
    want = np.load(work / f"{name}.onnx_logits.npy")
    got = _tflite_logits(model, crops)
    diff = float(np.abs(got - want).max())
    if not diff <= MAX_LOGIT_DIFF:
        raise PadBuildError(
            f"{name}: TFLite differs from ONNX by {diff:.3g} (limit {MAX_LOGIT_DIFF})"
        )
    log.info("%s converted: max logit difference to ONNX %.2g", name, diff)
    check = {
        "probe": "models.pad.probe_crops",
        "onnx_logits": [[round(float(v), 6) for v in row] for row in want],
        "max_abs_diff": diff,
        "tolerance": MAX_LOGIT_DIFF,
    }
    return model, check


def _entry(name: str, spec: dict, model: bytes, check: dict) -> dict:
    sha = hashlib.sha256(model).hexdigest()
    inputs, outputs = _tensor_specs(model)
    return {
        "file": spec["file"],
        "sha256": sha,
        "bytes": len(model),
        "model_id": f"{spec['id_prefix']}-{sha[:12]}",
        "source": UPSTREAM.format(onnx=spec["onnx"], pth=spec["pth"]),
        "source_sha256": spec["onnx_sha256"],
        "licence": "Apache-2.0",
        "inputs": inputs,
        "outputs": outputs,
        "normalisation": (
            f"BGR, raw 0..255 (no scaling, no mean), NHWC; crop: face box scaled {spec['crop_scale']}x "
            "about its centre, scale capped to fit the frame, shifted inside, never padded, "
            "resized to 80x80; output logits, softmax, class 1 = real"
        ),
        "crop_scale": spec["crop_scale"],
        "classes": CLASSES,
        "check": check,
    }


def _up_to_date(out_dir: Path, stamp_path: Path, key: dict) -> dict[str, dict] | None:
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("key") != key:
        return None
    entries = stamp.get("entries", {})
    if set(entries) != set(PAD_MODELS):
        return None
    for entry in entries.values():
        path = out_dir / entry["file"]
        if not path.is_file() or _sha256(path) != entry["sha256"]:
            return None
    return entries


def build(
    out_dir: Path, shared_models_dir: Path, work_dir: Path, venv: Path | None = None
) -> dict[str, dict]:
    """Convert (or confirm) the PAD models; return their manifest entries by name.

    ``shared_models_dir`` holds ``pad/MiniFASNetV2.onnx`` and ``pad/MiniFASNetV1SE.onnx``;
    ``work_dir`` is scratch space kept between builds (the stamp lives there).
    """
    out_dir, shared_models_dir, work_dir = Path(out_dir), Path(shared_models_dir), Path(work_dir)
    venv = Path(venv) if venv is not None else BUILD_VENV
    pad_dir = shared_models_dir / "pad"
    work = work_dir / "pad"
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp_path = work / "stamp.json"
    key = _stamp_key()

    entries = _up_to_date(out_dir, stamp_path, key)
    if entries is not None:
        log.info("PAD models up to date")
        return entries

    _check_onnx(pad_dir)
    python = _ensure_venv(venv)
    # onnx2tf fetches this calibration file from the network unless it is already here; it is
    # only used for int8 calibration, which we do not do, so zeros are fine.
    calib = work / CALIBRATION_FILE
    if not calib.is_file():
        np.save(calib, np.zeros((20, 128, 128, 3), np.float32))

    entries = {}
    for name, spec in PAD_MODELS.items():
        model, check = _convert_one(python, name, spec, pad_dir, work)
        tmp = out_dir / (spec["file"] + ".tmp")
        tmp.write_bytes(model)
        tmp.replace(out_dir / spec["file"])
        entries[name] = _entry(name, spec, model, check)
    stamp_path.write_text(json.dumps({"key": key, "entries": entries}, indent=1))
    return entries


if __name__ == "__main__":  # pragma: no cover - manual use
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = PROJECT_ROOT
    result = build(
        root / "models" / "out", root.parent / "shared" / "models", root / "models" / "cache"
    )
    print(
        json.dumps(
            {k: {kk: v[kk] for kk in ("file", "sha256", "model_id")} for k, v in result.items()},
            indent=1,
        )
    )
