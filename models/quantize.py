"""Full integer quantization of MobileFaceNet; runs inside the build venv (`.venv-build`).

The shipped MobileFaceNet is a dynamic-range file (int8 weights, float activations) converted
long ago from TF1. Three things stand between it and a fast int8 model on LiteRT:

1. its weights must be float again, because the quantizer starts from a float graph;
2. each PReLU was lowered to six ops (ABS, SUB, MUL, MUL, RELU, ADD); quantized one by one they
   lose precision and leave XNNPACK's fast path, so they are fused back into one PRELU op;
3. ai-edge-quantizer addresses models by SignatureDef, which this old file lacks.

Then a static int8 recipe (int8 weights and activations) is calibrated on aligned face crops;
the input is int8, the output (after a float L2 normalisation) float32.
Usage: python -m models.quantize SRC CALIB.npy FLOAT_OUT INT8_OUT
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.tools import flatbuffer_utils

log = logging.getLogger(__name__)

OP = fb.BuiltinOperator
SIGNATURE_KEY = "serving_default"


def _opcode(model, op) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _const(model, graph, t: int) -> np.ndarray | None:
    """The value of a constant tensor as float32, or None when the tensor is computed."""
    tensor = graph.tensors[t]
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        return None
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    shape = list(tensor.shape) if tensor.shape is not None else []
    if tensor.type == fb.TensorType.FLOAT32:
        return np.frombuffer(raw, np.float32).reshape(shape).copy()
    if tensor.type == fb.TensorType.INT8:
        q = tensor.quantization
        scale = np.asarray(q.scale, np.float32)
        zero = np.asarray(q.zeroPoint, np.float32)
        values = np.frombuffer(raw, np.int8).reshape(shape).astype(np.float32)
        if scale.size > 1:
            bshape = [1] * len(shape)
            bshape[q.quantizedDimension] = scale.size
            scale, zero = scale.reshape(bshape), zero.reshape(bshape)
        return (values - zero) * scale
    return None


def _set_float(model, graph, t: int, value: np.ndarray) -> None:
    """Point tensor t at a fresh float32 buffer holding value."""
    tensor = graph.tensors[t]
    buf = fb.BufferT()
    buf.data = np.frombuffer(np.ascontiguousarray(value, np.float32).tobytes(), np.uint8)
    model.buffers.append(buf)
    tensor.buffer = len(model.buffers) - 1
    tensor.type = fb.TensorType.FLOAT32
    tensor.shape = np.asarray(value.shape, np.int32)
    tensor.quantization = None


def dequantize_weights(model) -> int:
    """Turn every int8 constant (dynamic-range weight) back into float32; returns the count."""
    graph = model.subgraphs[0]
    count = 0
    for t, tensor in enumerate(graph.tensors):
        if tensor.type != fb.TensorType.INT8:
            continue
        value = _const(model, graph, t)
        if value is not None:
            _set_float(model, graph, t, value)
            count += 1
    # Hybrid kernels are versioned for int8 weights; float kernels want version 1.
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) in (
            OP.CONV_2D,
            OP.DEPTHWISE_CONV_2D,
            OP.FULLY_CONNECTED,
        ):
            code.version = 1
    return count


def _prelu_code(model) -> int:
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == OP.PRELU:
            return i
    code = fb.OperatorCodeT()
    code.builtinCode = OP.PRELU
    code.deprecatedBuiltinCode = OP.PRELU
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def fuse_prelu(model) -> int:
    """Replace relu(x) + alpha * 0.5 * (x - |x|) by PRELU(x, alpha); returns the count."""
    graph = model.subgraphs[0]
    ops = graph.operators
    producer = {o: i for i, op in enumerate(ops) for o in op.outputs}
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            consumers.setdefault(int(t), []).append(i)
    prelu = _prelu_code(model)
    dead: set[int] = set()
    fused = 0
    for i, add in enumerate(ops):
        if _opcode(model, add) != OP.ADD or len(add.inputs) != 2:
            continue
        kinds = {_opcode(model, ops[producer[t]]): t for t in add.inputs if t in producer}
        if set(kinds) != {OP.RELU, OP.MUL}:
            continue
        relu = ops[producer[kinds[OP.RELU]]]
        x = int(relu.inputs[0])
        chain = [producer[kinds[OP.RELU]], producer[kinds[OP.MUL]]]
        # Walk MUL(MUL(SUB(x, ABS(x)), alpha), half) back to x, multiplying the constants.
        scale = np.float32(1.0)
        op = ops[chain[-1]]
        while _opcode(model, op) == OP.MUL:
            consts = [_const(model, graph, t) for t in op.inputs]
            k = next((c for c in consts if c is not None), None)
            src = next((int(t) for t, c in zip(op.inputs, consts, strict=True) if c is None), None)
            if k is None or src is None or src not in producer:
                break
            scale = scale * k
            chain.append(producer[src])
            op = ops[chain[-1]]
        if _opcode(model, op) != OP.SUB or int(op.inputs[0]) != x:
            continue
        abs_i = producer.get(int(op.inputs[1]))
        if abs_i is None or _opcode(model, ops[abs_i]) != OP.ABS or int(ops[abs_i].inputs[0]) != x:
            continue
        chain.append(abs_i)
        # Intermediate results must not be used outside the pattern.
        inner = {int(o) for c in chain for o in ops[c].outputs}
        if any(j not in chain and j != i for t in inner for j in consumers.get(t, [])):
            continue
        # x - |x| = 2 min(x, 0), so the negative slope is 2 * (product of the constants).
        alpha = (2.0 * scale).astype(np.float32).reshape(-1)
        alpha_t = fb.TensorT()
        alpha_t.name = (graph.tensors[int(add.outputs[0])].name or b"prelu") + b"/alpha"
        graph.tensors.append(alpha_t)
        _set_float(model, graph, len(graph.tensors) - 1, alpha)
        new = fb.OperatorT()
        new.opcodeIndex = prelu
        new.inputs = np.asarray([x, len(graph.tensors) - 1], np.int32)
        new.outputs = np.asarray(add.outputs, np.int32)
        ops[i] = new
        dead.update(chain)
        fused += 1
    graph.operators = [op for j, op in enumerate(ops) if j not in dead]
    return fused


def prune(model) -> None:
    """Drop tensors and buffers nothing uses (the quantizer trips over orphan tensors)."""
    graph = model.subgraphs[0]
    used = {int(t) for op in graph.operators for t in list(op.inputs) + list(op.outputs) if t >= 0}
    used |= {int(t) for t in graph.inputs} | {int(t) for t in graph.outputs}
    keep = sorted(used)
    remap = {old: new for new, old in enumerate(keep)}
    graph.tensors = [graph.tensors[t] for t in keep]

    def _map(ts):
        return np.asarray([remap[int(t)] if t >= 0 else -1 for t in ts], np.int32)

    for op in graph.operators:
        op.inputs, op.outputs = _map(op.inputs), _map(op.outputs)
    graph.inputs, graph.outputs = _map(graph.inputs), _map(graph.outputs)
    buffers = sorted({t.buffer for t in graph.tensors} | {0})
    bremap = {old: new for new, old in enumerate(buffers)}
    model.buffers = [model.buffers[b] for b in buffers]
    for t in graph.tensors:
        t.buffer = bremap[t.buffer]
    model.metadata = None
    model.metadataBuffer = None


def add_signature(model) -> None:
    """Name the single input and output in a SignatureDef, as the quantizer expects."""
    graph = model.subgraphs[0]

    def _maps(ts):
        out = []
        for t in ts:
            m = fb.TensorMapT()
            m.name = graph.tensors[int(t)].name
            m.tensorIndex = int(t)
            out.append(m)
        return out

    sig = fb.SignatureDefT()
    sig.inputs, sig.outputs = _maps(graph.inputs), _maps(graph.outputs)
    sig.signatureKey = SIGNATURE_KEY
    sig.subgraphIndex = 0
    model.signatureDefs = [sig]


def make_float(src: bytes) -> tuple[bytes, dict]:
    """Float32 MobileFaceNet with fused PReLU and a signature, plus counts for the log."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(src))
    weights = dequantize_weights(model)
    fused = fuse_prelu(model)
    prune(model)
    add_signature(model)
    out = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return out, {"weights_dequantized": weights, "prelu_fused": fused}


