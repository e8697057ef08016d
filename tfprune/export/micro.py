"""TensorFlow Lite Micro: C sources, op resolver, op support, arena size, runs.

Everything that executes TFLite Micro does so in a child process (`_micro_worker.py`): a
too-small arena can crash the interpreter's process, and the interpreter reports its arena use
only as text on the C-level stderr.

Example:

```python
from tfprune import export
tflite = export.to_tflite(model, calibration=x[:200])
arena = export.measure_arena(tflite)             # smallest arena that allocates and runs
source, header = export.to_c_array(tflite, "kws", arena=arena)
resolver = export.op_resolver_header(tflite, "kws")
```
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfprune.errors import (ExportError, InvalidExportOptionError, MicroRuntimeUnavailableError,
                            UnsupportedOpError)
from tfprune.export.flatbuffer import TfliteModel, quantize, source_layers

# Builtin ops the pinned tflite-micro build registers, and the `MicroMutableOpResolver`
# method that adds each. The set was read off the installed interpreter (a one-op model per
# builtin code); tests/export/test_micro_ops.py checks it against the interpreter again.
MICRO_OPS: Dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin", "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd", "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce", "CAST": "AddCast",
    "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEPTH_TO_SPACE": "AddDepthToSpace", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice", "ELU": "AddElu",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup", "EQUAL": "AddEqual", "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv", "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather", "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual", "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization", "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess", "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd", "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic", "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D", "MEAN": "AddMean",
    "MINIMUM": "AddMinimum", "MIRROR_PAD": "AddMirrorPad", "MUL": "AddMul", "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2",
    "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize", "READ_VARIABLE": "AddReadVariable",
    "REDUCE_ALL": "AddReduceAll", "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu", "RELU6": "AddRelu6", "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape",
    "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQRT": "AddSqrt", "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference", "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf",
    "TANH": "AddTanh", "TRANSPOSE": "AddTranspose", "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM", "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}

# Custom ops that TFLite Micro ships kernels for, by their custom code.
MICRO_CUSTOM_OPS: Dict[str, str] = {
    "TFLite_Detection_PostProcess": "AddDetectionPostprocess",
    "CIRCULAR_BUFFER": "AddCircularBuffer",
    "ethos-u": "AddEthosU",
}

# What Keras produces the ops TFLite Micro lacks, and what converts to ops it has instead
# (each replacement was converted with TF 2.21 and its ops checked against MICRO_OPS).
REPLACEMENTS: Dict[str, str] = {
    "GELU": ("keras.activations.gelu (exact or approximate=True: the converter fuses both into "
             "GELU) -> use 'relu' or 'hard_swish' (HARD_SWISH), or write an approximation out: "
             "x * keras.ops.sigmoid(1.702 * x) (LOGISTIC, MUL) or "
             "0.5 * x * (1 + keras.ops.tanh(0.7978845608 * (x + 0.044715 * x**3))) "
             "(TANH, MUL, ADD)"),
    "TILE": ("keras.layers.UpSampling2D(interpolation='nearest') and keras.ops.tile/repeat lower "
             "to TILE -> use keras.layers.Resizing(height * size, width * size, "
             "interpolation='nearest') (RESIZE_NEAREST_NEIGHBOR, the same values) or "
             "UpSampling2D(interpolation='bilinear') (RESIZE_BILINEAR)"),
    "POW": ("keras.ops.power with a non-integer exponent lowers to POW -> use keras.ops.square, "
            "keras.ops.sqrt or repeated keras.ops.multiply (SQUARE, SQRT, MUL)"),
    "CONV_3D": ("keras.layers.Conv3D -> fold the depth axis into the channels and use Conv2D"),
}

ARENA_STEP = 64
ARENA_MARGIN = 0.10
_ARENA_FIRST_PROBE = 16 << 20
_ARENA_LIMIT = 1 << 30
_WORKER = pathlib.Path(__file__).with_name("_micro_worker.py")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'")
_TOO_SMALL = re.compile(r"missing: \d+|available \d+")


def micro_available() -> bool:
    """Whether the TFLite Micro Python interpreter (`tflite-micro`) is installed.

    Example:

    ```python
    arena = measure_arena(int8_tflite) if micro_available() else None
    ```
    """
    return importlib.util.find_spec("tflite_micro") is not None


def _require_micro():
    if not micro_available():
        raise MicroRuntimeUnavailableError(
            "the TFLite Micro Python interpreter is not installed: the `tflite-micro` package "
            "ships wheels only for Linux x86-64 and CPython 3.10-3.13 (pip install tflite-micro "
            "there). C sources and the op resolver can still be generated without it.")


def check_name(name: str) -> str:
    """`name` if it is a C identifier (used in generated symbols), else a clear error."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidExportOptionError(
            f"name {name!r} is not a C identifier; it names the generated symbols "
            "(g_<name>_model_data): use letters, digits and '_', not starting with a digit")
    return name


