"""Ours against face_recognition on identical photos and pairs: accuracy and speed ratios.

Every system's vectors are scored by bench.stats on the pairs of pairs.csv among the photos in
use; a photo where a system found no face fails each of its comparisons (never skipped).
Ratios are ours / theirs: below 1 is better for EER and time, above 1 is better for TAR.
"""

from __future__ import annotations

import numpy as np

from bench.common import Context, Missing
from bench.stats import pair_scores, verification_rates

REFERENCE = "facerec"


def accuracy(ctx: Context, system: str) -> dict:
    """EER and TAR@FAR per source and over all pairs (within-source pairs only, pooled)."""
    photos = ctx.need_photos()
    vectors = ctx.vectors[system]
    metric = "neg_l2" if system == REFERENCE else "cosine"
    out = {}
    for src in [*photos.sources(), "all"]:
        pairs = photos.pairs if src == "all" else photos.pairs_of(src)
        g, i = pair_scores(pairs, vectors, metric)
        rates = verification_rates(g, i)
        in_src = [p for p in photos.photos if src == "all" or photos.source[p] == src]
        rates["no_face"] = sum(vectors.get(p) is None for p in in_src)
        out[src] = rates
    return out


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def speed(ctx: Context, system: str) -> dict:
    """Mean milliseconds per photo, over all photos and over photos both systems embedded."""
    ours, theirs = ctx.per_photo[system], ctx.per_photo[REFERENCE]
    common = [p for p in ours if p in theirs]
    both = [p for p in common if ours[p][1] == "embedded" and theirs[p][1] == "embedded"]
    res: dict[str, dict[str, float | None]] = {}
    for name, sel in (("all_photos", common), ("both_embedded", both)):
        if not sel:
            res[name] = {"photos": 0}
            continue
        o = float(np.mean([ours[p][0] for p in sel]))
        t = float(np.mean([theirs[p][0] for p in sel]))
        res[name] = {
            "photos": len(sel),
            "ours_ms": round(o, 2),
            "theirs_ms": round(t, 2),
            "ratio": _ratio(o, t),
            "speedup": _ratio(t, o),
        }
    return res


def run(ctx: Context) -> dict:
    """Accuracy of every system measured, and ours/theirs ratios for each of our embedders."""
    if not ctx.vectors:
        raise Missing("no embeddings: the pipeline and face_recognition sections did not run")
    out: dict = {
        "status": "ok",
        "pairs": len(ctx.need_photos().pairs),
        "accuracy": {},
        "ratios": {},
    }
    for system in sorted(ctx.vectors):
        out["accuracy"][system] = accuracy(ctx, system)
    if REFERENCE not in ctx.vectors:
        out["ratios_note"] = "face_recognition did not run: no ratios"
        return out
    ref = out["accuracy"][REFERENCE]
    for system in sorted(s for s in ctx.vectors if s != REFERENCE):
        mine = out["accuracy"][system]
        acc = {}
        for src in mine:
            a, b = mine[src], ref[src]
            acc[src] = {
                "eer": _ratio(a["eer"], b["eer"]),
                "tar_at_far": {
                    k: _ratio(a["tar_at_far"].get(k), b["tar_at_far"].get(k))
                    for k in a["tar_at_far"]
                },
            }
        out["ratios"][system] = {"accuracy": acc, "speed": speed(ctx, system)}
    return out
