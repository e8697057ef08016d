"""`strip()`: the plain, physically smaller Keras model a pruned model stands for."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from tfprune.errors import UnsupportedModelError
from tfprune.graph.paths import iter_layers
from tfprune.keras.callback import KERNELS
from tfprune.keras.wrapper import is_wrapped, unwrap

#: Zero kernel weights above this fraction mean the model was pruned weight by weight.
SPARSE_WARNING_FRACTION = 0.01


def kernel_zeros(model) -> dict:
    """`{layer name: (zero kernel weights, kernel weights)}` of every layer with a kernel
    (`kernel`, `depthwise_kernel`, `pointwise_kernel`), nested models included."""
    out = {}
    for _, layer in iter_layers(model):
        if not isinstance(layer, keras.Model):
            for v in layer.weights:
                if v.name in KERNELS:
                    value = v.numpy()
                    zeros, total = out.get(layer.name, (0, 0))
                    out[layer.name] = (zeros + int(np.count_nonzero(value == 0)),
                                       total + value.size)
    return out


def _kernel_zero_fraction(model) -> float:
    counts = kernel_zeros(model).values()
    total = sum(t for _, t in counts)
    return sum(z for z, _ in counts) / total if total else 0.0


def strip(model) -> keras.Model:
    """A plain Keras model without pruning wrappers and without the channels pruned away.

    `PruningWrapper`s are replaced by their layers (weights multiplied by the masks), then
    every channel whose consumers' input weights are all zero (what channel pruning leaves,
    found by `tfprune.shrink.zeroed_channels`) is physically removed by `tfprune.shrink`.
    Removing such channels changes no output, so the result computes what `model` computes
    (to float rounding), with fewer FLOPs, params and bytes. Weights pruned one by one stay
    in the model as zeros: a warning says so, because TFLite and TFLite Micro store and
    multiply them like any other weight; only channel pruning makes a model smaller there.

    `model` is not changed. The result is not compiled (compile it to train or evaluate).

    Args:
        model: a functional or Sequential model, pruned during `fit` (wrapped by
            `tfprune.prunable` or not).

    Returns:
        A new, plain `keras.Model` that saves and loads without tfprune.

    Example:

    ```python
    import tfprune
    model.fit(x, y, callbacks=[tfprune.MagnitudePruning(tfprune.Target(flops=0.5))])
    small = tfprune.strip(model)
    print(tfprune.profile(small).flops / tfprune.profile(model).flops)   # about 0.5
    ```
    """
    from tfprune.shrink import shrink, zeroed_channels

    plain = unwrap(model) if is_wrapped(model) else model
    try:
        removed = zeroed_channels(plain)
    except UnsupportedModelError as e:
        if plain is model:
            raise
        warnings.warn(f"strip: channels cannot be removed from {model.name!r} ({e}); the model "
                      "keeps its zeros", stacklevel=2)
        small = plain
    else:
        small = shrink(plain, removed)
    zeros = _kernel_zero_fraction(small)
    if zeros > SPARSE_WARNING_FRACTION:
        warnings.warn(
            f"strip: {zeros:.1%} of the kernel weights of {model.name!r} are zero but stay in "
            "the model: TFLite and TFLite Micro store and multiply them like any other weight, "
            "so the model is no smaller or faster on a microcontroller. Only channel pruning "
            "(granularity='channel') removes them.", stacklevel=2)
    return small
