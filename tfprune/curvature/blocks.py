"""Blocks of weights: one per layer, or the entries of a channel group's trainable slices.

A weight is named by the path of its layer and its `variable.name`, the convention of
`tfprune.graph` (`ParamSlice.layer`, `ParamSlice.weight`, `find_variable`); the layer that owns a
variable is found by identity among the model's layers.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfprune.errors import CurvatureError
from tfprune.graph.group import ChannelGroup, ParamSlice


@dataclasses.dataclass(frozen=True)
class Block:
    """A set of weight entries.

    Attributes:
        key: the layer path, or the channel group id.
        indices: positions of the block's weights in the weight list.
        masks: per weight, a boolean array of its shape marking the block's entries, or None
            for the whole weight.
    """

    key: object
    indices: Tuple[int, ...]
    masks: Tuple[Optional[np.ndarray], ...]

    def restrict(self, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        """The block's arrays (one per index) with entries outside the block set to zero."""
        return [a if m is None else np.where(m, a, 0.0) for a, m in zip(arrays, self.masks)]


def layer_blocks(layer_paths: Sequence[str]) -> List[Block]:
    """One block per layer, in the order of the weights."""
    by_layer: Dict[str, List[int]] = {}
    for i, path in enumerate(layer_paths):
        by_layer.setdefault(path, []).append(i)
    return [Block(path, tuple(ix), (None,) * len(ix)) for path, ix in by_layer.items()]


def slice_entries(param_slice: ParamSlice, shape) -> np.ndarray:
    """Boolean mask, shaped like the slice's variable, of the entries that carry the group."""
    along = np.zeros(shape[param_slice.axis], dtype=bool)
    along[param_slice.index_map.reshape(-1)] = True
    view = [1] * len(shape)
    view[param_slice.axis] = shape[param_slice.axis]
    return np.broadcast_to(along.reshape(view), tuple(shape))


def channel_totals(values: np.ndarray, param_slice: ParamSlice) -> np.ndarray:
    """`values` (shaped like the slice's variable) summed over each group channel's entries."""
    values = np.asarray(values, dtype=np.float64)
    per_entry = np.moveaxis(values, param_slice.axis, 0).reshape(values.shape[param_slice.axis], -1)
    return per_entry.sum(axis=1)[param_slice.index_map].sum(axis=1)


def trainable_slices(group: ChannelGroup, keys: Dict[Tuple[str, str], int]):
    """`(weight index, slice)` for the group's trainable slices among the weights `keys`."""
    if not isinstance(group, ChannelGroup):
        raise CurvatureError(f"groups must be tfprune.ChannelGroup objects (from "
                             f"tfprune.channel_groups); received {type(group).__name__}")
    return [(keys[(p.layer, p.weight)], p) for p in group.params
            if p.trainable and (p.layer, p.weight) in keys]


def group_blocks(groups: Sequence[ChannelGroup], keys: Dict[Tuple[str, str], int],
                 shapes: Sequence[Tuple[int, ...]]) -> List[Block]:
    """One block per group: every entry of its trainable slices (groups without any are left out)."""
    blocks = []
    for group in groups:
        masks: Dict[int, np.ndarray] = {}
        for i, p in trainable_slices(group, keys):
            entries = slice_entries(p, shapes[i])
            masks[i] = entries if i not in masks else masks[i] | entries
        if masks:
            ix = tuple(sorted(masks))
            blocks.append(Block(group.id, ix, tuple(masks[i] for i in ix)))
    return blocks
