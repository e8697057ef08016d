import itertools

import numpy as np
import pytest

from tfprune.allocation.rd import rd_allocate
from tfprune.errors import InvalidTargetError


def _brute_force(curves, costs, budget, densities, min_density):
    best = None
    for combo in itertools.product(*[range(len(c)) for c in curves]):
        if any(densities[l][k] < min_density - 1e-12 for l, k in enumerate(combo)):
            continue
        cost = sum(costs[l][k] for l, k in enumerate(combo))
        if cost > budget:
            continue
        dist = sum(curves[l][k] for l, k in enumerate(combo))
        if best is None or dist < best[0] - 1e-12:
            best = (dist, cost)
    return best


def _instance(rng, n_layers, n_levels):
    curves, costs = [], []
    for _ in range(n_layers):
        size = int(rng.integers(10, 60))
        kept = np.sort(rng.choice(np.arange(1, size + 1), n_levels, replace=False))[::-1]
        kept[0] = size
        # Distortion grows as a layer is pruned harder, with layer-specific noise.
        d = np.cumsum(rng.random(n_levels)) * rng.random()
        d[0] = 0.0
        curves.append(d)
        costs.append(kept.astype(float))
    return curves, costs


@pytest.mark.parametrize("seed", range(25))
def test_equals_brute_force_and_meets_budget(seed):
    rng = np.random.default_rng(seed)
    curves, costs = _instance(rng, n_layers=int(rng.integers(2, 5)), n_levels=int(rng.integers(2, 6)))
    dense = sum(c[0] for c in costs)
    floor = sum(c.min() for c in costs)
    budget = float(int(floor + rng.random() * (dense - floor)))
    min_density = float(rng.choice([0.0, 0.1, 0.3]))
    densities = [c / c.max() for c in costs]
    expected = _brute_force(curves, costs, budget, densities, min_density)
    if expected is None:
        with pytest.raises(InvalidTargetError, match="cannot be met|no level"):
            rd_allocate(curves, costs, budget, min_density=min_density)
        return
    got = rd_allocate(curves, costs, budget, min_density=min_density)
    assert got.cost <= budget
    assert got.distortion == pytest.approx(expected[0], abs=1e-9)
    for l, k in enumerate(got.levels):
        assert densities[l][k] >= min_density - 1e-12
    assert got.distortion == pytest.approx(sum(curves[l][k] for l, k in enumerate(got.levels)))


def test_prefers_the_layer_that_distorts_less():
    a = rd_allocate([[0.0, 0.1, 0.5], [0.0, 0.3, 0.9]], [[100, 50, 25], [100, 50, 25]], budget=75)
    assert a.levels == [2, 1] and a.cost == 75


def test_large_non_integer_costs_stay_within_budget():
    rng = np.random.default_rng(1)
    curves = [np.sort(rng.random(20)) for _ in range(30)]
    costs = [np.linspace(1.0, 0.05, 20) * rng.uniform(1e5, 1e6) for _ in range(30)]
    budget = 0.4 * sum(c[0] for c in costs)
    coarse = rd_allocate(curves, costs, budget, max_bins=5000)
    fine = rd_allocate(curves, costs, budget, max_bins=500_000)
    assert coarse.cost <= budget and fine.cost <= budget
    # Rounding costs up only costs optimality in proportion to the resolution.
    assert fine.distortion <= coarse.distortion <= fine.distortion * 1.02 + 1e-9


def test_min_density_is_respected_and_unreachable_budget_is_explained():
    curves = [[0, 0.1, 0.2, 0.3]] * 2
    costs = [[100, 60, 30, 10]] * 2
    a = rd_allocate(curves, costs, budget=60, min_density=0.3)
    assert all(costs[0][k] >= 30 for k in a.levels)
    with pytest.raises(InvalidTargetError, match="smallest reachable cost with min_density=0.3 is 60"):
        rd_allocate(curves, costs, budget=59, min_density=0.3)


def test_bad_input_is_refused():
    with pytest.raises(InvalidTargetError, match="2 distortion curves but 1 cost"):
        rd_allocate([[0, 1], [0, 1]], [[2, 1]], budget=3)
    with pytest.raises(InvalidTargetError, match="non-finite"):
        rd_allocate([[0, np.nan]], [[2, 1]], budget=3)
    with pytest.raises(InvalidTargetError, match="min_density must be in"):
        rd_allocate([[0, 1]], [[2, 1]], budget=3, min_density=1.5)
