"""How much to prune where: global ranking and uniform ratios, to meet a budget exactly.

Both granularities reduce to the same problem. Units (channels, aligned blocks of channels,
or single weights) come in *pools* (a channel group, a weight variable). Each pool has one
score per unit (lower = less important), the units already removed (masks are monotone, so
they stay removed) and the most units it may lose (minimum channels / density). An
allocation chooses, in every pool, which units to remove, always the lowest-scored ones of
the pool first, so that `problem.meets(counts)` holds, and removes no more than needed.

`meets` hides the budget: the pruning callbacks build it from `tfprune.profile.CostModel`
(FLOPs, params, bytes of the model with `counts` channels removed per group) or from weight
counts (sparsity). It must be monotone: removing more never breaks a budget that held.

Example:

```python
import numpy as np
from tfprune.allocation import AllocationProblem, GlobalRanking, Pool

pools = [Pool("a", np.array([3., 1., 2.]), np.zeros(3, bool), max_removed=2),
         Pool("b", np.array([0.5, 4.]), np.zeros(2, bool), max_removed=1)]
problem = AllocationProblem(pools, meets=lambda counts: counts.sum() >= 2)
[r.tolist() for r in GlobalRanking()(problem)]   # [[False, True, False], [True, False]]
```
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence

import numpy as np

from tfprune.errors import InvalidPruningArgumentError, InvalidTargetError


@dataclasses.dataclass
class Pool:
    """The units of one channel group or one weight variable.

    Attributes:
        name: what the pool is, for messages (`"group 3"`, `"conv2d/kernel"`).
        scores: float array `(n,)`, one importance per unit; lower is pruned first.
        removed: bool array `(n,)`, units already removed (they stay removed).
        max_removed: the most units the pool may have removed (its minimum keeps the rest).
    """

    name: str
    scores: np.ndarray
    removed: np.ndarray
    max_removed: int

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.removed = np.asarray(self.removed, dtype=bool).reshape(-1)
        if self.scores.shape != self.removed.shape:
            raise InvalidPruningArgumentError(
                f"pool {self.name!r}: {self.scores.size} scores but {self.removed.size} "
                "removed flags; give one of each per unit")
        self.max_removed = max(int(self.max_removed), int(self.removed.sum()))

    def lowest_free(self, count: int) -> np.ndarray:
        """Indices of the `count` lowest-scored units not yet removed (ties: lower index)."""
        free = np.flatnonzero(~self.removed)
        return free[np.argsort(self.scores[free], kind="stable")][:max(int(count), 0)]


@dataclasses.dataclass
class AllocationProblem:
    """Pools of scored units and the budget to meet.

    Attributes:
        pools: the pools.
        meets: `counts -> bool`: whether every budget holds with `counts[i]` units removed
            from pool `i` (an int array aligned with `pools`). Monotone in `counts`.
        unit_costs: optional `counts -> array`: what removing one more unit of each pool
            saves (FLOPs, params, ...) at `counts`; needed by `GlobalRanking(per_unit_cost=True)`.
        resource: optional name of the cost that `unit_costs` counts (`"flops"`, `"params"`,
            `"weight_bytes"`): the budget an allocation that weighs costs should save in.
    """

    pools: Sequence[Pool]
    meets: Callable[[np.ndarray], bool]
    unit_costs: Optional[Callable[[np.ndarray], np.ndarray]] = None
    resource: Optional[str] = None

    def removed_counts(self) -> np.ndarray:
        return np.array([int(p.removed.sum()) for p in self.pools], dtype=np.int64)

    def max_counts(self) -> np.ndarray:
        return np.array([p.max_removed for p in self.pools], dtype=np.int64)

    def check_reachable(self):
        """Raises `InvalidTargetError` when even the largest allowed removal misses the budget."""
        if not self.meets(self.max_counts()):
            raise InvalidTargetError(
                "the budget cannot be met even with every pool pruned to its minimum; lower "
                "the minimum channels/density or ask for less")

    def masks(self, counts: np.ndarray) -> List[np.ndarray]:
        """Removed flags per pool with `counts[i]` units of pool `i` removed, lowest first."""
        out = []
        for pool, n in zip(self.pools, counts):
            removed = pool.removed.copy()
            removed[pool.lowest_free(int(n) - int(pool.removed.sum()))] = True
            out.append(removed)
        return out


#: How `GlobalRanking` and `AdaptiveThresholds` may put the pools' scores on one scale.
NORMALIZERS = (None, "mean")


def check_normalize(normalize) -> Optional[str]:
    """`normalize` if it is one of `NORMALIZERS`, else `InvalidPruningArgumentError`."""
    if normalize not in NORMALIZERS:
        raise InvalidPruningArgumentError(
            f"normalize={normalize!r}: accepted are None (rank the scores as they are) and "
            "'mean' (divide each pool's scores by their mean over all its units)")
    return normalize


def normalized(problem: AllocationProblem, normalize: Optional[str]) -> AllocationProblem:
    """`problem` with each pool's scores divided by their mean over all of its units.

    Removed units count in the mean with their current score, which is zero for a channel
    whose weights are zero under the magnitude and saliency criteria: as a pool loses units,
    its mean falls and the units it keeps rank higher. A pool whose scores are all zero keeps
    zeros. An infinite score (a unit a criterion keeps, e.g. `bn_scale` without a
    BatchNormalization) stays infinite and the mean is taken over the finite scores.
    `normalize=None` returns `problem` itself.
    """
    if check_normalize(normalize) is None:
        return problem
    pools = []
    for p in problem.pools:
        finite = np.isfinite(p.scores)
        mean = float(np.mean(p.scores[finite])) if finite.any() else 0.0
        scores = np.where(finite, p.scores / mean if mean > 0 else 0.0, p.scores)
        pools.append(Pool(p.name, scores, p.removed, p.max_removed))
    return dataclasses.replace(problem, pools=pools)


def _smallest(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The smallest integer in `(lo, hi]` with `ok`, knowing `ok(hi)` and not `ok(lo)`."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


class GlobalRanking:
    """Ranks the units of all pools together and removes the lowest until the budget holds.

    The result is minimal: removing one unit fewer (the highest-ranked one removed) would miss
    the budget, so a FLOPs target is met to within one channel of one group. With
    `per_unit_cost=True` units are ranked by score divided by what removing them saves (the
    problem's `unit_costs`, evaluated at the units already removed), which favours pruning
    expensive layers; scores must then be non-negative. The pruning callbacks count the
    saving in the target's budget that binds (with several budgets, the one their first
    allocation met with the least room left).

    Scores of different pools are compared as they are, which suits scores on one scale (a
    loss change) but lets a pool whose units are individually weak and jointly needed be
    emptied: a wide layer of many redundant channels, or a layer whose weights are smaller.
    `normalize="mean"` divides each pool's scores by their mean first (`normalized`), so that
    units are ranked by their importance within their own pool (Molchanov et al., 2017,
    normalise per layer for the same reason).

    Args:
        per_unit_cost: rank by score per unit of cost instead of by score.
        normalize: None, or `"mean"` to rank each pool's scores over their mean.

    Example:

    ```python
    from tfprune.allocation import GlobalRanking
    allocation = GlobalRanking(per_unit_cost=True, normalize="mean")
    ```
    """

    def __init__(self, per_unit_cost: bool = False, normalize: Optional[str] = None):
        if not isinstance(per_unit_cost, bool):
            raise InvalidPruningArgumentError(
                f"GlobalRanking(per_unit_cost={per_unit_cost!r}) must be True or False")
        self.per_unit_cost = per_unit_cost
        self.normalize = check_normalize(normalize)

    def __call__(self, problem: AllocationProblem) -> List[np.ndarray]:
        problem = normalized(problem, self.normalize)
        already = problem.removed_counts()
        if problem.meets(already):
            return [p.removed.copy() for p in problem.pools]
        problem.check_reachable()
        units = [p.lowest_free(p.max_removed - n) for p, n in zip(problem.pools, already)]
        pool_of = np.concatenate([np.full(len(u), i, np.int64) for i, u in enumerate(units)])
        keys = np.concatenate([p.scores[u] for p, u in zip(problem.pools, units)])
        if self.per_unit_cost:
            if problem.unit_costs is None:
                raise InvalidPruningArgumentError(
                    "GlobalRanking(per_unit_cost=True) needs the problem's unit_costs")
            costs = np.asarray(problem.unit_costs(already), dtype=np.float64)[pool_of]
            with np.errstate(divide="ignore", invalid="ignore"):
                keys = np.where(costs > 0, keys / np.where(costs > 0, costs, 1.0), np.inf)
        order = pool_of[np.argsort(keys, kind="stable")]

        def counts(k):
            return already + np.bincount(order[:k], minlength=len(problem.pools))

        k = _smallest(0, len(order), lambda k: problem.meets(counts(k)))
        return problem.masks(counts(k))

    def get_config(self):
        return {"per_unit_cost": self.per_unit_cost, "normalize": self.normalize}

    def __repr__(self):
        return f"GlobalRanking(per_unit_cost={self.per_unit_cost}, normalize={self.normalize!r})"


class UniformAllocation:
    """Removes the same fraction of every pool (tfmot's per-layer sparsity), as little as needed.

    The fraction is the smallest for which the budget holds; each pool removes
    `ceil(fraction * size)` units (at least what it already lost, at most its maximum), its
    lowest-scored first. Pools then put back one unit each, the largest pool first, while
    the budget still holds (without it, pools of 16 channels would make the fraction jump by
    1/16 and overshoot a FLOPs target by several percent), so every pool is within one unit
    of the common fraction and no pool can put back a unit without missing the budget.

    Example:

    ```python
    from tfprune.allocation import UniformAllocation
    allocation = UniformAllocation()
    ```
    """

    def __call__(self, problem: AllocationProblem) -> List[np.ndarray]:
        already = problem.removed_counts()
        if problem.meets(already):
            return [p.removed.copy() for p in problem.pools]
        problem.check_reachable()
        sizes = np.array([p.scores.size for p in problem.pools], dtype=np.int64)
        top = problem.max_counts()

        def counts(fraction):
            wanted = np.ceil(fraction * sizes - 1e-9).astype(np.int64)
            return np.clip(np.maximum(wanted, already), 0, np.maximum(top, already))

        # Every count changes only at fractions i / size: bisect over those breakpoints.
        points = np.unique(np.concatenate([np.arange(1, s + 1) / s for s in sizes] + [[0.0]]))
        i = _smallest(0, len(points) - 1, lambda i: problem.meets(counts(points[i])))
        chosen = counts(points[i])
        for pool in np.argsort(-sizes, kind="stable"):
            if chosen[pool] > already[pool]:
                chosen[pool] -= 1
                if not problem.meets(chosen):
                    chosen[pool] += 1
        return problem.masks(chosen)

    def get_config(self):
        return {}

    def __repr__(self):
        return "UniformAllocation()"


ALLOCATIONS = {"global": GlobalRanking, "uniform": UniformAllocation,
               "per_unit_cost": lambda: GlobalRanking(per_unit_cost=True),
               "normalized": lambda: GlobalRanking(normalize="mean")}


def get(identifier):
    """An allocation from a name or a callable.

    Names: `"global"` (`GlobalRanking()`), `"per_unit_cost"` (`GlobalRanking(per_unit_cost=
    True)`), `"normalized"` (`GlobalRanking(normalize="mean")`), `"uniform"`
    (`UniformAllocation()`).

    Raises:
        InvalidPruningArgumentError: an unknown name or something that is not callable.
    """
    if isinstance(identifier, str):
        if identifier not in ALLOCATIONS:
            raise InvalidPruningArgumentError(
                f"unknown allocation {identifier!r}; accepted: {', '.join(ALLOCATIONS)}, or an "
                "object called with an AllocationProblem")
        return ALLOCATIONS[identifier]()
    if not callable(identifier):
        raise InvalidPruningArgumentError(
            f"allocation must be one of {', '.join(ALLOCATIONS)} or a callable taking an "
            f"AllocationProblem; received {identifier!r}")
    return identifier


