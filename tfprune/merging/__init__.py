"""Cyclic pair merging: fold a removed unit into a kept partner instead of only deleting it.

In each channel group (or each output unit of a kernel) the removed units are paired with the
kept ones: the least salient removed unit with the most salient kept unit, and so on, cycling
through the kept units when more are removed than kept (`cyclic_partners`). The removed unit's
contribution is then folded into its partner in the layer that reads them:

| function | units | where the fold goes |
|---|---|---|
| `merge_channels` | channels of a group | input weights (and bias) of each Dense/Conv consumer |
| `merge_weights` | entries of a kernel | the partner entry of the same output unit (and the bias) |

With `rule="least_squares"` (default) the fold is fitted on calibration activations and never
reconstructs the consumer's output worse than plain removal; `rule="half"` is the CAMP-HiVe
prototype's `w_j += w_i / 2` with partners by position. `tfprune.CampHiVe` calls these at every
pruning event, before the masks are applied.

Example:

```python
import numpy as np
from tfprune.merging import cyclic_partners
cyclic_partners(np.array([0.1, 3., 0.2, 5.]), [True, False, True, False],
                [False, True, False, True])      # [3, -1, 1, -1]
```
"""

from tfprune.merging.channels import ConsumerFold, MergeReport, consumers_to_fold, merge_channels
from tfprune.merging.consumers import LinearConsumer, unsupported_reason
from tfprune.merging.pairing import HALF, LEAST_SQUARES, REGRESSION, RULES, cyclic_partners
from tfprune.merging.weights import WeightFold, merge_weights
