"""Curvature-adaptive thresholds: prune less where the loss is more curved (CAMP-HiVe).

A unit of pool `l` (a channel group, or a kernel for single weights) is removed when its
saliency is below the pool's threshold

    tau_l = tau * (mean_lambda / lambda_l) ** beta

where `lambda_l` is the pool's curvature (the top eigenvalue of its diagonal Hessian block)
and `mean_lambda` the mean over pools: a sharply curved pool, whose weights the loss is more
sensitive to, gets a lower threshold and keeps more. `beta = 0` is one global threshold.
`tau` is the smallest threshold for which the budget holds.

Being below `tau_l` is being below `tau` once the saliency is multiplied by
`(lambda_l / mean_lambda) ** beta`, so the removed set only changes where `tau` crosses one of
these scaled saliencies: bisecting `tau` over them (`GlobalRanking` on the scaled scores)
finds the exact smallest `tau` that meets the budget, to within one unit of one pool. Pools at
their minimum (min channels / min density) keep their units whatever the threshold.

Example:

```python
import numpy as np
from tfprune.allocation import AllocationProblem, Pool
from tfprune.allocation.adaptive import AdaptiveThresholds

pools = [Pool("flat", np.array([1., 2., 3., 4.]), np.zeros(4, bool), max_removed=3),
         Pool("curved", np.array([1., 2., 3., 4.]), np.zeros(4, bool), max_removed=3)]
problem = AllocationProblem(pools, meets=lambda counts: counts.sum() >= 4)
thresholds = AdaptiveThresholds(beta=1.0, curvature=[1.0, 3.0])
[r.tolist() for r in thresholds(problem)]
# [[True, True, True, False], [True, False, False, False]]: the curved pool keeps more
thresholds.tau, thresholds.thresholds      # tau and each pool's tau_l
```
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import List, Optional, Sequence

import numpy as np

from tfprune.allocation.ranking import (AllocationProblem, GlobalRanking, Pool,
                                        check_normalize, normalized)
from tfprune.errors import InvalidPruningArgumentError

#: Curvatures below this fraction of the largest are raised to it: a flat pool (lambda ~ 0)
#: would otherwise get an unbounded threshold.
FLOOR = 1e-3


class AdaptiveThresholds:
    """Removes units below `tau * (mean_lambda / lambda_l) ** beta`, `tau` set by the budget.

    An allocation (called with a `tfprune.allocation.AllocationProblem`, like
    `GlobalRanking`) configured with one curvature per pool of the problems it will solve;
    `tfprune.CampHiVe` makes one per pruning event with the curvature it just measured.
    `lambda_l` is taken in absolute value (the top eigenvalue of an exact Hessian block can be
    negative), raised to `FLOOR` times the largest, and a pool without a curvature (None or
    NaN) gets `mean_lambda` (its threshold is `tau`).

    After a call, `tau` holds the threshold found (midway between the largest scaled saliency
    removed and the smallest one kept; None when nothing new was removed) and `thresholds`
    each pool's `tau_l`. With `per_unit_cost=True` saliencies are divided by what removing
    the unit saves (the problem's `unit_costs`) before the thresholds apply, and `tau` is in
    saliency per unit of cost. With `normalize="mean"` each pool's saliencies are first
    divided by their mean (`tfprune.allocation.ranking.normalized`): thresholds then apply to
    a unit's saliency relative to its pool, and `tau` is in those units.

    Args:
        beta: strength of the adaptation, `>= 0`; 0 is a plain global threshold.
        curvature: one `lambda_l` per pool, in the problem's pool order; None: all equal.
        per_unit_cost: compare saliency per unit of cost with the thresholds.
        normalize: None, or `"mean"` to compare each pool's saliencies over their mean.

    Raises:
        InvalidPruningArgumentError: a negative or non-finite `beta`, or a curvature that is
            not a sequence of numbers.
    """

    def __init__(self, beta: float = 1.0, curvature: Optional[Sequence[float]] = None,
                 per_unit_cost: bool = False, normalize: Optional[str] = None):
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) \
                or not math.isfinite(beta) or beta < 0:
            raise InvalidPruningArgumentError(
                f"beta={beta!r}: expected a finite number >= 0 (0 is one global threshold, 1 "
                "scales each threshold by mean_lambda / lambda_l)")
        if curvature is not None:
            try:
                curvature = np.array([np.nan if c is None else float(c) for c in curvature],
                                     dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidPruningArgumentError(
                    f"curvature must be one number (or None) per pool; received {curvature!r}"
                ) from None
        self.beta = float(beta)
        self.curvature = curvature
        # Normalised in `__call__`, before the curvature scaling (after it would undo it).
        self.normalize = check_normalize(normalize)
        self.ranking = GlobalRanking(per_unit_cost)
        self.tau: Optional[float] = None
        self.thresholds: Optional[np.ndarray] = None

    def multipliers(self, pools: int) -> np.ndarray:
        """`(lambda_l / mean_lambda) ** beta` for each of `pools` pools."""
        if self.curvature is None or self.beta == 0.0:
            return np.ones(pools)
        if len(self.curvature) != pools:
            raise InvalidPruningArgumentError(
                f"{len(self.curvature)} curvatures for {pools} pools: give one per pool")
        lam = np.abs(self.curvature)
        known = np.isfinite(lam)
        if not np.any(known) or lam[known].max() <= 0:
            return np.ones(pools)
        lam = np.where(known, np.maximum(lam, FLOOR * lam[known].max()), np.nan)
        mean = lam[known].mean()
        return np.where(known, lam / mean, 1.0) ** self.beta

    def __call__(self, problem: AllocationProblem) -> List[np.ndarray]:
        problem = normalized(problem, self.normalize)
        scale = self.multipliers(len(problem.pools))
        scaled = dataclasses.replace(problem, pools=[
            Pool(p.name, p.scores * m, p.removed, p.max_removed)
            for p, m in zip(problem.pools, scale)])
        removed = self.ranking(scaled)
        self.tau = self._tau(scaled, removed)
        self.thresholds = None if self.tau is None else self.tau / scale
        return removed

    def _tau(self, problem, removed) -> Optional[float]:
        keys = [p.scores for p in problem.pools]
        if self.ranking.per_unit_cost and problem.unit_costs is not None:
            costs = np.asarray(problem.unit_costs(problem.removed_counts()), dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                keys = [np.where(c > 0, k / np.where(c > 0, c, 1.0), np.inf)
                        for k, c in zip(keys, costs)]
        new = [k[r & ~p.removed] for k, r, p in zip(keys, removed, problem.pools)]
        if not any(n.size for n in new):
            return None
        low = max(float(n.max()) for n in new if n.size)
        # The smallest scaled saliency left among units the pool was still free to remove.
        free = [k[~r] for k, r, p, n in zip(keys, removed, problem.pools, new)
                if int(r.sum()) < p.max_removed]
        high = min((float(f.min()) for f in free if f.size), default=math.inf)
        return low if not math.isfinite(high) else 0.5 * (low + high)

    def get_config(self):
        return {"beta": self.beta, "per_unit_cost": self.ranking.per_unit_cost,
                "normalize": self.normalize}

    def __repr__(self):
        return (f"AdaptiveThresholds(beta={self.beta}, "
                f"per_unit_cost={self.ranking.per_unit_cost}, normalize={self.normalize!r})")
