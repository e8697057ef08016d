"""`CostModel`: FLOPs, params and weight bytes of a model as if channels were removed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Dict, Sequence

import numpy as np

from tfprune.errors import InvalidRemovalError, NotPrunableError, ProfileError, UnknownGroupError
from tfprune.graph.paths import find_variable
from tfprune.profile.counting import count_layers, variable_costs

_KEYS = ("params", "trainable_params", "weight_bytes", "macs")  # columns of `_coef`


class CostModel:
    """The cost of a model with some channels of its groups removed, without rebuilding it.

    Removing channels changes how many entries each weight keeps, never how often an entry is
    used (the output positions of a convolution, the leading positions of a dense layer). A
    variable keeps `prod_axis (dim - removed on that axis)` entries, where the entries removed
    on an axis are the sum, over the groups whose `ParamSlice`s lie on that axis, of removed
    channels x the slice's index-map width. Its MACs are kept entries x positions, its bytes
    kept entries x dtype size. This is exactly what `profile(shrink(model, removed))` counts,
    evaluated with a few numpy operations (tens of microseconds), for pruning targets that
    bisect thresholds thousands of times per event.

    Args:
        model: a built functional or Sequential Keras model (not changed).
        groups: its channel groups; `tfprune.channel_groups(model)` when None. Count vectors
            follow this order.

    Attributes:
        groups: the groups, in the order of count vectors.
        group_ids: numpy array of their ids.
        sizes: numpy array of their sizes (channels).
        dense: costs of the unpruned model: `{"flops", "macs", "params", "trainable_params",
            "weight_bytes"}`, equal to `profile(model)`'s totals.

    Example:

    ```python
    import numpy as np, tfprune
    model = tfprune.zoo.resnet8()
    cost = tfprune.profile.CostModel(model)
    cost.dense["flops"]                          # == tfprune.profile(model).flops
    g = next(g for g in cost.groups if g.prunable)
    cost.evaluate({g.id: g.size // 2})["flops"]  # half of that group's channels gone
    cost.evaluate(np.zeros(len(cost.groups), int))["params"]
    cost.marginal({g.id: 4})["flops"]            # per group: FLOPs saved by one more channel
    ```
    """

    def __init__(self, model, groups: Sequence = None):
        if groups is None:
            from tfprune.graph import channel_groups  # the graph is built only when needed

            groups = channel_groups(model)
        self.groups = tuple(groups)
        self.group_ids = np.array([g.id for g in self.groups], dtype=np.int64)
        self.sizes = np.array([g.size for g in self.groups], dtype=np.int64)
        self._granules = np.array([g.granule for g in self.groups], dtype=np.int64)
        self._prunable = np.array([g.prunable for g in self.groups], dtype=bool)
        self._most = np.where(self._prunable, self.sizes - 1, 0)
        self._blocks = bool((self._granules > 1).any())
        self._index = {int(gid): i for i, gid in enumerate(self.group_ids)}
        if len(self._index) != len(self.groups):
            raise ProfileError(f"groups have duplicate ids: {sorted(self.group_ids.tolist())}")

        variables = variable_costs(count_layers(model))
        by_id = {id(v.variable): i for i, v in enumerate(variables)}
        coef = np.array([[1, v.trainable, v.itemsize, v.positions] for v in variables],
                        dtype=np.int64).reshape(-1, 4)
        sizes = np.array([v.size for v in variables], dtype=np.int64)

        # widths[(variable, axis)][group index]: entries removed there per removed channel
        widths: Dict[tuple, Dict[int, int]] = {}
        for gi, g in enumerate(self.groups):
            for p in g.params:
                try:
                    var = find_variable(model, p.layer, p.weight)
                except KeyError as e:
                    raise ProfileError(f"group {g.id} has a slice of {p.layer!r}/{p.weight!r} "
                                       f"that model {model.name!r} lacks ({e.args[0]}); were "
                                       "the groups made for another model?") from None
                vi = by_id[id(var)]
                row = widths.setdefault((vi, p.axis), {})
                row[gi] = row.get(gi, 0) + int(p.index_map.shape[1])
        rows = sorted(widths)
        affected = sorted({vi for vi, _ in rows})
        # Sparse (row, group, width) entries sorted by row: a gather and a segment sum, no BLAS
        # (a threaded matrix product is slow on a busy machine and inexact in floats).
        entries = [(r, gi, w) for r, key in enumerate(rows)
                   for gi, w in sorted(widths[key].items())]
        self._entry_group = np.array([gi for _, gi, _ in entries], dtype=np.int64)
        self._entry_width = np.array([w for _, _, w in entries], dtype=np.int64)
        self._row_starts = np.searchsorted([r for r, _, _ in entries], np.arange(len(rows)))
        self._dims = np.array([variables[vi].shape[axis] for vi, axis in rows], dtype=np.int64)
        # Rows are sorted by variable: each affected variable's rows start at `_starts`.
        row_vars = np.array([vi for vi, _ in rows], dtype=np.int64)
        self._starts = np.searchsorted(row_vars, affected) if rows else np.zeros(0, np.int64)
        sliced_axes = {vi: set() for vi in affected}
        for vi, axis in rows:
            sliced_axes[vi].add(axis)
        self._const = np.array([math.prod(d for a, d in enumerate(variables[vi].shape)
                                          if a not in sliced_axes[vi]) for vi in affected],
                               dtype=np.int64)
        self._coef = coef[affected]
        untouched = np.ones(len(variables), dtype=bool)
        untouched[affected] = False
        self._base = sizes[untouched] @ coef[untouched] if len(variables) else np.zeros(4, int)
        self.dense = self.evaluate(np.zeros(len(self.groups), dtype=np.int64))

    def counts(self, removed_counts) -> np.ndarray:
        """`removed_counts` as a validated vector (or matrix) aligned with `groups`.

        Args:
            removed_counts: `{group id: channels removed}` (missing groups remove none), or an
                integer array of shape `(len(groups),)`, or `(n, len(groups))` for n removals.

        Returns:
            An int64 array.

        Raises:
            UnknownGroupError: a group id that is not in `groups`.
            InvalidRemovalError: a count that is not an integer, is negative, is not a
                multiple of the group's granule, or leaves a group with no channel.
            NotPrunableError: channels removed from a group that is not prunable.
        """
        if not isinstance(removed_counts, np.ndarray) and isinstance(removed_counts, Mapping):
            n = np.zeros(len(self.groups), dtype=np.int64)
            for gid, k in removed_counts.items():
                i = self._index.get(gid) if isinstance(gid, (int, np.integer)) else None
                if i is None:
                    raise UnknownGroupError(f"no channel group {gid!r}; the groups' ids are "
                                            f"{self.group_ids.tolist()}")
                if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
                    raise InvalidRemovalError(
                        f"group {gid}: expected the number of channels removed (an int), got "
                        f"{k!r}; for a list of channel indices pass its length")
                n[i] = k
        else:
            n = np.asarray(removed_counts)
            if n.shape[-1:] != (len(self.groups),) or n.ndim not in (1, 2):
                raise InvalidRemovalError(
                    f"removed counts of shape {n.shape}: expected ({len(self.groups)},) or "
                    f"(n, {len(self.groups)}), one count per group in the order of `groups`")
            if n.dtype.kind not in "iuf" or (n.dtype.kind == "f" and np.any(n != np.round(n))):
                raise InvalidRemovalError(
                    f"removed counts must be integers; got an array of dtype {n.dtype}")
            n = n.astype(np.int64, copy=False)
        # One comparison in the common case: the bounds already say 0 for unprunable groups.
        if not ((n >= 0) & (n <= self._most)).all() or (
                self._blocks and (n % self._granules).any()):
            self._diagnose(n)
        return n

    def _diagnose(self, n: np.ndarray):
        """Raises the error that says what is wrong with counts that failed validation."""
        bad = (n < 0) | (n >= self.sizes)
        if np.any(bad):
            at = tuple(np.argwhere(bad)[0])
            g = self.groups[at[-1]]
            raise InvalidRemovalError(
                f"{g.describe()}: cannot remove {int(n[at])} channels; accepted: 0 to "
                f"{g.size - 1} (a group keeps at least one channel)")
        bad = (n > 0) & ~self._prunable
        if np.any(bad):
            g = self.groups[np.argwhere(bad)[0][-1]]
            raise NotPrunableError(f"{g.describe()}: no channel can be removed ({g.reason})")
        bad = n % self._granules != 0
        if np.any(bad):
            g = self.groups[np.argwhere(bad)[0][-1]]
            raise InvalidRemovalError(f"{g.describe()}: channels go in blocks of {g.granule}; "
                                      "the count must be a multiple of it")

    def _totals(self, n: np.ndarray) -> np.ndarray:
        """`(..., 4)` int64 totals in the order of `_KEYS`."""
        if not len(self._dims):
            return np.broadcast_to(self._base, n.shape[:-1] + (4,)).copy()
        removed = np.add.reduceat(n[..., self._entry_group] * self._entry_width,
                                  self._row_starts, axis=-1)
        kept = np.multiply.reduceat(self._dims - removed, self._starts, axis=-1) * self._const
        return self._base + kept @ self._coef

    @staticmethod
    def _as_dict(totals: np.ndarray) -> dict:
        if totals.ndim == 1:
            out = {k: int(v) for k, v in zip(_KEYS, totals)}
        else:
            out = {k: totals[:, i] for i, k in enumerate(_KEYS)}
        out["flops"] = 2 * out["macs"]
        return out

    def evaluate(self, removed_counts) -> dict:
        """Costs of the model with `removed_counts` channels gone from each group.

        Args:
            removed_counts: `{group id: channels removed}`, or an int vector aligned with
                `groups`, or an `(n, len(groups))` matrix for n removals at once.

        Returns:
            `{"flops", "macs", "params", "trainable_params", "weight_bytes"}`: ints, or int64
            arrays of length n for a matrix.
        """
        return self._as_dict(self._totals(self.counts(removed_counts)))

    def marginal(self, removed_counts) -> dict:
        """What removing one more channel of each group saves, from `removed_counts`.

        Useful to rank channels by saliency per FLOP (or per param, per byte). The saving is
        the formula's, also where that removal is not allowed: for groups that are not
        prunable (filter them with `g.prunable`), a group down to one channel, or one channel
        of a block when `granule > 1` (a whole block saves about `granule` times as much).

        Args:
            removed_counts: as for `evaluate` (a single removal).

        Returns:
            `{"flops", "macs", "params", "trainable_params", "weight_bytes"}`: int64 arrays
            aligned with `groups` (0 for groups that touch nothing costed).
        """
        n = self.counts(removed_counts)
        if n.ndim != 1:
            raise InvalidRemovalError(f"marginal takes one removal; got counts of shape {n.shape}")
        steps = n + np.eye(len(self.groups), dtype=np.int64)
        return self._as_dict(self._totals(n) - self._totals(steps))

    def __repr__(self):
        return (f"CostModel({len(self.groups)} groups, {self.dense['flops']:,} FLOPs, "
                f"{self.dense['params']:,} params)")
