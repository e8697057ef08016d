"""Counting rules: which layers do multiply-accumulates (MACs), how many, and for which weights.

Convention (the one of fvcore, Torch-Pruning's op counter and keras-flops, and of the published
counts of ResNet, VGG and MobileNet): only the multiply-accumulates of convolution and linear
layers count, and every one of them is a product of one kernel entry with one input value:

- `Conv1D/2D/3D` (grouped too): kernel entries x output positions,
- `Conv1DTranspose/2DTranspose/3DTranspose`: kernel entries x *input* positions (each input value
  meets every kernel entry once; no product with an inserted zero counts),
- `DepthwiseConv1D/2D` (any `depth_multiplier`): kernel entries x output positions,
- `SeparableConv1D/2D`: (depthwise + pointwise kernel entries) x output positions,
- `Dense` on any rank: kernel entries x leading positions (every axis but batch and the last),
- `EinsumDense`: kernel entries x the output positions the kernel does not index.

Bias adds, normalization (BatchNormalization folds into the convolution before it on every
deployment target), activations, pooling, padding, resizing and elementwise merges (Add,
Multiply, Concatenate, ...) count zero. FLOPs are `2 x MACs`. Every weight counts towards
params and weight bytes whatever its layer. A layer that has weights but is not one of the
classes above and not one known to do no MACs (normalizations, PReLU, embeddings) is reported
as *uncounted*: its compute is missing from the totals.

Because the MACs of a layer are a sum over its kernel variables of `entries x positions`, and
removing channels changes the entries but not the positions, the same table gives the cost of
a model with channels removed (see `CostModel`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from tfprune.errors import ProfileError
from tfprune.graph._keras_graph import trace
from tfprune.graph.paths import SEP, iter_layers

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
         keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_CONV_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                   keras.layers.Conv3DTranspose)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
# Layers with weights that do no multiply-accumulate under the convention.
_NO_MACS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
            keras.layers.GroupNormalization, keras.layers.RMSNormalization,
            keras.layers.Normalization, keras.layers.PReLU, keras.layers.Embedding)


@dataclasses.dataclass(frozen=True, eq=False)
class LayerCount:
    """What one (non-model) layer of a model costs per model call.

    Attributes:
        path: layer path (`"outer/inner"` inside nested models).
        layer: the layer.
        output_shapes: output shapes of its first call, batch axis included.
        calls: how many times the layer runs per model call (shared layers, nested models
            called several times).
        positions: `{id(variable): positions}` for the kernels that do MACs: each entry of the
            variable is multiplied `positions` times per model call (calls and batch included).
        counted: False for a layer with weights whose compute the convention does not know.
    """

    path: str
    layer: keras.layers.Layer
    output_shapes: Tuple[Tuple[Optional[int], ...], ...]
    calls: int
    positions: Dict[int, int]
    counted: bool


@dataclasses.dataclass(frozen=True, eq=False)
class VariableCost:
    """One weight variable (counted once even if several layers hold it).

    Attributes:
        variable: the Keras variable.
        names: every `(layer path, variable.name)` that refers to it.
        shape: its shape.
        itemsize: bytes per entry in its dtype.
        trainable: whether it is trainable.
        positions: MACs per entry and model call (0 for biases, BN statistics, ...).
    """

    variable: keras.Variable
    names: Tuple[Tuple[str, str], ...]
    shape: Tuple[int, ...]
    itemsize: int
    trainable: bool
    positions: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def itemsize(variable) -> int:
    """Bytes per entry of a variable in its own dtype."""
    return tf.dtypes.as_dtype(variable.dtype).size


def _layer_calls(model) -> Dict[str, List[Tuple[list, list]]]:
    """`{layer path: [(input shapes, output shapes) per call]}` for the layers of `model`.

    A shared layer or a nested model called twice does its MACs at each call.
    """
    t = trace(model)
    calls: Dict[str, List[Tuple[list, list]]] = {}
    for call in t.calls:
        if isinstance(call.op, keras.Model):  # a nested model the trace keeps whole
            for path, shapes in _layer_calls(call.op).items():
                calls.setdefault(call.path + SEP + path, []).extend(shapes)
        elif call.is_layer:
            calls.setdefault(call.path, []).append(([t.shapes[k] for k in call.inputs],
                                                    [t.shapes[k] for k in call.outputs]))
    return calls


def _positions(shape, axes, path, layer, what) -> int:
    dims = [shape[a] for a in axes]
    if any(d is None for d in dims):
        raise ProfileError(
            f"layer {path!r} ({type(layer).__name__}) has {what} shape {tuple(shape)} with "
            "undefined dimensions, so its MACs cannot be counted; build the model with a fixed "
            "input shape, e.g. keras.Input((224, 224, 3))")
    return math.prod(dims)


def _spatial_axes(layer, rank) -> range:
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return range(2, rank)
    return range(1, rank - 1)


def _einsum_axes(equation: str, output_rank: int) -> List[int]:
    """Output axes (batch excluded) whose letter the kernel does not carry."""
    lhs, out = equation.replace(" ", "").split("->")
    kernel = lhs.split(",")[1]
    letters = list(out.replace("...", ""))
    if "..." in out:  # ellipsis axes are never indexed by the kernel
        n = output_rank - len(letters)
        head, _ = out.split("...")
        letters = list(head) + ["."] * n + letters[len(head):]
    return [a for a in range(1, output_rank) if letters[a] not in kernel]


def _mac_positions(layer, inputs, outputs, path) -> Optional[Dict[str, int]]:
    """`{variable name: positions}` for one call, `{}` if no MACs, None if unknown."""
    out = outputs[0]
    if isinstance(layer, _CONV_TRANSPOSE):
        shape = inputs[0]
        return {"kernel": _positions(shape, _spatial_axes(layer, len(shape)), path, layer, "input")}
    if isinstance(layer, _CONV):
        return {"kernel": _positions(out, _spatial_axes(layer, len(out)), path, layer, "output")}
    if isinstance(layer, _SEPARABLE):
        n = _positions(out, _spatial_axes(layer, len(out)), path, layer, "output")
        return {"depthwise_kernel": n, "pointwise_kernel": n}
    if isinstance(layer, keras.layers.Dense):
        shape = inputs[0]
        return {"kernel": _positions(shape, range(1, len(shape) - 1), path, layer, "input")}
    if isinstance(layer, keras.layers.EinsumDense):
        return {"kernel": _positions(out, _einsum_axes(layer.equation, len(out)), path, layer,
                                     "output")}
    if isinstance(layer, _NO_MACS) or not layer.weights:
        return {}
    return None


def count_layers(model, batch_size: int = 1) -> List[LayerCount]:
    """A `LayerCount` for every layer of `model` that is not itself a model, in layer order.

    Raises:
        UnsupportedModelError: `model` is not a built functional or Sequential Keras model.
        ProfileError: a counted layer has undefined spatial or leading dimensions.
    """
    calls = _layer_calls(model)
    counts = []
    for path, layer in iter_layers(model):
        if isinstance(layer, keras.Model):
            continue
        by_name: Dict[str, int] = {}
        counted = True
        for inputs, outputs in calls.get(path, []):
            per_call = _mac_positions(layer, inputs, outputs, path)
            if per_call is None:
                counted = False
                break
            for name, n in per_call.items():
                by_name[name] = by_name.get(name, 0) + n * batch_size
        positions = {id(v): by_name[v.name] for v in layer.weights if v.name in by_name}
        shapes = tuple(calls[path][0][1]) if path in calls else ()
        counts.append(LayerCount(path, layer, shapes, len(calls.get(path, [])), positions,
                                 counted))
    return counts


def variable_costs(counts: List[LayerCount]) -> List[VariableCost]:
    """Every weight variable of the counted layers once, with its MACs per entry."""
    found: Dict[int, dict] = {}
    for c in counts:
        for v in c.layer.weights:
            entry = found.setdefault(id(v), {"variable": v, "names": [], "positions": 0})
            entry["names"].append((c.path, v.name))
            entry["positions"] += c.positions.get(id(v), 0)
    return [VariableCost(e["variable"], tuple(e["names"]), tuple(e["variable"].shape),
                         itemsize(e["variable"]), bool(e["variable"].trainable), e["positions"])
            for e in found.values()]
