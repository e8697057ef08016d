"""`prune()`: prune a trained model once, outside `fit`, and get a new model back."""

from __future__ import annotations

import keras

from tfprune.errors import (InvalidPruningArgumentError, InvalidScheduleError,
                            MissingLossError, UnsupportedModelError)
from tfprune.graph._keras_graph import is_rebuildable
from tfprune.graph.paths import find_layer, iter_layers
from tfprune.keras.callback import PruningCallback
from tfprune.keras.schedules import OneShot

#: The most optimizer steps searched for a schedule's last event when it has no `end_step`.
_SCHEDULE_HORIZON = 1_000_000


def _method(name):
    """The callback class of a method name, imported when asked for."""
    if name in ("l1", "l2", "bn_scale", "taylor", "random"):
        from tfprune.keras.magnitude import MagnitudePruning

        return lambda target, **kwargs: MagnitudePruning(target, criterion=name, **kwargs)
    if name == "sosp_h":
        from tfprune.keras.sosp import SOSPH

        return SOSPH
    if name == "rd":
        from tfprune.keras.rd_prune import RDPrune

        return RDPrune
    if name == "camp_hive":
        try:
            from tfprune.keras.camp_hive import CampHiVe
        except ImportError as e:
            raise InvalidPruningArgumentError(
                f"method 'camp_hive' is not available in this installation ({e})") from None
        return CampHiVe
    raise InvalidPruningArgumentError(
        f"unknown method {name!r}; accepted: {', '.join(map(repr, METHODS))}, or a configured "
        "pruning callback (a tfprune.PruningCallback such as tfprune.SOSPH(...))")


#: Method names `prune` accepts.
METHODS = ("l1", "l2", "bn_scale", "taylor", "random", "camp_hive", "sosp_h", "rd")


def _event_steps(schedule):
    """The schedule's events up to the first that reaches the whole target, in order."""
    last = schedule.end_step if schedule.end_step is not None else _SCHEDULE_HORIZON
    steps = []
    for step in range(int(last) + 1):
        if schedule.should_prune(step):
            steps.append(step)
            if schedule.progress(step) >= 1.0:
                return steps
    raise InvalidScheduleError(
        f"{schedule!r} has no event that reaches the whole target (progress 1) by step {last}; "
        "prune() runs a schedule's events up to the one that does")


def _copy(model):
    """An uncompiled copy of `model` with the same layer names (inputs too) and weights."""
    if not isinstance(model, keras.Model) or not is_rebuildable(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} {getattr(model, 'name', '')!r}: prune() works on a copy, "
            "and only functional and Sequential models (nested ones included) can be copied "
            "from their config; build it with keras.Model(inputs, outputs) or keras.Sequential")
    # Custom layers need not be registered: their classes are taken from the model itself.
    custom = {type(layer).__name__: type(layer) for _, layer in iter_layers(model)
              if not type(layer).__module__.startswith("keras.")}
    with keras.saving.CustomObjectScope(custom):
        clone = type(model).from_config(model.get_config())
    for path, layer in iter_layers(model):
        if not isinstance(layer, keras.Model) and layer.weights:
            find_layer(clone, path).set_weights(layer.get_weights())
    return clone


