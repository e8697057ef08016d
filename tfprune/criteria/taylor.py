"""`Taylor`: first-order Taylor estimate of the loss change of removing a unit, |g * w|."""

from __future__ import annotations

import numpy as np

from tfprune.criteria.base import Criterion, channel_sum


class Taylor(Criterion):
    """|g * w| with `g` the loss gradient averaged over the calibration data (Molchanov et al.).

    A weight scores `|g_i w_i|`; a channel sums `|g_i w_i|` over every trainable entry of the
    group's params (producers' output slices and consumers' input slices). Gradients are taken
    once per pruning event with BatchNormalization in inference mode (`context.gradient`).

    Example:

    ```python
    import tfprune
    callback = tfprune.MagnitudePruning(tfprune.Target(flops=0.5), criterion="taylor",
                                        calibration_data=(x_calib, y_calib))
    ```
    """

    requires_calibration_data = True

    def channel_scores(self, group, context):
        total = np.zeros(group.size)
        for p in group.params:
            if p.trainable:
                v = context.variable(p)
                total += channel_sum(np.abs(context.gradient(v) * context.value(v)), p)
        return total

    def weight_scores(self, variable, context):
        return np.abs(context.gradient(variable) * context.value(variable))
