"""How each kind of layer couples channels (the rules behind `ChannelGraph`).

A rule reads the channel ids of a call's inputs and declares, through the `ChannelGraph`
builder: the ids of its outputs, which tensors it produces/reads/passes through (the members
of the groups), which entries of its weights carry which ids (the `ParamSlice`s), and how its
config changes when channels are removed (used by `tfprune.shrink`). Calls that no rule
covers are opaque: the channels around them are not prunable, with a reason naming the call.

Rules match exact classes: a subclass of `Conv2D` may compute anything, so it is opaque.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers

from tfprune.graph.group import CONSUMER, PASSTHROUGH, PRODUCER

# Activations that act on each element alone; every other one (softmax, log_softmax,
# sparsemax, glu, custom functions) mixes the channels it is applied across.
_ELEMENTWISE_ACTIVATIONS = {
    keras.activations.get(name) for name in (
        "celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu",
        "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "mish", "relu", "relu6", "selu",
        "sigmoid", "silu", "soft_shrink", "softplus", "softsign", "sparse_plus",
        "sparse_sigmoid", "squareplus", "tanh", "tanh_shrink", "threshold")}


def _channel_axis(layer, rank):
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


def _check_activation(g, ids, axis):
    """Blocks the layer's output channels if its activation mixes them (softmax acts on the
    last axis)."""
    fn = getattr(g.call.op, "activation", None)
    rank = len(g.shape(g.call.outputs[0]))
    if fn is not None and fn not in _ELEMENTWISE_ACTIVATIONS and axis % rank == rank - 1:
        name = getattr(fn, "__name__", type(fn).__name__)
        g.block(ids, f"{g.call.describe()} applies the activation {name!r} across the channel "
                     "axis, which mixes channels")


def _mismatch(g, key, axis):
    t = g.tensors[key]
    g.opaque(f"{g.call.describe()} works on axis {axis} of a tensor whose channels lie on "
             f"axis {t.axis}")


def _count(keep, ids):
    return int(np.count_nonzero(keep(ids)))


# --- channel-mixing layers (producers and consumers) ---------------------------------------


def _conv(g, transpose=False):
    call, layer = g.call, g.call.op
    x, rank = call.inputs[0], len(g.shape(call.inputs[0]))
    axis = _channel_axis(layer, rank)
    if getattr(layer, "groups", 1) != 1:
        g.opaque(f"{call.describe()} is a grouped convolution (groups={layer.groups}); "
                 "tfprune does not remove channels of grouped convolutions")
        return
    ids_in = g.ids_on(x, axis)
    if ids_in is None:
        return _mismatch(g, x, axis)
    k = len(layer.kernel.shape)
    in_axis, out_axis = (k - 1, k - 2) if transpose else (k - 2, k - 1)
    out = g.fresh("out", layer.filters)
    g.read(x)
    g.param("kernel", in_axis, ids_in, CONSUMER, CONSUMER)
    g.set_output(0, axis, out, role=PRODUCER)
    g.param("kernel", out_axis, out, PRODUCER, PRODUCER)
    g.param("bias", 0, out, PRODUCER, PRODUCER)
    _check_activation(g, out, axis)
    g.edit(lambda config, keep: {"filters": _count(keep, out)})


def _conv_transpose(g):
    _conv(g, transpose=True)


def _dense(g):
    call, layer = g.call, g.call.op
    x = call.inputs[0]
    ids_in = g.ids_on(x, -1)
    if ids_in is None:
        return _mismatch(g, x, len(g.shape(x)) - 1)
    out = g.fresh("out", layer.units)
    g.read(x)
    g.param("kernel", 0, ids_in, CONSUMER, CONSUMER)
    g.set_output(0, -1, out, role=PRODUCER)
    g.param("kernel", 1, out, PRODUCER, PRODUCER)
    g.param("bias", 0, out, PRODUCER, PRODUCER)
    _check_activation(g, out, -1)
    g.edit(lambda config, keep: {"units": _count(keep, out)})


def _separable(g):
    call, layer = g.call, g.call.op
    x, rank = call.inputs[0], len(g.shape(call.inputs[0]))
    axis = _channel_axis(layer, rank)
    ids_in = g.ids_on(x, axis)
    if ids_in is None:
        return _mismatch(g, x, axis)
    k = len(layer.depthwise_kernel.shape)
    out = g.fresh("out", layer.filters)
    g.read(x)
    g.param("depthwise_kernel", k - 2, ids_in, CONSUMER, CONSUMER)
    g.param("pointwise_kernel", k - 2, np.repeat(ids_in, layer.depth_multiplier),
            CONSUMER, CONSUMER)
    g.set_output(0, axis, out, role=PRODUCER)
    g.param("pointwise_kernel", k - 1, out, PRODUCER, PRODUCER)
    g.param("bias", 0, out, PRODUCER, PRODUCER)
    _check_activation(g, out, axis)
    g.edit(lambda config, keep: {"filters": _count(keep, out)})


# --- per-channel layers with weights or per-channel config ---------------------------------


def _depthwise(g):
    call, layer = g.call, g.call.op
    x, rank = call.inputs[0], len(g.shape(call.inputs[0]))
    axis = _channel_axis(layer, rank)
    ids_in = g.ids_on(x, axis)
    if ids_in is None:
        return _mismatch(g, x, axis)
    out = np.repeat(ids_in, layer.depth_multiplier)   # input c -> outputs c*m .. c*m+m-1
    k = len(layer.kernel.shape)
    g.set_output(0, axis, out, like=x)
    g.param("kernel", k - 2, ids_in, PRODUCER, PASSTHROUGH)
    g.param("bias", 0, out, PRODUCER, PASSTHROUGH)
    _check_activation(g, out, axis)


def _batch_norm(g):
    call, layer = g.call, g.call.op
    x = call.inputs[0]
    t = g.tensors[x]
    axis = layer.axis % len(t.shape)
    ids = g.ids_on(x, axis)
    if ids is None:
        # Normalizing along another axis is, at inference, an affine map per position of
        # that axis: it leaves the channels apart.
        return g.set_output(0, t.axis, t.ids, like=x)
    g.set_output(0, axis, ids, like=x)
    for weight in ("gamma", "beta", "moving_mean", "moving_variance"):
        g.param(weight, 0, ids, PRODUCER, PASSTHROUGH)


def _normalize_over(g, axes, what):
    """Layers that normalize over `axes`: per-channel unless the channel axis is among them.

    Over the channel axis the output's channels are still the input's, but removing one would
    change the others: the group is kept whole and blocked, with the layer's weights in it.
    """
    call = g.call
    x = call.inputs[0]
    t = g.tensors[x]
    if t.ids is None:
        return g.opaque(f"{call.describe()} reads a tensor without channels")
    axes = sorted({a % len(t.shape) for a in (axes if isinstance(axes, (list, tuple)) else [axes])})
    g.set_output(0, t.axis, t.ids, like=x)
    if t.axis in axes:
        for v in call.op.weights:
            if len(v.shape) == len(axes):
                g.param(v.name, axes.index(t.axis), t.ids, PRODUCER, PASSTHROUGH)
        g.block(t.ids, f"{call.describe()} {what} across the channel axis, so removing a "
                       "channel would change the others")


def _layer_norm(g):
    _normalize_over(g, g.call.op.axis, "normalizes")


def _softmax(g):
    _normalize_over(g, g.call.op.axis, "applies softmax")


def _group_norm(g):
    call, layer = g.call, g.call.op
    x = call.inputs[0]
    axis = layer.axis % len(g.shape(x))
    ids = g.ids_on(x, axis)
    if ids is None or g.tensors[x].opaque is not None:
        return g.opaque(f"{call.describe()} normalizes across the channel axis")
    block = len(ids) // layer.groups
    g.set_output(0, axis, ids)
    g.param("gamma", 0, ids, PRODUCER, PASSTHROUGH)
    g.param("beta", 0, ids, PRODUCER, PASSTHROUGH)
    g.norm_groups(ids, block)
    g.edit(lambda config, keep: {"groups": _count(keep, ids) // block})


def _prelu(g):
    x = g.call.inputs[0]
    t = g.tensors[x]
    g.set_output(0, t.axis, t.ids, like=x)
    alpha = g.call.op.alpha
    if t.ids is not None and t.axis >= 1 and alpha.shape[t.axis - 1] == len(t.ids) > 1:
        g.param("alpha", t.axis - 1, t.ids, PRODUCER, PASSTHROUGH)


def _broadcast_axis(value_shape, rank, axis, n):
    """Axis of a value broadcast (from the right) against rank `rank` that meets `axis`."""
    from_end = rank - 1 - axis
    if n > 1 and len(value_shape) > from_end and value_shape[-1 - from_end] == n:
        return len(value_shape) - 1 - from_end
    return None


def _config_values(g, names, rank, axis):
    """Config entries `names` hold values broadcast against a rank-`rank` shape whose `axis`
    is the channel axis (Rescaling scale/offset, Normalization mean/variance): shrink slices
    them."""
    t = g.tensors[g.call.inputs[0]]
    config = g.call.op.get_config()
    axes = {}
    for name in names:
        value = config.get(name)
        if value is not None:
            a = _broadcast_axis(np.shape(value), rank, axis, len(t.ids))
            if a is not None:
                axes[name] = a
    if not axes:
        return
    ids = g.config_array("channels", t.ids)
    g.edit(lambda config, keep: {
        name: np.compress(keep(ids), np.asarray(config[name]), axis=a).tolist()
        for name, a in axes.items()})


def _rescaling(g):
    x = g.call.inputs[0]
    t = g.tensors[x]
    g.set_output(0, t.axis, t.ids, like=x)
    if t.ids is not None:
        _config_values(g, ("scale", "offset"), len(t.shape), t.axis)


def _normalization(g):
    layer, x = g.call.op, g.call.inputs[0]
    t = g.tensors[x]
    g.set_output(0, t.axis, t.ids, like=x)
    kept_axes = sorted({a % len(t.shape) for a in layer.axis})
    if t.ids is None or t.axis not in kept_axes:
        return    # statistics shared by all channels: an elementwise affine map
    index = kept_axes.index(t.axis)
    if layer.input_mean is not None:
        _config_values(g, ("mean", "variance"), len(kept_axes), index)
    else:
        for weight in ("mean", "variance"):
            g.param(weight, index, t.ids, PRODUCER, PASSTHROUGH)


# --- parameter-free layers ---------------------------------------------------------------


def _elementwise(g):
    x = g.call.inputs[0]
    t = g.tensors[x]
    g.set_output(0, t.axis, t.ids, like=x)


def _activation(g):
    x = g.call.inputs[0]
    t = g.tensors[x]
    if t.ids is None:
        return g.opaque(f"{g.call.describe()} reads a tensor without channels")
    g.set_output(0, t.axis, t.ids, like=x)
    _check_activation(g, t.ids, t.axis)


def _spatial(g):
    """Pooling, padding, cropping, upsampling: they act on the spatial axes only."""
    call, layer = g.call, g.call.op
    x = call.inputs[0]
    axis = _channel_axis(layer, len(g.shape(x)))
    ids = g.ids_on(x, axis)
    if ids is None:
        return _mismatch(g, x, axis)
    g.set_output(0, axis, ids, like=x)


def _global_pool(g):
    call, layer = g.call, g.call.op
    x = call.inputs[0]
    axis = _channel_axis(layer, len(g.shape(x)))
    ids = g.ids_on(x, axis)
    if ids is None:
        return _mismatch(g, x, axis)
    g.set_output(0, axis if layer.keepdims else 1, ids, like=x)


def _spread(ids, shape, axis, channels_first_to_last=False):
    """Ids of every element of a tensor of `shape` (no batch axis) whose channels lie on
    `axis` (counted without the batch axis), in row-major order."""
    index = np.arange(len(ids)).reshape([-1 if a == axis else 1 for a in range(len(shape))])
    index = np.broadcast_to(index, shape)
    if channels_first_to_last:
        index = np.moveaxis(index, 0, -1)
    return ids[index.reshape(-1)]


def _flatten(g):
    call, layer = g.call, g.call.op
    x = call.inputs[0]
    t = g.tensors[x]
    shape = t.shape[1:]
    if t.ids is None or len(shape) == 1:
        return g.set_output(0, t.axis, t.ids, like=x)
    if any(d is None for d in shape):
        return g.opaque(f"{call.describe()} flattens a tensor of unknown shape {t.shape}")
    to_last = layer.data_format == "channels_first"
    g.set_output(0, 1, _spread(t.ids, shape, t.axis - 1, to_last), like=x)


def _reshape(g):
    call = g.call
    x, y = call.inputs[0], call.outputs[0]
    t = g.tensors[x]
    src, dst = t.shape[1:], g.shape(y)[1:]
    if t.ids is None or t.opaque is not None:
        return g.opaque(t.opaque or f"{call.describe()} reads a tensor without channels")
    if any(d is None for d in src + dst):
        return g.opaque(f"{call.describe()} reshapes a tensor of unknown shape {t.shape}")
    last = len(src) == t.axis
    if last and src[-1] == dst[-1] and math.prod(src[:-1]) == math.prod(dst[:-1]):
        out = t.ids                                   # only the spatial axes change
    elif len(dst) == 1:
        out = _spread(t.ids, src, t.axis - 1)         # flattens
    elif len(src) == 1 and math.prod(dst) == src[0]:
        rows = t.ids.reshape(-1, dst[-1])             # unflattens: channel c of the output
        for row in rows[1:]:                          # is input c, c+C', c+2C', ...
            g.union(rows[0], row)
        out = rows[0]
    else:
        return g.opaque(f"{call.describe()} reshapes {tuple(src)} to {tuple(dst)}: no "
                        "channel of the output comes from whole channels of the input")
    ids = g.config_array("channels", out)
    g.set_output(0, len(dst), out)
    g.edit(lambda config, keep: {"target_shape": list(dst[:-1]) + [_count(keep, ids)]})


def _permute(g):
    x = g.call.inputs[0]
    t = g.tensors[x]
    if t.ids is None:
        return g.set_output(0, t.axis, t.ids, like=x)
    dims = list(g.call.op.dims)
    g.set_output(0, 1 + dims.index(t.axis), t.ids, like=x)


def _concatenate(g):
    call = g.call
    y = call.outputs[0]
    rank = len(g.shape(y))
    cat_axis = call.op.axis % rank
    axis = next((g.tensors[x].axis for x in call.inputs
                 if g.tensors[x].ids is not None and g.tensors[x].opaque is None), cat_axis)
    parts = [g.ids_on(x, axis) for x in call.inputs]
    if any(p is None for p in parts):
        return g.opaque(f"{call.describe()} concatenates tensors whose channels lie on "
                        "different axes")
    if axis == cat_axis:
        out = np.concatenate(parts)
    else:                                         # joined along a spatial axis: the same channels
        out = parts[0]
        for p in parts[1:]:
            g.union(out, p)
    g.set_output(0, axis, out)


def _merge(g, prepend):
    """Elementwise merges with broadcasting. Keras merge layers give lower-rank inputs new
    axes after the batch axis (`prepend=False`); Keras ops, NumPy-style, in front."""
    call = g.call
    keys = call.inputs
    out_shape = g.shape(call.outputs[0])
    rank = len(out_shape)

    def aligned(key, axis):      # axis of the output that axis `axis` of input `key` meets
        shift = rank - len(g.shape(key))
        return axis + shift if (prepend or axis >= 1) else axis

    axis = None
    for key in keys:
        t = g.tensors[key]
        if t.ids is not None and t.opaque is None and \
                out_shape[aligned(key, t.axis)] == len(t.ids):
            axis = aligned(key, t.axis)
            break
    if axis is None:
        axis = rank - 1
    out = None
    for key in keys:
        shift = rank - len(g.shape(key))
        own = axis - shift
        if own < (0 if prepend else 1) or g.shape(key)[own] == 1 != out_shape[axis]:
            continue                 # broadcast along the channel axis: not coupled
        ids = g.ids_on(key, own)
        if ids is None:
            return g.opaque(f"{call.describe()} combines tensors whose channels lie on "
                            "different axes")
        if out is None:
            out = ids
        else:
            g.union(out, ids)
    if out is None:
        return g.opaque(f"{call.describe()} broadcasts every input along the channel axis")
    g.set_output(0, axis, out)


def _opaque(g):
    g.opaque(f"{g.call.describe()} is not a layer that tfprune knows how to prune across")


def _check_constants(g):
    """Keras ops may take constants: scalars broadcast over channels, arrays may not."""
    for leaf in keras.tree.flatten((g.call.args, g.call.kwargs)):
        if isinstance(leaf, keras.KerasTensor) or leaf is None or np.ndim(leaf) == 0:
            continue
        g.opaque(f"{g.call.describe()} uses a constant array, which tfprune cannot slice")
        return False
    return True


def _op_elementwise(g):
    if _check_constants(g):
        _elementwise(g)


def _op_merge(g):
    args = g.call.args
    if type(g.call.op).__name__ in ("TrueDivide", "Divide") and len(args) > 1 and \
            isinstance(args[1], keras.KerasTensor):
        return g.opaque(f"{g.call.describe()} divides by a tensor; tfprune does not prune "
                        "across divisions (a removed channel would divide by zero)")
    if _check_constants(g):
        _merge(g, prepend=True)


def _merge_layer(g):
    _merge(g, prepend=False)




_MERGE_LAYERS = (layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum,
                 layers.Minimum)
_LAYER_RULES = {
    layers.Conv1D: _conv, layers.Conv2D: _conv, layers.Conv3D: _conv,
    layers.Conv1DTranspose: _conv_transpose, layers.Conv2DTranspose: _conv_transpose,
    layers.Conv3DTranspose: _conv_transpose,
    layers.Dense: _dense,
    layers.SeparableConv1D: _separable, layers.SeparableConv2D: _separable,
    layers.DepthwiseConv1D: _depthwise, layers.DepthwiseConv2D: _depthwise,
    layers.BatchNormalization: _batch_norm,
    layers.LayerNormalization: _layer_norm, layers.RMSNormalization: _layer_norm,
    layers.UnitNormalization: _layer_norm,
    layers.GroupNormalization: _group_norm,
    layers.Softmax: _softmax,
    layers.PReLU: _prelu,
    layers.Rescaling: _rescaling, layers.Normalization: _normalization,
    layers.Activation: _activation,
    layers.Flatten: _flatten, layers.Reshape: _reshape, layers.Permute: _permute,
}
for _cls in (layers.ReLU, layers.LeakyReLU, layers.ELU, layers.Dropout, layers.SpatialDropout1D,
             layers.SpatialDropout2D, layers.SpatialDropout3D, layers.GaussianNoise,
             layers.GaussianDropout, layers.AlphaDropout, layers.ActivityRegularization,
             layers.Identity):
    _LAYER_RULES[_cls] = _elementwise
for _cls in (layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
             layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D,
             layers.ZeroPadding1D, layers.ZeroPadding2D, layers.ZeroPadding3D,
             layers.Cropping1D, layers.Cropping2D, layers.Cropping3D,
             layers.UpSampling1D, layers.UpSampling2D, layers.UpSampling3D):
    _LAYER_RULES[_cls] = _spatial
for _cls in (layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D,
             layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D,
             layers.GlobalAveragePooling3D):
    _LAYER_RULES[_cls] = _global_pool
# Rules of layers that read several tensors; every other rule reads exactly one.
_MULTI_INPUT_RULES = {layers.Concatenate: _concatenate}
_MULTI_INPUT_RULES.update({cls: _merge_layer for cls in _MERGE_LAYERS})
# Layers that Keras Applications define for themselves, by (module, class name): they have no
# public class to match. InceptionResNetV2's residual merge computes `x + r * scale`.
_MULTI_INPUT_RULES_BY_NAME = {
    ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer"): _merge_layer}

# Keras ops used directly on symbolic tensors (`x + y`, `keras.ops.relu(x)`), by class name.
_OP_RULES = {name: _op_merge for name in ("Add", "Subtract", "Multiply", "Maximum", "Minimum",
                                          "TrueDivide", "Divide")}
_OP_RULES.update({name: _op_elementwise for name in (
    "Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "HardSilu", "Gelu", "Elu", "Selu",
    "LeakyRelu", "Softplus", "Softsign", "Celu", "Tanh", "Absolute", "Negative", "Square",
    "Clip", "Cast")})


def apply(g, call):
    """Applies the rule of `call`'s layer or op to the graph under construction `g`."""
    if call.is_layer:
        cls = type(call.op)
        rule = _MULTI_INPUT_RULES.get(cls) or _MULTI_INPUT_RULES_BY_NAME.get(
            (cls.__module__, cls.__name__))
        if rule is None:
            rule = _LAYER_RULES.get(type(call.op), _opaque)
            if len(call.inputs) != 1:
                rule = _opaque
    elif type(call.op).__module__.startswith("keras."):
        rule = _OP_RULES.get(type(call.op).__name__, _opaque_op)
    else:
        rule = _opaque_op
    if len(call.outputs) != 1 or not call.inputs:
        rule = _opaque if call.is_layer else _opaque_op
    rule(g)


def _opaque_op(g):
    g.opaque(f"{g.call.describe()} is used directly in the model and tfprune does not know "
             "how to prune across it; use the equivalent Keras layer")
