"""`ScoringContext`: what a criterion, an allocation or a method hook sees at a pruning event.

A pruning callback builds one context per event and passes it to `criterion.prepare(context)`,
to `criterion(unit, context)` for every unit, and to the method's `after_selection` hook.
Everything expensive is lazy and computed at most once per event:

| attribute / method | what |
|---|---|
| `model` | the model being trained (plain, or wrapped by `tfprune.prunable`) |
| `step` | the optimizer step of the event (`model.optimizer.iterations`) |
| `granularity` | `"channel"` or `"weight"` |
| `groups` | the prunable `ChannelGroup`s (channel granularity), else `()` |
| `cost_model` | a `tfprune.profile.CostModel` of the unwrapped model, or None |
| `calibration_data` | what the callback was given: `(x, y)` arrays or a `tf.data.Dataset` |
| `removed` | units removed before this event: `{group id or variable name: bool array}` |
| `cache` | a dict for per-event results (curvature, activations) shared by the hooks |
| `variable(param_slice)` | the variable a `ParamSlice` lives in |
| `value(variable)` | its value as a numpy array (read once per event) |
| `gradient(variable)` | dL/dw averaged over the calibration data, BatchNorm in inference mode |
| `loss()` | the mean loss on the calibration data (computed with the gradients) |
| `activations(layer_paths)` | the inputs of those layers over the calibration data |
| `rng(*key)` | a numpy Generator seeded by `(seed, step, *key)`: reproducible after resume |
| `calibration_batches()` | iterates the calibration data as `(x, y)` batches |

Example:

```python
from tfprune.criteria import Criterion, channel_sum

class GradientNorm(Criterion):
    requires_calibration_data = True
    granularities = ("channel",)

    def channel_scores(self, group, context):
        return sum(channel_sum(context.gradient(context.variable(p)) ** 2, p)
                   for p in group.params if p.trainable)
```
"""

from __future__ import annotations

import zlib
from typing import Dict, Iterator, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfprune.errors import (DataError, InvalidPruningArgumentError,
                            MissingCalibrationDataError, MissingLossError, NonFiniteError)
from tfprune.graph.paths import SEP, find_layer, find_variable


def model_loss(model, loss, method: str):
    """The loss whose curvature a second-order method takes: `loss`, or the model's one loss.

    Raises:
        MissingLossError: `loss` is None and the model has no compiled loss, or several.
    """
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise MissingLossError(
            f"{method} needs the loss of model {model.name!r}: compile the model with a loss, "
            "or pass loss= (e.g. 'sparse_categorical_crossentropy')")
    if isinstance(loss, (dict, list, tuple)):
        raise MissingLossError(
            f"model {model.name!r} has several losses ({loss!r}); {method} takes a "
            "single-output model and one loss: pass loss=")
    return loss


def check_calibration_data(data):
    """Raises `DataError` unless `data` is `(x, y)` arrays of one length or a `tf.data.Dataset`."""
    if data is None or isinstance(data, tf.data.Dataset):
        return
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataError(f"calibration_data must be an (x, y) tuple of arrays or a tf.data.Dataset "
                        f"of (x, y) batches; received {type(data).__name__}")
    x, y = data
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"calibration_data: x has {len(x)} samples and y {len(y)}; they must be "
                        "equal and non-zero")


def calibration_batches(data, batch_size: int = 64) -> Iterator:
    """Yields `(x, y)` batches from `(x, y)` arrays or a `tf.data.Dataset` of batches."""
    if isinstance(data, tf.data.Dataset):
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise DataError("a calibration dataset must yield (x, y) or (x, y, sample_weight) "
                                f"batches; it yielded {type(batch).__name__}")
            yield batch[0], batch[1]
        return
    x, y = data
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def loss_and_gradients(model):
    """A compiled `(x, y) -> (loss, gradients)` for the model's trainable variables.

    The loss is the model's compiled loss (`model.compute_loss`) with BatchNormalization and
    Dropout in inference mode; gradients that do not exist are zeros.
    """
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def fn(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=False)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
        grads = tape.gradient(loss, variables)
        return loss, [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                      for g, v in zip(grads, variables)]

    return fn


