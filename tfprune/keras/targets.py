"""`Target`: how much of a model pruning keeps, in FLOPs, parameters, bytes or sparsity."""

from __future__ import annotations

import math
import numbers
from typing import Dict, Optional

import keras

from tfprune.errors import InvalidTargetError

#: Resources a budget can bound, in the order budgets are reported.
RESOURCES = ("flops", "params", "weight_bytes", "sparsity")
_STRUCTURAL = ("flops", "params", "weight_bytes")


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTargetError(
            f"Target({name}=...) must be a number; received {value!r} of type "
            f"{type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidTargetError(f"Target({name}=...) must be finite; received {value}")
    return value


@keras.saving.register_keras_serializable(package="tfprune")
class Target:
    """What a pruned model keeps: fractions of the dense model's FLOPs, params or bytes.

    `flops`, `params` and `weight_bytes` are fractions to **keep** (`flops=0.25` keeps a
    quarter of the FLOPs), in `(0, 1]`. `sparsity` is tfmot's meaning: the fraction of the
    weights **removed**, in `[0, 1)`. `*_reduction` factors say the same as a division:
    `flops_reduction=4.0` is `flops=0.25`.

    Several budgets may be given: all of them must hold, so the binding one decides
    (`Target(flops=0.5, params=0.3)` prunes until FLOPs are at most 50% *and* params at most
    30%). Allocations that rank per unit of cost count the saving in the binding one.

    What each budget counts (FLOPs = 2 x MACs of convolutions and dense layers, params =
    every weight, bytes = weight bytes in their dtypes; see `tfprune.profile`):

    - granularity `"channel"`: `flops`, `params` and `weight_bytes` of the model once the
      pruned channels are removed (`tfprune.strip`); `sparsity` is `params=1 - sparsity`.
    - granularity `"weight"`: only `sparsity`, the fraction of the prunable kernels' weights
      set to zero (zeros do not make a dense kernel cheaper, so other budgets are refused).

    Args:
        flops: fraction of the dense FLOPs to keep, in `(0, 1]`.
        params: fraction of the dense parameter count to keep, in `(0, 1]`.
        weight_bytes: fraction of the dense weight bytes to keep, in `(0, 1]`.
        sparsity: fraction of the weights to remove, in `[0, 1)`.
        flops_reduction: keep `1 / flops_reduction` of the FLOPs (`>= 1`).
        params_reduction: keep `1 / params_reduction` of the params (`>= 1`).
        weight_bytes_reduction: keep `1 / weight_bytes_reduction` of the bytes (`>= 1`).

    Raises:
        InvalidTargetError: no budget, a value out of range or not a number, or a resource
            given both as a fraction and as a reduction.

    Example:

    ```python
    import tfprune
    target = tfprune.Target(flops_reduction=4.0)
    target.keep                      # {'flops': 0.25}
    target.at(0.5)                   # half way there: {'flops': 0.625}
    tfprune.Target.from_config(target.get_config()) == target   # True
    ```
    """

    def __init__(self, flops: Optional[float] = None, params: Optional[float] = None,
                 weight_bytes: Optional[float] = None, sparsity: Optional[float] = None,
                 flops_reduction: Optional[float] = None,
                 params_reduction: Optional[float] = None,
                 weight_bytes_reduction: Optional[float] = None):
        self._config = dict(flops=flops, params=params, weight_bytes=weight_bytes,
                            sparsity=sparsity, flops_reduction=flops_reduction,
                            params_reduction=params_reduction,
                            weight_bytes_reduction=weight_bytes_reduction)
        keep: Dict[str, float] = {}
        for name in _STRUCTURAL:
            fraction, factor = self._config[name], self._config[f"{name}_reduction"]
            if fraction is not None and factor is not None:
                raise InvalidTargetError(
                    f"Target: give {name}= or {name}_reduction=, not both (received "
                    f"{name}={fraction!r}, {name}_reduction={factor!r})")
            if fraction is not None:
                fraction = _number(name, fraction)
                if not 0.0 < fraction <= 1.0:
                    raise InvalidTargetError(
                        f"Target({name}={fraction}): the fraction to keep must be in (0, 1]; "
                        f"for a reduction factor use {name}_reduction=")
                keep[name] = fraction
            elif factor is not None:
                factor = _number(f"{name}_reduction", factor)
                if factor < 1.0:
                    raise InvalidTargetError(
                        f"Target({name}_reduction={factor}): a reduction factor must be >= 1 "
                        f"(4.0 keeps a quarter); for a fraction to keep use {name}=")
                keep[name] = 1.0 / factor
        if sparsity is not None:
            sparsity = _number("sparsity", sparsity)
            if not 0.0 <= sparsity < 1.0:
                raise InvalidTargetError(
                    f"Target(sparsity={sparsity}): the fraction of weights removed must be in "
                    "[0, 1)")
            keep["sparsity"] = 1.0 - sparsity
        if not keep:
            raise InvalidTargetError(
                "Target() needs a budget: one or more of flops=, params=, weight_bytes= "
                "(fractions to keep), sparsity= (fraction removed), or flops_reduction=, "
                "params_reduction=, weight_bytes_reduction= (factors)")
        self.keep = {r: keep[r] for r in RESOURCES if r in keep}

    def at(self, progress: float) -> Dict[str, float]:
        """Fractions to keep when the schedule is `progress` of the way to the target.

        Args:
            progress: in `[0, 1]`; 0 keeps everything, 1 is the target.

        Returns:
            `{resource: fraction to keep}` (sparsity as the fraction of weights kept).
        """
        progress = min(max(float(progress), 0.0), 1.0)
        return {r: 1.0 - progress * (1.0 - k) for r, k in self.keep.items()}

    def get_config(self):
        return {k: v for k, v in self._config.items() if v is not None}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, Target) and self.keep == other.keep

    def __hash__(self):
        return hash(tuple(self.keep.items()))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"Target({args})"
