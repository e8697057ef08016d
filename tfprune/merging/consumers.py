"""Layers that a removed unit can be folded into: linear maps of their input channels.

Folding channel `p` into partner `q` rewrites the layer that *reads* them, so only layers
whose output is a linear function of their input, summed over input channels, qualify:
`Dense` (on any rank: leading axes are samples, so also the Dense after a `Flatten`),
`Conv1D` and `Conv2D` with `groups=1`, channels last, `"same"` or `"valid"` padding. What
lies between the producer and the consumer (BatchNormalization, activations, pooling) does
not matter: the activations used are the ones the consumer reads.

Other consumers are left to plain removal, with the reason recorded:
`DepthwiseConv2D` and the depthwise half of `SeparableConv*` cannot mix channels (a removed
channel has nowhere to go); `Conv*Transpose`, `Conv3D`, grouped, channels-first and causal
convolutions are not handled; layers inside nested models have no recorded activations.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D)
#: Elements (samples x positions x pairs x outputs) per chunk of a contribution computation.
CHUNK_ELEMENTS = 1 << 22


def unwrapped(layer):
    """The layer itself, or the layer a `keras.layers.Wrapper` (e.g. `PruningWrapper`) holds.

    Channel groups are built on the unwrapped model; the only wrapper that can stand at a
    consumer's path in the trained model is the pruning wrapper, which computes the wrapped
    layer with masked weights.
    """
    return layer.layer if isinstance(layer, keras.layers.Wrapper) else layer


def unsupported_reason(layer) -> Optional[str]:
    """Why units cannot be folded into `layer`, or None when they can."""
    layer = unwrapped(layer)
    kind = type(layer)
    if kind is keras.layers.Dense:
        return None
    if kind not in _CONVS:
        if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
            return f"{layer.name} is a depthwise convolution: it cannot mix channels"
        return f"{layer.name} is a {kind.__name__}: folding supports Dense, Conv1D and Conv2D"
    if getattr(layer, "groups", 1) != 1:
        return f"{layer.name} is a grouped convolution"
    if layer.data_format != "channels_last":
        return f"{layer.name} is channels-first"
    if layer.padding not in ("same", "valid"):
        return f"{layer.name} has padding {layer.padding!r}"
    strides, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
    if max(strides) > 1 and max(dilation) > 1:
        return f"{layer.name} is both strided and dilated"
    if kind is keras.layers.Conv2D and strides[0] != strides[1]:
        return f"{layer.name} has unequal strides {strides}"
    return None


class LinearConsumer:
    """A Dense or Conv1D/Conv2D layer seen as a sum over its input channels.

    Args:
        layer: the layer (or a `PruningWrapper` of it); `unsupported_reason(layer)` must be
            None.

    Attributes:
        layer: the unwrapped layer.
        kernel: its kernel variable: input channels on axis `kernel.ndim - 2`, outputs last.
        bias: its bias variable, or None.
    """

    def __init__(self, layer):
        reason = unsupported_reason(layer)
        if reason is not None:
            raise ValueError(reason)
        self.layer = unwrapped(layer)
        self.kernel = self.layer.kernel
        self.bias = self.layer.bias if self.layer.use_bias else None
        self.in_axis = len(self.kernel.shape) - 2
        self.outputs = int(self.kernel.shape[-1])

    def contributions(self, inputs, channels: np.ndarray, rows: np.ndarray) -> tf.Tensor:
        """Each pair's term of the output: `sum_j inputs[..., channels[i, j]] * kernel rows[i, j]`.

        Args:
            inputs: a batch of the layer's input (channels last), float32.
            channels: int array `(n, k)`: input channels read by term `i`.
            rows: int array `(n, k)`: the kernel's input rows (axis `in_axis`) that weigh them.

        Returns:
            A float32 tensor `(*output positions, n, outputs)` (output positions = the batch
            axis and, for convolutions, the output's spatial axes), without the bias.
        """
        n, k = channels.shape
        x = tf.gather(tf.convert_to_tensor(inputs, tf.float32), channels.reshape(-1), axis=-1)
        w = tf.gather(tf.convert_to_tensor(self.kernel, tf.float32), rows.reshape(-1),
                      axis=self.in_axis)
        if isinstance(self.layer, keras.layers.Dense):
            x = tf.reshape(x, tf.concat([tf.shape(x)[:-1], [n, k]], 0))
            return tf.einsum("...nk,nko->...no", x, tf.reshape(w, (n, k, self.outputs)))
        # A depthwise convolution with multiplier `outputs` keeps every input channel's
        # contribution to every output apart: exactly the per-pair terms.
        strides, dilation = list(self.layer.strides), list(self.layer.dilation_rate)
        if isinstance(self.layer, keras.layers.Conv1D):
            x, w = x[:, :, None, :], w[:, None, :, :]
            strides, dilation = strides * 2, dilation + [1]
        out = tf.nn.depthwise_conv2d(x, w, [1] + strides[:2] + [1],
                                     self.layer.padding.upper(), dilations=dilation)
        if isinstance(self.layer, keras.layers.Conv1D):
            out = out[:, :, 0, :]
        out = tf.reshape(out, tf.concat([tf.shape(out)[:-1], [n, k, self.outputs]], 0))
        return tf.reduce_sum(out, axis=-2)

    def apply(self, inputs, kernel) -> tf.Tensor:
        """The layer's linear part (no bias, no activation) with another kernel."""
        x = tf.convert_to_tensor(inputs, tf.float32)
        kernel = tf.convert_to_tensor(kernel, tf.float32)
        if isinstance(self.layer, keras.layers.Dense):
            return tf.tensordot(x, kernel, axes=1)
        return self.layer.convolution_op(x, kernel)

    def sample_chunk(self, inputs, per_sample: int) -> int:
        """Samples per chunk so that a chunk holds about `CHUNK_ELEMENTS` elements."""
        positions = int(np.prod(np.shape(inputs)[1:-1])) if np.ndim(inputs) > 2 else 1
        return max(1, CHUNK_ELEMENTS // max(1, positions * per_sample))
