"""Per-stage milliseconds of the real FaceEngine on the test photos, per embedder and thread count.

For each embedder (int8, dynamic-range, float when the build made one) and each thread setting
(one thread pinned to one core, and all cores), every photo goes: decode (JPEG/PNG/PGM bytes to
RGB) -> ``engine.analyse`` (detect, align, quality, embed; split by ``bench.probe``) -> match
(1:1 verify and 1:N top-5 over a 1,000-template Gallery). The embeddings of the one-thread runs
are kept (in memory, not in the JSON) to score accuracy on the pairs.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from bench.common import Context, Missing, load_store, require_module
from bench.probe import instrument
from bench.stats import StageClock, summarise_ms

if TYPE_CHECKING:
    from edge.config import Config
    from edge.modelstore import ModelStore
    from edge.vision.matcher import Gallery

log = logging.getLogger(__name__)

STAGES = (
    "decode",
    "detect",
    "align",
    "quality",
    "embed",
    "other",
    "match",
    "liveness",
    "mesh",
    "warp",
)
TIMED_PER_SOURCE = 30
REPEATS = 3
FLOAT_NAMES = ("embedder_float", "embedder_fp32", "embedder_float32")


def base_config(ctx: Context) -> Config:
    """The config the run measures (file given with --config, else the embedded defaults)."""
    from edge.config import load_config

    cfg = load_config(ctx.opts.config)
    if ctx.opts.models_dir:
        cfg.models.dir = ctx.opts.models_dir
    return cfg


def _float_model(store, models_dir: Path) -> tuple[bytes | None, str]:
    """The float embedder if the build produced one, and where it came from."""
    for name in FLOAT_NAMES:
        if name in store.names():
            return store.bytes(name), f"manifest entry {name}"
    for folder in (models_dir, models_dir.parent / "cache"):
        for p in sorted(folder.glob("**/*.tflite")) if folder.is_dir() else []:
            low = p.name.lower()
            if "mobilefacenet" in low and ("float" in low or "fp32" in low or "f32" in low):
                return p.read_bytes(), str(p)
    return None, ""


def _config_knows_float(cfg) -> bool:
    try:
        cfg.model_copy(deep=True).models.embedder = "float"
    except ValueError:  # pydantic's ValidationError is a ValueError
        return False
    return True


def _replace_embedder(engine, model: bytes, threads: int, flip: bool) -> bool:
    from edge.vision.embedder import Embedder

    for attr, part in vars(engine).items():
        if isinstance(part, Embedder):
            setattr(engine, attr, Embedder(model, threads=threads, flip_view=flip))
            return True
    return False


def _match_gallery() -> tuple[Gallery | None, list[str]]:
    """A 1,000-template gallery for the match stage (None if the Gallery has not landed)."""
    try:
        from edge.vision.matcher import Gallery
    except ModuleNotFoundError:
        return None, []
    rng = np.random.default_rng(3)
    m = rng.standard_normal((1000, 128), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    labels = [f"HH{i:07d}/m1" for i in range(1000)]
    return Gallery.from_matrix(labels, m), labels


def _decode(data: bytes) -> np.ndarray | None:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _pin(one_core: bool):
    """Pin this process to one CPU (for the one-core figures); return the old affinity."""
    old = os.sched_getaffinity(0)
    if one_core:
        os.sched_setaffinity(0, {min(old)})
    return old


def _timing_subset(photos, per_source: int) -> set[str]:
    from bench.data import _spread

    out: set[str] = set()
    for src in photos.sources():
        out.update(_spread([p for p in photos.photos if photos.source[p] == src], per_source))
    return out


def _liveness(store, cfg):
    """The daemon's liveness checker for the capture frames (None when off or not landed)."""
    if not cfg.liveness.enabled:
        return None
    try:
        from edge.vision.liveness import LivenessChecker
    except ModuleNotFoundError:
        return None
    if "threads" in inspect.signature(LivenessChecker).parameters:
        return LivenessChecker(store, cfg.liveness, threads=cfg.models.threads)
    return LivenessChecker(store, cfg.liveness)


