"""Rate-distortion allocation: the sparsity of every layer that minimises the summed distortion.

Xu et al. (ICCV 2023) observe that the output distortion of pruning several layers together is
close to the sum of the distortions of pruning each alone. The allocation then solves

    min_{k_1..k_L}  sum_l curves[l][k_l]   subject to   sum_l costs[l][k_l] <= budget

exactly, by dynamic programming over the layers: `dp[l][b] = min_k curves[l][k] +
dp[l-1][b - costs[l][k]]`, in time linear in the number of layers.

Unlike the reference code this allocator never exceeds the budget (costs are integers, or are
rounded *up* to a resolution grid when the budget is too large to tabulate, so rounding can only
make the choice more conservative), and it respects a minimum density per layer, so no layer is
pruned to nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from tfprune.errors import InvalidTargetError


@dataclasses.dataclass(frozen=True)
class RDAllocation:
    """The result of `rd_allocate`.

    Attributes:
        levels: for each layer, the index of the chosen level in its curve.
        distortion: the summed distortion of the chosen levels (the predicted joint distortion).
        cost: the summed cost of the chosen levels (`<= budget`).
        budget: the budget that was asked for.
    """

    levels: List[int]
    distortion: float
    cost: float
    budget: float


def _as_curves(curves, costs):
    if len(curves) != len(costs):
        raise InvalidTargetError(f"rd_allocate: {len(curves)} distortion curves but {len(costs)} "
                                 "cost curves; give one of each per layer")
    if not len(curves):
        raise InvalidTargetError("rd_allocate: no layers (empty curves)")
    out = []
    for i, (d, c) in enumerate(zip(curves, costs)):
        d = np.asarray(d, dtype=np.float64).reshape(-1)
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        if d.shape != c.shape or d.size == 0:
            raise InvalidTargetError(f"rd_allocate: layer {i} has {d.size} distortions and "
                                     f"{c.size} costs; they must be equal and non-empty")
        if not (np.all(np.isfinite(d)) and np.all(np.isfinite(c))):
            raise InvalidTargetError(f"rd_allocate: layer {i} has non-finite distortions or costs")
        if np.any(c < 0):
            raise InvalidTargetError(f"rd_allocate: layer {i} has negative costs {c[c < 0][:3]}")
        out.append((d, c))
    return out


def rd_allocate(curves: Sequence, costs: Sequence, budget: float, min_density: float = 0.0,
                densities: Optional[Sequence] = None, max_bins: int = 200_000) -> RDAllocation:
    """Chooses one level per layer minimising the summed distortion within a cost budget.

    Args:
        curves: per layer, the distortion at each level (e.g. at each sparsity of a grid).
        costs: per layer, the cost that remains at each level (kept params, FLOPs or bytes),
            same shapes as `curves`.
        budget: the largest allowed total cost. The result never exceeds it.
        min_density: levels whose density is below this are not allowed (0 allows all).
        densities: per layer, the density of each level (fraction of the layer kept). By
            default `costs[l] / max(costs[l])`.
        max_bins: the size of the cost table. Integer costs whose total fits are solved
            exactly; larger budgets are tabulated at a resolution of `budget / max_bins`, with
            costs rounded up (the result stays within budget and is optimal up to that rounding).

    Returns:
        An `RDAllocation` with the chosen level of every layer.

    Raises:
        InvalidTargetError: malformed curves, or no choice of levels fits the budget (the
            message gives the smallest reachable cost).

    Example:

    ```python
    from tfprune.allocation import rd_allocate
    curves = [[0.0, 0.1, 0.5], [0.0, 0.3, 0.9]]   # distortion at densities 1, 0.5, 0.25
    costs = [[100, 50, 25], [100, 50, 25]]         # kept params at those densities
    a = rd_allocate(curves, costs, budget=75)
    a.levels   # [2, 1]: prune the first layer harder, it distorts less
    ```
    """
    layers = _as_curves(curves, costs)
    if not 0.0 <= float(min_density) <= 1.0:
        raise InvalidTargetError(f"rd_allocate: min_density must be in [0, 1]; got {min_density}")
    if not np.isfinite(budget) or budget < 0:
        raise InvalidTargetError(f"rd_allocate: budget must be a finite number >= 0; got {budget}")

    allowed = []
    for i, (d, c) in enumerate(layers):
        if densities is not None:
            dens = np.asarray(densities[i], dtype=np.float64).reshape(-1)
            if dens.shape != d.shape:
                raise InvalidTargetError(f"rd_allocate: layer {i} densities have shape "
                                         f"{dens.shape}, expected {d.shape}")
        else:
            top = c.max()
            dens = c / top if top > 0 else np.ones_like(c)
        ok = dens >= float(min_density) - 1e-12
        if not ok.any():
            raise InvalidTargetError(f"rd_allocate: layer {i} has no level with density >= "
                                     f"{min_density} (its densities: {np.round(dens, 4).tolist()})")
        allowed.append(ok)

    floor = sum(c[ok].min() for (d, c), ok in zip(layers, allowed))
    if floor > budget * (1 + 1e-12):
        raise InvalidTargetError(
            f"rd_allocate: the budget {budget:g} cannot be met: the smallest reachable cost with "
            f"min_density={min_density} is {floor:g}")

    integral = all(np.all(c == np.round(c)) for _, c in layers)
    unit = 1.0 if integral and budget <= max_bins else budget / max_bins
    if unit <= 0:
        unit = 1.0
    nbins = int(math.floor(budget / unit + 1e-9)) + 1
    # Rounding up keeps the tabulated cost an upper bound of the true cost.
    qcosts = [np.ceil(c / unit - 1e-9).astype(np.int64) for _, c in layers]
    if sum(q[ok].min() for q, ok in zip(qcosts, allowed)) >= nbins:
        # Rounding made the tightest choice infeasible; fall back to a finer grid.
        if max_bins >= 50_000_000:
            raise InvalidTargetError(f"rd_allocate: the budget {budget:g} is too close to the "
                                     f"smallest reachable cost {floor:g} to tabulate")
        return rd_allocate(curves, costs, budget, min_density, densities, max_bins * 4)

    inf = np.inf
    # dp[b]: least distortion of the layers so far with tabulated cost exactly b.
    dp = np.full(nbins, inf)
    dp[0] = 0.0
    choice = np.zeros((len(layers), nbins), dtype=np.int32)
    for li, ((d, _), q, ok) in enumerate(zip(layers, qcosts, allowed)):
        new = np.full(nbins, inf)
        arg = np.zeros(nbins, dtype=np.int32)
        for k in np.flatnonzero(ok):
            s = int(q[k])
            if s >= nbins:
                continue
            cand = np.full(nbins, inf)
            cand[s:] = dp[: nbins - s] + d[k]
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        dp = new
        choice[li] = arg

    b = int(np.argmin(dp))
    if not np.isfinite(dp[b]):  # pragma: no cover - excluded by the floor check above
        raise InvalidTargetError(f"rd_allocate: no allocation fits the budget {budget:g}")
    levels = [0] * len(layers)
    for li in range(len(layers) - 1, -1, -1):
        k = int(choice[li, b])
        levels[li] = k
        b -= int(qcosts[li][k])
    distortion = float(sum(d[k] for (d, _), k in zip(layers, levels)))
    cost = float(sum(c[k] for (_, c), k in zip(layers, levels)))
    return RDAllocation(levels=levels, distortion=distortion, cost=cost, budget=float(budget))


@dataclasses.dataclass(frozen=True)
class RDSolution:
    """The result of `rd_solve`.

    Attributes:
        counts: units removed per pool (meets the problem's budget; restoring any one unit
            would break it).
        predicted: the summed single-pool distortions of `counts` (from the curves).
        dp_budget: the largest dynamic-programming budget whose allocation met the true budget.
        steps: dynamic programs solved during the bisection.
        restored: units put back after the bisection to remove no more than needed.
        weights: with several budgets (`rd_solve_budgets`), the weight of each budget in the
            costs the levels were chosen by (each budget's cost counted as a fraction of it).
    """

    counts: np.ndarray
    predicted: float
    dp_budget: float
    steps: int
    restored: int
    weights: Optional[Dict[str, float]] = None


def rd_solve(problem, levels: Sequence, curves: Sequence, costs: Sequence,
             max_bins: int = 20_000, max_steps: int = 60) -> RDSolution:
    """Meets an `AllocationProblem`'s true budget with a rate-distortion allocation.

    `rd_allocate` assumes that the cost of a pruning is the sum of per-pool costs. Structured
    costs are not: a convolution's FLOPs are the product of its kept input and output
    channels, so pruning two adjacent groups saves less than the sum of pruning each alone.
    The dynamic program is therefore solved under a *DP budget* `B` (in the additive model:
    `sum_l costs[l][k_l] - costs[l][last] <= B`), and `B` is bisected until the largest `B`
    whose allocation meets the problem's true budget (`problem.meets`, e.g. the `CostModel`)
    is found. Since the allocation of a grid of levels may overshoot the budget by up to a
    level, units are then put back one at a time, the one whose return lowers the predicted
    distortion most per unit of cost first, as long as the true budget still holds: the
    result meets the budget and removes no more than needed (to within one unit of one pool).

    Args:
        problem: a `tfprune.allocation.AllocationProblem` (pools, `meets`, `unit_costs`).
        levels: per pool, the candidate removed counts, ascending, from the count the pool
            has removed already to its maximum.
        curves: per pool, the distortion at each level (0 at the first).
        costs: per pool, the cost that remains at each level (non-increasing), in the
            additive model.
        max_bins: the size of the dynamic program's cost table (see `rd_allocate`).
        max_steps: the most bisection steps.

    Returns:
        An `RDSolution`.

    Raises:
        InvalidTargetError: even every pool at its maximum misses the budget.

    Example:

    ```python
    import numpy as np
    from tfprune.allocation import AllocationProblem, Pool
    from tfprune.allocation.rd import rd_solve
    pools = [Pool("a", np.zeros(4), np.zeros(4, bool), 3),
             Pool("b", np.zeros(4), np.zeros(4, bool), 3)]
    # the true budget is not additive: kept cost = (4 - a) * (4 - b), at most 6
    problem = AllocationProblem(pools, lambda n: (4 - n[0]) * (4 - n[1]) <= 6)
    levels = [np.arange(4), np.arange(4)]
    curves = [np.array([0, 1, 2, 9.0]), np.array([0, 3, 6, 9.0])]
    costs = [4 - levels[0], 4 - levels[1]]
    rd_solve(problem, levels, curves, costs).counts      # array([2, 1]): (4-2)*(4-1) = 6
    ```
    """
    levels = [np.asarray(l, dtype=np.int64) for l in levels]
    curves = [np.asarray(c, dtype=np.float64) for c in curves]
    # DP costs relative to each pool's cheapest level: non-negative, 0 at the maximum removal.
    relative = [np.asarray(c, dtype=np.float64) - float(np.min(c)) for c in costs]
    problem.check_reachable()

    def allocation(budget):
        a = rd_allocate(curves, relative, budget, max_bins=max_bins)
        return np.array([l[k] for l, k in zip(levels, a.levels)], dtype=np.int64)

    lo, hi = 0.0, float(sum(r.max() for r in relative))
    best, steps = allocation(lo), 1
    if not problem.meets(best):  # a cost model that disagrees with the curves' costs
        best = problem.max_counts()
    top = allocation(hi)
    steps += 1
    if problem.meets(top):
        best, lo = top, hi
    resolution = max(hi * 1e-7, 1e-9)
    while hi - lo > resolution and steps < max_steps:
        mid = 0.5 * (lo + hi)
        counts = allocation(mid)
        steps += 1
        if problem.meets(counts):
            best, lo = counts, mid
        else:
            hi = mid

    def predicted(counts):
        return float(sum(np.interp(n, l, c) for n, l, c in zip(counts, levels, curves)))

    counts, restored = best.copy(), 0
    floor = np.array([l[0] for l in levels], dtype=np.int64)
    while True:
        candidates = np.flatnonzero(counts > floor)
        if not candidates.size:
            break
        # What putting a unit back costs, approximated by what removing one more saves.
        unit = np.ones(len(counts)) if problem.unit_costs is None else \
            np.asarray(problem.unit_costs(counts), dtype=np.float64)
        gains = np.array([np.interp(counts[i], levels[i], curves[i])
                          - np.interp(counts[i] - 1, levels[i], curves[i])
                          for i in candidates])
        with np.errstate(divide="ignore", invalid="ignore"):
            keys = np.where(unit[candidates] > 0, gains / unit[candidates], np.inf)
        for i in candidates[np.argsort(-keys, kind="stable")]:
            trial = counts.copy()
            trial[i] -= 1
            if problem.meets(trial):
                counts, restored = trial, restored + 1
                break
        else:
            break
    return RDSolution(counts, predicted(counts), lo, steps, restored)


def _mixtures(resources: int, steps: int) -> List[np.ndarray]:
    """The weights `w` (non-negative, summing to 1) on a lattice of `steps` divisions."""
    def parts(k, n):
        if k == 1:
            yield (n,)
            return
        for first in range(n, -1, -1):
            for rest in parts(k - 1, n - first):
                yield (first,) + rest
    return [np.array(p, dtype=np.float64) / steps for p in parts(resources, steps)]


def rd_solve_budgets(problem, levels: Sequence, curves: Sequence, costs: Mapping[str, Sequence],
                     budgets: Mapping[str, float], mixtures: int = 8, **kwargs) -> RDSolution:
    """`rd_solve` under several budgets at once (e.g. FLOPs and params).

    The dynamic program weighs one cost per level, so each budget's cost is counted as a
    fraction of that budget and the levels are costed by mixtures of them,
    `sum_r w_r * costs[r] / budgets[r]` for weights `w` on a lattice of the simplex with
    `mixtures` divisions (with two budgets, `(1, 0), (7/8, 1/8), ..., (0, 1)`: each budget
    alone among them). Every mixture's allocation meets all budgets (`problem.meets` checks
    them all), and the one with the least predicted distortion is kept: never worse than
    costing the levels in any one budget, and better when several budgets bind together (a
    Lagrangian relaxation of the two-dimensional program, at `mixtures + 1` one-dimensional
    ones with two budgets).

    Args:
        problem: a `tfprune.allocation.AllocationProblem` whose `meets` checks every budget.
        levels, curves: as for `rd_solve`.
        costs: per budget, per pool, the cost that remains at each level.
        budgets: per budget, its bound, in the units of `costs` (e.g. kept FLOPs).
        mixtures: divisions of the simplex of weights (`mixtures + 1` weightings with two
            budgets, `(mixtures + 1) (mixtures + 2) / 2` with three).
        **kwargs: `max_bins`, `max_steps` of `rd_solve`.

    Returns:
        The `RDSolution` of least predicted distortion, its `weights` naming the mixture and
        its `steps` counting the dynamic programs of all mixtures.

    Example:

    ```python
    import numpy as np
    from tfprune.allocation import AllocationProblem, Pool
    from tfprune.allocation.rd import rd_solve, rd_solve_budgets
    pools = [Pool(n, np.zeros(4), np.zeros(4, bool), 4) for n in "abc"]
    flops, params = np.array([4.0, 2, 1]), np.array([1.0, 3, 4])   # per unit kept
    kept = lambda n: {"flops": (4 - n) @ flops, "params": (4 - n) @ params}
    budgets = {"flops": 13, "params": 14}
    problem = AllocationProblem(
        pools, lambda n: all(v <= budgets[r] for r, v in kept(n).items()))
    levels = [np.arange(5)] * 3
    curves = [s * np.array([0, 1, 2, 4, 8.0]) for s in (1, 3, 2)]
    costs = {r: [c * (4 - levels[0]) for c in per_unit]
             for r, per_unit in (("flops", flops), ("params", params))}
    got = rd_solve_budgets(problem, levels, curves, costs, budgets)
    got.counts, got.predicted   # (array([3, 1, 3]), 15.0): FLOPs 11 of 13, params 14 of 14
    rd_solve(problem, levels, curves, costs["params"]).predicted   # 16.0 (in FLOPs: 18.0)
    ```
    """
    names = list(costs)
    if set(names) != set(budgets) or not names:
        raise InvalidTargetError(f"rd_solve_budgets: costs for {sorted(costs)} but budgets for "
                                 f"{sorted(budgets)}; give both for the same budgets")
    if isinstance(mixtures, bool) or not isinstance(mixtures, int) or mixtures < 1:
        raise InvalidTargetError(f"rd_solve_budgets: mixtures must be an integer >= 1; got "
                                 f"{mixtures!r}")
    scaled = {r: [np.asarray(c, dtype=np.float64) / max(float(budgets[r]), 1e-300)
                  for c in costs[r]] for r in names}
    best, total = None, 0
    for w in _mixtures(len(names), mixtures if len(names) > 1 else 1):
        mixed = [sum(wr * scaled[r][u] for wr, r in zip(w, names))
                 for u in range(len(levels))]
        solution = rd_solve(problem, levels, curves, mixed, **kwargs)
        total += solution.steps
        if best is None or solution.predicted < best.predicted - 1e-12:
            best = dataclasses.replace(solution, weights=dict(zip(names, map(float, w))))
    return dataclasses.replace(best, steps=total)
