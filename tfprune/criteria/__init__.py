"""Importance criteria: one score per channel of a group, or one per weight.

A criterion is a small callable, `criterion(unit, context) -> scores`: given a
`tfprune.ChannelGroup` it returns one score per channel, given a weight variable one score
per weight; lower scores are pruned first. `context` is a `ScoringContext` (the model, the
groups, the cost model, the calibration data, lazy gradients and activations; see
`tfprune.criteria.context`).

| name | class | scores | needs calibration data |
|---|---|---|---|
| `"l1"`, `"l2"` | `Magnitude` | norm of the producer kernels / |w| | no |
| `"bn_scale"` | `BatchNormScale` | |gamma| of the channel's BatchNormalization | no |
| `"taylor"` | `Taylor` | |g * w| summed over the group's params | yes |
| `"random"` | `RandomScore` | seeded uniform | no |

Example:

```python
from tfprune import criteria
l2 = criteria.get("l2")            # Magnitude(norm='l2')
```
"""

from tfprune.criteria.base import CHANNEL, WEIGHT, Criterion, channel_sum  # noqa: F401
from tfprune.criteria.bn_scale import BatchNormScale  # noqa: F401
from tfprune.criteria.context import ScoringContext  # noqa: F401
from tfprune.criteria.magnitude import Magnitude  # noqa: F401
from tfprune.criteria.random_score import RandomScore  # noqa: F401
from tfprune.criteria.taylor import Taylor  # noqa: F401
from tfprune.errors import InvalidCriterionError

CRITERIA = {
    "l1": lambda: Magnitude("l1"),
    "l2": lambda: Magnitude("l2"),
    "bn_scale": BatchNormScale,
    "taylor": Taylor,
    "random": RandomScore,
}


def get(identifier) -> Criterion:
    """A criterion from its name (`"l1"`, `"l2"`, `"bn_scale"`, `"taylor"`, `"random"`) or itself.

    Raises:
        InvalidCriterionError: an unknown name, or an object that is not a `Criterion`.
    """
    if isinstance(identifier, Criterion):
        return identifier
    if isinstance(identifier, str) and identifier in CRITERIA:
        return CRITERIA[identifier]()
    raise InvalidCriterionError(
        f"unknown criterion {identifier!r}; accepted: {', '.join(map(repr, CRITERIA))} or a "
        "tfprune.criteria.Criterion instance")