def _takes_mesh(liveness) -> bool:
    return "mesh" in inspect.signature(liveness.update).parameters


def _one_frame(engine, probe, data: bytes, gallery, labels, liveness) -> dict:
    """One photo through decode, analyse (split by the probe), match and liveness: its ms."""
    rec: dict = {"status": "no_face", "res": None, "rgb": None}
    t0 = time.perf_counter()
    rgb = _decode(data)
    rec["decode"] = (time.perf_counter() - t0) * 1000.0
    if rgb is None:
        return rec
    probe.reset()
    t1 = time.perf_counter()
    res = engine.analyse(rgb)
    rec["analyse"] = (time.perf_counter() - t1) * 1000.0
    stage_ms = probe.ms()
    for stage in ("detect", "quality", "embed", "mesh"):
        if stage in stage_ms:
            rec[stage] = stage_ms[stage]
    if "align" in stage_ms or "mesh" in stage_ms:
        # align = face mesh refinement (when on) + similarity transform and warp
        rec["warp"] = stage_ms.get("align", 0.0)
        rec["align"] = stage_ms.get("align", 0.0) + stage_ms.get("mesh", 0.0)
    rec["other"] = max(rec["analyse"] - sum(stage_ms.values()), 0.0)
    rec["res"] = res
    if res is None:
        return rec
    if res.embedding is None:
        rec["status"] = "quality_fail"
        return rec
    rec["status"] = "embedded"
    t2 = time.perf_counter()
    if gallery is not None:
        gallery.verify(res.embedding, labels[0])
        gallery.search(res.embedding, k=5)
    else:
        np.dot(res.embedding, res.embedding)
    rec["match"] = (time.perf_counter() - t2) * 1000.0
    if liveness is not None:
        liveness.reset()  # one frame per window: the cost of one update
        t3 = time.perf_counter()
        # As the flow does: hand over the engine's face mesh when both sides know about it.
        mesh = getattr(res, "mesh", None)
        if mesh is not None and _takes_mesh(liveness):
            liveness.update(rgb, res.face, mesh=mesh)
        else:
            liveness.update(rgb, res.face)
        rec["liveness"] = (time.perf_counter() - t3) * 1000.0
    return rec


def run_variant(
    engine, photos, data, gallery, labels, liveness=None, timed=None, repeats: int = 1
) -> tuple[dict, dict, dict]:
    """Run every photo through one engine; return figures, per-photo vectors and per-photo ms.

    Photos in ``timed`` (default: all) are run ``repeats`` times and the fastest run counts:
    the machine is shared, and the best of a few runs filters out others' load, leaving the
    cost of the work itself. ``per_photo`` keeps the first run instead, measured the same way
    as face_recognition's single run. With a liveness checker each embedded frame is also
    given to it as a capture frame would be (``liveness`` stage, ``capture_frame_ms``).
    """
    timed = set(photos) if timed is None else timed
    probe, wrapped = instrument(engine)
    tally = _Tally()
    vectors: dict[str, np.ndarray | None] = {}
    per_photo: dict[str, tuple[float, str]] = {}
    try:
        # One untimed frame so lazy set-up (first invoke, XNNPACK packing) is not charged.
        first = _decode(next(iter(data.values())))
        if first is not None:
            engine.analyse(first)
        for rel in photos:
            n = max(repeats, 1) if rel in timed else 1
            runs = [
                _one_frame(engine, probe, data[rel], gallery, labels, liveness) for _ in range(n)
            ]
            rec = runs[0]
            tally.count(rec["status"])
            per_photo[rel] = (_frame_ms(rec), rec["status"])
            vectors[rel] = _vector(engine, rec["res"])
            if rel in timed:
                tally.add(min(runs, key=_frame_ms), rec["status"])
    finally:
        probe.restore()
    return tally.figures(len(timed & set(photos)), repeats, wrapped), vectors, per_photo


