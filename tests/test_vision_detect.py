"""BlazeFace decode and detection: anchor layout, decode geometry, NMS, real photos of every source."""

from __future__ import annotations

import csv
from collections import defaultdict

import cv2
import numpy as np
import pytest

from edge.evaluation import load_image
from edge.vision.align import apply
from edge.vision.detector import ANCHORS, Letterbox, decode, letterbox, make_anchors, weighted_nms


def test_anchor_layout_merges_layers_per_cell():
    a = make_anchors()
    assert a.shape == (896, 2)
    # Stride 8: 16x16 cells, two anchors per cell, row-major.
    assert np.allclose(a[0], a[1]) and np.allclose(a[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(a[2], [1.5 / 16, 0.5 / 16])
    assert np.allclose(a[32], [0.5 / 16, 1.5 / 16])
    # Stride 16: 8x8 cells, six anchors per cell, starting after 512.
    assert np.allclose(a[512:518], [0.5 / 8, 0.5 / 8])
    assert np.allclose(a[518], [1.5 / 8, 0.5 / 8])
    assert np.allclose(a[-1], [7.5 / 8, 7.5 / 8])


def test_decode_places_box_and_keypoints_around_the_anchor():
    raw = np.zeros((896, 16), np.float32)
    scores = np.full((896, 1), -20.0, np.float32)
    i = 512 + 6 * (3 * 8 + 5) + 2  # stride 16, cell (x=5, y=3)
    raw[i, :4] = [2.0, -1.0, 40.0, 50.0]
    raw[i, 4:6] = [-10.0, -8.0]  # right eye
    scores[i] = 3.0
    boxes, kps, probs = decode(raw, scores)
    cx, cy = (5.5 / 8) * 128 + 2.0, (3.5 / 8) * 128 - 1.0
    assert np.allclose(boxes[i], [cx - 20, cy - 25, cx + 20, cy + 25])
    assert np.allclose(kps[i, 0], [(5.5 / 8) * 128 - 10, (3.5 / 8) * 128 - 8])
    assert probs[i] == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert probs[0] < 1e-8


def test_weighted_nms_blends_overlaps_and_keeps_separate_faces():
    boxes = np.array([[10, 10, 50, 50], [12, 10, 52, 50], [80, 80, 120, 120]], np.float32)
    kps = np.zeros((3, 6, 2), np.float32)
    kps[1] += 3.0
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    out = weighted_nms(boxes, kps, scores, 0.3)
    assert len(out) == 2
    box, kp, score = out[0]
    assert score == pytest.approx(0.9)
    assert np.allclose(box, [10 + 2 * 0.25, 10, 50 + 2 * 0.25, 50])
    assert np.allclose(kp, 3.0 * 0.25)
    assert np.allclose(out[1][0], boxes[2])


def test_letterbox_maps_points_back_to_the_frame():
    frame = np.zeros((300, 600, 3), np.uint8)
    img, lb = letterbox(frame)
    assert img.shape == (128, 128, 3)
    assert isinstance(lb, Letterbox) and lb.pad_x == 0 and lb.pad_y == 32
    pts_frame = np.array([[0, 0], [600, 300], [150, 75]], np.float32)
    pts_input = pts_frame * lb.scale + [lb.pad_x, lb.pad_y]
    assert np.allclose(lb.to_frame(pts_input), pts_frame, atol=1e-4)
    assert ANCHORS.shape == (896, 2)


def _by_source(faces_dir, per_source: int) -> dict[str, list[str]]:
    by = defaultdict(list)
    with open(faces_dir / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            by[row["source"]].append(row["path"])
    # A spread over each source (every k-th image), not just its first identity.
    return {s: p[:: max(1, len(p) // per_source)][:per_source] for s, p in by.items()}


def test_detects_faces_on_every_source(engine, faces_dir):
    sample = _by_source(faces_dir, 12)
    assert set(sample) >= {"orl", "yale", "celeb5", "faceapijs", "facerec"}
    for source, paths in sample.items():
        found = 0
        for rel in paths:
            rgb = load_image(faces_dir / rel)
            res = engine.analyse(rgb)
            if res is None:
                continue
            found += 1
            x0, y0, x1, y1 = res.face.box
            # The keypoints lie inside the face box, eyes above the mouth.
            kp = res.face.keypoints
            assert x0 - 2 <= kp[:4, 0].min() and kp[:4, 0].max() <= x1 + 2
            assert kp[:2, 1].max() < kp[3, 1]
            assert kp[0, 0] < kp[1, 0]  # the subject's right eye is on the image's left
        assert found / len(paths) >= 0.9, f"{source}: faces in {found} of {len(paths)}"


@pytest.mark.parametrize("angle,scale", [(20.0, 0.7), (-25.0, 0.9)])
def test_keypoints_follow_a_known_rotation_and_scale(engine, faces_dir, angle, scale):
    rgb = load_image(faces_dir / "facerec__biden" / "biden2.jpg")
    base = engine.analyse(rgb)
    h, w = rgb.shape[:2]
    # Rotate about the face and rescale, inside a larger canvas so that nothing is cut off.
    centre = tuple(float(c) for c in base.face.keypoints[:4].mean(0))
    m = cv2.getRotationMatrix2D(centre, angle, scale)
    m[:, 2] += [w // 3, h // 5]
    moved = cv2.warpAffine(rgb, m, (w + 2 * (w // 3), h + 2 * (h // 5)))
    res = engine.analyse(moved)
    assert res is not None, f"no face after rotating by {angle} degrees"
    m32 = m.astype(np.float32)
    iod = scale * float(np.linalg.norm(base.points[1] - base.points[0]))
    # The mesh's five points move exactly as the image did (to a few % of the eye distance);
    # BlazeFace's own keypoints, regressed on a 128 px input, only roughly.
    mesh_err = np.linalg.norm(res.points - apply(m32, base.points), axis=1).max()
    assert mesh_err < 0.08 * iod
    bf_err = np.linalg.norm(res.face.keypoints[:4] - apply(m32, base.face.keypoints[:4]), axis=1)
    assert bf_err.max() < 0.3 * iod
    assert res.face.width == pytest.approx(scale * base.face.width, rel=0.2)


def test_no_face_in_a_blank_frame(engine):
    assert engine.detect(np.full((480, 640, 3), 127, np.uint8)) == []
    assert engine.analyse(np.zeros((200, 200, 3), np.uint8)) is None
