import numpy as np
import pytest

from tfprune import allocation
from tfprune.allocation import AllocationProblem, GlobalRanking, Pool, UniformAllocation
from tfprune.errors import InvalidPruningArgumentError, InvalidTargetError


def _pools(rng, sizes, already=0.0):
    pools = []
    for i, n in enumerate(sizes):
        removed = rng.random(n) < already
        pools.append(Pool(f"p{i}", rng.random(n), removed, max_removed=n - 1))
    return pools


@pytest.mark.parametrize("seed", range(5))
def test_global_ranking_is_minimal_and_lowest_first(seed):
    rng = np.random.default_rng(seed)
    pools = _pools(rng, [5, 9, 3, 12], already=0.2)
    weights = rng.integers(1, 6, size=len(pools)).astype(float)
    sizes = np.array([p.scores.size for p in pools])
    budget = 0.4 * float(np.dot(sizes, weights))

    def meets(counts):  # each removed unit of pool i saves weights[i]
        return float(np.dot(sizes - counts, weights)) <= budget

    before = [p.removed.copy() for p in pools]
    removed = GlobalRanking()(AllocationProblem(pools, meets))
    counts = np.array([r.sum() for r in removed])
    assert meets(counts)
    for r, b, p in zip(removed, before, pools):
        assert np.all(r[b]), "units removed before stay removed"
        new = r & ~b
        if new.any():  # the new ones are the lowest-scored of the free units
            assert p.scores[new].max() <= p.scores[~r].min()
    # Minimal: giving back the highest-scored new unit breaks the budget.
    new_scores = [(p.scores[r & ~b].max(), i) for i, (p, r, b) in
                  enumerate(zip(pools, removed, before)) if (r & ~b).any()]
    _, worst = max(new_scores)
    fewer = counts.copy()
    fewer[worst] -= 1
    assert not meets(fewer)


def test_global_ranking_respects_maximum_per_pool():
    pools = [Pool("a", [0.0, 0.1, 0.2, 0.3], np.zeros(4, bool), max_removed=1),
             Pool("b", [5.0, 6.0, 7.0], np.zeros(3, bool), max_removed=3)]
    removed = GlobalRanking()(AllocationProblem(pools, lambda c: c.sum() >= 3))
    assert [r.sum() for r in removed] == [1, 2]
    assert removed[0].tolist() == [True, False, False, False]


def test_per_unit_cost_prefers_expensive_pools():
    pools = [Pool("cheap", [1.0, 1.0], np.zeros(2, bool), 2),
             Pool("costly", [2.0, 2.0], np.zeros(2, bool), 2)]
    cost = np.array([1.0, 10.0])

    def meets(c):
        return np.dot(2 - c, cost) <= 12.0

    plain = GlobalRanking()(AllocationProblem(pools, meets, lambda c: cost))
    per_cost = GlobalRanking(per_unit_cost=True)(AllocationProblem(pools, meets, lambda c: cost))
    assert [r.sum() for r in plain] == [2, 1]     # by score: both cheap ones first
    assert [r.sum() for r in per_cost] == [0, 1]  # 2/10 < 1/1: one costly unit is enough


def test_uniform_allocation_equal_fraction_within_one_unit():
    rng = np.random.default_rng(3)
    pools = _pools(rng, [10, 20, 40])
    removed = UniformAllocation()(AllocationProblem(pools, lambda c: c.sum() >= 35))
    counts = np.array([r.sum() for r in removed])
    assert counts.sum() >= 35
    fractions = counts / np.array([10, 20, 40])
    assert fractions.max() - fractions.min() <= 1 / 10 + 1e-9
    for p, r in zip(pools, removed):
        assert p.scores[r].max() <= p.scores[~r].min()


def test_already_met_changes_nothing_and_unreachable_raises():
    pools = [Pool("a", [1.0, 2.0], [True, False], 1)]
    assert GlobalRanking()(AllocationProblem(pools, lambda c: c.sum() >= 1))[0].tolist() == \
        [True, False]
    with pytest.raises(InvalidTargetError, match="cannot be met"):
        GlobalRanking()(AllocationProblem(pools, lambda c: c.sum() >= 2))
    with pytest.raises(InvalidTargetError, match="cannot be met"):
        UniformAllocation()(AllocationProblem(pools, lambda c: c.sum() >= 2))


def test_bad_arguments():
    with pytest.raises(InvalidPruningArgumentError, match="unknown allocation 'best'.*global"):
        allocation.get("best")
    with pytest.raises(InvalidPruningArgumentError, match="callable"):
        allocation.get(3)
    with pytest.raises(InvalidPruningArgumentError, match="True or False"):
        GlobalRanking(per_unit_cost="yes")
    with pytest.raises(InvalidPruningArgumentError, match="3 scores but 2 removed"):
        Pool("x", [1, 2, 3], [False, False], 1)
    pools = [Pool("a", [1.0, 2.0], [False, False], 1)]
    with pytest.raises(InvalidPruningArgumentError, match="unit_costs"):
        GlobalRanking(per_unit_cost=True)(AllocationProblem(pools, lambda c: c.sum() >= 1))
    assert isinstance(allocation.get("per_unit_cost"), GlobalRanking)
    assert allocation.get("per_unit_cost").per_unit_cost
