"""1:N search time of edge.vision.matcher.Gallery for 1,000 / 10,000 / 100,000 templates.

Templates are random unit vectors (the search cost does not depend on what they encode); each
query is a noisy copy of one template, so there is a true best match as in real use. Beside
the Gallery figures, a bare numpy matrix-vector product over the same matrix shows the floor
that any Python-side overhead in the Gallery sits on.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np

from bench.common import ROOT, Context, Missing, require_module
from bench.stats import summarise_ms

log = logging.getLogger(__name__)

SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
DIM = 128


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.standard_normal((n, DIM), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m


def _int8_kwargs(gallery_cls) -> dict | None:
    """How this Gallery asks for an int8 matrix, found from its signature (None: it cannot)."""
    for fn in (gallery_cls.from_matrix, gallery_cls.__init__):
        params = inspect.signature(fn).parameters
        if "dtype" in params:
            return {"dtype": "int8"}
        for name in ("int8", "quantize", "quantise", "quantized"):
            if name in params:
                return {name: True}
    return None


def _build(gallery_cls, labels, matrix, kwargs):
    try:
        return gallery_cls.from_matrix(labels, matrix, **kwargs)
    except TypeError:
        g = gallery_cls(dim=DIM, **kwargs)
        g.add_many(labels, matrix) if hasattr(g, "add_many") else [
            g.add(lbl, v[None]) for lbl, v in zip(labels, matrix, strict=True)
        ]
        return g


def measure(quick: bool) -> dict:
    """Median and p90 milliseconds of ``search`` (k=5) and ``verify`` per gallery size and dtype."""
    matcher = require_module("edge.vision.matcher", "VISION")
    if not hasattr(matcher, "Gallery"):
        raise Missing("edge.vision.matcher.Gallery not there yet (VISION)")
    gallery_cls = matcher.Gallery
    sizes = QUICK_SIZES if quick else SIZES
    n_queries = 30 if quick else 200
    rng = np.random.default_rng(7)
    int8 = _int8_kwargs(gallery_cls)
    out: dict = {"status": "ok", "k": 5, "queries": n_queries, "cores": 1, "sizes": {}}
    _measure(gallery_cls, sizes, n_queries, int8, rng, out)
    if int8 is None:
        out["int8_note"] = "Gallery offers no int8 option (no dtype/int8 parameter): not measured"
    if quick:
        out["note"] = "quick mode: 100,000 not measured"
    return out


def run(ctx: Context) -> dict:
    """The figures from a child pinned to one core with one BLAS thread (the budget's setting).

    A BLAS that starts one thread per core, squeezed onto one core, spins against itself and
    can turn a 0.2 ms search into 8 ms; that hazard is measured here too, in this process
    (default BLAS threads, pinned to one core), because a daemon sharing its cores with the
    camera and TFLite threads can meet it.
    """
    require_module("edge.vision.matcher", "VISION")
    core = min(os.sched_getaffinity(0))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = [sys.executable, "-m", "bench.matcher_bench"] + (["--quick"] if ctx.opts.quick else [])
    proc = subprocess.run(
        args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if ctx.opts.pin else None,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"matcher child failed ({proc.returncode}): {' | '.join(tail)}")
    out = json.loads(proc.stdout)
    if out.get("status") == "missing":
        raise Missing(out["reason"])
    out["blas_threads"] = 1
    out["pinned"] = ctx.opts.pin
    out["hazard"] = _blas_hazard(core)
    return out


def _blas_hazard(core: int) -> dict:
    """10,000-template float32 search in this process: default BLAS threads, one core."""
    from edge.vision.matcher import Gallery

    rng = np.random.default_rng(11)
    matrix = _unit(rng, 10_000)
    g = Gallery.from_matrix([f"HH{i:07d}/m1" for i in range(10_000)], matrix)
    queries = _unit(rng, 50)
    old = os.sched_getaffinity(0)
    try:
        free = _per_query_ms(lambda q: g.search(q, k=5), queries)
        os.sched_setaffinity(0, {core})
        pinned = _per_query_ms(lambda q: g.search(q, k=5), queries)
    finally:
        os.sched_setaffinity(0, old)
    return {
        "what": "10,000 float32 search with the default BLAS threads",
        "all_cores_ms": summarise_ms(free),
        "pinned_one_core_ms": summarise_ms(pinned),
    }


def _measure(gallery_cls, sizes, n_queries: int, int8, rng, out: dict) -> None:
    for n in sizes:
        matrix = _unit(rng, n)
        labels = [f"HH{i:07d}/m1" for i in range(n)]
        picks = rng.integers(0, n, n_queries)
        queries = matrix[picks] + 0.05 * rng.standard_normal((n_queries, DIM), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        row: dict = {}
        for dtype, kwargs in (("float32", {}), ("int8", int8)):
            if kwargs is None:
                continue
            g = _build(gallery_cls, labels, matrix, kwargs)
            hits = sum(
                g.search(q, k=5)[0][0] == labels[p] for q, p in zip(queries, picks, strict=True)
            )
            search_ms = _per_query_ms(lambda q, g=g: g.search(q, k=5), queries)
            target = labels[picks[0]]
            verify_ms = _per_query_ms(lambda q, g=g, t=target: g.verify(q, t), queries)
            row[dtype] = {
                "search_ms": summarise_ms(search_ms),
                "verify_ms": summarise_ms(verify_ms),
                "top1_recall": round(hits / n_queries, 4),
                "matrix_mb": round(_matrix_bytes(g, matrix, dtype) / 1e6, 2),
            }
            del g
        # The floor: one BLAS matrix-vector product and a partial sort, nothing else.
        floor = _per_query_ms(lambda q, m=matrix: np.argpartition(-(m @ q), 5)[:5], queries)
        row["numpy_floor_ms"] = summarise_ms(floor)
        out["sizes"][str(n)] = row


def _per_query_ms(fn, queries: np.ndarray) -> list[float]:
    """Milliseconds of ``fn(q)`` for each query, after one untimed warm-up call."""
    fn(queries[0])
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _matrix_bytes(g, matrix: np.ndarray, dtype: str) -> int:
    # The stored matrix, not a dequantised copy (Gallery.matrix is float32 even for int8).
    for name in ("_matrix", "_m", "_vectors", "matrix", "vectors"):
        m = getattr(g, name, None)
        if isinstance(m, np.ndarray) and m.ndim == 2:
            return int(m.nbytes)
    return int(matrix.size * (1 if dtype == "int8" else 4))


if __name__ == "__main__":
    # The child of run(): figures as JSON on stdout.
    try:
        result = measure("--quick" in sys.argv[1:])
    except Missing as exc:
        result = {"status": "missing", "reason": str(exc)}
    print(json.dumps(result))
