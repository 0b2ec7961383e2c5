"""Verification accuracy on a labelled pairs list: EER, TAR at fixed FAR, stage timings.

Each image is analysed once; the pairs are then scored in one vectorised step. A photo in which
no face is found makes every comparison it takes part in a failed one (a genuine pair is then
falsely rejected, an impostor pair correctly rejected): it is never skipped, since skipping
would hide detection failures from the figures.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from edge.vision.pipeline import FaceEngine, FaceResult

log = logging.getLogger(__name__)

FARS = (0.01, 0.001)
FAILED_SCORE = -1.0
_STAGES = ("detect", "align", "embed")


@dataclass(frozen=True)
class Pair:
    path_a: str
    path_b: str
    same: bool
    source: str


def load_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 (any format Pillow reads, EXIF rotation applied)."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def read_pairs(path: str | Path, source: str | None = None) -> list[Pair]:
    """Rows of a pairs CSV (path_a, path_b, same[, source]); optionally only one source."""
    pairs = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path_a", "path_b", "same"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            src = row.get("source") or ""
            if source is not None and src != source:
                continue
            same = str(row["same"]).strip().lower() in ("1", "true", "yes")
            pairs.append(Pair(row["path_a"], row["path_b"], same, src))
    return pairs


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Lowest threshold (accept when score >= it) whose false-accept rate is at most ``far``."""
    imp = np.sort(np.asarray(impostor, np.float64))[::-1]
    if len(imp) == 0:
        return float("nan")
    k = int(np.floor(far * len(imp)))
    if k >= len(imp):
        return float(imp[-1])
    # Just above the (k+1)-th highest impostor score: at most k impostors pass.
    return float(np.nextafter(imp[k], np.inf))


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where false accepts and false rejects cross."""
    gen = np.sort(np.asarray(genuine, np.float64))
    imp = np.sort(np.asarray(impostor, np.float64))
    if len(gen) == 0 or len(imp) == 0:
        return float("nan"), float("nan")
    cands = np.unique(np.concatenate([gen, imp, [np.inf]]))
    far = 1.0 - np.searchsorted(imp, cands, side="left") / len(imp)
    frr = np.searchsorted(gen, cands, side="left") / len(gen)
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(cands[i])


def metrics(genuine: np.ndarray, impostor: np.ndarray, fars=FARS) -> dict:
    """EER, and TAR and threshold at each FAR, for genuine and impostor score arrays."""
    gen = np.asarray(genuine, np.float64)
    e, e_thr = eer(gen, impostor)
    tar: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    for far in fars:
        t = threshold_at_far(impostor, far)
        thresholds[str(far)] = t
        known = len(gen) and t == t  # no impostors: no threshold, no TAR
        tar[str(far)] = float((gen >= t).mean()) if known else float("nan")
    return {
        "genuine": int(len(gen)),
        "impostor": int(len(impostor)),
        "eer": e,
        "eer_threshold": e_thr,
        "tar_at_far": tar,
        "threshold_at_far": thresholds,
    }


class Progress:
    """A one-line progress bar on a terminal; silent otherwise (logs, pipes, tests)."""

    def __init__(self, total: int, label: str, stream=None) -> None:
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._last = -1.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self._last < 0.1:
            return
        self._last = now
        frac = done / max(self.total, 1)
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {done}/{self.total}")
        if done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _analyse_timed(
    engine: FaceEngine, rgb: np.ndarray, repeat: int
) -> tuple[FaceResult, dict[str, float]] | None:
    """The analysis of one image and its fastest stage times over ``repeat`` runs; None when a
    run finds no face."""
    timed: tuple[FaceResult, dict[str, float]] | None = None
    for _ in range(max(1, repeat)):
        res = engine.analyse(rgb)
        if res is None:
            return None
        if res.embedding is None:
            t = time.perf_counter()
            res.embedding = engine.embed_aligned(res.aligned)
            res.timings_ms["embed"] = (time.perf_counter() - t) * 1000
        run = {s: res.timings_ms[s] for s in _STAGES}
        best = run if timed is None else {s: min(timed[1][s], run[s]) for s in _STAGES}
        timed = (res, best)
    return timed


def embed_images(
    engine: FaceEngine, paths: list[str], images_dir: Path, progress: bool = True, repeat: int = 1
) -> dict:
    """Analyse each image once: embeddings (rows, NaN where no face), flags and stage times.

    The evaluation embeds a face even when it fails the quality gate: it measures the
    recogniser; the gate's own effect is reported as ``quality_failed``. With ``repeat`` > 1
    each image is timed that many times and the fastest run kept, which filters out the time
    stolen by other processes on a shared machine.
    """
    emb = np.full((len(paths), engine.dim), np.nan, np.float32)
    no_face: list[str] = []
    quality_failed: list[str] = []
    unreadable: list[str] = []
    times: dict[str, list[float]] = {s: [] for s in _STAGES}
    bar = Progress(len(paths), "embedding") if progress else None
    for i, rel in enumerate(paths):
        try:
            rgb = load_image(images_dir / rel)
        except (OSError, ValueError) as exc:
            log.warning("cannot read image %s: %s", rel, exc)
            unreadable.append(rel)
            no_face.append(rel)
            continue
        timed = _analyse_timed(engine, rgb, repeat)
        if timed is None:
            no_face.append(rel)
        else:
            res, best = timed
            if not res.quality.ok:
                quality_failed.append(rel)
            emb[i] = res.embedding
            for s in _STAGES:
                times[s].append(best[s])
        if bar:
            bar.update(i + 1)
    return {
        "embeddings": emb,
        "no_face": no_face,
        "quality_failed": quality_failed,
        "unreadable": unreadable,
        "times": times,
    }


def score_pairs(emb: np.ndarray, index: dict[str, int], pairs: list[Pair]) -> np.ndarray:
    """Cosine of every pair in one step; FAILED_SCORE where either image had no face."""
    ia = np.fromiter((index[p.path_a] for p in pairs), np.int64, len(pairs))
    ib = np.fromiter((index[p.path_b] for p in pairs), np.int64, len(pairs))
    s = np.einsum("ij,ij->i", emb[ia], emb[ib])
    return np.where(np.isnan(s), FAILED_SCORE, s).astype(np.float64)


def evaluate(
    engine,
    pairs: list[Pair],
    images_dir: str | Path,
    progress: bool = True,
    fars=FARS,
    repeat: int = 1,
) -> dict:
    """The full report over ``pairs``: overall figures, the same per source, stage medians."""
    images_dir = Path(images_dir)
    paths = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    index = {p: i for i, p in enumerate(paths)}
    run = embed_images(engine, paths, images_dir, progress, repeat)
    scores = score_pairs(run["embeddings"], index, pairs)
    same = np.array([p.same for p in pairs], bool)
    report = {
        "images": len(paths),
        "no_face": len(run["no_face"]),
        "quality_failed": len(run["quality_failed"]),
        **metrics(scores[same], scores[~same], fars),
        "ms": {s: float(np.median(v)) if v else float("nan") for s, v in run["times"].items()},
        "model_id": engine.model_id,
        "settings": {
            "embedder": engine.embedder_name,
            "flip_view": engine.embedder.flip_view,
            "mesh_align": engine.mesh is not None,
            "threads": engine.cfg.models.threads,
            "timing_repeat": repeat,
        },
        "no_face_images": run["no_face"],
    }
    # What a terminal that turns poor faces away would see: pairs with a refused photo removed
    # (a refusal asks the person to try again; it is neither a match nor a non-match).
    refused = {index[p] for p in run["quality_failed"]}
    if refused:
        keep = np.array(
            [index[p.path_a] not in refused and index[p.path_b] not in refused for p in pairs]
        )
        report["quality_gated"] = metrics(scores[keep & same], scores[keep & ~same], fars)
    sources = sorted({p.source for p in pairs if p.source})
    if len(sources) > 1:
        src = np.array([p.source for p in pairs])
        per = {}
        for s in sources:
            m = src == s
            imgs = {p.path_a for p in pairs if p.source == s} | {
                p.path_b for p in pairs if p.source == s
            }
            per[s] = {
                "images": len(imgs),
                "no_face": len(imgs & set(run["no_face"])),
                **metrics(scores[m & same], scores[m & ~same], fars),
            }
        report["per_source"] = per
    return report


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}%"


def format_report(r: dict) -> str:
    """The report as aligned text lines for a terminal."""
    lines = [
        f"images {r['images']}  no_face {r['no_face']}  quality_failed {r['quality_failed']}  "
        f"genuine {r['genuine']}  impostor {r['impostor']}",
        f"eer {_pct(r['eer'])}",
    ]
    for far in r["tar_at_far"]:
        lines.append(
            f"tar_at_far {far}: {_pct(r['tar_at_far'][far])}  "
            f"threshold {r['threshold_at_far'][far]:.4f}"
        )
    lines.append("median ms: " + "  ".join(f"{s} {v:.1f}" for s, v in r["ms"].items()))
    if "quality_gated" in r:
        g = r["quality_gated"]
        tars = "  ".join(f"tar@{f} {_pct(v)}" for f, v in g["tar_at_far"].items())
        lines.append(
            f"without quality-refused photos: gen {g['genuine']} imp {g['impostor']}  "
            f"eer {_pct(g['eer'])}  {tars}"
        )
    for s, m in r.get("per_source", {}).items():
        tars = "  ".join(f"tar@{f} {_pct(v)}" for f, v in m["tar_at_far"].items())
        lines.append(
            f"  {s:<10} images {m['images']:>4} no_face {m['no_face']:>2} "
            f"gen {m['genuine']:>5} imp {m['impostor']:>6}  eer {_pct(m['eer'])}  {tars}"
        )
    return "\n".join(lines)