def _frame_ms(rec: dict) -> float:
    return rec["decode"] + rec.get("analyse", 0.0)


def _vector(engine, res) -> np.ndarray | None:
    """The embedding accuracy is scored on: the frame's own, else that of its aligned crop.

    The terminal would wait for a better frame; a still photo has no other one, so a face that
    failed the quality gates is embedded anyway (not timed).
    """
    if res is None:
        return None
    if res.embedding is not None:
        return res.embedding
    return _embed_untimed(engine, res.aligned)


class _Tally:
    """Photo counts by outcome and the timings of the timed photos' best runs."""

    def __init__(self) -> None:
        self.clock = StageClock()
        self.counts = {"photos": 0, "no_face": 0, "quality_fail": 0, "embedded": 0}
        self.series: dict[str, list[float]] = {k: [] for k in ("embedded", "all", "e2e", "capture")}

    def count(self, status: str) -> None:
        self.counts["photos"] += 1
        self.counts[status] += 1

    def add(self, best: dict, status: str) -> None:
        for stage in STAGES:
            if stage in best:
                self.clock.add(stage, best[stage])
        if "analyse" in best:
            self.series["all"].append(best["analyse"])
        if status == "embedded":
            self.series["embedded"].append(best["analyse"])
            e2e = best["decode"] + best["analyse"] + best["match"]
            self.series["e2e"].append(e2e)
            if "liveness" in best:
                self.series["capture"].append(e2e + best["liveness"])

    def figures(self, timed_photos: int, repeats: int, instrumented) -> dict:
        summary = self.clock.summary()
        return {
            "counts": self.counts,
            "timed_photos": timed_photos,
            "repeats": repeats,
            "stages_ms": {s: summary[s] for s in STAGES if s in summary},
            # What the budget is about: detect + align + quality + embed of an embedded face.
            "analyse_ms_embedded": summarise_ms(self.series["embedded"]),
            "analyse_ms_all_frames": summarise_ms(self.series["all"]),
            "end_to_end_ms": summarise_ms(self.series["e2e"]),
            # A frame during capture: decode + analyse + liveness update + match.
            "capture_frame_ms": summarise_ms(self.series["capture"]),
            "instrumented": instrumented,
        }


def _embed_untimed(engine, aligned: np.ndarray) -> np.ndarray | None:
    from edge.vision.embedder import Embedder

    for part in vars(engine).values():
        if isinstance(part, Embedder):
            return type(part).embed(part, aligned)  # the class method, not the timed wrapper
    return None


def run(ctx: Context) -> dict:
    """Figures per embedder x threads; sets ctx.vectors['ours:<embedder>'] from 1-thread runs."""
    pipeline = require_module("edge.vision.pipeline", "VISION")
    if not hasattr(pipeline, "FaceEngine"):
        raise Missing("edge.vision.pipeline.FaceEngine not there yet (VISION)")
    cfg0 = base_config(ctx)
    models_dir = Path(cfg0.models.dir)
    store = load_store(models_dir)
    photos = ctx.need_photos()
    gallery, labels = _match_gallery()
    float_bytes, float_from = _float_model(store, models_dir)
    threads_all = [1] if ctx.opts.cores <= 1 else [1, ctx.opts.cores]
    # Timing runs on a spread subset of each source, best of a few runs per photo; accuracy
    # (one-thread variants) embeds every photo once.
    timed = set(photos.photos) if ctx.opts.quick else _timing_subset(photos, TIMED_PER_SOURCE)
    bench = _Bench(
        pipeline,
        store,
        cfg0,
        photos.photos,
        {rel: photos.path(rel).read_bytes() for rel in photos.photos},
        gallery,
        labels,
        timed,
        repeats=1 if ctx.opts.quick else REPEATS,
        pin=ctx.opts.pin,
    )
    out: dict = {
        "status": "ok",
        "photos": len(photos.photos),
        "timed_photos": len(timed),
        "repeats": bench.repeats,
        "flip_view": cfg0.vision.flip_view,
        "threads": threads_all,
        "pinned": ctx.opts.pin,
        "mesh_align": getattr(cfg0.vision, "mesh_align", None),
        "match_gallery": "Gallery of 1,000 (verify + search k=5)"
        if gallery is not None
        else "numpy dot (Gallery not there yet)",
        "float": f"from {float_from}"
        if float_bytes is not None
        else "`make models` produces no float embedder: the float row is not measured "
        "(dynamic-range is the closest: int8 weights, float activations)",
        "variants": {},
    }
    for variant in _variants(cfg0, float_bytes, threads_all, ctx.opts.quick):
        for threads in variant.threads:
            figures, vectors, per_photo = bench.measure(variant, threads)
            key = f"{variant.name}/{threads}t"
            out["variants"][key] = figures
            log.info(
                "%s: analyse median %.1f ms", key, figures["analyse_ms_all_frames"]["median"] or -1
            )
            if threads == 1:
                ctx.vectors[f"ours:{variant.name}"] = vectors
                ctx.per_photo[f"ours:{variant.name}"] = per_photo
    return out


