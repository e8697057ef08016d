"""Edge TPU readiness, checked on the flatbuffer (the Edge TPU compiler is not needed).

The Edge TPU compiler maps a model's ops to the TPU in execution order up to the first op it
cannot map; that op and everything after it run on the host CPU. The checks below are the
documented requirements (coral.ai, "TensorFlow models on the Edge TPU"): one subgraph; every
tensor int8/uint8 (biases int32, and int32 constant parameters such as shapes and axes);
static shapes; at most 3 dimensions larger than 1, the innermost ones; only supported ops,
within their limitations. A model that passes is very likely to compile fully; the compiler
remains the final word (e.g. on large reshapes or on resizes it maps only for some sizes).

Example:

```python
from tfprune.export import edgetpu_check
result = edgetpu_check(int8_tflite)
result.ready, result.issues, result.first_unsupported
```
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional

from tfprune.export.flatbuffer import Op, TfliteModel, Tensor, source_layers

# Ops the Edge TPU compiler maps, with the limitation it documents ("" when none).
EDGETPU_OPS: Dict[str, str] = {
    "ADD": "", "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation function; a constant input must be all zeros, with "
                     "only 2 inputs",
    "CONV_2D": "same dilation in x and y", "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "", "FULLY_CONNECTED": "default weights format; output is one-dimensional",
    "L2_NORMALIZATION": "", "LOGISTIC": "", "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional only",
    "MAXIMUM": "", "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction in the batch dimension; a z-reduction needs z a multiple of 4",
    "MINIMUM": "", "MUL": "", "PACK": "no packing in the batch dimension",
    "PAD": "no padding in the batch dimension",
    "PRELU": "alpha one-dimensional (Keras PReLU with shared_axes=[1, 2])", "QUANTIZE": "",
    "REDUCE_MAX": "not on the batch dimension", "REDUCE_MIN": "not on the batch dimension",
    "RELU": "", "RELU6": "", "RELU_N1_TO_1": "", "RESHAPE": "large reshapes may stay on the CPU",
    "RESIZE_BILINEAR": "3-D input/output; mapped only for some sizes",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output; mapped only for some sizes",
    "RSQRT": "", "SLICE": "", "SOFTMAX": "1-D input of at most 16,000 elements",
    "SPACE_TO_DEPTH": "", "SPLIT": "no split in the batch dimension", "SQUEEZE": "",
    "STRIDED_SLICE": "", "SUB": "", "SUM": "", "SQUARED_DIFFERENCE": "", "TANH": "",
    "TRANSPOSE": "", "TRANSPOSE_CONV": "",
}

_NO_FUSED_ACTIVATION = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
_QUANTIZED = {"INT8", "UINT8"}
# Inputs that are parameters rather than data: the bias of weighted ops (int32 by design)
# and integer shape/axis/padding constants.
_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}


@dataclasses.dataclass(frozen=True)
class EdgeTpuReport:
    """Result of `edgetpu_check`.

    Attributes:
        ready: no issue found: the compiler should map every op.
        issues: every problem found, as text.
        ops: per op in execution order: `index`, `op`, `mapped` (bool) and `reason`.
        first_unsupported: the op where the compiler would stop mapping (`index`, `op`,
            `reason`, `layers`), or None.
        mapped_ops: how many ops run on the Edge TPU before it.
        total_ops: ops in the model.
    """

    ready: bool
    issues: List[str]
    ops: List[dict]
    first_unsupported: Optional[dict]
    mapped_ops: int
    total_ops: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _tensor_issues(op: Op, tensor: Tensor, position: Optional[int]) -> List[str]:
    issues = []
    what = f"tensor {tensor.name.split(';')[0]!r} ({tensor.dtype}, shape {list(tensor.shape)})"
    if tensor.constant:
        parameter = tensor.dtype == "INT32" and (
            position == _BIAS_INPUT.get(op.name) or op.name not in _BIAS_INPUT)
        if tensor.dtype not in _QUANTIZED and not parameter:
            issues.append(f"{what} is not int8")
        return issues
    if tensor.dtype not in _QUANTIZED:
        issues.append(f"{what} is not int8")
    if tensor.dynamic:
        issues.append(f"{what} has a dynamic shape {list(tensor.shape_signature)}")
    if any(d != 1 for d in tensor.shape[:-3]):
        issues.append(f"{what} has more than 3 dimensions larger than 1 (only the 3 innermost "
                      "may be)")
    return issues


def _op_issues(op: Op) -> List[str]:
    if op.custom or op.name not in EDGETPU_OPS:
        return [f"op {op.name} is not supported by the Edge TPU"]
    issues = []
    if op.name in _NO_FUSED_ACTIVATION and op.fused_activation not in (None, "NONE"):
        issues.append(f"{op.name} with fused activation {op.fused_activation}")
    if op.name == "SOFTMAX" and op.inputs:
        shape = op.inputs[0].shape
        if sum(d != 1 for d in shape) > 1 or math.prod(shape) > 16000:
            issues.append(f"SOFTMAX input of shape {list(shape)} (needs 1-D, <= 16,000 elements)")
    if op.name == "FULLY_CONNECTED" and op.outputs and sum(d != 1 for d in op.outputs[0].shape) > 1:
        issues.append(f"FULLY_CONNECTED output of shape {list(op.outputs[0].shape)} is not 1-D")
    for k, t in enumerate(op.inputs):
        issues += _tensor_issues(op, t, k)
    for t in op.outputs:
        issues += _tensor_issues(op, t, None)
    return issues


def edgetpu_check(tflite_bytes, model=None) -> EdgeTpuReport:
    """Checks a flatbuffer against the Edge TPU compiler's documented requirements.

    Args:
        tflite_bytes: a full-integer flatbuffer.
        model: the Keras model it came from, to name the layer where mapping would stop.

    Returns:
        An `EdgeTpuReport`.

    Example:

    ```python
    report = edgetpu_check(int8_tflite)
    if not report.ready:
        print(report.first_unsupported)
    ```
    """
    fb = TfliteModel(tflite_bytes)
    issues: List[str] = []
    if len(fb.subgraphs) != 1:
        issues.append(f"{len(fb.subgraphs)} subgraphs (the Edge TPU compiler supports one)")
    ops, first = [], None
    for op in fb.main.ops:
        problems = list(dict.fromkeys(_op_issues(op)))
        reason = "; ".join(problems)
        ops.append({"index": op.index, "op": op.name, "mapped": first is None and not problems,
                    "reason": reason or (f"after the first unsupported op ({first['index']})"
                                         if first else "")})
        if problems:
            issues += [f"op {op.index} {op.name}: {p}" for p in problems]
            if first is None:
                first = {"index": op.index, "op": op.name, "reason": reason,
                         "layers": source_layers(op, model) if model is not None else []}
    mapped = sum(o["mapped"] for o in ops)
    return EdgeTpuReport(ready=not issues, issues=issues, ops=ops, first_unsupported=first,
                         mapped_ops=mapped if len(fb.subgraphs) == 1 else 0,
                         total_ops=len(ops))
