"""Cyclic pairing: which kept unit each removed unit is folded into."""

from __future__ import annotations

import numpy as np

from tfprune.errors import InvalidPruningArgumentError

LEAST_SQUARES = "least_squares"
HALF = "half"
REGRESSION = "regression"
RULES = (LEAST_SQUARES, HALF, REGRESSION)
#: What each rule does, for error messages.
_MEANING = {
    LEAST_SQUARES: "fit the removed unit's activation on its partner's",
    HALF: "add half the removed weights to the partner's, partners by position",
    REGRESSION: "channels only: regress each removed channel's activation on every kept "
                "channel of its group",
}


def check_rule(rule, accepted=RULES) -> str:
    """`rule` if it is one of the `accepted` merge rules, else `InvalidPruningArgumentError`."""
    if rule not in accepted:
        listed = "; ".join(f"{r!r} ({_MEANING[r]})" for r in accepted)
        raise InvalidPruningArgumentError(f"merge_rule={rule!r}: accepted are {listed}")
    return rule


def cyclic_partners(scores, pruned, kept, axis: int = 0, rule: str = LEAST_SQUARES) -> np.ndarray:
    """For every unit to fold, the index of its partner among the kept units of its column.

    Units lie along `axis`; every other axis indexes independent columns (the output units
    and spatial taps of a kernel, for single weights; nothing, for the channels of a group).
    With `"least_squares"` the k-th least salient pruned unit of a column gets the k-th most
    salient kept unit, cycling through the kept units when more are pruned than kept. With
    `"half"` (the rule of the CAMP-HiVe prototype) pruned unit `i` gets the kept unit at
    position `i mod (number kept)`, kept units in index order.

    Args:
        scores: saliencies (lower = less important), any shape.
        pruned: bool array like `scores`: the units to fold.
        kept: bool array like `scores`: the units that may receive them.
        axis: the axis along which partners are chosen.
        rule: `"least_squares"` or `"half"`.

    Returns:
        An int64 array like `scores`: the partner's index along `axis` for pruned units that
        have one, -1 elsewhere (units that are not pruned, columns with nothing kept).

    Example:

    ```python
    import numpy as np
    from tfprune.merging import cyclic_partners
    scores = np.array([5., 1., 4., 2., 3.])
    cyclic_partners(scores, scores < 2.5, scores >= 2.5)   # [-1, 0, -1, 2, -1]
    ```
    """
    check_rule(rule, (LEAST_SQUARES, HALF))
    scores = np.asarray(scores, dtype=np.float64)
    pruned = np.asarray(pruned, dtype=bool) & ~np.asarray(kept, dtype=bool)
    kept = np.asarray(kept, dtype=bool)
    s, p, k = (np.moveaxis(a, axis, -1) for a in (scores, pruned, kept))
    n_kept = k.sum(axis=-1, keepdims=True)
    cycle = np.maximum(n_kept, 1)
    position = np.broadcast_to(np.arange(s.shape[-1]), s.shape)
    if rule == HALF:
        kept_order = np.argsort(~k, axis=-1, kind="stable")
        partner = np.take_along_axis(kept_order, position % cycle, axis=-1)
        out = np.where(p & (n_kept > 0), partner, -1)
    else:
        pruned_order = np.argsort(np.where(p, s, np.inf), axis=-1, kind="stable")
        kept_order = np.argsort(np.where(k, -s, np.inf), axis=-1, kind="stable")
        partner = np.take_along_axis(kept_order, position % cycle, axis=-1)
        valid = (position < p.sum(axis=-1, keepdims=True)) & (n_kept > 0)
        out = np.full(s.shape, -1, dtype=np.int64)
        np.put_along_axis(out, pruned_order, np.where(valid, partner, -1), axis=-1)
    return np.moveaxis(out.astype(np.int64), -1, axis)
