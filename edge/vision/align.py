"""Face alignment: a least-squares similarity transform of keypoints onto the ArcFace template.

MobileFaceNet was trained on crops made by warping five points (eye centres, nose tip, mouth
corners) onto fixed positions in a 112x112 image; matching that geometry matters more than any
other single choice in the pipeline. BlazeFace has no mouth corners, only the mouth centre, so
its four points map to the eyes, the nose and the midpoint of the template's mouth corners.
The 468-point face mesh gives all five points more precisely (``MeshRefiner``).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from edge.vision.runtime import TensorIO

log = logging.getLogger(__name__)

ALIGNED_SIZE = 112
# ArcFace / InsightFace 112x112 template, image coordinates: image-left eye (the subject's right),
# image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float32,
)
# BlazeFace keypoints 0..3 (right eye, left eye, nose tip, mouth centre) on the template.
BLAZEFACE_TEMPLATE = np.vstack([ARCFACE_TEMPLATE[:3], ARCFACE_TEMPLATE[3:].mean(0, keepdims=True)])


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Similarity transform (rotation, uniform scale, translation) taking src onto dst.

    Least squares in closed form (Umeyama 1991), with optional per-point weights. Returns the
    2x3 matrix M such that dst ~= M @ [x, y, 1].
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    sc, dc = src - mu_s, dst - mu_d
    cov = (dc * w[:, None]).T @ sc
    var_s = float(w @ (sc**2).sum(1))
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0  # forbid a reflection
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]]).astype(np.float32)


def apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points float[N, 2]."""
    pts = np.asarray(pts, np.float32)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def warp(rgb: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Crop the face by the transform; outside the frame is filled by replicating the edge."""
    return cv2.warpAffine(
        rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def blazeface_transform(keypoints: np.ndarray) -> np.ndarray:
    """The transform for BlazeFace's first four keypoints (frame pixels) onto the template."""
    return umeyama(keypoints[:4], BLAZEFACE_TEMPLATE)


def five_point_transform(points5: np.ndarray) -> np.ndarray:
    """The transform for five ArcFace-ordered points (frame pixels) onto the template."""
    return umeyama(points5, ARCFACE_TEMPLATE)


def align(rgb: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Align a face: ``points`` are five ArcFace-ordered points or BlazeFace's six keypoints.

    Returns the 112x112x3 crop and the 2x3 transform used.
    """
    points = np.asarray(points, np.float32)
    if len(points) == 5:
        m = five_point_transform(points)
    elif len(points) == 6:
        m = blazeface_transform(points)
    else:
        raise ValueError(f"expected 5 or 6 keypoints, got {len(points)}")
    return warp(rgb, m), m


def roll_deg(keypoints: np.ndarray) -> float:
    """In-plane rotation of the eye line, degrees (positive: clockwise in the image)."""
    dx, dy = keypoints[1] - keypoints[0]
    return float(np.degrees(np.arctan2(dy, dx)))


# Face-mesh indices (MediaPipe's 468-point topology). Eye contours: the ring of 16 points
# around each eye; their mean lies close to the pupil, which is what the template's eye is.
MESH_EYE_IMAGE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
MESH_EYE_IMAGE_RIGHT = (
    263,
    249,
    390,
    373,
    374,
    380,
    381,
    382,
    362,
    466,
    388,
    387,
    386,
    385,
    384,
    398,
)
MESH_NOSE_TIP = 4
MESH_MOUTH_IMAGE_LEFT = 61
MESH_MOUTH_IMAGE_RIGHT = 291
MESH_INPUT = 192
# The mesh was trained on the detector box enlarged by half and turned upright by the eye line.
MESH_ROI_SCALE = 1.5


def mesh_roi(box: np.ndarray, keypoints: np.ndarray, size: int = MESH_INPUT) -> np.ndarray:
    """2x3 transform from the frame to the mesh model's upright square input."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * MESH_ROI_SCALE
    angle = np.radians(roll_deg(keypoints))
    s = size / max(side, 1e-6)
    cos, sin = np.cos(angle) * s, np.sin(angle) * s
    # Rotate by -angle about the box centre, scale to the input, move the centre to the middle.
    m = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]], np.float64)
    m[:, 2] = np.array([size / 2, size / 2]) - m[:, :2] @ np.array([cx, cy])
    return m.astype(np.float32)


def mesh_to_five(mesh: np.ndarray) -> np.ndarray:
    """Five ArcFace-ordered points from 468 mesh points (x, y in frame pixels)."""
    mesh = np.asarray(mesh)[:, :2]
    return np.stack(
        [
            mesh[list(MESH_EYE_IMAGE_LEFT)].mean(0),
            mesh[list(MESH_EYE_IMAGE_RIGHT)].mean(0),
            mesh[MESH_NOSE_TIP],
            mesh[MESH_MOUTH_IMAGE_LEFT],
            mesh[MESH_MOUTH_IMAGE_RIGHT],
        ]
    ).astype(np.float32)


class MeshRefiner:
    """Runs the 468-point face mesh on a detected face to get five precise alignment points."""

    def __init__(self, model: bytes, threads: int = 1, min_presence: float = 0.5) -> None:
        self.io = TensorIO(model, threads)
        if self.io.input_shape[1:3] != (MESH_INPUT, MESH_INPUT):
            raise ValueError(f"face mesh input {self.io.input_shape} is not 192x192")
        self.min_presence = min_presence
        self._mesh_idx = next(
            i for i, d in enumerate(self.io.outputs) if int(np.prod(d["shape"])) == 468 * 3
        )
        self._flag_idx = 1 - self._mesh_idx

    def mesh(self, rgb: np.ndarray, box: np.ndarray, keypoints: np.ndarray) -> np.ndarray | None:
        """468x3 mesh points in frame pixels (z in input units), or None if no face is seen."""
        m = mesh_roi(box, keypoints)
        crop = cv2.warpAffine(
            rgb, m, (MESH_INPUT, MESH_INPUT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        outs = self.io.run((crop.astype(np.float32) / 255.0)[None])
        presence = 1.0 / (
            1.0 + np.exp(-float(np.clip(outs[self._flag_idx].reshape(-1)[-1], -50, 50)))
        )
        if presence < self.min_presence:
            return None
        pts = outs[self._mesh_idx].reshape(468, 3).astype(np.float32)
        inv = cv2.invertAffineTransform(m)
        pts[:, :2] = apply(inv, pts[:, :2])
        return pts

    def refine(self, rgb: np.ndarray, box: np.ndarray, keypoints: np.ndarray) -> np.ndarray | None:
        """Five ArcFace-ordered points, or None when the mesh does not find the face."""
        mesh = self.mesh(rgb, box, keypoints)
        return None if mesh is None else mesh_to_five(mesh)
