"""FaceEngine: detect, confirm and align the largest face, check its quality, embed it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from edge.vision.align import MeshRefiner, align, mesh_to_five
from edge.vision.detector import Detector, Face
from edge.vision.embedder import Embedder, fuse
from edge.vision.quality import QualityReport, assess

log = logging.getLogger(__name__)

STAGES = ("detect", "align", "embed")


def embedder_name(cfg) -> str:
    """Manifest name of the embedder the config selects (``embedder_int8``, ...)."""
    return f"embedder_{cfg.models.embedder}"


@dataclass
class FaceResult:
    """The analysed face of one frame.

    ``embedding`` is None when quality fails; ``points`` are the alignment points used (five
    from the face mesh, or BlazeFace's six keypoints when the mesh is off or did not confirm);
    ``mesh`` the 468x3 face mesh in frame pixels when it ran (reusable, e.g. for blinks).
    """

    face: Face
    quality: QualityReport
    aligned: np.ndarray
    embedding: np.ndarray | None
    points: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    mesh: np.ndarray | None = None


class FaceEngine:
    """The face pipeline on loaded models; one instance per process, reused for every frame."""

    def __init__(self, store, cfg) -> None:
        v = cfg.vision
        threads = cfg.models.threads
        self.cfg = cfg
        self.detector = Detector(store.bytes("detector"), v.detector_score, v.nms_iou, threads)
        self.mesh = MeshRefiner(store.bytes("landmarks"), threads) if v.mesh_align else None
        name = embedder_name(cfg)
        self.embedder = Embedder(store.bytes(name), threads, flip_view=v.flip_view)
        self.embedder_name = name
        self.model_id: str = store.model_id(name)
        self.model_sha256: str = store.sha256(name)
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg) -> FaceEngine:
        """Load and check the models this engine uses from ``cfg.models.dir`` and build it."""
        from edge.modelstore import ModelStore

        required = ["detector", embedder_name(cfg)]
        if cfg.vision.mesh_align:
            required.append("landmarks")
        return cls(ModelStore.load(cfg.models.dir, required=required), cfg)

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Every face in the frame, largest first."""
        return self.detector.detect(rgb)

    def _locate(
        self, rgb: np.ndarray, faces: list[Face]
    ) -> tuple[Face, np.ndarray, np.ndarray | None]:
        """Pick the face to use, its alignment points and its mesh.

        The mesh's own face-presence output is a second opinion on each detection, largest first:
        it turns away BlazeFace's occasional false positive on a textured background, which would
        otherwise win by size. If the mesh confirms none, the detector's best face is kept.
        """
        if self.mesh is not None:
            for face in faces:
                mesh = self.mesh.mesh(rgb, face.box, face.keypoints)
                if mesh is not None:
                    return face, mesh_to_five(mesh), mesh
        best = max(faces, key=lambda f: f.score) if self.mesh is not None else faces[0]
        return best, best.keypoints, None

    def analyse(self, rgb: np.ndarray) -> FaceResult | None:
        """Analyse the main face of an RGB frame; None when there is no face."""
        t0 = time.perf_counter()
        faces = self.detector.detect(rgb)
        t1 = time.perf_counter()
        if not faces:
            self.last_timings = {"detect": (t1 - t0) * 1000}
            return None
        face, points, mesh = self._locate(rgb, faces)
        aligned, _ = align(rgb, points)
        t2 = time.perf_counter()
        report = assess(points, aligned, self.cfg.vision.quality)
        t3 = time.perf_counter()
        embedding = self.embedder.embed(aligned) if report.ok else None
        t4 = time.perf_counter()
        self.last_timings = {
            "detect": (t1 - t0) * 1000,
            "align": (t2 - t1) * 1000,
            "quality": (t3 - t2) * 1000,
        }
        if embedding is not None:
            self.last_timings["embed"] = (t4 - t3) * 1000
        return FaceResult(face, report, aligned, embedding, points, dict(self.last_timings), mesh)

    def embed_aligned(self, aligned: np.ndarray) -> np.ndarray:
        """Embedding of an already aligned 112x112 crop (regardless of quality)."""
        return self.embedder.embed(aligned)

    def embed(self, rgb: np.ndarray, require_quality: bool = True) -> np.ndarray | None:
        """Embedding of the frame's main face; None if no face (or it fails quality, if asked)."""
        res = self.analyse(rgb)
        if res is None:
            return None
        if res.embedding is None and not require_quality:
            t = time.perf_counter()
            res.embedding = self.embedder.embed(res.aligned)
            self.last_timings["embed"] = (time.perf_counter() - t) * 1000
        return res.embedding

    @staticmethod
    def fuse(vectors) -> np.ndarray:
        """Multi-frame fusion of several embeddings of one person into one unit vector."""
        return fuse(vectors)
