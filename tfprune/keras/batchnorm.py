"""`recalibrate_batchnorm()`: re-estimate BatchNormalization statistics on clean data."""

from __future__ import annotations

import contextlib
import sys
import time
import types
from typing import List, Optional, Tuple

import keras
import numpy as np

from tfprune.errors import DataError, InvalidPruningArgumentError
from tfprune.graph.paths import iter_layers


def batchnorm_layers(model) -> List[Tuple[str, keras.layers.BatchNormalization]]:
    """`[(path, layer)]` of every BatchNormalization layer of `model`, wrapped or not.

    Nested models are descended; a layer inside a `keras.layers.Wrapper` (such as
    `tfprune.PruningWrapper`) is found through its wrapper.
    """
    found = []
    for path, layer in iter_layers(model):
        inner = layer.layer if isinstance(layer, keras.layers.Wrapper) else layer
        if isinstance(inner, keras.layers.BatchNormalization):
            found.append((path, inner))
    return found


def _batches(data, batch_size: int, steps: Optional[int]):
    """Input batches of `data`: arrays/tensors `x`, `(x, ...)` tuples, or a `tf.data.Dataset`."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        def inputs():
            for i, batch in enumerate(data):
                if steps is not None and i >= steps:
                    return
                yield batch[0] if isinstance(batch, (tuple, list)) else batch
        return inputs()
    x = data[0] if isinstance(data, (tuple, list)) else data
    if isinstance(x, (tuple, list, dict)) or not hasattr(x, "shape") or len(x.shape) < 1:
        raise DataError(
            f"recalibrate_batchnorm(data=...): expected an array or tensor of inputs, an "
            f"(x, y) tuple or a tf.data.Dataset of batches; got {type(data).__name__}")
    count = int(x.shape[0])
    if count == 0:
        raise DataError("recalibrate_batchnorm(data=...): the data holds no samples")
    total = -(-count // batch_size)
    total = total if steps is None else min(total, steps)
    return (x[i * batch_size:(i + 1) * batch_size] for i in range(total))


@contextlib.contextmanager
def _batch_statistics(layers):
    """Every layer in `layers` normalizes with its batch statistics and stores them as its
    moving statistics (momentum 0), whatever the `training` flag of the call; the rest of the
    model (Dropout, augmentation layers) runs in inference mode."""
    saved = []
    for layer in layers:
        saved.append((layer, layer.momentum, layer.__dict__.get("call")))

        def call(self, inputs, training=None, mask=None):
            return type(self).call(self, inputs, training=True, mask=mask)
        layer.momentum = 0.0
        object.__setattr__(layer, "call", types.MethodType(call, layer))
    try:
        yield
    finally:
        for layer, momentum, own_call in saved:
            layer.momentum = momentum
            if own_call is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own_call)


def recalibrate_batchnorm(model, data, *, batch_size: int = 128, steps: Optional[int] = None,
                          verbose: int = 1):
    """Re-estimates the moving statistics of every BatchNormalization layer on `data`.

    **Changes `model` in place** (its `moving_mean` and `moving_variance`; no other weight)
    and returns it. The data is run through the model once, every BatchNormalization layer
    normalizing with the statistics of its batch (all other layers, Dropout and augmentation
    included, in inference mode), and each layer's new statistics are the exact mean and
    variance of its inputs over all of `data` (the batches' means and second moments pooled,
    weighted by batch size), as in a training pass but without the moving average's memory.

    After pruning, the moving statistics a model carries were averaged over weights that
    kept changing and over augmented images; re-estimating them on a few thousand clean
    training images costs a few forward passes and is measured in `docs/BENCHMARKS.md`
    ("BatchNorm statistics"). Use training data without augmentation, never the test set.
    Layers with `trainable=False` (frozen on purpose) keep their statistics.

    Args:
        model: a Keras model (functional, Sequential or subclassed; wrapped by
            `tfprune.prunable` or not; a stripped model).
        data: input arrays or tensors `x`, an `(x, y)` tuple (labels are not used), or a
            `tf.data.Dataset` of `x` or `(x, y, ...)` batches, e.g. 2,000 to 10,000 training
            samples.
        batch_size: samples per batch for arrays (a dataset keeps its own batches); batch
            statistics of small batches are noisy, 64 or more is advised.
        steps: the most batches used (None: all of `data`).
        verbose: 0 silent, 1 prints one line when done.

    Returns:
        `model`, with its BatchNormalization statistics re-estimated.

    Raises:
        InvalidPruningArgumentError: `batch_size`, `steps` or `verbose` outside what is
            accepted.
        DataError: `data` is not inputs, an `(x, y)` tuple or a dataset, or holds nothing.

    Example:

    ```python
    import numpy as np, keras, tfprune
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=8)
    x = np.random.rand(256, 8, 8, 1).astype("float32")
    tfprune.recalibrate_batchnorm(model, x, batch_size=64, verbose=0)
    bn = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    float(np.mean(bn.moving_variance.numpy())) > 0    # the statistics of x, not 1.0
    ```
    """
    import tensorflow as tf

    for name, value, low in (("batch_size", batch_size, 1), ("verbose", verbose, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InvalidPruningArgumentError(
                f"recalibrate_batchnorm({name}={value!r}): expected an integer >= {low}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))
                              or steps < 1):
        raise InvalidPruningArgumentError(
            f"recalibrate_batchnorm(steps={steps!r}): expected None or an integer >= 1")
    if not isinstance(model, keras.Model):
        raise InvalidPruningArgumentError(
            f"recalibrate_batchnorm(model=...): expected a keras.Model; got "
            f"{type(model).__name__}")
    if not model.built:
        raise InvalidPruningArgumentError(
            f"recalibrate_batchnorm: model {model.name!r} is not built; call it on data (or "
            "build it) first")
    layers = [(p, l) for p, l in batchnorm_layers(model) if l.trainable]
    batches = _batches(data, int(batch_size), steps)
    if not layers:
        if verbose:
            print(f"tfprune: {model.name!r} has no trainable BatchNormalization layer; nothing "
                  "to recalibrate", file=sys.stdout, flush=True)
        return model
    start = time.perf_counter()
    bns = [l for _, l in layers]
    first = [np.zeros(l.moving_mean.shape, np.float64) for l in bns]
    second = [np.zeros(l.moving_mean.shape, np.float64) for l in bns]
    samples = 0
    with _batch_statistics(bns):
        forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        for x in batches:
            x = tf.convert_to_tensor(x)
            n = int(x.shape[0])
            if n == 0:
                continue
            forward(x)
            for layer, s1, s2 in zip(bns, first, second):
                mean = layer.moving_mean.numpy().astype(np.float64)
                var = layer.moving_variance.numpy().astype(np.float64)
                s1 += n * mean
                s2 += n * (var + mean * mean)
            samples += n
    if samples == 0:
        raise DataError("recalibrate_batchnorm(data=...): the data holds no samples")
    for layer, s1, s2 in zip(bns, first, second):
        mean = s1 / samples
        var = np.maximum(s2 / samples - mean * mean, 0.0)
        layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(var.astype(layer.moving_variance.dtype))
    if verbose:
        print(f"tfprune: recalibrated {len(bns)} BatchNormalization layer(s) of {model.name!r} "
              f"on {samples} samples in {time.perf_counter() - start:.1f} s", flush=True)
    return model