@dataclass(frozen=True)
class _Variant:
    """One engine set-up to measure, at each of ``threads``."""

    name: str
    embedder: Literal["int8", "dynamic", "float"]  # cfg.models.embedder
    threads: list[int]
    vision: dict = field(default_factory=dict)  # cfg.vision changes
    override: bytes | None = None  # a model swapped into the engine's embedder


def _variants(cfg0, float_bytes: bytes | None, threads_all: list[int], quick: bool):
    """int8 and dynamic-range always, float when there is one, the optional steps unless quick."""
    variants = [_Variant("int8", "int8", threads_all), _Variant("dynamic", "dynamic", threads_all)]
    if float_bytes is not None:
        if _config_knows_float(cfg0):
            variants.append(_Variant("float", "float", threads_all))
        else:  # an older config: swap the float model into the engine's embedder
            variants.append(_Variant("float", "dynamic", threads_all, override=float_bytes))
    if not quick:
        # What the optional steps cost and buy: one thread only, int8.
        # The mirrored second view, toggled from whatever the config says.
        flip = cfg0.vision.flip_view
        name = "int8-noflip" if flip else "int8-flip"
        variants.append(_Variant(name, "int8", [1], {"flip_view": not flip}))
        if getattr(cfg0.vision, "mesh_align", False):
            variants.append(_Variant("int8-nomesh", "int8", [1], {"mesh_align": False}))
    return variants


@dataclass
class _Bench:
    """What every variant is measured on: models, base config, photos and the match gallery."""

    pipeline: ModuleType  # edge.vision.pipeline, imported once it has landed
    store: ModelStore
    cfg0: Config
    photos: list[str]
    data: dict[str, bytes]
    gallery: Gallery | None
    labels: list[str]
    timed: set[str]
    repeats: int
    pin: bool

    def measure(self, variant: _Variant, threads: int) -> tuple[dict, dict, dict]:
        """``run_variant`` on a fresh engine; one-thread runs pinned to one core if asked."""
        cfg = self.cfg0.model_copy(deep=True)
        cfg.models.embedder = variant.embedder
        cfg.models.threads = threads
        for key, value in variant.vision.items():
            setattr(cfg.vision, key, value)
        old = _pin(threads == 1 and self.pin)
        try:
            engine = self.pipeline.FaceEngine(self.store, cfg)
            if variant.override is not None and not _replace_embedder(
                engine, variant.override, threads, cfg.vision.flip_view
            ):
                raise Missing("float embedder: FaceEngine holds no Embedder part to swap")
            live = _liveness(self.store, cfg) if variant.name == "int8" else None
            todo = self.photos if threads == 1 else [p for p in self.photos if p in self.timed]
            return run_variant(
                engine, todo, self.data, self.gallery, self.labels, live, self.timed, self.repeats
            )
        finally:
            os.sched_setaffinity(0, old)
