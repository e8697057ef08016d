"""Curvature of a Keras model's loss: Hessian- and Gauss-Newton-vector products and spectra.

Every function takes the model, the loss and calibration data, and works on the *mean over
samples* of the per-sample loss, with BatchNormalization and Dropout in inference mode, in
float32 (also for mixed-precision models), under the active `tf.distribute` strategy. See
`docs/concepts/curvature.md`.

| function | computes |
|---|---|
| `hessian_vector_product` | `H v`, exact (forward-over-reverse or reverse-over-reverse) |
| `gauss_newton_vector_product` | `G v = J^T Lambda J v` (positive semi-definite) |
| `power_iteration` | top-k eigenpairs of `H` or `G` (global norm, deflation) |
| `block_power_iteration` | top eigenvalue of each layer's or channel group's diagonal block |
| `hutchinson` | `diag(H)`, `tr(H)`, per-layer and per-channel traces |
| `gate_curvature` | gradient and exact Gauss-Newton diagonal along channel gates (`gates`) |

Example:

```python
import numpy as np, keras, tfprune
model = tfprune.zoo.resnet8(widths=(4, 8, 8))
x = np.random.randint(0, 255, (32, 32, 32, 3)).astype("float32")
y = np.random.randint(0, 10, 32)
top = tfprune.curvature.power_iteration(model, "sparse_categorical_crossentropy", (x, y),
                                        max_iter=20)
diag = tfprune.curvature.hutchinson(model, "sparse_categorical_crossentropy", (x, y),
                                    samples=16)
print(top.eigenvalues, diag.per_layer())
```
"""

from tfprune.curvature.gates import GateCurvature, gate_curvature
from tfprune.curvature.hutchinson import HutchinsonResult, hutchinson
from tfprune.curvature.power import (BlockEigenResult, EigenResult, block_power_iteration,
                                     power_iteration)
from tfprune.curvature.products import gauss_newton_vector_product, hessian_vector_product
