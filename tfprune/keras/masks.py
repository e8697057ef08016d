"""Masks of a model's prunable variables, and their enforcement at every optimizer step.

Where a mask lives decides how it is enforced:

- in a `PruningWrapper` (models from `tfprune.prunable`): the wrapper multiplies the weight
  by its mask in `call`, so outputs and gradients are masked exactly; at each pruning event
  the masked entries of the weight and of the optimizer's slots are zeroed once, after which
  zero gradients keep them at zero.
- for a plain model, in a mask variable owned by the callback, installed as the weight's
  `constraint` during `fit`: Keras optimizers apply constraints right after every update,
  inside the compiled train step, so masked weights are zero after every step (also with
  `steps_per_execution > 1` and under `tf.distribute`), and the constraint zeroes the masked
  entries of the weight's optimizer slots (Adam's m and v, momentum) too, so they cannot
  revive it. Constraints the layer already had run first; they are restored after `fit`.

Optimizer slots are found with the public optimizer API: `optimizer.variables` whose name
starts with the weight's path (Keras names slots `<path with _>_<slot>`) and whose shape is
the weight's. Slots of another shape (factored second moments) are left alone.
"""

from __future__ import annotations

from typing import Dict, List

import keras
import numpy as np
import tensorflow as tf

from tfprune.graph.paths import iter_layers
from tfprune.keras.wrapper import PruningWrapper


class MaskConstraint:
    """A variable constraint that applies a mask to the weight and to its optimizer slots.

    Args:
        mask: the mask variable (same shape as the weight).
        slots: optimizer variables of the weight's shape to mask as well.
        original: the constraint the variable had before, applied first.
    """

    def __init__(self, mask, slots, original=None):
        self.mask = mask
        self.slots = list(slots)
        self.original = original

    def __call__(self, w):
        if self.original is not None:
            w = self.original(w)
        for s in self.slots:
            s.assign(s * keras.ops.cast(self.mask, s.dtype))
        return w * keras.ops.cast(self.mask, w.dtype)


def slot_variables(optimizer, variables) -> Dict[int, List]:
    """`{id(variable): [optimizer variables of that variable's shape and path]}`."""
    prefixes = [(v.path.replace("/", "_") + "_", v) for v in variables]
    out = {id(v): [] for v in variables}
    if optimizer is None:
        return out
    for s in optimizer.variables:
        matches = [(len(p), v) for p, v in prefixes
                   if s.name.startswith(p) and tuple(s.shape) == tuple(v.shape)]
        if matches:
            out[id(max(matches, key=lambda m: m[0])[1])].append(s)
    return out


class MaskSet:
    """The masks of a set of variables of `model`, kept in wrappers or owned here.

    Args:
        model: the model being trained (compiled, built).
        variables: `{name: variable}` of every variable that may be masked.
    """

    def __init__(self, model, variables: Dict[str, object]):
        self.model = model
        self.names = list(variables)
        self.variables = [variables[n] for n in self.names]
        in_wrappers = {id(w): m for _, layer in iter_layers(model)
                       if isinstance(layer, PruningWrapper) for w, m in layer.masked_weights()}
        self.masks, self.owned = [], []
        with model.distribute_strategy.scope():
            for name, v in zip(self.names, self.variables):
                owned = id(v) not in in_wrappers
                self.owned.append(owned)
                self.masks.append(
                    keras.Variable(np.ones(v.shape), dtype=v.dtype, trainable=False,
                                   name=name.replace("/", "_") + "_mask")
                    if owned else in_wrappers[id(v)])
        slots = slot_variables(model.optimizer, self.variables)
        self.slots = [slots[id(v)] for v in self.variables]
        self._index = {n: i for i, n in enumerate(self.names)}
        self._originals = None
        self._apply = tf.function(self._apply_all)

    def _apply_all(self):
        for v, m, slots in zip(self.variables, self.masks, self.slots):
            v.assign(v * keras.ops.cast(m, v.dtype))
            for s in slots:
                s.assign(s * keras.ops.cast(m, s.dtype))

    def value(self, name: str) -> np.ndarray:
        """The current mask of `name` as a numpy array (1 = kept, 0 = removed)."""
        return np.asarray(self.masks[self._index[name]].numpy())

    def assign(self, masks: Dict[str, np.ndarray]):
        """Sets the masks of the given names, then zeroes the masked weights and slots."""
        for name, mask in masks.items():
            i = self._index[name]
            self.masks[i].assign(np.asarray(mask).astype(self.masks[i].dtype))
        self._apply()

    def attach(self):
        """Installs the mask constraints on the owned trainable variables for `fit`."""
        self._originals = []
        for v, m, slots, owned in zip(self.variables, self.masks, self.slots, self.owned):
            if owned and v.trainable:
                original = v.constraint
                while isinstance(original, MaskConstraint):  # left by an interrupted fit
                    original = original.original
                self._originals.append((v, original))
                v.constraint = MaskConstraint(m, slots, original)
        if self._originals:
            # The train function may have been traced without the constraints.
            self.model.make_train_function(force=True)

    def detach(self):
        """Restores the constraints the variables had before `attach`."""
        if self._originals:
            for v, original in self._originals:
                v.constraint = original
            self.model.make_train_function(force=True)
        self._originals = None
