"""`mask_channels`: the same model with some channels' weights zeroed."""

from __future__ import annotations

from typing import Mapping, Sequence

import keras

from tfprune.graph.channel_graph import ChannelGraph
from tfprune.shrink._rebuild import rebuild
from tfprune.shrink._removal import removed_classes


def mask_channels(model: keras.Model, removed: Mapping[int, Sequence[int]]) -> keras.Model:
    """Returns a copy of the model with the given channels' weights set to zero.

    Every weight entry that carries a removed channel (each `ParamSlice` of its group: the
    consumers' input slices, the producers' output slices and biases, BatchNormalization
    statistics, ...) is zeroed; everything else is copied. Since each consumer then ignores
    the removed channels, the masked model computes exactly what the model with those
    channels removed computes: it is the reference that `shrink` reproduces.

    Args:
        model: a functional or Sequential `keras.Model` (nested models allowed). It is not
            modified.
        removed: maps a channel-group id to the indices of the channels to remove, as in
            `tfprune.shrink`.

    Returns:
        A new, uncompiled `keras.Model` with the same architecture and layer names.

    Raises:
        The same errors as `tfprune.shrink`.

    Example:

    ```python
    import keras, tfprune
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    masked = tfprune.mask_channels(model, {1: [2]})     # group 1: the hidden units
    print(masked.layers[2].kernel.numpy()[2])           # [0.]
    ```
    """
    graph = ChannelGraph(model)
    return rebuild(graph, removed_classes(graph, removed), zero=True)