# --- op support ----------------------------------------------------------------------------


def micro_unsupported_ops(tflite_bytes, model=None) -> List[dict]:
    """Ops of a flatbuffer that TFLite Micro has no kernel for, first use of each.

    Args:
        tflite_bytes: the flatbuffer.
        model: the Keras model it was converted from, to name the layers the ops came from.

    Returns:
        One dict per unsupported op name: `op`, `index` (first use), `layers` (Keras layer
        paths with their classes, when `model` is given) and `replacement` (or None).

    Example:

    ```python
    micro_unsupported_ops(to_tflite(model, int8=False), model)
    # [{'op': 'GELU', 'index': 3, 'layers': ['act (Activation)'], 'replacement': '...'}]
    ```
    """
    fb = TfliteModel(tflite_bytes)
    found: Dict[str, dict] = {}
    for op in fb.ops():
        known = MICRO_CUSTOM_OPS if op.custom else MICRO_OPS
        if op.name in known or op.name in found:
            continue
        found[op.name] = {"op": op.name, "index": op.index,
                          "layers": _describe_layers(op, model) if model is not None else [],
                          "replacement": REPLACEMENTS.get(op.name)}
    return list(found.values())


def _describe_layers(op, model) -> List[str]:
    from tfprune.graph.paths import find_layer

    return [f"{path} ({type(find_layer(model, path)).__name__})"
            for path in source_layers(op, model)]


def check_micro_ops(tflite_bytes, model=None, file_name: str = "the model") -> None:
    """Raises `UnsupportedOpError` naming each op TFLite Micro lacks, its layer and a fix.

    Args:
        tflite_bytes: the flatbuffer.
        model: the Keras model it came from (to name layers), or None.
        file_name: how the message refers to the flatbuffer.

    Raises:
        UnsupportedOpError: one line per missing op (see `micro_unsupported_ops`).

    Example:

    ```python
    check_micro_ops(int8_tflite, model, "model_int8.tflite")
    ```
    """
    missing = micro_unsupported_ops(tflite_bytes, model)
    if not missing:
        return
    lines = []
    for m in missing:
        where = f" from Keras layer {', '.join(m['layers'])}" if m["layers"] else ""
        fix = f"; {m['replacement']}" if m["replacement"] else "; no TFLite Micro op does this"
        lines.append(f"  {m['op']} (op {m['index']}{where}){fix}")
    raise UnsupportedOpError(
        f"{file_name} uses {len(missing)} op(s) that TFLite Micro has no kernel for:\n"
        + "\n".join(lines)
        + "\nTFLite Micro's builtin ops are listed in tfprune.export.MICRO_OPS.")


# --- C sources -----------------------------------------------------------------------------


def to_c_array(tflite_bytes, name: str, arena=None) -> Tuple[str, str]:
    """The flatbuffer as a TFLite Micro C++ source and header.

    The source defines `alignas(16) const unsigned char g_<name>_model_data[]` (TFLite Micro
    reads tensors in place, so the array must stay 16-byte aligned); the header declares it,
    with `constexpr unsigned int g_<name>_model_data_size`, and, when `arena` is given, the
    arena sizes to use (`alignas(16) uint8_t tensor_arena[g_<name>_arena_size];`). The files
    need no header beyond `<cstdint>`.

    Args:
        tflite_bytes: the flatbuffer.
        name: C identifier used in the symbols and file names (`<name>_model_data.h`).
        arena: an `ArenaSize` from `measure_arena`, or None.

    Returns:
        `(source, header)` texts, for `<name>_model_data.cc` and `<name>_model_data.h`.

    Example:

    ```python
    source, header = to_c_array(tflite_bytes, "resnet8")
    open("resnet8_model_data.cc", "w").write(source)
    ```
    """
    check_name(name)
    data = bytes(tflite_bytes)
    guard = f"TFPRUNE_{name.upper()}_MODEL_DATA_H_"
    header = [
        f"// {name}: TFLite flatbuffer ({len(data)} bytes) for TensorFlow Lite Micro.",
        "// Generated by tfprune; regenerate rather than edit.",
        f"#ifndef {guard}", f"#define {guard}", "", "#include <cstdint>", "",
        "// 16-byte aligned: TFLite Micro reads weights in place from this array.",
        f"extern const unsigned char g_{name}_model_data[];",
        f"constexpr unsigned int g_{name}_model_data_size = {len(data)};",
    ]
    if arena is not None:
        note = (f"Tensor arena: the smallest size with which this model allocated and ran in the "
                f"TFLite Micro interpreter (reference kernels, {arena.step}-byte steps), and the "
                f"size to use: {arena.margin_note}.")
        header += [
            "",
            *(f"// {line}" for line in textwrap.wrap(note, 92)),
            "// Declare it 16-byte aligned:",
            f"//   alignas(16) static uint8_t tensor_arena[g_{name}_arena_size];",
            f"constexpr unsigned int g_{name}_arena_min_size = {arena.bytes};",
            f"constexpr unsigned int g_{name}_arena_size = {arena.recommended};",
        ]
    header += ["", f"#endif  // {guard}", ""]
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12)]
    source = [
        f"// {name}: TFLite flatbuffer ({len(data)} bytes). Generated by tfprune.",
        f'#include "{name}_model_data.h"', "",
        f"alignas(16) const unsigned char g_{name}_model_data[] = {{",
        *(f"    {row}," for row in rows),
        "};", "",
    ]
    return "\n".join(source), "\n".join(header)


