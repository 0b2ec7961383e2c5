"""MiniFASNet PAD: the training crop geometry, the input layout, and the converted models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import SHARED, require_module

from edge.vision.pad import INPUT_SIZE, PadModel, crop_box, make_input, softmax
from edge.vision.runtime import TensorIO
from models.pad import PAD_MODELS, probe_crops

W, H = 640, 480


def _size(b: tuple[int, int, int, int]) -> tuple[int, int]:
    return b[2] - b[0], b[3] - b[1]


def test_crop_scales_about_the_box_centre():
    box = np.array([300, 200, 340, 250], np.float32)  # 40 x 50, centre (320, 225)
    for scale in (2.7, 4.0):
        b = crop_box(box, W, H, scale)
        w, h = _size(b)
        assert abs(w - 40 * scale) <= 1 and abs(h - 50 * scale) <= 1
        assert abs((b[0] + b[2]) / 2 - 320) <= 1 and abs((b[1] + b[3]) / 2 - 225) <= 1


def test_crop_is_shifted_inside_never_padded():
    box = np.array([5, 10, 85, 110], np.float32)  # at the top-left corner
    b = crop_box(box, W, H, 2.7)
    w, h = _size(b)
    assert b[0] == 0 and b[1] == 0
    assert abs(w - 80 * 2.7) <= 1 and abs(h - 100 * 2.7) <= 1  # same size: shifted, not cut
    box = np.array([590, 420, 630, 470], np.float32)  # at the bottom-right corner
    b = crop_box(box, W, H, 4.0)
    assert b[2] == W - 1 and b[3] == H - 1
    assert abs(_size(b)[0] - 160) <= 1 and abs(_size(b)[1] - 200) <= 1


def test_crop_scale_is_capped_to_fit_the_frame():
    box = np.array([200, 100, 400, 300], np.float32)  # 200 x 200: 4x would be 800 x 800
    b = crop_box(box, W, H, 4.0)
    cap = (H - 1) / 200
    w, h = _size(b)
    assert abs(h - 200 * cap) <= 1 and abs(w - 200 * cap) <= 1
    assert 0 <= b[0] and 0 <= b[1] and b[2] <= W - 1 and b[3] <= H - 1


def test_input_is_bgr_raw_0_255():
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200  # pure red in RGB
    x = make_input(rgb, np.array([300, 200, 340, 250], np.float32), 2.7)
    assert x.shape == (1, INPUT_SIZE, INPUT_SIZE, 3) and x.dtype == np.float32
    assert np.all(x[..., 2] == 200) and np.all(x[..., 0] == 0)  # red is last: BGR, unscaled


def test_softmax_is_stable():
    p = softmax(np.array([1000.0, 0.0, -1000.0]))
    assert np.isclose(p.sum(), 1.0) and p[0] > 0.999


def _manifest(models_dir: Path) -> dict:
    return json.loads((models_dir / "manifest.json").read_text())["models"]


@pytest.mark.parametrize("name", list(PAD_MODELS))
def test_converted_model_matches_onnx_logits(models_dir, name):
    """The TFLite file agrees with the ONNX model's logits recorded by the build step."""
    entry = _manifest(models_dir)[name]
    check = entry["check"]
    io = TensorIO((models_dir / entry["file"]).read_bytes())
    crops = probe_crops(entry["crop_scale"])
    got = np.concatenate([io.run(crops[i : i + 1])[0].reshape(1, -1) for i in range(len(crops))])
    want = np.asarray(check["onnx_logits"], np.float32)
    assert got.shape == want.shape == (len(crops), 3)
    assert np.abs(got - want).max() < 1e-3


@pytest.mark.parametrize("name", list(PAD_MODELS))
def test_converted_model_matches_onnxruntime(models_dir, name):
    """Straight against onnxruntime (a dev dependency: missing on CI is a failure), when the
    ONNX file is in ../shared (data outside the repository: skipped without it)."""
    ort = require_module("onnxruntime", "pip install -e '.[dev]'")
    onnx = SHARED / "models" / "pad" / PAD_MODELS[name]["onnx"]
    if not onnx.is_file():
        pytest.skip(f"ONNX model not found at {onnx}")
    entry = _manifest(models_dir)[name]
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    io = TensorIO((models_dir / entry["file"]).read_bytes())
    for crop in probe_crops(entry["crop_scale"]):
        want = sess.run(None, {sess.get_inputs()[0].name: crop.transpose(2, 0, 1)[None]})[0]
        assert np.abs(io.run(crop[None])[0] - want).max() < 1e-3


def test_pad_scores_a_real_face_as_real(models_dir, face_video):
    import cv2

    from edge.vision.detector import Detector

    m = _manifest(models_dir)
    read = lambda n: (models_dir / m[n]["file"]).read_bytes()  # noqa: E731
    det = Detector(read("detector"))
    pad = PadModel({n: read(n) for n in PAD_MODELS})
    cap = cv2.VideoCapture(str(face_video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 120)
    ok, bgr = cap.read()
    assert ok
    rgb = bgr[..., ::-1].copy()
    face = det.detect(rgb)[0]
    s = pad.score(rgb, face.box)
    assert set(s.probs) == set(PAD_MODELS)
    assert s.real > 0.5
    # The same face on flat grey with the context gone: the models must not call it real as well.
    flat = np.full_like(rgb, 128)
    x0, y0, x1, y1 = (int(v) for v in face.box)
    flat[y0:y1, x0:x1] = rgb[y0:y1, x0:x1]
    assert pad.score(flat, face.box).real < s.real


def test_build_refuses_an_onnx_file_that_breaks_its_pin(tmp_path):
    from models.pad import PadBuildError, build

    pad = tmp_path / "shared" / "pad"
    pad.mkdir(parents=True)
    for spec in PAD_MODELS.values():
        (pad / spec["onnx"]).write_bytes(b"not the pinned model")
    with pytest.raises(PadBuildError, match="sha256"):
        build(tmp_path / "out", tmp_path / "shared", tmp_path / "work", venv=tmp_path / "venv")
    assert not (tmp_path / "venv").exists()  # refused before any slow step


def test_build_is_up_to_date_only_while_outputs_match_the_stamp(tmp_path):
    import hashlib

    from models.pad import _stamp_key, _up_to_date

    out = tmp_path / "out"
    out.mkdir()
    entries = {}
    for name, spec in PAD_MODELS.items():
        data = name.encode() * 10
        (out / spec["file"]).write_bytes(data)
        entries[name] = {"file": spec["file"], "sha256": hashlib.sha256(data).hexdigest()}
    stamp = tmp_path / "stamp.json"
    stamp.write_text(json.dumps({"key": _stamp_key(), "entries": entries}))
    assert _up_to_date(out, stamp, _stamp_key()) == entries
    (out / PAD_MODELS["pad_v2"]["file"]).write_bytes(b"changed")
    assert _up_to_date(out, stamp, _stamp_key()) is None
    stamp.write_text(json.dumps({"key": {**_stamp_key(), "recipe": -1}, "entries": entries}))
    assert _up_to_date(out, stamp, _stamp_key()) is None
