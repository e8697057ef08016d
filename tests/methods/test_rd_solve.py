"""rd_solve: rate-distortion allocation that meets a true (possibly non-additive) budget."""

import itertools

import numpy as np
import pytest

from tfprune.allocation import AllocationProblem, Pool
from tfprune.allocation.rd import rd_solve
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
