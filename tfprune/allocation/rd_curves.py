"""Output distortion of a network with some weights masked, and rate-distortion curves.

Xu et al. (ICCV 2023) measure, for every prunable layer and every sparsity of a grid, the
distortion of the network's output when that layer alone is pruned: by default the *worst
case* over the calibration samples of the per-sample mean squared error of the logits,
against the current network. `OutputDistortion` evaluates one such masked variant with one
forward pass over the calibration set, through a compiled function that takes the masks as
inputs: every variant of every layer runs the same traced graph, the weights are read at call
time (so the function is reused across pruning events as training moves them), and the model
is never modified. `distortion_curves` measures the curves of many units with it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfprune.curvature.data import CalibrationData
from tfprune.curvature.model_view import ModelView
from tfprune.errors import DataError, InvalidPruningArgumentError

WORST_CASE = "worst_case"
MEAN = "mean"
DISTORTIONS = (WORST_CASE, MEAN)


class OutputDistortion:
    """How far a masked variant of a model's output moves from a reference, per sample.

    The distortion of a sample is the mean over output entries of the squared difference of
    the logits (the input of a final softmax, when the model ends in one; otherwise the
    output) from the reference; a variant's distortion is the largest over the calibration
    samples (`"worst_case"`, as in the paper) or their mean (`"mean"`). BatchNormalization
    and Dropout run in inference mode.

    Args:
        model: a built single-output `keras.Model` (held weakly, never modified).
        variables: the variables that masks multiply (trainable or not), in the order of the
            mask lists passed to the methods.
        data: calibration data: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches
            (`y` is not used), read once.
        distortion: `"worst_case"` or `"mean"`.
        batch_size: samples per forward pass for `(x, y)` arrays.

    Raises:
        InvalidPruningArgumentError: an unknown `distortion`, or variables not in the model.
        DataError: calibration data that cannot be read.

    Example:

    ```python
    import keras, numpy as np
    from tfprune.allocation.rd_curves import OutputDistortion
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    x = np.random.rand(16, 4).astype("float32")
    measure = OutputDistortion(model, [model.layers[0].kernel], (x, np.zeros(16)))
    measure.set_reference()                              # the model as it is
    mask = np.ones((4, 3)); mask[0] = 0.0                # drop input 0
    measure([mask])                                      # worst-case MSE of the outputs
    ```
    """

    def __init__(self, model, variables: Sequence, data, distortion: str = WORST_CASE,
                 batch_size: int = 128):
        if distortion not in DISTORTIONS:
            raise InvalidPruningArgumentError(
                f"distortion={distortion!r}: accepted are 'worst_case' (largest per-sample "
                "MSE of the logits, as in Xu et al.) and 'mean' (mean over samples)")
        self.distortion = distortion
        self.view = ModelView(model, strip_softmax=True)
        trainable = {id(v): i for i, v in enumerate(model.trainable_variables)}
        frozen = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        self._positions = []
        for v in variables:
            if id(v) in trainable:
                self._positions.append((True, trainable[id(v)]))
            elif id(v) in frozen:
                self._positions.append((False, frozen[id(v)]))
            else:
                raise InvalidPruningArgumentError(
                    f"{getattr(v, 'path', v)!r} is not a variable of model {model.name!r}")
        self.shapes = [tuple(v.shape) for v in variables]
        self.dtypes = [v.dtype for v in variables]
        try:
            batches = CalibrationData(data, batch_size).dataset
        except Exception as e:  # noqa: BLE001  (any reading error is reported the same way)
            raise DataError(f"calibration data for the output distortion: {e}") from e
        self._inputs = [x for x, _ in batches]
        _check_shapes(model, self._inputs[0])
        self.num_samples = int(sum(tf.shape(tf.nest.flatten(x)[0])[0] for x in self._inputs))
        self._reference: Optional[List[tf.Tensor]] = None
        self._outputs = tf.function(self._masked_outputs, reduce_retracing=True)
        self._errors = tf.function(self._per_sample_errors, reduce_retracing=True)
        self.evaluations = 0

    def _masked_outputs(self, x, masks):
        trainable, frozen = self.view.read()
        for (is_trainable, i), m in zip(self._positions, masks):
            values = trainable if is_trainable else frozen
            values[i] = values[i] * tf.cast(m, values[i].dtype)
        return tf.cast(self.view.call(trainable, frozen, x), tf.float32)

    def _per_sample_errors(self, x, reference, masks):
        diff = tf.square(self._masked_outputs(x, masks) - reference)
        return tf.reduce_mean(tf.reshape(diff, [tf.shape(diff)[0], -1]), axis=1)

    def _tensors(self, masks) -> List[tf.Tensor]:
        if masks is None:
            return [tf.ones(s, d) for s, d in zip(self.shapes, self.dtypes)]
        if len(masks) != len(self.shapes):
            raise InvalidPruningArgumentError(f"{len(masks)} masks for {len(self.shapes)} "
                                              "variables")
        return [tf.convert_to_tensor(np.asarray(m).reshape(s), d)
                for m, s, d in zip(masks, self.shapes, self.dtypes)]

    def set_reference(self, masks: Optional[Sequence] = None) -> None:
        """Takes the outputs with `masks` (None: no mask) as the reference of every distortion."""
        tensors = self._tensors(masks)
        self._reference = [self._outputs(x, tensors) for x in self._inputs]

    def per_sample(self, masks: Sequence) -> np.ndarray:
        """Per calibration sample, the mean squared difference of the outputs from the reference."""
        if self._reference is None:
            self.set_reference()
        tensors = self._tensors(masks)
        self.evaluations += 1
        return np.concatenate([self._errors(x, ref, tensors).numpy()
                               for x, ref in zip(self._inputs, self._reference)])

    def __call__(self, masks: Sequence) -> float:
        errors = self.per_sample(masks)
        return float(errors.max() if self.distortion == WORST_CASE else errors.mean())


def _check_shapes(model, x):
    """Raises `DataError` when the data's inputs do not fit the model's (batch axis aside)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return
    expected = [tuple(t.shape[1:]) for t in tf.nest.flatten(inputs)]
    given = [tuple(t.shape[1:]) for t in tf.nest.flatten(x)]
    fits = len(expected) == len(given) and all(
        len(e) == len(g) and all(a is None or a == b for a, b in zip(e, g))
        for e, g in zip(expected, given))
    if not fits:
        raise DataError(f"calibration data: model {model.name!r} takes inputs of shape "
                        f"{expected} (batch aside); the data's x has {given}")


