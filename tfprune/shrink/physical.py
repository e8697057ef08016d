"""`shrink`: a smaller model with some channels physically removed."""

from __future__ import annotations

from typing import Mapping, Sequence

import keras

from tfprune.graph.channel_graph import ChannelGraph
from tfprune.shrink._rebuild import rebuild
from tfprune.shrink._removal import removed_classes


def shrink(model: keras.Model, removed: Mapping[int, Sequence[int]]) -> keras.Model:
    """Returns a new, smaller model without the given channels.

    The result is a plain Keras model of the same class (a Sequential model stays Sequential,
    nested models stay nested, layer names are kept) whose layers have fewer channels: their
    configs change (`filters`, `units`, per-channel `Rescaling`/`Normalization` values,
    `Reshape` target shapes, `GroupNormalization` groups) and their weights are sliced. It
    computes what `mask_channels(model, removed)` computes, to float rounding. It saves to
    `.keras` and loads without custom objects (unless the model already had some), and
    converts with `tf.lite.TFLiteConverter.from_keras_model`.

    The returned model is **not compiled**: compile it (a new optimizer; the old one's slots
    have the old shapes) before training it further.

    Args:
        model: a functional or Sequential `keras.Model` (nested models allowed). It is not
            modified.
        removed: maps a channel-group id (see `tfprune.channel_groups(model)`) to the indices
            of the group's channels to remove (a sequence of distinct integers in
            `0..group.size-1`, whole aligned blocks of `group.granule`, not all of them).

    Returns:
        A new, uncompiled `keras.Model`.

    Raises:
        UnsupportedModelError: the model's graph cannot be read or rebuilt.
        UnknownGroupError: a group id the model does not have.
        NotPrunableError: channels of a group that is not prunable (the message gives the
            group's reason).
        InvalidRemovalError: indices that are not integers, out of range, duplicated,
            all of a group's channels, or part of a `granule` block.

    Example:

    ```python
    import keras, numpy as np, tfprune
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    small = tfprune.shrink(model, {1: [0, 3, 5]})       # group 1: the Conv2D's 8 filters
    print(small.layers[1].filters)                      # 5
    x = np.random.rand(2, 16, 16, 3).astype("float32")
    np.testing.assert_allclose(small(x), tfprune.mask_channels(model, {1: [0, 3, 5]})(x),
                               rtol=1e-5, atol=1e-6)
    ```
    """
    graph = ChannelGraph(model)
    return rebuild(graph, removed_classes(graph, removed), zero=False)
