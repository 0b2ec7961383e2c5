"""What every section receives, and how a section says that its part is missing."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from bench.data import PhotoSet

ROOT = Path(__file__).resolve().parent.parent


# The sections of a run, in order (bench.suite holds what each one runs).
SECTION_NAMES = (
    "pipeline",
    "models",
    "facerec",
    "compare",
    "qr",
    "matcher",
    "ledger",
    "mqtt",
    "outage",
    "daemon",
    "memory",
)


class Missing(Exception):
    """A part this section measures has not landed (or cannot run here); the reason says which."""


@dataclass
class Options:
    """Settings of one bench run."""

    quick: bool = False
    faces_dir: Path | None = None
    models_dir: Path | None = None
    out_dir: Path = ROOT / "bench" / "out"
    config: str | None = None
    bench_venv: Path = ROOT / ".venv-bench"
    install: bool = True  # create .venv-bench when it is missing
    sections: list[str] | None = None  # None: all
    photos_per_source: int | None = None  # None: quick default or all
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Pin one-thread runs to one CPU. Off by default: on a shared machine the pinned CPU may be
    # the busy one, while one unpinned thread still computes on one core at a time.
    pin: bool = False


@dataclass
class Context:
    """Options plus results that later sections reuse (vectors are kept out of the JSON)."""

    opts: Options
    photos: PhotoSet | None = None  # None when the faces folder is not there
    # system -> path -> vector (None: no face found in that photo)
    vectors: dict[str, dict[str, np.ndarray | None]] = field(default_factory=dict)
    # system -> path -> (milliseconds from encoded bytes to embedding, "embedded" | "no_face" | ...)
    per_photo: dict[str, dict[str, tuple[float, str]]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def need_photos(self) -> PhotoSet:
        """The test photos; Missing when none were found (the suite skips such sections first)."""
        if self.photos is None:
            raise Missing("no test photos loaded")
        return self.photos


def require_module(name: str, owner: str):
    """Import ``name`` or raise Missing naming the engineer whose part it is."""
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise Missing(f"{name} not there yet ({owner})") from None
        raise


# The face pipeline needs these; the liveness models are used when the build has them.
FACE_MODELS = ("detector", "landmarks", "embedder_int8", "embedder_dynamic")


def load_store(models_dir):
    """The project's ModelStore for ``models_dir``; Missing while the build is absent or partial."""
    modelstore = require_module("edge.modelstore", "MODELS")
    from edge.errors import ModelError

    if not (Path(models_dir) / "manifest.json").is_file():
        raise Missing(f"no models at {models_dir}: run `make models` (MODELS)")
    try:
        return modelstore.ModelStore.load(models_dir, required=FACE_MODELS)
    except ModelError as exc:
        raise Missing(f"models not usable: {exc}") from None
