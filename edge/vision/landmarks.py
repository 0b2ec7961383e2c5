"""468-point face mesh (MediaPipe ``face_landmark.tflite``) on the face found by BlazeFace.

The mesh model sees a 192x192 RGB crop scaled to [0, 1]: a square 1.5 times the long side of the
detector box, centred on the box and rotated so the eyes are level. It returns 468 (x, y, z)
points in crop pixels (z on the same scale as x, smaller is nearer the camera) and one logit
saying whether a face is there. We map the points back to frame pixels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.vision.runtime import TensorIO

log = logging.getLogger(__name__)

INPUT_SIZE = 192
NUM_POINTS = 468
ROI_SCALE = 1.5

# Eye contour points used for the eye aspect ratio: (outer corner, upper 1, upper 2, inner corner,
# lower 2, lower 1), for the subject's right eye (image left) and left eye (image right).
RIGHT_EYE = (33, 160, 158, 133, 153, 144)
LEFT_EYE = (263, 387, 385, 362, 380, 373)
NOSE_TIP = 1


@dataclass
class Mesh:
    """Face mesh of one frame.

    ``points``: float32[468, 3], x and y in frame pixels, z in frame-pixel units relative to the
    face centre (negative is nearer the camera). ``presence``: the model's face probability.
    ``scale``: frame pixels per crop pixel, to judge distances against the face size.
    """

    points: np.ndarray
    presence: float
    scale: float

    @property
    def xy(self) -> np.ndarray:
        return self.points[:, :2]


def roi_transform(box: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """The 2x3 affine matrix taking frame pixels into the 192x192 mesh input."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * ROI_SCALE
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    right_eye, left_eye = keypoints[0], keypoints[1]
    theta = math.atan2(float(left_eye[1] - right_eye[1]), float(left_eye[0] - right_eye[0]))
    s = INPUT_SIZE / max(side, 1.0)
    c, n = math.cos(theta) * s, math.sin(theta) * s
    # Rotating by -theta levels the line from the right eye to the left eye.
    a = np.array([[c, n], [-n, c]], dtype=np.float64)
    t = np.array([INPUT_SIZE / 2, INPUT_SIZE / 2]) - a @ np.array([cx, cy])
    return np.hstack([a, t[:, None]])


class FaceMesh:
    """The face-landmark model on a LiteRT interpreter, loaded once from bytes."""

    def __init__(self, model: bytes, threads: int = 1) -> None:
        self.io = TensorIO(model, threads)
        if self.io.input_shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"mesh input {self.io.input_shape} is not 192x192 face_landmark")
        sizes = [int(np.prod(d["shape"])) for d in self.io.outputs]
        self._pts_idx = sizes.index(NUM_POINTS * 3)
        self._flag_idx = sizes.index(1)

    def run(self, rgb: np.ndarray, box: np.ndarray, keypoints: np.ndarray) -> Mesh:
        """Mesh of the face with detector ``box`` (x0, y0, x1, y1) and ``keypoints`` [6, 2]."""
        m = roi_transform(box, keypoints)
        crop = cv2.warpAffine(
            rgb, m, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        x = (crop.astype(np.float32) / 255.0)[None]
        outs = self.io.run(x)
        pts = outs[self._pts_idx].reshape(NUM_POINTS, 3).astype(np.float64)
        logit = float(np.clip(outs[self._flag_idx].reshape(-1)[0], -50, 50))
        a, t = m[:, :2], m[:, 2]
        inv = np.linalg.inv(a)
        xy = (pts[:, :2] - t) @ inv.T
        scale = 1.0 / math.sqrt(abs(np.linalg.det(a)))
        z = pts[:, 2] * scale
        points = np.column_stack([xy, z]).astype(np.float32)
        return Mesh(points=points, presence=1.0 / (1.0 + math.exp(-logit)), scale=scale)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes: eyelid opening over eye width (about 0.25-0.35 open)."""

    def one(idx: tuple[int, ...]) -> float:
        p = points[list(idx), :2].astype(np.float64)
        width = float(np.linalg.norm(p[0] - p[3]))
        opening = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
        return float(opening / (2.0 * max(width, 1e-6)))

    return (one(RIGHT_EYE) + one(LEFT_EYE)) / 2.0
