"""`zeroed_channels`: channels whose removal provably changes nothing."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import keras
import numpy as np

from tfprune.graph.channel_graph import channel_groups
from tfprune.graph.group import CONSUMER, ChannelGroup
from tfprune.graph.paths import find_variable


def zeroed_channels(model: keras.Model,
                    groups: Optional[Sequence[ChannelGroup]] = None) -> Dict[int, np.ndarray]:
    """Channels of prunable groups whose every consumer input slice is exactly zero.

    No layer reads such a channel, so removing it changes no output: `shrink(model,
    zeroed_channels(model))` computes what `model` computes. This is how a model pruned by
    zeroing weights (masks) is made physically smaller. Channels are returned in whole
    aligned blocks of the group's `granule`, and never all channels of a group (when every
    channel of a group is unread, its first block is kept so that the result can be passed to
    `shrink` as is).

    Args:
        model: a functional or Sequential `keras.Model`. It is not modified.
        groups: the model's channel groups, if already computed (`tfprune.channel_groups`);
            computed when None.

    Returns:
        A dict mapping group id to the sorted int64 indices of its zeroed channels; groups
        without any are left out.

    Example:

    ```python
    import keras, tfprune
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    kernel = model.layers[2].kernel
    kernel.assign(kernel.numpy() * [[1.0], [0.0], [1.0], [1.0]])
    print(tfprune.shrink.zeroed_channels(model))        # {1: array([1])}
    ```
    """
    groups = channel_groups(model) if groups is None else groups
    values = {}

    def value(layer, weight):
        if (layer, weight) not in values:
            values[(layer, weight)] = np.asarray(find_variable(model, layer, weight))
        return values[(layer, weight)]

    out = {}
    for group in groups:
        consumers = [p for p in group.params if p.role == CONSUMER]
        if not group.prunable or not consumers:
            continue
        unread = np.ones(group.size, dtype=bool)
        for p in consumers:
            w = np.moveaxis(value(p.layer, p.weight), p.axis, 0)
            entry_zero = ~w.reshape(w.shape[0], -1).any(axis=1)
            unread &= entry_zero[p.index_map].all(axis=1)
        blocks = unread.reshape(-1, group.granule).all(axis=1)
        if blocks.all():
            blocks[0] = False
        channels = np.flatnonzero(np.repeat(blocks, group.granule))
        if channels.size:
            out[group.id] = channels.astype(np.int64)
    return out
