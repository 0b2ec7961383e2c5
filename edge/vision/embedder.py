"""MobileFaceNet face embedder: 112x112 aligned RGB crop in, L2-normalised 128-d vector out."""

from __future__ import annotations

import logging

import numpy as np

from edge.vision.runtime import TensorIO

log = logging.getLogger(__name__)

EMBED_INPUT = 112


def l2_normalise(v: np.ndarray, axis: int = -1) -> np.ndarray:
    """Scale vectors to unit length (a zero vector stays zero)."""
    v = np.asarray(v, np.float32)
    n = np.linalg.norm(v, axis=axis, keepdims=True)
    return v / np.maximum(n, 1e-12)


def fuse(vectors: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """One template from several embeddings of the same face (multi-frame fusion).

    The mean of unit vectors, renormalised: noise from pose and blur that differs between frames
    averages out, while the identity direction they share stays.
    """
    arr = np.asarray(vectors, np.float32).reshape(-1, np.shape(vectors)[-1])
    if len(arr) == 0:
        raise ValueError("fuse needs at least one vector")
    return l2_normalise(l2_normalise(arr).mean(0))


class Embedder:
    """MobileFaceNet on LiteRT (int8 or dynamic-range); ``flip_view`` adds the mirrored crop."""

    def __init__(self, model: bytes, threads: int = 1, flip_view: bool = True) -> None:
        self.io = TensorIO(model, threads)
        shape = self.io.input_shape
        if shape[1:] != (EMBED_INPUT, EMBED_INPUT, 3):
            raise ValueError(f"embedder input {shape} is not 112x112x3")
        self.dim = int(self.io.outputs[0]["shape"][-1])
        self.flip_view = flip_view

    def _run(self, crop: np.ndarray) -> np.ndarray:
        x = (crop.astype(np.float32) - 127.5) / 128.0
        return self.io.run(x[None])[0].reshape(-1)

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        """Embedding float32[dim], unit length, of one aligned 112x112x3 RGB uint8 crop."""
        if aligned.shape != (EMBED_INPUT, EMBED_INPUT, 3):
            raise ValueError(f"expected a 112x112x3 aligned crop, got {aligned.shape}")
        v = l2_normalise(self._run(aligned))
        if self.flip_view:
            # A mirrored face is the same person; averaging the two views cancels some of the
            # left/right asymmetry in alignment and lighting.
            v = l2_normalise(v + l2_normalise(self._run(aligned[:, ::-1])))
        return v
