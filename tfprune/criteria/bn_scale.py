"""`BatchNormScale`: the magnitude of a channel's BatchNormalization scale (network slimming)."""

from __future__ import annotations

import warnings

import numpy as np

from tfprune.criteria.base import CHANNEL, Criterion, channel_sum


class BatchNormScale(Criterion):
    """|gamma| of the BatchNormalization layers a channel passes through (Liu et al., 2017).

    A channel that several normalisation layers scale (a residual group) sums their |gamma|.
    Groups without a learned scale (no BatchNormalization, or `scale=False`) cannot be judged
    by this criterion: they score `+inf`, so they are kept, and a warning names them once.

    Example:

    ```python
    import tfprune
    callback = tfprune.MagnitudePruning(tfprune.Target(flops=0.5), criterion="bn_scale")
    ```
    """

    granularities = (CHANNEL,)

    def __init__(self):
        self._warned = set()

    def channel_scores(self, group, context):
        slices = [p for p in group.params if p.weight == "gamma"]
        if not slices:
            if group.id not in self._warned:
                self._warned.add(group.id)
                warnings.warn(f"bn_scale: {group.describe()} has no BatchNormalization scale "
                              "(gamma); its channels are kept", stacklevel=2)
            return np.full(group.size, np.inf)
        return sum(channel_sum(np.abs(context.value(context.variable(p))), p) for p in slices)
