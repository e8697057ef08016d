"""Pruning during `fit`: targets, schedules, the pruning callback, wrappers, summaries, strip.

```python
import tfprune
model.fit(x, y, epochs=10, callbacks=[
    tfprune.MagnitudePruning(tfprune.Target(flops=0.5),
                             tfprune.PolynomialDecay(begin_step=0, end_step=2000, frequency=200)),
    tfprune.PruningSummaries("logs")])
small = tfprune.strip(model)      # physically smaller, same outputs
```
"""

from tfprune.keras.batchnorm import recalibrate_batchnorm  # noqa: F401
from tfprune.keras.callback import PruningCallback, PruningEvent, active_pruning  # noqa: F401
from tfprune.keras.distill import Distiller  # noqa: F401
from tfprune.keras.magnitude import MagnitudePruning  # noqa: F401
from tfprune.keras.schedules import (ConstantSparsity, OneShot, PolynomialDecay,  # noqa: F401
                                     PruningSchedule)
from tfprune.keras.stripping import strip  # noqa: F401
from tfprune.keras.summaries import PruningSummaries  # noqa: F401
from tfprune.keras.targets import Target  # noqa: F401
from tfprune.keras.wrapper import PruningWrapper, prunable, saved_target  # noqa: F401
