"""Passive liveness: stills are refused, a real face sequence passes, and each signal measures
what it claims (plane-plus-parallax geometry, blinks, moire)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import Config
from edge.config.vision import LivenessConfig
from edge.vision.detector import Detector
from edge.vision.landmarks import Mesh
from edge.vision.liveness import (
    LivenessChecker,
    count_blinks,
    moire_peak,
    plane_parallax,
)

CLIP_START, CLIP_STOP = 100, 160  # the face is large and frontal here; every 2nd frame = 15 fps


def _models(models_dir: Path) -> dict[str, bytes]:
    entries = json.loads((models_dir / "manifest.json").read_text())["models"]
    names = ("detector", "landmarks", "pad_v2", "pad_v1se")
    return {n: (models_dir / entries[n]["file"]).read_bytes() for n in names}


@pytest.fixture(scope="module")
def models(models_dir) -> dict[str, bytes]:
    return _models(models_dir)


@pytest.fixture(scope="module")
def detector(models) -> Detector:
    return Detector(models["detector"])


@pytest.fixture(scope="module")
def checker(models) -> LivenessChecker:
    return LivenessChecker(models, Config())


@pytest.fixture(scope="module")
def clip(face_video) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(face_video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, CLIP_START)
    frames = []
    for k in range(CLIP_STOP - CLIP_START):
        ok, bgr = cap.read()
        if not ok:
            break
        if k % 2 == 0:
            frames.append(bgr[..., ::-1].copy())
    cap.release()
    return frames


def _run(checker: LivenessChecker, detector: Detector, frames) -> object:
    """As the flow does: feed frames with a face until the checker has enough to decide."""
    checker.reset()
    for rgb in frames:
        faces = detector.detect(rgb)
        if faces:
            checker.update(rgb, faces[0])
        if checker.frames >= checker.cfg.min_frames:
            break
    return checker.result()


def _photo(faces_dir: Path) -> np.ndarray:
    path = faces_dir / "facerec__obama" / "obama.jpg"
    bgr = cv2.imread(str(path))
    # The faces are here (faces_dir skips only when they are not): a photo missing from them is
    # a broken copy of the test data, not a reason to let the spoof test pass unseen.
    assert bgr is not None, f"{path} missing or unreadable: the test faces are incomplete"
    bgr = cv2.resize(bgr, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    canvas = np.full((480, 640, 3), 90, np.uint8)
    h, w = min(bgr.shape[0], 480), min(bgr.shape[1], 640)
    canvas[:h, (640 - w) // 2 : (640 - w) // 2 + w] = bgr[:h, :w]
    return canvas[..., ::-1].copy()


def test_real_sequence_passes(checker, detector, clip):
    res = _run(checker, detector, clip)
    assert res.frames >= checker.cfg.min_frames
    assert res.live, res.signals
    assert res.score >= checker.cfg.threshold
    assert res.signals["parallax"] > checker.cfg.parallax_centre


def test_repeated_still_is_refused(checker, detector, clip):
    res = _run(checker, detector, [clip[0]] * 25)
    assert res.frames == checker.cfg.min_frames
    assert not res.live and res.score == 0.0
    assert res.signals["still"] == 1.0


def test_photo_with_camera_noise_and_hand_jitter_is_refused(checker, detector, faces_dir):
    base = _photo(faces_dir)
    rng = np.random.default_rng(7)
    frames = []
    for _ in range(24):
        m = cv2.getRotationMatrix2D((320, 240), rng.normal(0, 1.5), 1 + rng.normal(0, 0.015))
        m[:, 2] += rng.normal(0, 4, 2)
        img = cv2.warpAffine(base, m, (640, 480), borderMode=cv2.BORDER_REPLICATE)
        frames.append(np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8))
    res = _run(checker, detector, frames)
    assert res.frames >= checker.cfg.min_frames
    assert "still" not in res.signals  # noise defeats the identical-frame test ...
    assert not res.live, res.signals  # ... but a flat picture shows no depth parallax
    assert res.signals["parallax"] < checker.cfg.parallax_centre


def test_too_few_frames_give_no_pass(checker, detector, clip):
    res = _run(checker, detector, clip[:3])
    assert not res.live and res.signals["insufficient"] == 1.0
    checker.reset()
    assert checker.frames == 0


def _mesh(points: np.ndarray) -> Mesh:
    return Mesh(points=points.astype(np.float32), presence=1.0, scale=1.0)


def _head(rng: np.random.Generator) -> np.ndarray:
    """A synthetic 468-point head: an ellipsoid cap with the nose and eye corners where the
    metrics look for them (x, y in pixels, z toward the camera negative)."""
    u = rng.uniform(-1, 1, (468, 2))
    u /= np.maximum(1, np.linalg.norm(u, axis=1, keepdims=True))
    z = -60 * np.sqrt(np.clip(1 - (u**2).sum(1), 0, 1))
    pts = np.column_stack([u[:, 0] * 80, u[:, 1] * 100, z])
    pts[33] = (-40, -20, -30)
    pts[263] = (40, -20, -30)
    pts[1] = (0, 10, -75)
    return pts


def _project(pts: np.ndarray, yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    p = pts @ (rx @ ry).T
    f = 800.0  # pinhole at 600 px from the face
    d = 600 + p[:, 2]
    return np.column_stack([320 + f * p[:, 0] / d, 240 + f * p[:, 1] / d, p[:, 2] * f / 600])


def test_parallax_sees_a_turning_head_but_not_a_moving_plane():
    rng = np.random.default_rng(3)
    head = _head(rng)
    a = _project(head, 0)
    turned = _project(head, 6, 3)
    assert plane_parallax(_mesh(a), _mesh(turned)) > LivenessConfig().parallax_centre

    # The same mesh moved as a picture: any homography (tilt, rotation, shift) of its 2D points.
    h = np.array([[1.02, 0.03, 5.0], [-0.02, 0.99, -3.0], [2e-4, -1e-4, 1.0]])
    xy = cv2.perspectiveTransform(a[None, :, :2], h)[0]
    moved = np.column_stack([xy, a[:, 2]])
    assert plane_parallax(_mesh(a), _mesh(moved)) < 1e-3


def test_blinks_are_dips_that_reopen():
    open_ = [0.3, 0.31, 0.29, 0.3, 0.32, 0.3]
    assert count_blinks(open_ + [0.12, 0.1] + open_, 0.6) == 1
    assert count_blinks(open_ + [0.1] + open_ + [0.12] + open_, 0.6) == 2
    assert count_blinks(open_ + [0.1, 0.1], 0.6) == 0  # closing at the end: not seen reopening
    assert count_blinks(open_, 0.6) == 0
    assert count_blinks([0.08] * 12, 0.6) == 0  # eyes never open (a photo with closed eyes)


def test_moire_peak_rises_with_a_subpixel_pattern(clip, detector):
    from edge.vision.liveness import face_crop

    rgb = clip[10]
    crop = face_crop(rgb, detector.detect(rgb)[0].box)
    yy, xx = np.mgrid[0:96, 0:96]
    stripes = np.stack(
        [np.cos(2 * np.pi * (xx * 0.37 + yy * 0.05) + k * 2.1) for k in range(3)], -1
    )
    screen = np.clip(crop * (0.85 + 0.15 * stripes), 0, 255).astype(np.uint8)
    cfg = LivenessConfig()
    assert moire_peak(crop) < cfg.moire_centre < moire_peak(screen)


def test_a_mesh_from_the_caller_is_used_as_is(checker, detector, clip, models):
    """The pipeline already runs the face mesh for alignment: its mesh gives the same verdict."""
    from edge.vision.align import MeshRefiner

    refiner = MeshRefiner(models["landmarks"])
    checker.reset()
    for rgb in clip:
        face = detector.detect(rgb)[0]
        mesh = refiner.mesh(rgb, face.box, face.keypoints)
        if mesh is not None:
            checker.update(rgb, face, mesh=mesh)
        if checker.frames >= checker.cfg.min_frames:
            break
    res = checker.result()
    assert res.live, res.signals
    assert res.signals["parallax"] > checker.cfg.parallax_centre
