"""Checks of built models on LiteRT: tensor specs, embeddings, agreement and timing."""

from __future__ import annotations

import time

import numpy as np

from edge.vision.runtime import TensorIO, make_interpreter


def _spec(detail: dict) -> dict:
    spec = {
        "name": detail["name"],
        "shape": [int(v) for v in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
    }
    scale, zero = detail.get("quantization", (0.0, 0))
    if scale:
        spec["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
    return spec


def tensor_specs(model: bytes) -> tuple[list[dict], list[dict]]:
    """Input and output specs (name, shape, dtype, and int8 quantization where it applies)."""
    interp = make_interpreter(model, 1)
    return (
        [_spec(d) for d in interp.get_input_details()],
        [_spec(d) for d in interp.get_output_details()],
    )


def embed(model: bytes, crops: np.ndarray) -> np.ndarray:
    """L2-normalised embeddings of uint8 aligned crops (int8 models dequantized by TensorIO)."""
    io = TensorIO(model, 1)
    x = (crops.astype(np.float32) - 127.5) / 128.0
    out = np.stack([io.run(x[i : i + 1])[0].reshape(-1) for i in range(len(x))])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean and min cosine between matching rows of two unit-vector matrices."""
    cos = np.sum(a * b, axis=1)
    return {
        "crops": int(len(cos)),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
    }


def time_models(models: dict[str, bytes], runs: int = 30) -> dict[str, float]:
    """Milliseconds per invoke on 1 thread, interleaved so load on the machine hits all alike.

    The best of ``runs`` is reported: it is the least disturbed by other processes.
    """
    rng = np.random.default_rng(0)
    ios, inputs = {}, {}
    for name, model in models.items():
        io = TensorIO(model, 1)
        ios[name] = io
        inputs[name] = rng.uniform(-1, 1, io.input_shape).astype(np.float32)
        io.run(inputs[name])  # the first invoke prepares the delegate
    best = dict.fromkeys(models, float("inf"))
    for _ in range(runs):
        for name, io in ios.items():
            t0 = time.perf_counter()
            io.run(inputs[name])
            best[name] = min(best[name], (time.perf_counter() - t0) * 1000)
    return {name: round(ms, 2) for name, ms in best.items()}
