"""`MagnitudePruning`: prune during `fit` by a first-order criterion (L1, L2, BN scale, Taylor)."""

from __future__ import annotations

from tfprune.criteria import CRITERIA
from tfprune.errors import InvalidCriterionError
from tfprune.keras.callback import PruningCallback


class MagnitudePruning(PruningCallback):
    """Prunes channels (or weights) with the lowest magnitude, gradually, during `fit`.

    The first-order methods on the `PruningCallback` engine: `criterion="l1"` is filter
    pruning by the L1 norm of the producing kernels (Li et al., 2017), `"l2"` the L2 norm,
    `"bn_scale"` network slimming's |gamma| (Liu et al., 2017), `"taylor"` the first-order
    Taylor estimate |g * w| on calibration data (Molchanov et al., 2019), and `"random"` the
    seeded baseline. With `granularity="weight"` and `allocation="uniform"` it is tfmot's
    `prune_low_magnitude`.

    At channel granularity the allocation (how many channels each group loses) can matter
    more than the criterion. Taylor scores are heavy-tailed, and the default allocation,
    which divides each group's scores by their mean, cut ResNet-8's last stage deepest: at
    25% of the FLOPs it reached 75.93% after fine-tuning, where `allocation="uniform"`
    reached 76.89%, level with L1 (77.01%; two seeds each, `docs/BENCHMARKS.md`, run AC).

    Args:
        target: a `tfprune.Target`.
        schedule: a pruning schedule (default `OneShot(0)`).
        criterion: `"l1"`, `"l2"`, `"bn_scale"`, `"taylor"` or `"random"`.
        granularity: `"channel"` or `"weight"`.
        **kwargs: the other arguments of `PruningCallback` (`allocation`,
            `calibration_data`, `min_channels`, `min_density`, `verbose`, `seed`,
            `merge_rule`: fold the removed channels into the kept ones).

    Example:

    ```python
    import tfprune
    model.fit(x, y, epochs=4, callbacks=[tfprune.MagnitudePruning(
        tfprune.Target(flops=0.5),
        tfprune.PolynomialDecay(begin_step=0, end_step=2000, frequency=200))])
    small = tfprune.strip(model)
    ```
    """

    def __init__(self, target, schedule=None, criterion: str = "l1",
                 granularity: str = "channel", **kwargs):
        if criterion not in CRITERIA:
            raise InvalidCriterionError(
                f"MagnitudePruning(criterion={criterion!r}): accepted are "
                f"{', '.join(map(repr, CRITERIA))}; other criteria go to tfprune.PruningCallback")
        super().__init__(criterion, target, schedule, granularity=granularity, **kwargs)
