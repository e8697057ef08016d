"""`ChannelGraph`: the channel-level dependency graph of a Keras model, and `channel_groups`.

How it works. Every channel that a layer creates (a Conv's filters, a Dense's units, a model
input's channels) gets an integer id. Each tensor of the model carries an array of ids, one per
position along its channel axis, and each weight variable carries one per entry along each of
its channel axes. The layer rules (`tfprune.graph.rules`) fill those arrays while walking the
model once in topological order: per-channel layers pass their input's ids on, elementwise
merges unite the ids of their inputs position by position (union-find), concatenations join
the arrays, Flatten repeats ids over spatial positions, depthwise multipliers repeat each id.

After the walk, united ids form *classes*: a class is one channel that can only be removed as
a whole, everywhere it appears. Classes that appear in exactly the same arrays, the same number
of times each, form a `ChannelGroup`; each array that carries a group then has a well-defined
`(group.size, k)` index map. The walk is linear in the number of layers and channels.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfprune.graph import rules
from tfprune.graph._keras_graph import trace
from tfprune.graph.group import (CONSUMER, PASSTHROUGH, PRODUCER, ChannelGroup, Member,
                                 ParamSlice)

_ROLE_ORDER = {PRODUCER: 0, PASSTHROUGH: 1, CONSUMER: 2}


class _Tensor:
    """Channel layout of one tensor: `ids[i]` is the channel at position `i` along `axis`."""

    __slots__ = ("shape", "axis", "ids", "opaque", "relaid")

    def __init__(self, shape, axis=None, ids=None, opaque=None):
        self.shape = shape
        self.axis = axis
        self.ids = ids
        self.opaque = opaque      # reason, for tensors whose channels have no known structure
        self.relaid = {}          # axis -> ids, for opaque tensors read along another axis


class LayerRecord:
    """What the graph knows about one layer (shared by all its calls)."""

    def __init__(self, layer, path, call_index):
        self.layer = layer
        self.path = path
        self.first_call = call_index
        self.params: Dict[Tuple[str, int], np.ndarray] = {}
        self.param_roles: Dict[Tuple[str, int], Tuple[str, str]] = {}
        self.config_arrays: Dict[str, np.ndarray] = {}
        self.edit = None          # fn(config, keep) -> dict of config updates for shrink


class ChannelGraph:
    """The channel-dependency graph of a model (the structure behind `channel_groups`).

    Built by walking the model once. Besides `groups`, it keeps what `tfprune.shrink` needs to
    rebuild the model without some channels: every tensor's and weight's channel ids and the
    config edits of each layer.

    Args:
        model: a functional or Sequential `keras.Model` (nested models allowed).

    Attributes:
        model: the model.
        groups: list of `ChannelGroup`, ordered by id.
        layers: dict `id(layer) -> LayerRecord` for every layer with channel weights or configs.
        tensors: dict tensor key -> channel layout, for every tensor of the flattened graph.
        roots: `roots[i]` is the class (an id) of channel id `i`.
        classes: `classes[g][c]` is the class of channel `c` of group `g`.

    Example:

    ```python
    import tfprune
    graph = tfprune.graph.ChannelGraph(tfprune.zoo.resnet8())
    print(graph.groups[1].describe())      # the same groups as tfprune.channel_groups
    ```
    """

    def __init__(self, model):
        self.model = model
        self.trace = trace(model)
        self._parent: List[int] = []
        self.tensors: Dict[tuple, _Tensor] = {k: _Tensor(s) for k, s in self.trace.shapes.items()}
        self.layers: Dict[int, LayerRecord] = {}
        self._fresh: Dict[tuple, np.ndarray] = {}
        self._slots: List[Tuple[int, str, tuple]] = []
        self._blocks: List[Tuple[np.ndarray, str]] = []
        self._norm_groups: List[Tuple[int, np.ndarray, int]] = []
        self.call_index = 0
        for name, key in self.trace.inputs:
            t = self.tensors[key]
            if len(t.shape) >= 2 and t.shape[-1] is not None:
                t.axis, t.ids = len(t.shape) - 1, self.new_ids(t.shape[-1])
                t.opaque = f"they are channels of the model input {name!r}"
                self.block(t.ids, t.opaque)
        for i, call in enumerate(self.trace.calls):
            self.call_index = i
            rules.apply(self, call)
        for name, index, key in self.trace.outputs:
            t = self.tensors[key]
            if t.ids is not None:
                self.block(t.ids, f"it reaches the model output {index} (layer {name!r})")
            for ids in t.relaid.values():
                self.block(ids, f"it reaches the model output {index} (layer {name!r})")
        self._finish()

    # --- construction API used by the layer rules ----------------------------------------

    @property
    def call(self):
        return self.trace.calls[self.call_index]

    def new_ids(self, n: int) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + int(n)))
        return np.arange(start, start + int(n), dtype=np.int64)

    def fresh(self, name: str, n: int) -> np.ndarray:
        """Ids created by the current layer (the same for every call of a shared layer)."""
        key = (id(self.call.op), name)
        if key not in self._fresh:
            self._fresh[key] = self.new_ids(n)
        return self._fresh[key]

    def _find(self, i: int) -> int:
        parent = self._parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: np.ndarray, b: np.ndarray):
        """Makes position `i` of `a` and position `i` of `b` the same channel, for every `i`."""
        if len(a) != len(b):
            raise AssertionError(f"union of {len(a)} and {len(b)} channels")
        parent = self._parent
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self._find(x), self._find(y)
            if rx != ry:
                if rx < ry:
                    parent[ry] = rx
                else:
                    parent[rx] = ry

    def block(self, ids: Optional[np.ndarray], reason: str):
        if ids is not None and len(ids):
            self._blocks.append((ids, reason))

    def shape(self, key) -> tuple:
        return self.tensors[key].shape

    def layout(self, key):
        t = self.tensors[key]
        return t.axis, t.ids

    def ids_on(self, key, axis: int) -> Optional[np.ndarray]:
        """The ids of tensor `key` along `axis`, or None if its channels lie on another axis.

        Opaque tensors (model inputs, outputs of unknown layers) can be read along any axis:
        their channels are blocked whatever they are.
        """
        t = self.tensors[key]
        axis = axis % len(t.shape)
        if t.ids is not None and t.axis == axis:
            return t.ids
        if t.opaque is not None and t.shape[axis] is not None:
            if axis not in t.relaid:
                t.relaid[axis] = self.new_ids(t.shape[axis])
                self.block(t.relaid[axis], t.opaque)
            return t.relaid[axis]
        return None

    def set_output(self, index: int, axis: Optional[int], ids: Optional[np.ndarray],
                   role: str = PASSTHROUGH, like=None):
        """Output `index` of the current call carries `ids` along `axis`.

        `like`: the input tensor it derives from elementwise; an opaque input (a model input,
        an unknown layer's output) makes the output opaque too.
        """
        key = self.call.outputs[index]
        t = self.tensors[key]
        if ids is None:
            return
        t.axis, t.ids = axis % len(t.shape), ids
        if like is not None:
            t.opaque = self.tensors[like].opaque
        self._slots.append((self.call_index, role, key))

    def read(self, key, role: str = CONSUMER):
        """Records that the current call reads tensor `key` (a member slot)."""
        if self.tensors[key].ids is not None:
            self._slots.append((self.call_index, role, key))

    def record(self) -> LayerRecord:
        op = self.call.op
        if id(op) not in self.layers:
            self.layers[id(op)] = LayerRecord(op, self.call.path, self.call_index)
        return self.layers[id(op)]

    def param(self, weight: str, axis: int, ids: np.ndarray, role: str, member_role: str):
        """Entries `0..len(ids)-1` along `axis` of the layer's variable `weight` carry `ids`."""
        if weight not in {v.name for v in self.call.op.weights}:
            return
        rec = self.record()
        key = (weight, axis)
        if key in rec.params:
            self.union(rec.params[key], ids)   # a shared layer: every call uses these weights
        else:
            rec.params[key] = ids
            rec.param_roles[key] = (role, member_role)

    def config_array(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Config values (e.g. per-channel scales, a Reshape's channels) that carry `ids`."""
        rec = self.record()
        if name in rec.config_arrays:
            self.union(rec.config_arrays[name], ids)
        else:
            rec.config_arrays[name] = ids
        return rec.config_arrays[name]

    def edit(self, fn):
        """Registers how the layer's config changes when channels are removed (for shrink)."""
        self.record().edit = fn

    def norm_groups(self, ids: np.ndarray, block_size: int):
        """Channels `ids` are normalized in consecutive blocks of `block_size` (GroupNorm)."""
        self._norm_groups.append((self.call_index, ids, block_size))

    def opaque(self, reason: str):
        """The current call cannot be reasoned about: its inputs and outputs are blocked."""
        call = self.call
        for key in call.inputs:
            t = self.tensors[key]
            self.block(t.ids, reason)
            for ids in t.relaid.values():
                self.block(ids, reason)
            self.read(key)
        for i, key in enumerate(call.outputs):
            t = self.tensors[key]
            if len(t.shape) >= 2 and t.shape[-1] is not None:
                ids = self.new_ids(t.shape[-1])
                self.set_output(i, -1, ids, role=PRODUCER)
                self.block(ids, reason)
                t.opaque = reason

    # --- groups ------------------------------------------------------------------------------

    def _finish(self):
        parent = np.asarray(self._parent, dtype=np.int64)
        while True:                       # pointer jumping: every id -> its class root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        self.roots = parent
        n = len(parent)

        arrays = [t.ids for t in self.tensors.values() if t.ids is not None]
        arrays += [ids for t in self.tensors.values() for ids in t.relaid.values()]
        for rec in self.layers.values():
            arrays += list(rec.params.values()) + list(rec.config_arrays.values())
        # Classes that occur in the same arrays the same number of times form a group; a
        # random 64-bit key per array makes that a sum (collisions have probability ~2^-40).
        keys = np.random.default_rng(0).integers(1, 2**63, size=len(arrays), dtype=np.uint64)
        signature = np.zeros(n, dtype=np.uint64)
        for key, ids in zip(keys, arrays):
            cls, counts = np.unique(parent[ids], return_counts=True)
            with np.errstate(over="ignore"):
                signature[cls] += key * (2 * counts.astype(np.uint64) + 1)

        reason_of: Dict[int, str] = {}
        for ids, reason in self._blocks:
            for c in np.unique(parent[ids]).tolist():
                reason_of.setdefault(c, reason)

        classes = np.flatnonzero(parent == np.arange(n))   # roots, in order of creation
        group_of = np.full(n, -1, dtype=np.int64)
        rank_of = np.full(n, -1, dtype=np.int64)
        members_of: List[List[int]] = []
        by_key: Dict[tuple, int] = {}
        for c in classes.tolist():
            key = (int(signature[c]), c in reason_of)
            g = by_key.setdefault(key, len(members_of))
            if g == len(members_of):
                members_of.append([])
            rank_of[c] = len(members_of[g])
            group_of[c] = g
            members_of[g].append(c)
        self.group_of, self.rank_of = group_of, rank_of
        self.classes = [np.asarray(m, dtype=np.int64) for m in members_of]
        self._build_groups(members_of, reason_of)

    def index_maps(self, ids: np.ndarray) -> Dict[int, np.ndarray]:
        """Group id -> `(size, k)` positions in `ids` that carry each channel of the group."""
        r = self.roots[ids]
        g, rank = self.group_of[r], self.rank_of[r]
        order = np.lexsort((np.arange(len(ids)), rank, g))
        g_sorted = g[order]
        bounds = np.flatnonzero(np.diff(g_sorted)) + 1
        out = {}
        for seg in np.split(np.arange(len(ids)), bounds):
            if not len(seg):
                continue
            gid = int(g_sorted[seg[0]])
            size = self._sizes[gid]
            positions = order[seg].reshape(size, -1)
            out[gid] = positions
        return out

    def _build_groups(self, members_of, reason_of):
        self._sizes = [len(m) for m in members_of]
        calls = self.trace.calls
        members: Dict[tuple, dict] = {}

        def member(call_index, gid, role, axis, index_map):
            key = (call_index, gid, role)
            if key not in members:
                members[key] = dict(call=call_index, axis=axis, index_map=index_map, params=[])
            return members[key]

        for call_index, role, key in self._slots:
            t = self.tensors[key]
            for gid, imap in self.index_maps(t.ids).items():
                member(call_index, gid, role, t.axis, imap)

        for rec in self.layers.values():
            for (weight, axis), ids in rec.params.items():
                role, member_role = rec.param_roles[(weight, axis)]
                variable = next(v for v in rec.layer.weights if v.name == weight)
                for gid, imap in self.index_maps(ids).items():
                    m = member(rec.first_call, gid, member_role, axis, imap)
                    m["params"].append(ParamSlice(rec.path, weight, axis, imap, role,
                                                  bool(variable.trainable)))

        granules = self._granules()
        per_group: Dict[int, list] = {}
        for (call_index, gid, role), m in sorted(
                members.items(), key=lambda kv: (_ROLE_ORDER[kv[0][2]], kv[0][0])):
            call = calls[call_index]
            per_group.setdefault(gid, []).append(Member(
                call.path, call.class_name, role, m["axis"], m["index_map"], tuple(m["params"])))

        groups = []
        for gid, classes in enumerate(members_of):
            reason = reason_of.get(classes[0])
            granule, granule_reason = granules.get(gid, (1, None))
            if reason is None and granule_reason is not None:
                reason = granule_reason
            groups.append(ChannelGroup(
                id=gid, size=len(classes), prunable=reason is None,
                reason=reason, members=tuple(per_group.get(gid, ())),
                granule=granule))
        self.groups = groups

    def _granules(self) -> Dict[int, Tuple[int, Optional[str]]]:
        """Group id -> (granule, reason it cannot be pruned or None), from GroupNormalizations."""
        out: Dict[int, Tuple[int, Optional[str]]] = {}
        for call_index, ids, block in self._norm_groups:
            call = self.trace.calls[call_index]
            for gid, imap in self.index_maps(ids).items():
                k = imap.shape[1]
                step = block // math.gcd(block, k)       # group channels per norm group
                granule = math.lcm(out.get(gid, (1, None))[0], step)
                reason = out.get(gid, (1, None))[1]
                size = self._sizes[gid]
                if reason is None and size % granule == 0:
                    blocks = imap.reshape(size // granule, -1) // block
                    if not all(len(np.unique(b)) * block == b.size for b in blocks):
                        reason = (f"layer {call.path!r} (GroupNormalization) normalizes channels "
                                  f"in blocks of {block} that do not line up with the group's "
                                  f"channels")
                elif reason is None:
                    reason = (f"layer {call.path!r} (GroupNormalization) normalizes blocks of "
                              f"{block} channels that do not line up with the group's channels")
                if reason is None and granule >= size:
                    reason = (f"layer {call.path!r} (GroupNormalization) normalizes all "
                              f"{size} channels of the group together")
                out[gid] = (granule, reason)
        return out


def channel_groups(model) -> List[ChannelGroup]:
    """The channel groups of a model: channels that can only be removed together.

    Walks the model once (functional or Sequential, nested models included) and couples
    channels as described in `docs/concepts/channel_groups.md`: residual adds and other
    elementwise merges share channels, concatenations offset them, per-channel layers
    (BatchNormalization, activations, pooling, padding, depthwise convolutions, ...) pass them
    through, Flatten spreads them over spatial positions. A group that reaches a model
    output or input, or passes through a layer tfprune cannot reason about (Lambda, custom
    layers, softmax over channels, LayerNormalization over channels, ...) is not prunable,
    and its `reason` says why.

    Args:
        model: a functional or Sequential `keras.Model`; nested functional and Sequential
            models are followed (layer paths `"outer/inner"`). The model is not modified.

    Returns:
        A list of `ChannelGroup`, ordered by `id` (topological order of discovery).

    Raises:
        UnsupportedModelError: `model` is not a Keras model whose graph can be read (e.g. a
            subclassed model, or a Sequential model that is not built).

    Example:

    ```python
    import keras, tfprune
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    for group in tfprune.channel_groups(model):
        print(group.describe())
    ```
    """
    return ChannelGraph(model).groups
