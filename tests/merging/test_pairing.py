"""Cyclic pairing: the least salient removed unit gets the most salient kept one, cycling."""

import numpy as np
import pytest

from tfprune.errors import InvalidPruningArgumentError
from tfprune.merging import cyclic_partners


def _reference(scores, pruned, kept, rule):
    """One column at a time, written as the rule is stated."""
    out = np.full(scores.shape, -1)
    kept_idx = np.flatnonzero(kept)
    if not kept_idx.size:
        return out
    if rule == "half":
        for i in np.flatnonzero(pruned & ~kept):
            out[i] = kept_idx[i % kept_idx.size]
        return out
    by_saliency = sorted(np.flatnonzero(pruned & ~kept), key=lambda i: (scores[i], i))
    partners = sorted(kept_idx, key=lambda i: (-scores[i], i))
    for k, i in enumerate(by_saliency):
        out[i] = partners[k % len(partners)]
    return out


def test_least_salient_gets_most_salient_and_cycles():
    scores = np.array([0.5, 9.0, 0.1, 7.0, 0.3, 0.2, 0.4])
    kept = scores > 5
    partners = cyclic_partners(scores, ~kept, kept)
    # removed by saliency: 2, 5, 4, 6, 0 -> kept 1, 3, 1, 3, 1
    assert partners.tolist() == [1, -1, 1, -1, 1, 3, 3]


def test_half_rule_pairs_by_position():
    scores = np.array([0.5, 9.0, 0.1, 7.0, 0.3])
    kept = scores > 5
    assert cyclic_partners(scores, ~kept, kept, rule="half").tolist() == [1, -1, 1, -1, 1]


@pytest.mark.parametrize("rule", ["least_squares", "half"])
def test_columns_match_one_column_at_a_time(rule):
    rng = np.random.default_rng(3)
    scores = rng.random((3, 7, 5))
    pruned = rng.random(scores.shape) < 0.5
    kept = ~pruned & (rng.random(scores.shape) < 0.8)    # some units neither
    kept[0, :, 0] = False                                  # a column with nothing kept
    got = cyclic_partners(scores, pruned, kept, axis=1, rule=rule)
    for a in range(3):
        for c in range(5):
            np.testing.assert_array_equal(
                got[a, :, c], _reference(scores[a, :, c], pruned[a, :, c], kept[a, :, c], rule))
    assert np.all(got[0, :, 0] == -1)


def test_unknown_rule_is_refused():
    with pytest.raises(InvalidPruningArgumentError, match="least_squares"):
        cyclic_partners(np.ones(3), [True, False, False], [False, True, True], rule="average")
