"""BlazeFace short-range face detector: letterbox, run, decode 896 anchors, weighted NMS.

The model sees a 128x128 RGB image scaled to [-1, 1]. It regresses, per anchor, a box centre and
size plus six keypoints as offsets in 128-pixel units from the anchor centre, and one logit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from edge.vision.runtime import TensorIO

log = logging.getLogger(__name__)

INPUT_SIZE = 128
NUM_KEYPOINTS = 6
# (stride, anchors per grid cell): MediaPipe's four SSD layers (strides 8, 16, 16, 16) with two
# anchors each; layers sharing a stride are merged per cell, so 16x16x2 + 8x8x6 = 896.
ANCHOR_LAYOUT = ((8, 2), (16, 6))
# MediaPipe clips logits before the sigmoid so that a saturated logit cannot overflow.
_LOGIT_CLIP = 100.0


@dataclass
class Face:
    """One detected face in frame pixels.

    ``keypoints`` rows: right eye, left eye, nose tip, mouth centre, right ear tragion, left ear
    tragion ("right" is the subject's right, which is the image's left).
    """

    box: np.ndarray  # float32[4]: x0, y0, x1, y1
    score: float
    keypoints: np.ndarray  # float32[6, 2]

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


def make_anchors(size: int = INPUT_SIZE, layout=ANCHOR_LAYOUT) -> np.ndarray:
    """Anchor centres, float32[896, 2], normalised to [0, 1], in the model's output order."""
    rows = []
    for stride, per_cell in layout:
        cells = size // stride
        # Row-major over the grid, then the cell's anchors one after another.
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)
        rows.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(rows).astype(np.float32)


ANCHORS = make_anchors()


@dataclass(frozen=True)
class Letterbox:
    """How a frame was scaled and padded into the square model input."""

    scale: float
    pad_x: float
    pad_y: float

    def to_frame(self, pts: np.ndarray) -> np.ndarray:
        """Map points from model-input pixels back to frame pixels."""
        out = np.empty_like(pts)
        out[..., 0] = (pts[..., 0] - self.pad_x) / self.scale
        out[..., 1] = (pts[..., 1] - self.pad_y) / self.scale
        return out


def letterbox(rgb: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Fit any frame into a size x size image keeping its aspect ratio (centred, black bars)."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (nw, nh), interpolation=interp)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[py : py + nh, px : px + nw] = resized
    # The exact per-axis scale differs from `scale` by rounding; use the real one.
    return canvas, Letterbox(scale=nw / w if w >= h else nh / h, pad_x=px, pad_y=py)


def decode(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    anchors: np.ndarray = ANCHORS,
    size: int = INPUT_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode raw outputs into boxes float32[N, 4] and keypoints float32[N, 6, 2] (input pixels)
    and scores float32[N] (sigmoid)."""
    raw_boxes = raw_boxes.reshape(-1, 4 + 2 * NUM_KEYPOINTS)
    centre = anchors * size
    cx = raw_boxes[:, 0] + centre[:, 0]
    cy = raw_boxes[:, 1] + centre[:, 1]
    half_w, half_h = raw_boxes[:, 2] / 2, raw_boxes[:, 3] / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    kps = raw_boxes[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + centre[:, None, :]
    logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -_LOGIT_CLIP, _LOGIT_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    return boxes.astype(np.float32), kps.astype(np.float32), scores.astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(
    boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Blend each cluster of overlapping detections, weighted by score (MediaPipe's WEIGHTED).

    Averaging the cluster steadies the keypoints, which alignment depends on, compared with
    keeping only the single best anchor.
    """
    order = np.argsort(-scores)
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    alive = np.ones(len(scores), bool)
    out = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        cluster = alive & (_iou(boxes[i], boxes) > iou_threshold)
        cluster[i] = True
        w = scores[cluster][:, None]
        box = (boxes[cluster] * w).sum(0) / w.sum()
        kp = (kps[cluster] * w[:, :, None]).sum(0) / w.sum()
        out.append((box, kp, float(scores[i])))
        alive &= ~cluster
    return out


class Detector:
    """BlazeFace short-range on a LiteRT interpreter; ``detect`` returns faces in frame pixels."""

    def __init__(
        self,
        model: bytes,
        score_threshold: float = 0.6,
        iou_threshold: float = 0.3,
        threads: int = 1,
    ) -> None:
        self.io = TensorIO(model, threads)
        shape = self.io.input_shape
        if shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"detector input {shape} is not 128x128 BlazeFace short-range")
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        # Output order differs between exports: tell them apart by shape, not position.
        self._box_idx = next(i for i, d in enumerate(self.io.outputs) if int(d["shape"][-1]) == 16)
        self._score_idx = 1 - self._box_idx

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 frame of any size, largest first."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
        img, lb = letterbox(rgb)
        x = (img.astype(np.float32) / 127.5 - 1.0)[None]
        outs = self.io.run(x)
        boxes, kps, scores = decode(outs[self._box_idx][0], outs[self._score_idx][0])
        keep = scores >= self.score_threshold
        if not keep.any():
            return []
        faces = []
        h, w = rgb.shape[:2]
        for box, kp, score in weighted_nms(
            boxes[keep], kps[keep], scores[keep], self.iou_threshold
        ):
            fbox = lb.to_frame(box.reshape(2, 2)).reshape(4)
            fbox = np.clip(fbox, 0, [w, h, w, h]).astype(np.float32)
            faces.append(Face(box=fbox, score=score, keypoints=lb.to_frame(kp).astype(np.float32)))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces
