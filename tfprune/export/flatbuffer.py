"""Reading a `.tflite` flatbuffer: its ops, tensors, and the Keras layers they came from.

The schema is the one `ai_edge_litert` ships (`ai_edge_litert.schema_py_generated`), so no
interpreter is needed to inspect a model. Operators are listed in execution order, which is
the order TFLite, TFLite Micro and the Edge TPU compiler walk them.

Example:

```python
from tfprune.export import TfliteModel
fb = TfliteModel(open("model_int8.tflite", "rb").read())
print(fb.op_names())                 # ['CONV_2D', 'ADD', 'AVERAGE_POOL_2D', ...]
print(fb.subgraphs[0].ops[0].outputs[0].name)
```
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfprune.errors import ExportError

try:  # the flatbuffer schema of the installed LiteRT
    from ai_edge_litert import schema_py_generated as _schema
except ImportError as e:  # pragma: no cover - ai-edge-litert is a hard dependency
    raise ImportError("tfprune.export needs ai-edge-litert: pip install ai-edge-litert") from e

OP_NAMES: Dict[int, str] = {code: name for name, code in vars(_schema.BuiltinOperator).items()
                            if not name.startswith("_")}
TYPE_NAMES: Dict[int, str] = {code: name for name, code in vars(_schema.TensorType).items()
                              if not name.startswith("_")}
_ACTIVATIONS: Dict[int, str] = {code: name for name, code in
                                vars(_schema.ActivationFunctionType).items()
                                if not name.startswith("_")}
_TFLITE_IDENTIFIER = b"TFL3"


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of a subgraph.

    Attributes:
        index: index in its subgraph.
        name: the converter's name; fused ops join the names of their TF ops with `;`.
        shape: static shape.
        shape_signature: shape with `-1` for dynamic dimensions, or None when fully static.
        dtype: type name from the schema, e.g. `"INT8"`, `"INT32"`, `"FLOAT32"`.
        constant: True when the tensor has data in the flatbuffer (weights, biases, shapes).
        scales, zero_points: quantization parameters (empty when not quantized).
    """

    index: int
    name: str
    shape: Tuple[int, ...]
    shape_signature: Optional[Tuple[int, ...]]
    dtype: str
    constant: bool
    scales: Tuple[float, ...] = ()
    zero_points: Tuple[int, ...] = ()

    @property
    def dynamic(self) -> bool:
        return self.shape_signature is not None and any(d < 0 for d in self.shape_signature)


@dataclasses.dataclass(frozen=True)
class Op:
    """One operator, in execution order.

    Attributes:
        index: position in its subgraph's execution order.
        name: builtin op name (`"CONV_2D"`), or the custom code of a custom op.
        custom: True for custom ops (and Flex ops, whose codes start with `"Flex"`).
        version: operator version.
        inputs, outputs: the tensors (optional inputs that are absent are left out).
        fused_activation: `"NONE"`, `"RELU"`, ... for ops with a fused activation, else None.
        options: the builtin options object of the schema (or None).
    """

    index: int
    name: str
    custom: bool
    version: int
    inputs: Tuple[Tensor, ...]
    outputs: Tuple[Tensor, ...]
    fused_activation: Optional[str]
    options: object = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Subgraph:
    """A subgraph: its tensors, ops in execution order, inputs and outputs."""

    tensors: Tuple[Tensor, ...]
    ops: Tuple[Op, ...]
    inputs: Tuple[Tensor, ...]
    outputs: Tuple[Tensor, ...]


class TfliteModel:
    """A parsed `.tflite` flatbuffer.

    Args:
        tflite_bytes: the flatbuffer (`bytes`, `bytearray` or `memoryview`).

    Raises:
        ExportError: when the bytes are not a TFLite flatbuffer.

    Example:

    ```python
    fb = TfliteModel(tflite_bytes)
    fb.op_names(), fb.op_counts(), len(fb.subgraphs)
    ```
    """

    def __init__(self, tflite_bytes):
        data = bytes(tflite_bytes)
        if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
            raise ExportError(
                f"not a TFLite flatbuffer ({len(data)} bytes, file identifier {data[4:8]!r}; "
                f"expected {_TFLITE_IDENTIFIER!r})")
        model = _schema.ModelT.InitFromObj(_schema.Model.GetRootAs(data, 0))
        self.size = len(data)
        self.subgraphs: Tuple[Subgraph, ...] = tuple(
            _read_subgraph(model, sg) for sg in (model.subgraphs or []))

    @property
    def main(self) -> Subgraph:
        """The first subgraph (the one an interpreter runs)."""
        return self.subgraphs[0]

    def ops(self) -> List[Op]:
        """Every op of every subgraph, subgraph by subgraph."""
        return [op for sg in self.subgraphs for op in sg.ops]

    def op_names(self) -> List[str]:
        """Distinct op names in order of first use."""
        return list(dict.fromkeys(op.name for op in self.ops()))

    def op_counts(self) -> Dict[str, int]:
        """How many times each op is used, in order of first use."""
        return dict(collections.Counter(op.name for op in self.ops()))


def _read_subgraph(model, sg) -> Subgraph:
    tensors = tuple(_read_tensor(model, i, t) for i, t in enumerate(sg.tensors or []))
    ops = []
    for k, op in enumerate(sg.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        custom = builtin == _schema.BuiltinOperator.CUSTOM
        name = (code.customCode.decode(errors="replace") if custom and code.customCode
                else OP_NAMES.get(builtin, f"BUILTIN_{builtin}"))
        activation = getattr(op.builtinOptions, "fusedActivationFunction", None)
        ops.append(Op(
            index=k, name=name, custom=custom, version=int(code.version),
            inputs=tuple(tensors[i] for i in _indices(op.inputs) if i >= 0),
            outputs=tuple(tensors[i] for i in _indices(op.outputs) if i >= 0),
            fused_activation=(None if activation is None
                              else _ACTIVATIONS.get(activation, str(activation))),
            options=op.builtinOptions))
    return Subgraph(tensors=tensors, ops=tuple(ops),
                    inputs=tuple(tensors[i] for i in _indices(sg.inputs)),
                    outputs=tuple(tensors[i] for i in _indices(sg.outputs)))


def _indices(values) -> List[int]:
    return [] if values is None else [int(v) for v in values]


def _read_tensor(model, index, t) -> Tensor:
    buffers = model.buffers or []
    buffer = buffers[t.buffer] if 0 < t.buffer < len(buffers) else None
    constant = buffer is not None and (
        (buffer.data is not None and len(buffer.data) > 0) or bool(getattr(buffer, "size", 0)))
    q = t.quantization
    scales = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else ()))
    zps = tuple(int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else ()))
    signature = None if t.shapeSignature is None else tuple(int(d) for d in t.shapeSignature)
    return Tensor(index=index, name=(t.name or b"").decode(errors="replace"),
                  shape=tuple(int(d) for d in (t.shape if t.shape is not None else ())),
                  shape_signature=signature, dtype=TYPE_NAMES.get(t.type, str(t.type)),
                  constant=constant, scales=scales, zero_points=zps)


# --- from ops back to Keras layers ---------------------------------------------------------

_SUFFIX = re.compile(r"^(.*)_\d+$")


def source_layers(op: Op, model) -> List[str]:
    """Paths of the Keras layers an op was converted from, most specific first.

    The converter names an op's output after the TF ops it fused (`;`-separated), and those
    carry the Keras name scopes: `model_1/conv2d_1/convolution`. Tracing uniquifies scopes by
    appending `_<n>`, so a scope is matched to a layer named either the scope without that
    suffix or the scope itself, walking down through nested models.

    Args:
        op: an op of a flatbuffer converted from `model`.
        model: the Keras model.

    Returns:
        Layer paths (`"outer/inner"` in nested models), without duplicates; empty when no
        name maps to a layer.

    Example:

    ```python
    fb = TfliteModel(to_tflite(model, int8=False))
    source_layers(fb.main.ops[0], model)      # ['conv2d', 'batch_normalization', 'activation']
    ```
    """
    found: List[str] = []
    for tensor in op.outputs:
        for name in tensor.name.split(";"):
            path = _layer_path(model, name.split("/"))
            if path and path not in found:
                found.append(path)
    return found


def _match(model, scope: str):
    import keras

    names = {layer.name: layer for layer in model.layers
             if not isinstance(layer, keras.layers.InputLayer)}
    m = _SUFFIX.match(scope)
    if m and m.group(1) in names:
        return names[m.group(1)]
    return names.get(scope)


def _layer_path(model, scopes: Sequence[str]) -> Optional[str]:
    import keras

    node, prefix, path = model, "", None
    start = 1 if scopes and _is_scope_of(model.name, scopes[0]) else 0
    for scope in scopes[start:]:
        layer = _match(node, scope)
        if layer is None:
            break
        path = prefix + layer.name
        if not isinstance(layer, keras.Model):
            break
        node, prefix = layer, path + "/"
    return path


def _is_scope_of(name: str, scope: str) -> bool:
    m = _SUFFIX.match(scope)
    return scope == name or (m is not None and m.group(1) == name)


def quantize(x: np.ndarray, tensor: Tensor) -> np.ndarray:
    """`x` in a tensor's type: quantized with its scale and zero point when it is integer.

    Values already in the tensor's type are taken as quantized and passed through; any other
    type (float, or e.g. uint8 pixels for an int8 input) holds real values and is quantized.

    Args:
        x: values as the model takes them (e.g. raw pixels as float or uint8).
        tensor: the flatbuffer's input tensor.

    Returns:
        `clip(round(x / scale) + zero_point)` in the integer type, or `x` cast to a float type.

    Example:

    ```python
    q = quantize(pixels, TfliteModel(int8_tflite).main.inputs[0])   # pixel - 128 for resnet8
    ```
    """
    dtype = _NUMPY_TYPES.get(tensor.dtype)
    if dtype is None:
        raise ExportError(f"input tensor {tensor.name!r} has type {tensor.dtype}, which tfprune "
                          f"cannot feed; supported: {sorted(_NUMPY_TYPES)}")
    x = np.asarray(x)
    if np.issubdtype(dtype, np.integer) and tensor.scales and x.dtype != dtype:
        info = np.iinfo(dtype)
        q = np.round(x.astype(np.float64) / tensor.scales[0]) + tensor.zero_points[0]
        return np.clip(q, info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize(q: np.ndarray, tensor: Tensor) -> np.ndarray:
    """Float values of a tensor's integer data: `(q - zero_point) * scale`.

    Args:
        q: output values (e.g. int8).
        tensor: the flatbuffer's output tensor.

    Returns:
        float32 values (`q` cast to float32 when the tensor is not quantized).

    Example:

    ```python
    (y,) = run_tflite(int8_tflite, x)
    probabilities = dequantize(y, TfliteModel(int8_tflite).main.outputs[0])
    ```
    """
    q = np.asarray(q)
    if tensor.scales and np.issubdtype(q.dtype, np.integer):
        return (q.astype(np.float32) - tensor.zero_points[0]) * np.float32(tensor.scales[0])
    return q.astype(np.float32)


_NUMPY_TYPES = {"FLOAT32": np.float32, "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16,
                "INT32": np.int32}