def _round_sig(a, digits: int = 3) -> np.ndarray:
    a = np.asarray(a, np.float64)
    exp = np.floor(np.log10(np.where(a == 0, 1.0, np.abs(a))))
    step = 10.0 ** (exp - digits + 1)
    return (np.round(a / step) * step).astype(np.float32)


def _pin_range(calib: dict, tensor: str, lo: float, hi: float) -> None:
    qsv = calib[tensor]
    qsv["min"] = np.full_like(np.asarray(qsv["min"], np.float32), lo)
    qsv["max"] = np.full_like(np.asarray(qsv["max"], np.float32), hi)


def quantize_int8(float_model: bytes, crops: np.ndarray) -> bytes:
    """Static int8 (weights and activations), calibrated on aligned uint8 RGB crops."""
    from ai_edge_quantizer import quantizer, recipe

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(float_model))
    name = model.signatureDefs[0].inputs[0].name
    name = name.decode() if isinstance(name, bytes) else name
    x = (crops.astype(np.float32) - 127.5) / 128.0
    samples = [{name: x[i : i + 1]} for i in range(len(x))]
    qt = quantizer.Quantizer(bytearray(float_model))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    calib = qt.calibrate({SIGNATURE_KEY: samples}, num_threads=2)
    # Ranges rounded to 3 significant digits: float noise between machines (SIMD width, BLAS)
    # then no longer changes the file, so one source state gives one sha256 and one model id.
    for qsv in calib.values():
        for k in ("min", "max"):
            if k in qsv:
                qsv[k] = _round_sig(qsv[k])
    # Pin the input range to the full normalised pixel range, so that quantizing the input is
    # a plain shift of the uint8 pixels, whatever the calibration crops happened to contain.
    _pin_range(calib, name, -127.5 / 128.0, 127.5 / 128.0)
    result = qt.quantize(calib, enable_progress_report=False)
    return bytes(result.quantized_model)


def float_output(model_bytes: bytes) -> bytes:
    """Drop the QUANTIZE after the (float) L2 normalisation: the embedding leaves as float32.

    The quantizer runs L2_NORMALIZATION in float and re-quantizes its unit vector to int8, which
    only adds rounding noise; the caller wants a float unit vector anyway.
    """
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    graph = model.subgraphs[0]
    out = int(graph.outputs[0])
    idx, op = next((i, op) for i, op in enumerate(graph.operators) if out in list(op.outputs))
    src = int(op.inputs[0])
    if _opcode(model, op) != OP.QUANTIZE or graph.tensors[src].type != fb.TensorType.FLOAT32:
        return model_bytes
    graph.operators.pop(idx)
    graph.outputs = np.asarray([src], np.int32)
    model.signatureDefs[0].outputs[0].tensorIndex = src
    prune(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def main(argv: list[str]) -> int:
    src, calib, float_out, int8_out = (Path(a) for a in argv)
    float_model, counts = make_float(src.read_bytes())
    float_out.write_bytes(float_model)
    crops = np.load(calib)
    int8_out.write_bytes(float_output(quantize_int8(float_model, crops)))
    print(json.dumps({**counts, "calibration_crops": int(len(crops))}))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv[1:]))