def op_resolver_header(tflite_bytes, name: str) -> str:
    """A header with a `tflite::MicroMutableOpResolver<N>` registering exactly the model's ops.

    One `AddXxx()` call per op the flatbuffer uses (in order of first use), `N` their number.

    Args:
        tflite_bytes: the flatbuffer.
        name: C identifier used in the symbols (`<name>_op_resolver_t`, `<name>_register_ops`).

    Returns:
        The text of `<name>_op_resolver.h`.

    Raises:
        UnsupportedOpError: an op has no TFLite Micro kernel.

    Example:

    ```python
    open("kws_op_resolver.h", "w").write(op_resolver_header(tflite_bytes, "kws"))
    # C++: kws_op_resolver_t resolver; kws_register_ops(resolver);
    ```
    """
    check_name(name)
    check_micro_ops(tflite_bytes)
    fb = TfliteModel(tflite_bytes)
    methods = list(dict.fromkeys(
        (MICRO_CUSTOM_OPS if op.custom else MICRO_OPS)[op.name] for op in fb.ops()))
    guard = f"TFPRUNE_{name.upper()}_OP_RESOLVER_H_"
    lines = [
        f"// {name}: the TFLite Micro ops this model uses, and no others. Generated by tfprune.",
        f"#ifndef {guard}", f"#define {guard}", "",
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"', "",
        f"constexpr unsigned int g_{name}_op_count = {len(methods)};",
        f"using {name}_op_resolver_t = tflite::MicroMutableOpResolver<{len(methods)}>;", "",
        f"inline TfLiteStatus {name}_register_ops({name}_op_resolver_t& resolver) {{",
        *(f"  if (resolver.{m}() != kTfLiteOk) return kTfLiteError;" for m in methods),
        "  return kTfLiteOk;", "}", "", f"#endif  // {guard}", "",
    ]
    return "\n".join(lines)


# --- running TFLite Micro in a child process -----------------------------------------------


