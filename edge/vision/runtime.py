"""TFLite interpreter shim: LiteRT first, tflite-runtime as the fallback.

LiteRT (``ai_edge_litert``) is maintained and runs int8 models on XNNPACK far faster than the
frozen tflite-runtime; a Pi that already has tflite-runtime still works.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

try:
    from ai_edge_litert.interpreter import Interpreter as _Interpreter

    RUNTIME = "ai-edge-litert"
except ModuleNotFoundError:  # pragma: no cover - depends on the machine
    try:
        from tflite_runtime.interpreter import Interpreter as _Interpreter

        RUNTIME = "tflite-runtime"
    except ModuleNotFoundError:
        _Interpreter = None
        RUNTIME = "none"


def load_interpreter(model: bytes, threads: int = 1):
    """Parse model bytes into an interpreter whose tensors are not allocated yet.

    Its input and output details are readable; ``invoke`` needs ``allocate_tensors`` first.
    """
    if _Interpreter is None:
        raise RuntimeError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)")
    return _Interpreter(model_content=model, num_threads=threads)


def make_interpreter(model: bytes, threads: int = 1):
    """Build and allocate an interpreter from model bytes (loaded once, reused per frame)."""
    interp = load_interpreter(model, threads)
    interp.allocate_tensors()
    return interp


class TensorIO:
    """One loaded model with its single input and its outputs, addressed by index."""

    def __init__(self, model: bytes, threads: int = 1) -> None:
        self.interp = make_interpreter(model, threads)
        self.input = self.interp.get_input_details()[0]
        self.outputs = self.interp.get_output_details()
        scale, zero = self.input.get("quantization", (0.0, 0))
        self._in_q = (scale, zero) if self.input["dtype"] in (np.int8, np.uint8) and scale else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"])

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run on a float32 batch; quantizes the input when the model wants integers."""
        if self._in_q is not None:
            scale, zero = self._in_q
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.input["dtype"])
        self.interp.set_tensor(self.input["index"], x)
        self.interp.invoke()
        outs = []
        for d in self.outputs:
            y = self.interp.get_tensor(d["index"])
            scale, zero = d.get("quantization", (0.0, 0))
            if d["dtype"] in (np.int8, np.uint8) and scale:
                y = (y.astype(np.float32) - zero) * scale
            outs.append(y)
        return outs
