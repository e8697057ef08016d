"""tfprune: second-order structured pruning for Keras 3 that makes models really smaller.

```python
import keras, tfprune
groups = tfprune.channel_groups(model)          # which channels go together
small = tfprune.shrink(model, {0: [1, 5]})      # physically remove channels 1 and 5 of group 0
print(tfprune.profile(small))                   # FLOPs, params, bytes per layer
```
"""

import keras as _keras

if _keras.backend.backend() != "tensorflow":  # curvature and export rely on TensorFlow
    raise ImportError(
        "tfprune needs Keras 3 with the TensorFlow backend; KERAS_BACKEND is "
        f"{_keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras.")

__version__ = "0.1.0"

from tfprune import errors  # noqa: E402
from tfprune import datasets, zoo  # noqa: E402,F401

# --- graph, shrink, profile (channel structure and physical removal) ---------------------
from tfprune.graph import ChannelGroup, Member, ParamSlice  # noqa: E402,F401
from tfprune.graph import channel_groups  # noqa: E402,F401
from tfprune.shrink import mask_channels, shrink  # noqa: E402,F401
from tfprune.profile import profile  # noqa: E402,F401

# --- curvature ---------------------------------------------------------------------------
from tfprune import curvature  # noqa: E402,F401

# --- pruning during fit (keras/) ---------------------------------------------------------
from tfprune import allocation, criteria  # noqa: E402,F401
from tfprune.keras import (ConstantSparsity, Distiller, MagnitudePruning,  # noqa: E402,F401
                           OneShot, PolynomialDecay, PruningCallback, PruningSummaries,
                           PruningWrapper, Target, prunable, recalibrate_batchnorm, strip)

# --- methods -----------------------------------------------------------------------------
from tfprune.keras.camp_hive import CampHiVe  # noqa: E402,F401
from tfprune.keras.oneshot import prune  # noqa: E402,F401
from tfprune.keras.rd_prune import RDPrune  # noqa: E402,F401
from tfprune.keras.sosp import SOSPH  # noqa: E402,F401

# --- export ------------------------------------------------------------------------------
from tfprune import export  # noqa: E402,F401