@dataclasses.dataclass(frozen=True)
class DistortionCurve:
    """The distortion of pruning one unit (a channel group, a kernel) alone, at several levels.

    Attributes:
        name: what the unit is.
        counts: units removed at each measured level, ascending (the first is the count already
            removed, whose distortion is 0 by definition: it is the reference network).
        distortion: the measured distortion at each level.
    """

    name: str
    counts: np.ndarray
    distortion: np.ndarray

    def at(self, counts) -> np.ndarray:
        """The distortion at any removed counts, linear between measured levels."""
        return np.interp(np.asarray(counts, dtype=np.float64), self.counts, self.distortion)


def distortion_curves(measure: OutputDistortion, units: Sequence,
                      masks_at: Callable[[int, int], Dict[int, np.ndarray]], base: Sequence,
                      verbose: int = 1) -> List[DistortionCurve]:
    """Measures the distortion of pruning each unit alone at each of its levels.

    Args:
        measure: an `OutputDistortion` whose reference is the current network (`base`).
        units: `(name, counts)` per unit: `counts` ascending, the first being the count the
            unit has removed already (not measured: 0).
        masks_at: `(unit index, count) -> {variable index: mask}`: the masks that change when
            the unit has `count` removed (every other variable keeps its `base` mask).
        base: the current masks of all variables of `measure`.
        verbose: 1 shows a progress bar over the forward passes, 0 is silent.

    Returns:
        One `DistortionCurve` per unit.
    """
    total = sum(max(len(counts) - 1, 0) for _, counts in units)
    bar = keras.utils.Progbar(total, unit_name="variant") if verbose and total else None
    curves, done = [], 0
    for u, (name, counts) in enumerate(units):
        counts = np.asarray(counts, dtype=np.int64)
        values = np.zeros(len(counts))
        for k in range(1, len(counts)):
            masks = list(base)
            for i, m in masks_at(u, int(counts[k])).items():
                masks[i] = m
            values[k] = measure(masks)
            done += 1
            if bar is not None:
                bar.update(done)
        curves.append(DistortionCurve(name, counts, values))
    return curves
