"""`ChannelGroup`: channels of several layers that can only be removed together.

A group has `size` channels, numbered `0..size-1`. Removing channel `c` of the group means
that every tensor in the group loses the tensor channels `index_map[c]` of its member, every
layer that produces such a tensor drops the matching output slice of its weights, and every
layer that reads such a tensor and mixes channels (Conv, Dense, ...) drops the matching input
slice. The model then behaves exactly as if those consumers' input weights were zero.

The dataclasses below are the contract between the graph (which builds them) and everything
downstream (criteria, curvature, masks, shrink, profile): they say, for each channel of the
group, which entries of which weight variables carry it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

PRODUCER = "producer"
CONSUMER = "consumer"
PASSTHROUGH = "passthrough"
ROLES = (PRODUCER, CONSUMER, PASSTHROUGH)


@dataclasses.dataclass(frozen=True, eq=False)
class ParamSlice:
    """The entries of one weight variable that carry the channels of a group.

    Attributes:
        layer: path of the layer in the model; layers of nested models are written
            `"outer/inner"` (names joined by `/`).
        weight: name of the variable inside the layer (`variable.name`, e.g. `"kernel"`,
            `"bias"`, `"gamma"`, `"moving_mean"`, `"depthwise_kernel"`, `"alpha"`).
        axis: axis of the variable along which the channels lie (non-negative).
        index_map: int array of shape `(group.size, k)`: group channel `c` is carried by the
            entries `index_map[c]` along `axis` (k > 1 e.g. for depthwise multipliers or for
            the Dense that follows a Flatten).
        role: `"producer"` (the layer writes the group's tensor: output slices, bias, BN
            statistics, depthwise kernels) or `"consumer"` (the layer reads the group's tensor
            and mixes channels: input slices of a Conv/Dense kernel).
        trainable: whether the variable is trainable (BN moving statistics are not).
    """

    layer: str
    weight: str
    axis: int
    index_map: np.ndarray
    role: str
    trainable: bool = True

    def indices(self, channels) -> np.ndarray:
        """Flat indices along `axis` that carry the given group channels."""
        return self.index_map[np.asarray(channels, dtype=np.int64)].reshape(-1)


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One layer touched by a group.

    Attributes:
        layer: path of the layer (see `ParamSlice.layer`).
        class_name: the layer's class name, e.g. `"Conv2D"`.
        role: `"producer"`, `"consumer"` or `"passthrough"` (per-channel layers with no
            channel mixing that the group runs through: BN, activations, pooling, ...;
            BN and depthwise convolutions are passthrough members *with* producer params).
        axis: channel axis of the tensor this member reads (consumer) or writes (producer,
            passthrough), counted from the front including the batch axis.
        index_map: int array `(group.size, k)`: group channel `c` is tensor channels
            `index_map[c]` on `axis` (offsets for concatenations, `c*m..c*m+m-1` after a
            depthwise multiplier `m`, every spatial position after a Flatten).
        params: the weight slices of this layer that carry the group.
    """

    layer: str
    class_name: str
    role: str
    axis: int
    index_map: np.ndarray
    params: Tuple[ParamSlice, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Channels of several layers that must be removed together.

    Attributes:
        id: stable integer id (order of discovery in a topological walk of the model).
        size: number of channels in the group.
        prunable: whether tfprune can remove channels of this group.
        reason: why not, when `prunable` is False (names the layer and the cause), else None.
        members: every layer the group touches, producers first.
        granule: channels can only be removed in aligned blocks of this many (1 for almost
            every group; `channels // groups` for a GroupNormalization that is pruned by whole
            normalization groups).

    Example:

    ```python
    groups = tfprune.channel_groups(model)
    for g in groups:
        print(g.id, g.size, g.prunable, [m.layer for m in g.producers], g.reason)
    ```
    """

    id: int
    size: int
    prunable: bool
    reason: Optional[str]
    members: Tuple[Member, ...]
    granule: int = 1

    @property
    def producers(self) -> Tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == PRODUCER)

    @property
    def consumers(self) -> Tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == CONSUMER)

    @property
    def passthrough(self) -> Tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == PASSTHROUGH)

    @property
    def params(self) -> Tuple[ParamSlice, ...]:
        """Every weight slice that carries the group (producers' and consumers')."""
        return tuple(p for m in self.members for p in m.params)

    @property
    def layers(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(m.layer for m in self.members))

    def describe(self) -> str:
        """One line naming the group: id, size and its producing layers."""
        prods = ", ".join(m.layer for m in self.producers) or "no producer"
        state = "prunable" if self.prunable else f"not prunable: {self.reason}"
        return f"group {self.id} ({self.size} channels; {prods}; {state})"

    def __repr__(self):
        return f"ChannelGroup({self.describe()})"
