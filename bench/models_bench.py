"""Bare interpreter time of each model (invoke only, no pre- or post-processing).

Set beside the pipeline's stage figures, this shows how much of a stage is the network and how
much is the Python around it, and what a second thread buys for each model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from bench.common import Context, load_store, require_module
from bench.pipeline_bench import _float_model, _pin, base_config
from bench.stats import summarise_ms

MODELS = ("detector", "landmarks", "embedder_int8", "embedder_dynamic", "pad_v2", "pad_v1se")


def invoke_ms(model: bytes, threads: int, repeat: int) -> tuple[list[float], dict]:
    """Milliseconds of ``invoke()`` on a random input of the model's own shape and type."""
    runtime = require_module("edge.vision.runtime", "lead")
    interp = runtime.make_interpreter(model, threads)
    inp = interp.get_input_details()[0]
    rng = np.random.default_rng(0)
    shape = [int(d) for d in inp["shape"]]
    if np.issubdtype(inp["dtype"], np.integer):
        info = np.iinfo(inp["dtype"])
        x = rng.integers(info.min, info.max, shape, dtype=inp["dtype"])
    else:
        x = rng.uniform(-1, 1, shape).astype(inp["dtype"])
    interp.set_tensor(inp["index"], x)
    interp.invoke()  # the first invoke packs weights for XNNPACK: not a per-frame cost
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        interp.invoke()
        out.append((time.perf_counter() - t0) * 1000.0)
    spec = {"input": shape, "dtype": np.dtype(inp["dtype"]).name, "bytes": len(model)}
    return out, spec


def run(ctx: Context) -> dict:
    """Invoke milliseconds per model at one thread (one core) and at all cores."""
    cfg = base_config(ctx)
    models_dir = Path(cfg.models.dir)
    store = load_store(models_dir)
    repeat = 15 if ctx.opts.quick else 100
    names = [n for n in MODELS if n in store.names()]
    blobs = {n: store.bytes(n) for n in names}
    float_bytes, _ = _float_model(store, models_dir)
    if float_bytes is not None:
        blobs["embedder_float"] = float_bytes
    threads_list = [1] if ctx.opts.cores <= 1 else [1, ctx.opts.cores]
    out: dict = {"status": "ok", "repeat": repeat, "models": {}}
    for name, blob in blobs.items():
        row: dict = {}
        for threads in threads_list:
            old = _pin(threads == 1 and ctx.opts.pin)
            try:
                ms, spec = invoke_ms(blob, threads, repeat)
            finally:
                os.sched_setaffinity(0, old)
            row[f"{threads}t"] = summarise_ms(ms)
            row["spec"] = spec
        out["models"][name] = row
    return out
