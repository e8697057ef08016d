"""Checks a `removed` mapping (group id -> channel indices) and turns it into a keep test."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tfprune.errors import InvalidRemovalError, NotPrunableError, UnknownGroupError


def _show(values, limit=8):
    values = [int(v) for v in values]
    return str(values[:limit])[:-1] + (", ...]" if len(values) > limit else "]")


def _indices(group, channels) -> np.ndarray:
    where = f"channels to remove from group {group.id}"
    if isinstance(channels, (str, bytes)) or np.ndim(channels) == 0 and not isinstance(
            channels, (set, frozenset)):
        raise InvalidRemovalError(
            f"{where} must be a sequence of integer indices (e.g. [1, 5]); got {channels!r}")
    idx = np.asarray(sorted(channels) if isinstance(channels, (set, frozenset)) else channels)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1:
        raise InvalidRemovalError(f"{where} must be a flat sequence of indices; got an array "
                                  f"of shape {idx.shape}")
    if idx.dtype == bool:
        raise InvalidRemovalError(
            f"{where} must be integer indices, not a boolean mask (use np.flatnonzero(mask))")
    if idx.dtype.kind not in "iu":
        raise InvalidRemovalError(
            f"{where} must be integers; got {idx.dtype} values {idx[:8].tolist()}")
    bad = idx[(idx < 0) | (idx >= group.size)]
    if bad.size:
        raise InvalidRemovalError(
            f"{where} are out of range: {_show(bad)}; {group.describe()} has channels "
            f"0..{group.size - 1}")
    unique, counts = np.unique(idx, return_counts=True)
    if unique.size != idx.size:
        raise InvalidRemovalError(f"{where} are duplicated: {_show(unique[counts > 1])}")
    return idx.astype(np.int64)


def removed_classes(graph, removed) -> np.ndarray:
    """Validates `removed` against `graph` and returns a bool array over channel ids: True
    for every id whose class is removed (index it with `graph.roots[ids]`)."""
    if not isinstance(removed, Mapping):
        raise InvalidRemovalError(
            "`removed` must map channel-group ids to the channel indices to remove, e.g. "
            f"{{0: [1, 5]}}; got {type(removed).__name__}")
    groups = graph.groups
    flags = np.zeros(len(graph.roots), dtype=bool)
    for gid, channels in removed.items():
        if isinstance(gid, (bool, np.bool_)) or not isinstance(gid, (int, np.integer)) or \
                not 0 <= gid < len(groups):
            raise UnknownGroupError(
                f"model {graph.model.name!r} has no channel group {gid!r}: its groups are "
                f"0..{len(groups) - 1} (see tfprune.channel_groups(model))")
        group = groups[int(gid)]
        idx = _indices(group, channels)
        if idx.size == 0:
            continue
        if not group.prunable:
            raise NotPrunableError(
                f"cannot remove channels {_show(idx)} of group {group.id}: it is not "
                f"prunable because {group.reason}")
        if idx.size == group.size:
            raise InvalidRemovalError(
                f"removing all {group.size} channels of {group.describe()} would leave its "
                f"layers without channels; keep at least {group.granule}")
        if group.granule > 1:
            blocks, counts = np.unique(idx // group.granule, return_counts=True)
            partial = blocks[counts != group.granule]
            if partial.size:
                raise InvalidRemovalError(
                    f"{group.describe()} can only lose whole aligned blocks of "
                    f"{group.granule} channels (its GroupNormalization groups): blocks "
                    f"{_show(partial)} are removed only in part")
        flags[graph.classes[group.id][idx]] = True
    return flags