def _worker(args: Sequence[str], timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(_WORKER), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _probe(model_path, size: int) -> subprocess.CompletedProcess:
    try:
        return _worker(["probe", model_path, size], timeout=120)
    except subprocess.TimeoutExpired as e:  # a hung interpreter counts as a failed probe
        return subprocess.CompletedProcess(e.cmd, returncode=-1, stdout="", stderr="timeout")


def _raise_for_model(result, what: str):
    missing = _MISSING_OP.findall(result.stderr)
    if missing:
        raise UnsupportedOpError(
            f"TFLite Micro has no kernel for {', '.join(dict.fromkeys(missing))} ({what}); "
            "see tfprune.export.MICRO_OPS")
    tail = "\n".join(result.stderr.strip().splitlines()[-8:])
    raise ExportError(
        f"TFLite Micro could not run the model ({what}; exit {result.returncode}):\n{tail}")


@dataclasses.dataclass(frozen=True)
class ArenaSize:
    """The TFLite Micro tensor arena a model needs.

    Attributes:
        bytes: the smallest multiple of `step` with which the interpreter allocates and runs.
        used_bytes: the allocator's own total at that point (`print_allocations()`).
        head_bytes: the non-persistent part (activation tensors, planned by the memory
            planner, and kernel scratch buffers).
        tail_bytes: the persistent part (tensor and node structs, kernel state).
        recommended: the size to give the arena on a device (see `margin_note`).
        step: search granularity in bytes.
        probes: how many child-process probes the search took.
    """

    bytes: int
    used_bytes: int
    head_bytes: int
    tail_bytes: int
    recommended: int
    step: int
    probes: int

    @property
    def margin_note(self) -> str:
        return (f"+{ARENA_MARGIN:.0%} rounded up to 1 KiB, for scratch buffers that optimised "
                "kernels (CMSIS-NN, ESP-NN) request and the reference kernels do not, and for "
                "allocator changes between TFLite Micro versions; 32-bit targets need slightly "
                "less than this 64-bit measurement (smaller pointers in persistent structs)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["margin"] = self.margin_note
        return d


def measure_arena(tflite_bytes, step: int = ARENA_STEP) -> ArenaSize:
    """The smallest tensor arena with which TFLite Micro allocates and runs the model.

    A first probe with a large arena reads the allocator's total; from there, steps that
    double bracket the answer and a binary search over multiples of `step` finds the
    smallest size that allocates and completes one `invoke()` on zeros (assuming that any
    larger arena works too). Every probe runs in its own child process, since a too-small
    arena may crash the interpreter.

    Args:
        tflite_bytes: the flatbuffer.
        step: granularity of the search in bytes (64 as in the benchmark protocol).

    Returns:
        An `ArenaSize`; `recommended` adds the margin described in `ArenaSize.margin_note`.

    Raises:
        MicroRuntimeUnavailableError: tflite-micro is not installed.
        UnsupportedOpError: the model uses an op TFLite Micro lacks.
        ExportError: the model does not run even with a 1 GiB arena.

    Example:

    ```python
    arena = measure_arena(tflite_bytes)
    arena.bytes, arena.recommended
    ```
    """
    _require_micro()
    if not isinstance(step, int) or step < 1:
        raise InvalidExportOptionError(f"step must be a positive number of bytes; got {step!r}")
    with tempfile.TemporaryDirectory(prefix="tfprune-arena-") as tmp:
        path = pathlib.Path(tmp) / "model.tflite"
        path.write_bytes(bytes(tflite_bytes))
        allocations: Dict[int, str] = {}  # size -> allocation text, for sizes that ran
        probes = []

        def runs(size):
            result = _probe(path, size)
            probes.append(size)
            if result.returncode == 0:
                allocations[size] = result.stderr
            return result

        size = _ARENA_FIRST_PROBE
        while (result := runs(size)).returncode != 0:
            if not _TOO_SMALL.search(result.stderr) or size >= _ARENA_LIMIT:
                _raise_for_model(result, f"arena of {size} bytes")
            size *= 4
        # Bracket the answer starting from the allocator's own total (close, but off by
        # alignment and planning for small models) with steps that double, then bisect.
        # Invariant: lo fails (0 always does), hi runs.
        guess = max(step, math.ceil(int(_TOTAL.search(result.stderr).group(1)) / step) * step)
        delta = step
        if runs(guess).returncode == 0:
            hi = guess
            while hi - delta > 0 and runs(hi - delta).returncode == 0:
                hi, delta = hi - delta, 2 * delta
            lo = max(0, hi - delta)
        else:
            lo = guess
            while lo + delta < size and runs(lo + delta).returncode != 0:
                lo, delta = lo + delta, 2 * delta
            hi = min(lo + delta, size)
        while hi - lo > step:
            mid = lo + (hi - lo) // (2 * step) * step
            lo, hi = (lo, mid) if runs(mid).returncode == 0 else (mid, hi)
    text = allocations[hi]
    recommended = int(math.ceil(hi * (1 + ARENA_MARGIN) / 1024) * 1024)
    return ArenaSize(bytes=hi, used_bytes=int(_TOTAL.search(text).group(1)),
                     head_bytes=int(_HEAD.search(text).group(1)),
                     tail_bytes=int(_TAIL.search(text).group(1)),
                     recommended=recommended, step=step, probes=len(probes))


def arena_runs(tflite_bytes, size: int) -> bool:
    """Whether TFLite Micro allocates and runs the model with a `size`-byte arena.

    Args:
        tflite_bytes: the flatbuffer.
        size: arena bytes.

    Returns:
        True when a child process created the interpreter and invoked it once on zeros.

    Example:

    ```python
    arena = measure_arena(int8_tflite)
    arena_runs(int8_tflite, arena.bytes), arena_runs(int8_tflite, arena.bytes - 1024)  # T, F
    ```
    """
    _require_micro()
    with tempfile.TemporaryDirectory(prefix="tfprune-arena-") as tmp:
        path = pathlib.Path(tmp) / "model.tflite"
        path.write_bytes(bytes(tflite_bytes))
        return _probe(path, int(size)).returncode == 0


def run_micro(tflite_bytes, inputs, arena_size: Optional[int] = None, repeat: int = 0,
              clock: str = "wall"):
    """Runs samples through TFLite Micro (reference kernels), in a child process.

    Args:
        tflite_bytes: the flatbuffer.
        inputs: an array of samples for a one-input model, or a list with one per input;
            float data is quantized to an integer input's scale and zero point.
        arena_size: arena bytes (default: 16 MiB).
        repeat: after the run, time this many invokes of the first batch.
        clock: `"wall"` (elapsed time) or `"cpu"` (CPU time of the invoking thread).

    Returns:
        `(outputs, median_ms)`: one array per model output (raw, e.g. int8), stacked over
        samples, and the median invoke time in milliseconds (NaN when `repeat` is 0).

    Example:

    ```python
    (y,), ms = run_micro(int8_tflite, x[:100], arena_size=arena.bytes, repeat=50)
    ```
    """
    _require_micro()
    fb = TfliteModel(tflite_bytes)
    arrays, n, batch = _feed(fb, inputs)
    with tempfile.TemporaryDirectory(prefix="tfprune-micro-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "model.tflite").write_bytes(bytes(tflite_bytes))
        np.savez(tmp / "in.npz", **{f"in{k}": a for k, a in enumerate(arrays)})
        result = _worker(["run", tmp / "model.tflite", arena_size or _ARENA_FIRST_PROBE,
                          tmp / "in.npz", tmp / "out.npz", len(fb.main.outputs), batch, repeat,
                          clock])
        if result.returncode != 0:
            _raise_for_model(result, f"arena of {arena_size or _ARENA_FIRST_PROBE} bytes")
        with np.load(tmp / "out.npz") as data:
            outputs = [data[f"out{j}"][:n] for j in range(len(fb.main.outputs))]
            return outputs, float(data["time_ms"])


def trace_micro(tflite_bytes, inputs) -> Dict[int, np.ndarray]:
    """Every op output of the first batch of `inputs` in TFLite Micro, by tensor index.

    Keeping every tensor defeats the arena's reuse of memory, so this runs with a 16 MiB
    arena whatever the model's measured size.

    Args:
        tflite_bytes: the flatbuffer.
        inputs: samples as for `run_micro`; only the first batch is run.

    Returns:
        `{tensor index: array}` for the outputs of every op of the first subgraph.

    Example:

    ```python
    tensors = trace_micro(int8_tflite, x[:1])
    op = TfliteModel(int8_tflite).main.ops[0]
    tensors[op.outputs[0].index].shape
    ```
    """
    _require_micro()
    fb = TfliteModel(tflite_bytes)
    arrays, _, batch = _feed(fb, inputs)
    tensors = {t.index: t for op in fb.main.ops for t in op.outputs}
    with tempfile.TemporaryDirectory(prefix="tfprune-micro-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "model.tflite").write_bytes(bytes(tflite_bytes))
        np.savez(tmp / "in.npz", **{f"in{k}": a[:batch] for k, a in enumerate(arrays)})
        result = _worker(["trace", tmp / "model.tflite", _ARENA_FIRST_PROBE, tmp / "in.npz",
                          tmp / "out.npz", *tensors])
        if result.returncode != 0:
            _raise_for_model(result, f"arena of {_ARENA_FIRST_PROBE} bytes, all tensors kept")
        with np.load(tmp / "out.npz") as data:
            return {i: data[f"t{i}"].reshape(t.shape) for i, t in tensors.items()}


def _feed(fb: TfliteModel, inputs) -> Tuple[List[np.ndarray], int, int]:
    """Inputs quantized to the model's input tensors and padded to a multiple of its batch."""
    tensors = fb.main.inputs
    arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if len(arrays) != len(tensors):
        raise ExportError(f"the model has {len(tensors)} input(s); got {len(arrays)} array(s)")
    batch = tensors[0].shape[0] if tensors[0].shape else 1
    out = []
    for x, t in zip(arrays, tensors):
        x = np.asarray(x)
        if tuple(x.shape[1:]) != tuple(t.shape[1:]):
            raise ExportError(f"input {t.name!r} takes samples of shape {tuple(t.shape[1:])}; "
                              f"got {tuple(x.shape[1:])}")
        out.append(quantize(x, t))
    n = len(out[0])
    pad = (-n) % batch
    if pad:
        out = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in out]
    return out, n, batch
