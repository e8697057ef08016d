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
    # Minimal: no pool can put a unit back without missing the budget.
    for i in range(3):
        fewer = counts.copy()
        fewer[i] -= 1
        assert fewer.sum() < 35


def test_uniform_allocation_puts_units_back_while_the_budget_holds():
    # Three pools of 16, 32 and 64 units, each unit costing 1/size of its pool's equal share;
    # the budget keeps at most 45% of the cost. The smallest common fraction that meets it,
    # 35/64, removes 9, 18 and 35 units and keeps 44.3%; the 64-unit pool can put one back
    # (44.8%), after which no pool can.
    sizes = np.array([16, 32, 64])
    pools = [Pool(f"p{n}", np.arange(n, dtype=float), np.zeros(n, bool), n - 1) for n in sizes]

    def kept(c):
        return np.mean(1 - c / sizes)

    removed = UniformAllocation()(AllocationProblem(pools, lambda c: kept(c) <= 0.45))
    counts = np.array([r.sum() for r in removed])
    assert counts.tolist() == [9, 18, 34]
    assert kept(counts) <= 0.45
    assert all(kept(counts - np.eye(3, dtype=int)[i]) > 0.45 for i in range(3))


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


def test_normalized_ranking_judges_each_unit_against_its_own_pool():
    # A wide pool of individually weak units (scores ~0.1) beside a pool of strong ones:
    # plain ranking empties the weak pool, the normalised one takes from both.
    weak = Pool("wide", np.linspace(0.08, 0.12, 8), np.zeros(8, bool), max_removed=7)
    strong = Pool("narrow", np.linspace(1.0, 3.0, 4), np.zeros(4, bool), max_removed=3)

    def meets(c):
        return c.sum() >= 6

    plain = GlobalRanking()(AllocationProblem([weak, strong], meets))
    scaled = GlobalRanking(normalize="mean")(AllocationProblem([weak, strong], meets))
    assert [int(r.sum()) for r in plain] == [6, 0]
    assert [int(r.sum()) for r in scaled] == [4, 2]
    for p, r in zip([weak, strong], scaled):  # still the lowest of each pool first
        assert p.scores[r].max() <= p.scores[~r].min()
    assert allocation.get("normalized").normalize == "mean"
    assert GlobalRanking(normalize="mean").get_config() == {"per_unit_cost": False,
                                                            "normalize": "mean"}


def test_normalized_scores_rise_as_a_pool_loses_units():
    # Removed units count in the mean with their (zero) score: a pool that lost half of its
    # units ranks the ones it keeps twice as high as before.
    fresh = Pool("a", [1.0, 1.0, 1.0, 1.0], np.zeros(4, bool), 3)
    pruned = Pool("a", [0.0, 0.0, 1.0, 1.0], [True, True, False, False], 3)
    problem = AllocationProblem([fresh, pruned], lambda c: True)
    out = allocation.ranking.normalized(problem, "mean")
    assert out.pools[0].scores.tolist() == [1.0] * 4
    assert out.pools[1].scores.tolist() == [0.0, 0.0, 2.0, 2.0]
    zero = AllocationProblem([Pool("z", [0.0, 0.0], np.zeros(2, bool), 1)], lambda c: True)
    assert allocation.ranking.normalized(zero, "mean").pools[0].scores.tolist() == [0.0, 0.0]
    assert allocation.ranking.normalized(problem, None) is problem
    with pytest.raises(InvalidPruningArgumentError, match="normalize='max'.*'mean'"):
        GlobalRanking(normalize="max")


def test_normalized_keeps_infinite_scores_infinite_and_ranks_them_last():
    # A criterion marks units it keeps with an infinite score (bn_scale without BatchNorm):
    # normalising must neither turn them into NaN (inf / inf) nor into removable zeros.
    kept = Pool("kept", [np.inf] * 3, np.zeros(3, bool), 2)
    mixed = Pool("mixed", [1.0, 3.0, np.inf], np.zeros(3, bool), 2)
    problem = AllocationProblem([kept, mixed], lambda c: c.sum() >= 2)
    with np.errstate(all="raise"):
        out = allocation.ranking.normalized(problem, "mean")
    assert out.pools[0].scores.tolist() == [np.inf] * 3
    assert out.pools[1].scores.tolist() == [0.5, 1.5, np.inf]    # mean of the finite ones: 2
    removed = GlobalRanking(normalize="mean")(problem)
    assert [r.tolist() for r in removed] == [[False] * 3, [True, True, False]]