def prune(model, method, target=None, data=None, *, shrink: bool = True, loss=None,
          verbose: int = 0, **kwargs) -> keras.Model:
    """Prunes a trained model once and returns the pruned copy; `model` is not changed.

    For users who prune once and fine-tune themselves (or not at all). The method runs on a
    copy of `model` exactly as it would inside `fit`, event by event, with no training in
    between: a name builds the method with a one-shot schedule (`tfprune.OneShot(0)`), and a
    configured callback runs every event of its own schedule up to the one that reaches its
    target (e.g. each round of `RDPrune(rounds=3)`, re-measured on the already pruned copy).

    The result is a new, **uncompiled** model (compile it to fine-tune or evaluate):

    - `shrink=True` (default): the physically smaller model (`tfprune.strip`): fewer
      channels, FLOPs, params and bytes, same outputs as the masked model. Fine-tuning it
      cannot revive what was removed. Weights zeroed one by one
      (`granularity="weight"`) stay in it as zeros, with `strip`'s warning.
    - `shrink=False`: the same architecture with the pruned weights zeroed (wrapped models
      stay wrapped). Removed channels receive no gradient (every weight that reads or
      writes them is zero), so plain training keeps them removed; single zero weights do
      not stay zero under training: prune them during `fit` with a callback instead.

    Args:
        model: a functional or Sequential Keras model (plain, or from `tfprune.prunable`).
        method: `"l1"`, `"l2"`, `"bn_scale"`, `"taylor"`, `"random"`, `"camp_hive"`,
            `"sosp_h"` or `"rd"`; or a configured pruning callback (e.g.
            `tfprune.RDPrune(...)`), whose `report` and `events` can be read afterwards.
        target: a `tfprune.Target` (with a method name; a callback has its own).
        data: calibration data, `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches,
            for the methods that need it (`taylor`, `camp_hive`, `sosp_h`, `rd`).
        shrink: return the physically smaller model (True) or the masked one (False).
        loss: the loss for methods that need gradients or curvature, when `model` is not
            compiled with one (the compiled loss is used otherwise).
        verbose: 0 silent, 1 the method's progress and reports.
        **kwargs: the method's own arguments (e.g. `granularity="weight"`, `grid=10`,
            `hessian="exact"`, `min_channels=2`).

    Returns:
        A new, uncompiled `keras.Model`.

    Raises:
        InvalidPruningArgumentError: an unknown method, or a callback given with `target`,
            `data` or method arguments (configure the callback instead).
        MissingLossError: a method that needs gradients on a model without a loss.
        UnsupportedModelError: a subclassed model.
        And the method's own errors (a target that cannot be met, missing calibration data).

    Example:

    ```python
    import keras, numpy as np, tfprune
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=8)
    x = np.random.rand(64, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 10, 64)
    small = tfprune.prune(model, "sosp_h", tfprune.Target(flops=0.5), (x, y),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    small.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    small.fit(x, y, epochs=1, verbose=0)                     # fine-tune
    ```
    """
    if isinstance(method, PruningCallback):
        given = [k for k, v in (("target", target), ("data", data)) if v is not None]
        if given or kwargs:
            raise InvalidPruningArgumentError(
                f"prune() got a configured {type(method).__name__} and also "
                f"{', '.join(given + sorted(kwargs))}: configure the callback itself (its "
                "target, calibration_data and options)")
        callback = method
    elif isinstance(method, str):
        if method != "rd":  # RDPrune's events are its rounds
            kwargs.setdefault("schedule", OneShot(0))
        if data is not None or method in ("sosp_h", "rd", "camp_hive"):
            kwargs["calibration_data"] = data
        callback = _method(method)(target, verbose=verbose, **kwargs)
    else:
        raise InvalidPruningArgumentError(
            f"method must be one of {', '.join(map(repr, METHODS))} or a configured pruning "
            f"callback; received {method!r}")

    copy = _copy(model)
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None and callback.criterion.requires_calibration_data:
        raise MissingLossError(
            f"{type(callback).__name__} with {callback.criterion!r} needs gradients, and model "
            f"{model.name!r} is not compiled with a loss: pass loss= (e.g. "
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True))")
    # The optimizer is never stepped: the callback only needs one to exist.
    copy.compile(optimizer=keras.optimizers.SGD(), loss=loss)
    steps = _event_steps(callback.schedule)
    callback.set_model(copy)
    callback.set_params({"epochs": 1, "steps": steps[-1] + 1, "verbose": 0})
    callback.on_train_begin()
    try:
        for step in steps:
            copy.optimizer.iterations.assign(step)
            callback.on_train_batch_begin(0)
    finally:
        callback.on_train_end()
    if shrink:
        from tfprune.keras.stripping import strip

        return strip(copy)
    return _copy(copy)
