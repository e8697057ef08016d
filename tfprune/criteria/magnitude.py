"""`Magnitude`: the L1 or L2 norm of the weights that produce a channel (or of one weight)."""

from __future__ import annotations

import numpy as np

from tfprune.criteria.base import Criterion, channel_sum
from tfprune.errors import InvalidCriterionError
from tfprune.graph.group import PRODUCER


def producer_slices(group, context):
    """The trainable producer slices of a group's kernels (rank >= 2), else all trainable ones.

    Biases and normalisation parameters do not say how strongly a filter responds, so the
    kernels decide when the group has any.
    """
    slices = [p for p in group.params if p.role == PRODUCER and p.trainable]
    kernels = [p for p in slices if len(context.variable(p).shape) >= 2]
    return kernels or slices


class Magnitude(Criterion):
    """Norm of the weights: per channel over the group's producer kernels, or per weight.

    A channel's score is the L1 norm (sum of |w|) or L2 norm (sqrt of the sum of w^2) of every
    producer kernel entry that writes it (all producers of a residual group together; the
    depthwise kernel of a depthwise layer in the group too). A weight's score is |w| (both
    norms rank single weights alike).

    Args:
        norm: `"l1"` or `"l2"`.

    Example:

    ```python
    import tfprune
    callback = tfprune.PruningCallback(tfprune.criteria.Magnitude("l2"),
                                       tfprune.Target(flops=0.5), tfprune.OneShot(0))
    ```
    """

    def __init__(self, norm: str = "l1"):
        if norm not in ("l1", "l2"):
            raise InvalidCriterionError(f"Magnitude(norm={norm!r}): accepted norms are 'l1' "
                                        "and 'l2'")
        self.norm = norm

    def channel_scores(self, group, context):
        power = 1 if self.norm == "l1" else 2
        total = np.zeros(group.size)
        for p in producer_slices(group, context):
            total += channel_sum(np.abs(context.value(context.variable(p))) ** power, p)
        return total if power == 1 else np.sqrt(total)

    def weight_scores(self, variable, context):
        return np.abs(context.value(variable))

    def get_config(self):
        return {"norm": self.norm}
