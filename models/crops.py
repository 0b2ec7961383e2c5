"""Aligned face crops from the labelled photos, for calibration and the agreement check.

The crops come from the terminal's own pipeline (`edge.vision`: BlazeFace, face-mesh refinement,
ArcFace alignment) so the int8 ranges are calibrated on what the embedder will really see. When
that pipeline cannot be imported, a centre crop keeps the build going and the manifest says so.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from models.fetch import BuildError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SIZE = 112


def faces_dir() -> Path:
    """EDGE_FACES_DIR, else ../shared/faces beside the repository."""
    shared = Path(os.environ.get("EDGE_SHARED_DIR", ROOT.parent / "shared"))
    return Path(os.environ.get("EDGE_FACES_DIR", shared / "faces"))


def photo_split(directory: Path, per_split: int) -> tuple[list[Path], list[Path]]:
    """Two disjoint, deterministic samples of photos: (calibration, agreement).

    The order is a hash of each path, which mixes the sources (studio, grey, web photos) and
    stays the same from one build to the next.
    """
    manifest = directory / "manifest.csv"
    if not manifest.is_file():
        raise BuildError(
            f"no face photos at {directory} (manifest.csv missing): the int8 embedder is "
            "calibrated on real faces; set EDGE_FACES_DIR"
        )
    with open(manifest, newline="") as fh:
        paths = [row["path"] for row in csv.DictReader(fh)]
    paths.sort(key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    files = [directory / p for p in paths if (directory / p).is_file()]
    calib, agree = files[0::2][:per_split], files[1::2][:per_split]
    if len(calib) < 20 or len(agree) < 20:
        raise BuildError(f"too few face photos at {directory}: {len(files)}")
    return calib, agree


def read_rgb(path: Path) -> np.ndarray | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def centre_crop(rgb: np.ndarray) -> np.ndarray:
    """Square centre crop resized to 112x112 (the fallback when no aligner is available)."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(rgb[y : y + s, x : x + s], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


class _Store:
    """The few ModelStore methods FaceEngine needs, over model bytes held in memory."""

    def __init__(self, models: dict[str, bytes]) -> None:
        self._models = models

    def bytes(self, name: str) -> bytes:
        return self._models[name]

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self._models[name]).hexdigest()

    def model_id(self, name: str) -> str:
        return f"{name}-{self.sha256(name)[:12]}"


def make_aligner(detector: bytes, landmarks: bytes, embedder: bytes):
    """A function rgb -> aligned 112x112 crop (or None), and the name of the method used."""
    try:
        from edge.config import Config
        from edge.vision.pipeline import FaceEngine

        store = _Store(
            {
                "detector": detector,
                "landmarks": landmarks,
                "embedder_int8": embedder,
                "embedder_dynamic": embedder,
            }
        )
        cfg = Config()
        cfg.models.threads = 1
        cfg.vision.flip_view = False
        engine = FaceEngine(store, cfg)
    except Exception as exc:  # any failure of a module still being written: fall back
        log.warning("edge.vision unavailable (%s): calibrating on centre crops", exc)
        return (lambda rgb: centre_crop(rgb)), "centre-crop"

    def aligned(rgb: np.ndarray) -> np.ndarray | None:
        result = engine.analyse(rgb)
        return None if result is None else result.aligned

    return aligned, "edge.vision"


def aligned_crops(paths: list[Path], aligner) -> np.ndarray:
    """uint8 Nx112x112x3 crops of the photos where a face was found."""
    out = []
    for p in paths:
        rgb = read_rgb(p)
        if rgb is None:
            continue
        crop = aligner(rgb)
        if crop is not None:
            out.append(np.ascontiguousarray(crop, np.uint8))
    if not out:
        raise BuildError("no face found in any calibration photo")
    return np.stack(out)