class ScoringContext:
    """Everything a criterion may read at one pruning event (see the module docstring).

    Args:
        model: the model being trained.
        step: the optimizer step of the event.
        seed: the callback's seed; `rng` derives every random draw from `(seed, step, key)`.
        granularity: `"channel"` or `"weight"`.
        groups: the prunable channel groups (channel granularity).
        cost_model: a `tfprune.profile.CostModel`, or None.
        calibration_data: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches, or None.
        removed: `{group id or variable name: bool array}` of units removed before the event.
        names: `{id(variable): name}` used by `name()`; defaults to `variable.path`.
        gradient_fn: a function from `loss_and_gradients(model)` to reuse across events
            (made on first use when None).
        batch_size: batch size for `(x, y)` calibration arrays.

    Example:

    ```python
    from tfprune.criteria import ScoringContext, Taylor
    context = ScoringContext(model, step=0, calibration_data=(x, y))
    scores = Taylor().weight_scores(model.layers[1].kernel, context)
    ```
    """

    def __init__(self, model, step: int = 0, seed: int = 0, granularity: str = "channel",
                 groups: Sequence = (), cost_model=None, calibration_data=None,
                 removed: Optional[Dict] = None, names: Optional[Dict[int, str]] = None,
                 gradient_fn=None, batch_size: int = 64):
        check_calibration_data(calibration_data)
        self.model = model
        self.step = int(step)
        self.seed = int(seed)
        self.granularity = granularity
        self.groups = tuple(groups)
        self.cost_model = cost_model
        self.calibration_data = calibration_data
        self.removed = dict(removed or {})
        self.cache: Dict = {}
        self.batch_size = batch_size
        self._names = dict(names or {})
        self._gradient_fn = gradient_fn
        self._variables: Dict = {}
        self._values: Dict[int, np.ndarray] = {}
        self._gradients: Optional[Dict[int, np.ndarray]] = None
        self._loss: Optional[float] = None

    def variable(self, param_slice):
        key = (param_slice.layer, param_slice.weight)
        if key not in self._variables:
            self._variables[key] = find_variable(self.model, *key)
        return self._variables[key]

    def value(self, variable) -> np.ndarray:
        if id(variable) not in self._values:
            self._values[id(variable)] = np.asarray(variable.numpy())
        return self._values[id(variable)]

    def name(self, variable) -> str:
        return self._names.get(id(variable), variable.path)

    def rng(self, *key) -> np.random.Generator:
        words = [self.seed, self.step] + [
            k if isinstance(k, (int, np.integer)) else zlib.crc32(str(k).encode()) for k in key]
        return np.random.default_rng([int(w) & 0xFFFFFFFF for w in words])

    def calibration_batches(self) -> Iterator:
        if self.calibration_data is None:
            raise MissingCalibrationDataError(
                "this criterion needs calibration data: pass calibration_data=(x, y) or a "
                "tf.data.Dataset of (x, y) batches to the pruning callback")
        return calibration_batches(self.calibration_data, self.batch_size)

    def _compute_gradients(self):
        if self._gradient_fn is None:
            self._gradient_fn = loss_and_gradients(self.model)
        variables = self.model.trainable_variables
        total_loss, totals, count = 0.0, [np.zeros(v.shape) for v in variables], 0
        for x, y in self.calibration_batches():
            n = int(tf.shape(tf.nest.flatten(x)[0])[0])
            loss, grads = self._gradient_fn(x, y)
            total_loss += float(loss) * n
            for t, g in zip(totals, grads):
                t += g.numpy() * n
            count += n
        self._loss = total_loss / count
        if not np.isfinite(self._loss):
            raise NonFiniteError(f"the loss on the calibration data is {self._loss} at step "
                                 f"{self.step}")
        self._gradients = {}
        for v, t in zip(variables, totals):
            if not np.all(np.isfinite(t)):
                raise NonFiniteError(f"the gradient of {self.name(v)} on the calibration data "
                                     f"is not finite at step {self.step}")
            self._gradients[id(v)] = t / count

    def gradient(self, variable) -> np.ndarray:
        if self._gradients is None:
            self._compute_gradients()
        if id(variable) not in self._gradients:
            raise InvalidPruningArgumentError(f"{self.name(variable)} is not a trainable variable "
                                              "of the model: it has no gradient")
        return self._gradients[id(variable)]

    def loss(self) -> float:
        if self._loss is None:
            self._compute_gradients()
        return self._loss

    def activations(self, layer_paths: Sequence[str]) -> Dict[str, np.ndarray]:
        """The input of each top-level layer of a functional model, on the calibration data."""
        nested = [p for p in layer_paths if SEP in p]
        if nested:
            raise InvalidPruningArgumentError(
                f"activations of layers inside nested models ({nested}) are not available; "
                "only layers of the top-level functional model")
        key = ("activations",) + tuple(layer_paths)
        if key not in self.cache:
            extractor = keras.Model(self.model.input,
                                    [find_layer(self.model, p).input for p in layer_paths])
            parts = [extractor(x, training=False) for x, _ in self.calibration_batches()]
            parts = [p if isinstance(p, (list, tuple)) else [p] for p in parts]
            self.cache[key] = {path: np.concatenate([keras.ops.convert_to_numpy(b[i])
                                                     for b in parts])
                               for i, path in enumerate(layer_paths)}
        return self.cache[key]
