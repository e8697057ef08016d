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
from typing import List, Optional, Sequence

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
