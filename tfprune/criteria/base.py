"""`Criterion`: the interface of importance scores, and per-channel sums over a group's params."""

from __future__ import annotations

import numpy as np

from tfprune.errors import InvalidCriterionError
from tfprune.graph.group import ChannelGroup, ParamSlice

CHANNEL = "channel"
WEIGHT = "weight"


def channel_sum(values: np.ndarray, param_slice: ParamSlice) -> np.ndarray:
    """Sums `values` (shaped like the slice's variable) over the entries of each group channel.

    Args:
        values: an array shaped like the variable of `param_slice` (weights, |g * w|, ...).
        param_slice: which entries along which axis carry each channel of the group.

    Returns:
        A float64 array `(group.size,)`.
    """
    values = np.asarray(values, dtype=np.float64)
    per_entry = np.moveaxis(values, param_slice.axis, 0).reshape(values.shape[param_slice.axis], -1)
    return per_entry.sum(axis=1)[param_slice.index_map].sum(axis=1)


class Criterion:
    """Scores units for pruning: one score per channel of a group, or one per weight.

    Lower scores are pruned first; scores are non-negative so that they can be ranked per
    unit of cost. A criterion is called once per unit at each pruning event, after
    `prepare(context)` (called once per event, e.g. to compute curvature on calibration data
    and keep it in `context.cache`). Subclasses implement `channel_scores` and/or
    `weight_scores` and list the granularities they support.

    Attributes:
        granularities: the granularities the criterion scores (`"channel"`, `"weight"`).
        requires_calibration_data: whether it reads `context.calibration_data` (gradients,
            activations, curvature).

    Example:

    ```python
    import numpy as np
    from tfprune.criteria import Criterion, channel_sum

    class ProducerL1(Criterion):
        granularities = ("channel",)

        def channel_scores(self, group, context):
            return sum(channel_sum(np.abs(context.value(context.variable(p))), p)
                       for p in group.params if p.role == "producer")
    ```
    """

    granularities = (CHANNEL, WEIGHT)
    requires_calibration_data = False

    def prepare(self, context) -> None:
        """Called once per pruning event, before any unit is scored."""

    def __call__(self, unit, context) -> np.ndarray:
        if isinstance(unit, ChannelGroup):
            return self.channel_scores(unit, context)
        return self.weight_scores(unit, context)

    def channel_scores(self, group: ChannelGroup, context) -> np.ndarray:
        """Scores of the channels of `group`: an array `(group.size,)`."""
        raise InvalidCriterionError(f"{self!r} does not score channels; it supports "
                                    f"{', '.join(self.granularities)}")

    def weight_scores(self, variable, context) -> np.ndarray:
        """Scores of the weights of `variable`: an array shaped like it."""
        raise InvalidCriterionError(f"{self!r} does not score single weights; it supports "
                                    f"{', '.join(self.granularities)}")

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
