"""FLOPs, MACs, params and weight bytes of Keras models, and of models with channels removed.

`tfprune.profile(model)` counts a model per layer; `tfprune.profile.CostModel(model)` gives the
same totals for any number of removed channels per group, without rebuilding the model.

Example:

```python
import tfprune
model = tfprune.zoo.resnet8()
print(tfprune.profile(model))                     # table per layer, totals
cost = tfprune.profile.CostModel(model)
cost.evaluate({1: 8})                             # {"flops": ..., "params": ..., ...}
```
"""

from tfprune.profile.cost_model import CostModel
from tfprune.profile.profiler import LayerProfile, Profile, profile

# `tfprune.profile` is the function (the package's own name is taken by it in `tfprune`), so
# the rest of the package is reachable from it too: `tfprune.profile.CostModel`.
profile.CostModel = CostModel
profile.Profile = Profile
profile.LayerProfile = LayerProfile
