"""Shared fixtures: paths to the real test faces and the built models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_SHARED_DIR", ROOT.parent / "shared"))
FACES_DIR = Path(os.environ.get("EDGE_FACES_DIR", SHARED / "faces"))
VIDEO = SHARED / "video" / "short_hamilton_clip.mp4"
MODELS_DIR = Path(os.environ.get("EDGE_MODELS_DIR", ROOT / "models" / "out"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The labelled face photos of ../shared/faces; tests skip when they are absent."""
    if not (FACES_DIR / "manifest.csv").is_file():
        pytest.skip(f"test faces not found at {FACES_DIR} (set EDGE_FACES_DIR)")
    return FACES_DIR


@pytest.fixture(scope="session")
def face_video() -> Path:
    """A real clip of a live face (bona fide sequence); skip when absent."""
    if not VIDEO.is_file():
        pytest.skip(f"test video not found at {VIDEO}")
    return VIDEO


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Models built by `make models`; a missing build is an error, not a skip."""
    if not (MODELS_DIR / "manifest.json").is_file():
        pytest.fail(f"models not built at {MODELS_DIR}: run `make models`")
    return MODELS_DIR


@pytest.fixture(scope="session")
def engine(models_dir: Path):
    """The real face engine on the built models, one thread, loaded once for the session."""
    from edge.config import Config
    from edge.vision.pipeline import FaceEngine

    cfg = Config()
    cfg.models.threads = 1
    cfg.models.dir = str(models_dir)
    return FaceEngine.from_config(cfg)
