"""Small statistics shared by every section: timing summaries and verification error rates.

Both our pipeline and face_recognition are scored by the same functions here, so a difference in
the figures is a difference in the systems, not in the arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np

# A photo where no face was found scores below every real score: a failed comparison, never a skip.
FAILED_SCORE = -1e9


def summarise_ms(samples: Sequence[float]) -> dict[str, float | int | None]:
    """Median, p90, mean, min and count of a list of milliseconds (None figures when empty).

    The minimum is the best estimate of the intrinsic cost on a machine that others share;
    the median and p90 are what a recipient at the terminal would see.
    """
    if not samples:
        return {"n": 0, "median": None, "p90": None, "mean": None, "min": None}
    a = np.asarray(samples, dtype=np.float64)
    return {
        "n": int(a.size),
        "median": round(float(np.median(a)), 4),
        "p90": round(float(np.percentile(a, 90)), 4),
        "mean": round(float(a.mean()), 4),
        "min": round(float(a.min()), 4),
    }


class StageClock:
    """Collects milliseconds per named stage across many runs."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, stage: str, ms: float) -> None:
        """Record one measurement of ``stage`` in milliseconds."""
        self.samples.setdefault(stage, []).append(ms)

    def time(self, stage: str, fn, *args, **kwargs):
        """Call ``fn`` and record how long it took under ``stage``; return its result."""
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.add(stage, (time.perf_counter() - t0) * 1000.0)
        return out

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """Summary per stage (see ``summarise_ms``)."""
        return {k: summarise_ms(v) for k, v in self.samples.items()}


def timeit_ms(fn, repeat: int, warmup: int = 1) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times; return each run in ms."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def verification_rates(
    genuine: Iterable[float], impostor: Iterable[float], fars: Sequence[float] = (1e-2, 1e-3)
) -> dict[str, object]:
    """EER and TAR at each FAR for higher-is-more-similar scores.

    The threshold for a FAR is the smallest one that lets at most that share of impostors through
    (ties count as accepted, as a real ``score >= threshold`` decision would). With fewer
    impostors than 1/FAR the figure is reported but flagged as coarse.
    """
    g = np.sort(np.asarray(list(genuine), dtype=np.float64))
    i = np.sort(np.asarray(list(impostor), dtype=np.float64))
    out: dict[str, object] = {"genuine": int(g.size), "impostor": int(i.size)}
    if g.size == 0 or i.size == 0:
        out.update({"eer": None, "tar_at_far": {}, "threshold_at_far": {}})
        return out
    # Sweep every distinct score as a threshold: accept when score >= t.
    thresholds = np.unique(np.concatenate([g, i, [np.inf]]))
    frr = np.searchsorted(g, thresholds, side="left") / g.size
    far = 1.0 - np.searchsorted(i, thresholds, side="left") / i.size
    k = int(np.argmin(np.abs(far - frr)))
    out["eer"] = round(float((far[k] + frr[k]) / 2.0), 5)
    tar, thr, coarse = {}, {}, {}
    for target in fars:
        ok = np.nonzero(far <= target)[0]
        j = int(ok[0])  # thresholds ascend, so the first allowed one keeps the most genuines
        key = f"{target:g}"
        tar[key] = round(float(1.0 - frr[j]), 5)
        t = float(thresholds[j])
        thr[key] = None if not np.isfinite(t) or t <= FAILED_SCORE else round(t, 5)
        coarse[key] = bool(i.size * target < 1.0)
    out.update({"tar_at_far": tar, "threshold_at_far": thr, "coarse_far": coarse})
    return out


def pair_scores(
    pairs: Sequence[tuple[str, str, int]],
    vectors: dict[str, np.ndarray | None],
    metric: str = "cosine",
) -> tuple[list[float], list[float]]:
    """Score each pair from per-photo vectors; a photo without a vector fails the comparison.

    ``metric`` is "cosine" (our L2-normalised embeddings) or "neg_l2" (face_recognition's
    Euclidean distance, negated so that higher means more similar for both systems).
    """
    genuine: list[float] = []
    impostor: list[float] = []
    for a, b, same in pairs:
        va, vb = vectors.get(a), vectors.get(b)
        if va is None or vb is None:
            s = FAILED_SCORE
        elif metric == "cosine":
            s = float(np.dot(va, vb))
        else:
            s = -float(np.linalg.norm(va - vb))
        (genuine if same else impostor).append(s)
    return genuine, impostor
