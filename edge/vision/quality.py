"""Face quality: size, sharpness, head pose, brightness and contrast, each with a reason code.

A face that fails is not embedded: a blurred, dark or turned face gives a vector that matches
poorly, and refusing it with a reason ("move closer", "face the camera") is better for the
recipient than a false "no match".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.vision.align import ALIGNED_SIZE, ARCFACE_TEMPLATE

log = logging.getLogger(__name__)

# On the template the eyes are 35.2 px apart in a 112 px crop: a face whose eyes are d pixels
# apart fills a crop of d * 112 / 35.2 pixels, the face size we compare with min_face_px.
_TEMPLATE_IOD = float(np.linalg.norm(ARCFACE_TEMPLATE[1] - ARCFACE_TEMPLATE[0]))
_FACE_PER_IOD = ALIGNED_SIZE / _TEMPLATE_IOD
# Nose tip between eye line and mouth, as a fraction of that distance, on a frontal face.
_TEMPLATE_NOSE_RATIO = float(
    (ARCFACE_TEMPLATE[2, 1] - ARCFACE_TEMPLATE[:2, 1].mean())
    / (ARCFACE_TEMPLATE[3:, 1].mean() - ARCFACE_TEMPLATE[:2, 1].mean())
)
# Depth of the nose tip in front of the eye plane, in inter-ocular distances (adult average,
# about 30 mm for 63 mm): turns the nose's sideways shift into an angle.
_NOSE_DEPTH_PER_IOD = 0.5

REASON_TEXT = {
    "too_small": "face too small: move closer",
    "blurry": "image blurred: hold still",
    "pose_yaw": "head turned sideways: face the camera",
    "pose_pitch": "head tilted up or down: face the camera",
    "pose_roll": "head tilted: keep it upright",
    "too_dark": "too dark",
    "too_bright": "too bright",
    "low_contrast": "low contrast: check the light",
}


@dataclass
class QualityReport:
    """Whether a face is good enough to embed, why not, and the measured values."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One human-readable line for a person at the terminal or the CLI."""
        if self.ok:
            return "ok"
        return "; ".join(REASON_TEXT.get(r, r) for r in self.reasons)


def _eyes_nose_mouth(points: np.ndarray) -> np.ndarray:
    """Right eye, left eye, nose tip, mouth centre from five ArcFace-ordered points (mouth
    corners averaged) or from BlazeFace's six keypoints."""
    p = np.asarray(points, np.float64)
    if len(p) == 5:
        return np.vstack([p[:3], p[3:].mean(0, keepdims=True)])
    return p[:4]


def head_pose(keypoints: np.ndarray) -> tuple[float, float, float]:
    """Approximate (yaw, pitch, roll) in degrees from five alignment points or BlazeFace's six.

    Roll is the eye line's angle. Yaw and pitch come from how far the nose tip sits from where it
    would on a frontal face, after undoing roll, read as a rotation of a nose of average depth.
    Good to a few degrees near frontal, which is all a quality gate needs.
    """
    right_eye, left_eye, nose, mouth = _eyes_nose_mouth(keypoints)
    d = left_eye - right_eye
    roll = float(np.degrees(np.arctan2(d[1], d[0])))
    c, s = np.cos(np.radians(-roll)), np.sin(np.radians(-roll))
    rot = np.array([[c, -s], [s, c]])
    mid = (right_eye + left_eye) / 2
    n = rot @ (nose - mid)
    m = rot @ (mouth - mid)
    iod = max(float(np.hypot(*d)), 1e-6)
    depth = _NOSE_DEPTH_PER_IOD * iod
    yaw = float(np.degrees(np.arctan2(n[0], depth)))
    # The apparent inter-ocular distance shrinks with yaw; vertical distances do not.
    expected_y = _TEMPLATE_NOSE_RATIO * m[1]
    pitch = float(np.degrees(np.arctan2(n[1] - expected_y, depth)))
    return yaw, pitch, roll


def measure(keypoints: np.ndarray, aligned: np.ndarray) -> dict[str, float]:
    """Every quality measure of one face: size in frame pixels and the rest on the aligned crop.

    ``keypoints``: the five mesh points when there are (their nose and mouth corners give a
    truer yaw than BlazeFace's, which underestimates a turned head), else BlazeFace's six.
    """
    kp = _eyes_nose_mouth(keypoints).astype(np.float32)
    iod = float(np.linalg.norm(kp[1] - kp[0]))
    yaw, pitch, roll = head_pose(kp)
    grey = cv2.cvtColor(aligned, cv2.COLOR_RGB2GRAY)
    # The central region holds the face; the corners of the crop are background or hair.
    core = grey[16:104, 20:92]
    return {
        "face_px": iod * _FACE_PER_IOD,
        "sharpness": float(cv2.Laplacian(core, cv2.CV_64F).var()),
        "yaw_deg": yaw,
        "pitch_deg": pitch,
        "roll_deg": roll,
        "brightness": float(core.mean()),
        "contrast": float(core.std()),
    }


def assess(keypoints: np.ndarray, aligned: np.ndarray, qcfg) -> QualityReport:
    """Check one face against ``cfg.vision.quality`` (a QualityConfig)."""
    m = measure(keypoints, aligned)
    reasons = []
    if m["face_px"] < qcfg.min_face_px:
        reasons.append("too_small")
    if m["sharpness"] < qcfg.min_sharpness:
        reasons.append("blurry")
    if abs(m["yaw_deg"]) > qcfg.max_yaw_deg:
        reasons.append("pose_yaw")
    if abs(m["pitch_deg"]) > qcfg.max_pitch_deg:
        reasons.append("pose_pitch")
    if abs(m["roll_deg"]) > qcfg.max_roll_deg:
        reasons.append("pose_roll")
    if m["brightness"] < qcfg.min_brightness:
        reasons.append("too_dark")
    if m["brightness"] > qcfg.max_brightness:
        reasons.append("too_bright")
    if m["contrast"] < qcfg.min_contrast:
        reasons.append("low_contrast")
    return QualityReport(ok=not reasons, reasons=reasons, measures=m)
