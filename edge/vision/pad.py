"""Presentation-attack detection with MiniFASNet V2 and V1SE (Silent-Face-Anti-Spoofing weights).

Each model sees an 80x80 crop of the frame around the face box, in BGR order with raw 0..255
values (no scaling, no mean), and returns logits over [2D attack, real, 3D attack]. The two models
were trained on different context sizes (2.7x and 4x the face box), so each gets its own crop;
their softmax outputs are averaged and class 1 is P(real).

The crop geometry follows the original training code: scale the box about its centre, cap the
scale so the box fits the frame, shift it back inside the frame, never pad. A different crop,
colour order or input range silently ruins the scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from edge.vision.runtime import TensorIO

log = logging.getLogger(__name__)

INPUT_SIZE = 80
REAL_CLASS = 1
# (manifest name, context scale) of the two models, in the order their scores are averaged.
MODELS = (("pad_v2", 2.7), ("pad_v1se", 4.0))


def crop_box(
    box: np.ndarray, frame_w: int, frame_h: int, scale: float
) -> tuple[int, int, int, int]:
    """The context box (x0, y0, x1, y1), inclusive pixel indices, that a PAD model is trained on.

    ``box`` is (x0, y0, x1, y1) in frame pixels. The box is scaled about its centre by ``scale``;
    the scale is capped so the scaled box still fits in the frame, and the result is shifted back
    inside the frame rather than padded, as in the model's training pipeline.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    scale = min((frame_h - 1) / bh, (frame_w - 1) / bw, scale)
    cw, ch = bw * scale, bh * scale
    cx, cy = x0 + bw / 2, y0 + bh / 2
    left, top = cx - cw / 2, cy - ch / 2
    right, bottom = cx + cw / 2, cy + ch / 2
    # Shift, never pad: padding would show the model a border it never saw in training.
    if left < 0:
        right -= left
        left = 0.0
    if top < 0:
        bottom -= top
        top = 0.0
    if right > frame_w - 1:
        left -= right - (frame_w - 1)
        right = frame_w - 1.0
    if bottom > frame_h - 1:
        top -= bottom - (frame_h - 1)
        bottom = frame_h - 1.0
    return int(left), int(top), int(right), int(bottom)


def make_input(rgb: np.ndarray, box: np.ndarray, scale: float) -> np.ndarray:
    """The float32 [1, 80, 80, 3] BGR 0..255 input for one model (NHWC, as converted)."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = crop_box(box, w, h, scale)
    # Resize first, then swap to BGR: channels resize independently, and 80x80 is cheap to flip.
    patch = cv2.resize(rgb[y0 : y1 + 1, x0 : x1 + 1], (INPUT_SIZE, INPUT_SIZE))
    return patch[..., ::-1].astype(np.float32)[None]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class PadScore:
    """P(real) of the averaged models, and each model's class probabilities."""

    real: float
    probs: dict[str, np.ndarray]


class PadModel:
    """MiniFASNet V2 + V1SE; ``score(rgb, box)`` gives P(real) for one face.

    ``models`` maps manifest names (``pad_v2``, ``pad_v1se``) to TFLite bytes. A face that is
    small or not confidently detected must not be scored: the model calls random texture real.
    """

    def __init__(self, models: dict[str, bytes], threads: int = 1) -> None:
        self._nets: list[tuple[str, float, TensorIO]] = []
        for name, scale in MODELS:
            io = TensorIO(models[name], threads)
            if io.input_shape != (1, INPUT_SIZE, INPUT_SIZE, 3):
                raise ValueError(f"{name}: input {io.input_shape} is not [1, 80, 80, 3] NHWC")
            self._nets.append((name, scale, io))

    def score(self, rgb: np.ndarray, box: np.ndarray) -> PadScore:
        """Score one face box (x0, y0, x1, y1) of an RGB uint8 frame."""
        probs = {}
        for name, scale, io in self._nets:
            logits = io.run(make_input(rgb, box, scale))[0].reshape(-1)
            probs[name] = softmax(logits.astype(np.float64))
        real = float(np.mean([p[REAL_CLASS] for p in probs.values()]))
        return PadScore(real=real, probs=probs)
