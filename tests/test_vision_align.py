"""Alignment geometry (Umeyama, template) and the quality gate on real and degraded faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.config.vision import QualityConfig
from edge.evaluation import load_image
from edge.vision.align import (
    ARCFACE_TEMPLATE,
    BLAZEFACE_TEMPLATE,
    align,
    apply,
    mesh_roi,
    mesh_to_five,
    umeyama,
)
from edge.vision.quality import assess, head_pose

PHOTO = ("celeb5__jerry_seinfeld", 0)


@pytest.fixture(scope="module")
def photo(faces_dir) -> np.ndarray:
    folder, i = PHOTO
    return load_image(sorted((faces_dir / folder).iterdir())[i])


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]],
        np.float32,
    )


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 300, (5, 2)).astype(np.float32)
    m = _similarity(33.0, 0.41, -20.0, 57.0)
    est = umeyama(src, apply(m, src))
    assert np.allclose(est, m, atol=1e-4)
    # A mirrored point set is fitted by a rotation, never a reflection.
    est = umeyama(src, src * [-1, 1])
    assert np.linalg.det(est[:, :2]) > 0


def test_umeyama_least_squares_with_noise_beats_any_perturbation():
    rng = np.random.default_rng(4)
    src = rng.uniform(0, 100, (5, 2))
    dst = apply(_similarity(-12.0, 1.3, 4.0, 2.0), src) + rng.normal(0, 1.0, (5, 2))
    est = umeyama(src, dst)
    best = np.sum((apply(est, src) - dst) ** 2)
    for _ in range(20):
        other = est + rng.normal(0, 0.01, est.shape).astype(np.float32)
        other[:, :2] = est[:, :2]  # keep it a similarity: perturb the translation only
        assert np.sum((apply(other, src) - dst) ** 2) >= best - 1e-6


def test_template_points_land_on_the_template():
    # Points that are an exact similarity of the template align back onto it.
    m = _similarity(-15.0, 3.0, 400.0, 80.0)
    pts = apply(m, ARCFACE_TEMPLATE)
    crop, used = align(np.zeros((900, 900, 3), np.uint8), pts)
    assert crop.shape == (112, 112, 3)
    assert np.allclose(apply(used, pts), ARCFACE_TEMPLATE, atol=1e-3)
    # BlazeFace's four points map the mouth centre between the template's mouth corners.
    six = np.vstack([apply(m, BLAZEFACE_TEMPLATE), [[0, 0], [1, 1]]])
    _, used = align(np.zeros((900, 900, 3), np.uint8), six)
    assert np.allclose(apply(used, six[:4]), BLAZEFACE_TEMPLATE, atol=1e-3)


def test_mesh_roi_turns_the_eye_line_upright():
    box = np.array([100, 100, 200, 200], np.float32)
    kp = np.zeros((6, 2), np.float32)
    kp[0], kp[1] = [120, 140], [180, 170]  # eye line tilted by atan(30/60)
    m = mesh_roi(box, kp)
    eyes = apply(m, kp[:2])
    assert eyes[0, 1] == pytest.approx(eyes[1, 1], abs=1e-3)
    assert apply(m, np.array([[150, 150]], np.float32))[0] == pytest.approx([96, 96], abs=1e-3)


def test_aligned_eyes_land_on_the_template(engine, photo):
    res = engine.analyse(photo)
    assert res is not None
    assert res.mesh is not None and res.mesh.shape == (468, 3)
    assert np.allclose(mesh_to_five(res.mesh), res.points)
    # Find the face again inside the 112x112 crop: its five points sit on the template.
    crop = cv2.resize(res.aligned, (224, 224), interpolation=cv2.INTER_CUBIC)
    faces = engine.detect(crop)
    assert faces
    five = engine.mesh.refine(crop, faces[0].box, faces[0].keypoints) / 2
    err = np.linalg.norm(five - ARCFACE_TEMPLATE, axis=1)
    # Least squares spreads this face's own proportions over the points: a few pixels each.
    assert err[:2].max() < 3.0 and err.max() < 5.0, err
    # BlazeFace's coarser eyes agree too, within a few pixels.
    eyes = faces[0].keypoints[:2] / 2
    assert np.linalg.norm(eyes - ARCFACE_TEMPLATE[:2], axis=1).max() < 6.0


def test_rotated_photo_aligns_to_the_same_crop(engine, photo):
    a = engine.analyse(photo)
    h, w = photo.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 25.0, 1.0)
    b = engine.analyse(cv2.warpAffine(photo, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    assert b is not None
    diff = np.abs(a.aligned.astype(int) - b.aligned.astype(int))[20:100, 20:92].mean()
    assert diff < 12, f"aligned crops differ by {diff:.1f} grey levels on average"
    assert float(a.embedding @ b.embedding) > 0.8


def test_head_pose_from_keypoints():
    frontal = np.vstack([BLAZEFACE_TEMPLATE, [[20, 60], [92, 60]]]).astype(np.float32)
    yaw, pitch, roll = head_pose(frontal)
    assert abs(yaw) < 1 and abs(pitch) < 1 and abs(roll) < 1
    # Five mesh-style points (mouth corners) read the same as BlazeFace's mouth centre.
    assert np.allclose(head_pose(ARCFACE_TEMPLATE), (yaw, pitch, roll), atol=1e-4)
    m = _similarity(20.0, 2.0, 30.0, 10.0)
    assert head_pose(apply(m, frontal))[2] == pytest.approx(roll + 20.0, abs=0.01)
    turned = frontal.copy()
    turned[2, 0] += 0.3 * 35.2  # nose shifted sideways: the head is turned
    assert abs(head_pose(turned)[0]) > 20


def test_quality_passes_a_good_face_and_names_what_is_wrong(engine, photo):
    q = QualityConfig()
    good = engine.analyse(photo)
    assert good.quality.ok, good.quality.reasons
    assert good.embedding is not None and good.embedding.shape == (128,)

    blurred = engine.analyse(cv2.GaussianBlur(photo, (0, 0), 4.0))
    assert blurred is not None and not blurred.quality.ok
    assert "blurry" in blurred.quality.reasons and blurred.embedding is None
    assert blurred.quality.measures["sharpness"] < q.min_sharpness

    dark = engine.analyse((photo * 0.12).astype(np.uint8))
    assert dark is not None and "too_dark" in dark.quality.reasons

    small = cv2.resize(photo, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((200, 200, 3), np.uint8)
    canvas[60 : 60 + small.shape[0], 60 : 60 + small.shape[1]] = small
    res = engine.analyse(canvas)
    if res is not None:  # at this size the detector may also give up: both are refusals
        assert "too_small" in res.quality.reasons
    # The same crop passes when the thresholds are relaxed: the reasons come from the config.
    relaxed = QualityConfig(min_sharpness=0.0)
    assert "blurry" not in assess(blurred.face.keypoints, blurred.aligned, relaxed).reasons
    assert "too dark" in dark.quality.describe()
