"""rd_solve: rate-distortion allocation that meets a true (possibly non-additive) budget;
rd_solve_budgets: the same under several budgets at once."""

import itertools

import numpy as np
import pytest

from tfprune.allocation import AllocationProblem, Pool
from tfprune.allocation.rd import rd_solve, rd_solve_budgets
from tfprune.errors import InvalidTargetError


def _pools(sizes, removed=None, minimum=1):
    removed = removed or [0] * len(sizes)
    return [Pool(f"p{i}", np.zeros(n), np.arange(n) < r, n - minimum)
            for i, (n, r) in enumerate(zip(sizes, removed))]


def _curves(rng, sizes, removed):
    levels = [np.arange(r, n) for n, r in zip(sizes, removed)]       # up to n - 1 removed
    curves = [np.concatenate([[0.0], np.cumsum(rng.random(len(l) - 1) * rng.random())])
              for l in levels]
    return levels, curves


@pytest.mark.parametrize("seed", range(12))
def test_additive_budget_gives_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 7, size=rng.integers(2, 4)).tolist()
    removed = [int(rng.integers(0, 2)) for _ in sizes]
    weights = rng.integers(1, 9, size=len(sizes))                   # cost of one kept unit
    levels, curves = _curves(rng, sizes, removed)
    kept = lambda counts: float(sum(w * (n - c) for w, n, c in zip(weights, sizes, counts)))
    floor, top = kept([n - 1 for n in sizes]), kept(removed)
    budget = floor + rng.random() * (top - floor)
    problem = AllocationProblem(_pools(sizes, removed), lambda c: kept(c) <= budget,
                                lambda c: weights.astype(float))
    costs = [w * (n - l) for w, n, l in zip(weights, sizes, levels)]
    got = rd_solve(problem, levels, curves, costs)
    best = min(sum(c[k - l[0]] for c, l, k in zip(curves, levels, combo))
               for combo in itertools.product(*levels) if kept(combo) <= budget)
    assert kept(got.counts) <= budget
    assert got.predicted == pytest.approx(best, abs=1e-12)
    # ... and no unit more than needed.
    for i in range(len(sizes)):
        if got.counts[i] > removed[i]:
            fewer = got.counts.copy()
            fewer[i] -= 1
            assert kept(fewer) > budget


@pytest.mark.parametrize("seed", range(8))
def test_non_additive_budget_is_met_exactly(seed):
    # Kept cost of a chain of layers whose cost is the product of adjacent widths, as the
    # FLOPs of convolutions between channel groups: pruning two neighbours saves less than
    # the sum of pruning each alone.
    rng = np.random.default_rng(100 + seed)
    sizes = rng.integers(4, 9, size=3).tolist()
    kept = lambda c: float(sum((sizes[i] - c[i]) * (sizes[i + 1] - c[i + 1])
                               for i in range(len(sizes) - 1)) + 3 * (sizes[0] - c[0]))
    budget = 0.45 * kept([0, 0, 0])
    problem = AllocationProblem(_pools(sizes), lambda c: kept(c) <= budget)
    levels, curves = _curves(rng, sizes, [0, 0, 0])
    costs = []
    for i, l in enumerate(levels):                     # each pool alone, the others intact
        costs.append(np.array([kept([n if j == i else 0 for j in range(3)]) for n in l]))
    got = rd_solve(problem, levels, curves, costs)
    assert kept(got.counts) <= budget
    for i in range(3):
        if got.counts[i] > 0:
            fewer = got.counts.copy()
            fewer[i] -= 1
            assert kept(fewer) > budget


def test_unreachable_budget():
    problem = AllocationProblem(_pools([4, 4]), lambda c: False)
    levels = [np.arange(4), np.arange(4)]
    with pytest.raises(InvalidTargetError, match="cannot be met"):
        rd_solve(problem, levels, [np.arange(4.0)] * 2, [4.0 - levels[0]] * 2)


def _two_budgets(seed, pools=3, size=5):
    """Pools whose kept units cost `flops[i]` and `params[i]` each, and both budgets at 40-70%
    of the dense costs: either, or both, may bind."""
    rng = np.random.default_rng(seed)
    flops, params = (rng.integers(1, 6, pools).astype(float) for _ in range(2))
    budgets = {"flops": float(np.round(rng.uniform(0.4, 0.7) * size * flops.sum())),
               "params": float(np.round(rng.uniform(0.4, 0.7) * size * params.sum()))}
    kept = lambda c: {"flops": (size - np.asarray(c)) @ flops,
                      "params": (size - np.asarray(c)) @ params}
    meets = lambda c: all(v <= budgets[r] for r, v in kept(c).items())
    problem = AllocationProblem(_pools([size] * pools), meets)
    levels = [np.arange(size)] * pools
    curves = [np.concatenate([[0.0], np.cumsum(np.sort(rng.uniform(0, 3, size - 1)))])
              for _ in range(pools)]
    costs = {"flops": [f * (size - levels[0]) for f in flops],
             "params": [p * (size - levels[0]) for p in params]}
    return problem, levels, curves, costs, budgets


def test_several_budgets_give_the_brute_force_optimum_where_one_budget_does_not():
    better = 0
    for seed in range(40):
        problem, levels, curves, costs, budgets = _two_budgets(seed)
        got = rd_solve_budgets(problem, levels, curves, costs, budgets, max_bins=2000)
        best = min(sum(c[k] for c, k in zip(curves, combo))
                   for combo in itertools.product(*levels) if problem.meets(np.array(combo)))
        assert problem.meets(got.counts)
        assert got.predicted == pytest.approx(best, abs=1e-9)
        assert sum(got.weights.values()) == pytest.approx(1.0)
        single = min(rd_solve(problem, levels, curves, costs[r], max_bins=2000).predicted
                     for r in costs)
        assert got.predicted <= single + 1e-12      # each budget alone is one weighting
        better += got.predicted < single - 1e-9
    assert better >= 3      # 6 of these 40 need both budgets weighed together


def test_several_budgets_arguments():
    problem, levels, curves, costs, budgets = _two_budgets(0)
    with pytest.raises(InvalidTargetError, match="same budgets"):
        rd_solve_budgets(problem, levels, curves, costs, {"flops": 1.0})
    with pytest.raises(InvalidTargetError, match="mixtures must be an integer"):
        rd_solve_budgets(problem, levels, curves, costs, budgets, mixtures=0)
    # One budget is rd_solve itself; three weigh a two-dimensional lattice.
    one = rd_solve_budgets(problem, levels, curves, {"flops": costs["flops"]},
                           {"flops": budgets["flops"] * 10})
    assert one.weights == {"flops": 1.0}
    costs["bytes"] = costs["params"]
    three = rd_solve_budgets(problem, levels, curves, costs, dict(budgets, bytes=1e9), mixtures=2)
    assert problem.meets(three.counts) and len(three.weights) == 3
