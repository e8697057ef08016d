"""`RandomScore`: seeded random scores, the baseline every criterion must beat."""

from __future__ import annotations

from tfprune.criteria.base import Criterion


class RandomScore(Criterion):
    """Uniform random scores, drawn from `(seed, step, unit)` so runs and resumed runs agree.

    Example:

    ```python
    import tfprune
    callback = tfprune.MagnitudePruning(tfprune.Target(flops=0.5), criterion="random", seed=3)
    ```
    """

    def channel_scores(self, group, context):
        return context.rng("group", group.id).random(group.size)

    def weight_scores(self, variable, context):
        return context.rng("weight", context.name(variable)).random(tuple(variable.shape))
