"""`PruningCallback`: the engine every pruning method runs on, inside an ordinary `fit`.

At each event of its schedule (before the optimizer step `model.optimizer.iterations`), the
callback:

1. builds a `tfprune.criteria.ScoringContext` (model, groups, cost model, calibration data,
   lazy gradients) and calls `criterion.prepare(context)`;
2. scores every unit (`score(context)`: one score per channel of each prunable group, or
   one per weight of each prunable kernel);
3. asks the allocation which units to remove so that the schedule's current target holds,
   with the units removed before kept removed (masks are monotone) and each group/kernel
   keeping its minimum (`allocate(context, scores, keep)`);
4. calls `after_selection(context, removed)`, where a method may edit weights before the
   masks apply: with `merge_rule` set (channel granularity), the engine folds each newly
   removed channel into the kept ones (`tfprune.merging`) so that its consumers' outputs
   change as little as possible;
5. sets the masks and zeroes the masked weights and optimizer slots.

Between events the masks are enforced after every optimizer step (see `tfprune.keras.masks`).
Second-order methods extend it by subclassing: a criterion with a `prepare` that computes
curvature, an allocation that reads it from `context.cache`, an `after_selection` that merges
units, and `summary_histograms` to report curvature to `PruningSummaries`.

Subclasses (the methods) may also use the engine's state: `groups` and `cost_model` (channel
granularity), `_removed` (`{group id or variable name: bool array}` of removed units), `_masks`
(the `MaskSet`: `names`, `variables`, `value(name)`), `_problem(scores, keep)` (the allocation
problem of an event), `_counts(unit_counts)` (a per-pool count vector as the cost model's
channel counts; `_cost_index` and `_granules` map pools to cost-model groups),
`_fold_channels(context, removed, rule)` (the engine's channel fold, returning a `FoldRecord`)
and `_record(step, keep, skipped=None, fold=None)` (append a `PruningEvent`).

The callback keeps no state of its own that a resumed run would need: the step is the
optimizer's `iterations`, the masks are the zeros in the model (or the masks saved in its
`PruningWrapper`s), and any randomness of an event is drawn from `(seed, step)`. An
interrupted run that is resumed from a saved model or `keras.callbacks.BackupAndRestore` ends
with the masks of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
import weakref
from typing import Dict, List, Optional

import keras
import numpy as np

from tfprune import allocation as allocation_lib
from tfprune import criteria as criteria_lib
from tfprune.criteria.base import CHANNEL, WEIGHT
from tfprune.criteria.context import ScoringContext, check_calibration_data, loss_and_gradients
from tfprune.errors import (InvalidCriterionError, InvalidPruningArgumentError,
                            InvalidScheduleError, InvalidTargetError,
                            MissingCalibrationDataError, NonFiniteError, NothingToPruneError)
from tfprune.graph.paths import find_variable, iter_layers
from tfprune.keras.distill import pruned_model
from tfprune.keras.masks import MaskSet
from tfprune.keras.schedules import OneShot, PruningSchedule
from tfprune.keras.targets import Target
from tfprune.keras.wrapper import PruningWrapper, is_wrapped, record_target, saved_target, unwrap
from tfprune.merging import consumers_to_fold, cyclic_partners, merge_channels
from tfprune.merging.pairing import HALF, LEAST_SQUARES, check_rule

GRANULARITIES = (CHANNEL, WEIGHT)
#: Variable names pruned at weight granularity (plus a layer's `get_prunable_weights()`).
KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")
#: The cost each budget bounds at channel granularity (sparsity = fraction of params removed).
_COST_OF = {"flops": "flops", "params": "params", "weight_bytes": "weight_bytes",
            "sparsity": "params"}

#: `ScoringContext.cache` key of an event's scores (one array per pool), for `after_selection`.
SCORES = "pruning/scores"

_ACTIVE = weakref.WeakKeyDictionary()


def active_pruning(model) -> Optional["PruningCallback"]:
    """The `PruningCallback` training `model` now (the last one to start), or None."""
    return _ACTIVE.get(model)


@dataclasses.dataclass
class FoldRecord:
    """What folding the removed channels into kept ones did at one pruning event.

    Attributes:
        folded: removed channels folded (a channel per consumer it reached).
        error_removal: the folded consumers' output error on the calibration data with plain
            removal (sum of squares), or None (nothing folded, or `merge_rule="half"`).
        error_merged: the same error after folding, or None.
        skipped: `{layer: why nothing was folded into it}`.
    """

    folded: int = 0
    error_removal: Optional[float] = None
    error_merged: Optional[float] = None
    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, folded: int, folds, skipped: Dict[str, str]) -> "FoldRecord":
        """The record of `folds` (reports with `error_removal` / `error_merged`, None where
        not measured): their errors summed."""
        return cls(folded, _sum(f.error_removal for f in folds),
                   _sum(f.error_merged for f in folds), skipped)

    def describe(self) -> str:
        """One line: what was folded and how the consumers' error compares with removal."""
        saved = ""
        if self.error_removal:
            change = self.error_merged / self.error_removal - 1.0
            saved = f", consumer output error {change:+.0%} vs plain removal"
        skipped = f"; not folded into {len(self.skipped)} layer(s): " + ", ".join(
            sorted(self.skipped)) if self.skipped else ""
        return f"folded {self.folded} removed unit(s) into kept ones{saved}{skipped}"


def _sum(values):
    values = [v for v in values if v is not None]
    return float(sum(values)) if values else None


@dataclasses.dataclass
class PruningEvent:
    """What happened at one pruning event.

    Attributes:
        step: the optimizer step of the event.
        keep: the fractions to keep that the schedule asked for (`Target.at`).
        achieved: `flops_kept`, `params_kept`, `sparsity` (and `weight_bytes_kept`) after it.
        removed: units removed in total, per group id (channels) or variable name (weights).
        skipped: why the event left the masks as they were, or None.
        fold: what folding the removed channels did (`merge_rule` set), or None.
    """

    step: int
    keep: Dict[str, float]
    achieved: Dict[str, float]
    removed: Dict
    skipped: Optional[str] = None
    fold: Optional[FoldRecord] = None


def _fraction(name, value, low, high, high_open=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            low <= value < high if high_open else low <= value <= high):
        bracket = ")" if high_open else "]"
        raise InvalidPruningArgumentError(
            f"{name}={value!r}: expected a number in [{low}, {high}{bracket}")
    return float(value)


def _integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InvalidPruningArgumentError(f"{name}={value!r}: expected an integer >= {low}")
    return int(value)


def prunable_weights(model) -> Dict[str, object]:
    """`{"layer/weight": variable}` of the kernels pruned at weight granularity.

    Kernels are the variables named `kernel`, `depthwise_kernel` or `pointwise_kernel` of
    every layer (inside `PruningWrapper`s too); a layer with a `get_prunable_weights()` method
    (tfmot's `PrunableLayer` protocol) decides for itself.
    """
    out = {}
    for path, layer in iter_layers(model):
        if isinstance(layer, keras.Model):
            continue
        inner = layer.layer if isinstance(layer, PruningWrapper) else layer
        if hasattr(inner, "get_prunable_weights"):
            weights = list(inner.get_prunable_weights())
        else:
            weights = [v for v in inner.trainable_weights if v.name in KERNELS]
        for v in weights:
            name = f"{path}/{v.name}"
            out[name if name not in out else f"{path}/{v.path}"] = v
    return out


class PruningCallback(keras.callbacks.Callback):
    """Prunes a model during `fit`: score, allocate to meet the target, mask, enforce.

    Works on an unmodified compiled model (masks are enforced as variable constraints after
    every optimizer step, optimizer slots included) and on a model from `tfprune.prunable`
    (masks live in its `PruningWrapper`s). Masks are monotone: a unit removed stays removed.

    At channel granularity the units are the channels of the prunable groups of
    `tfprune.channel_groups`, and budgets are counted with `tfprune.profile.CostModel` on the
    model as `tfprune.strip` will shrink it; the allocation meets the target to within one
    channel of one group (`"global"` ranking). At weight granularity the units are the
    weights of the kernels, and the target is a `sparsity`.

    Batch and epoch `logs` get `pruning/flops_kept`, `pruning/params_kept` and
    `pruning/sparsity` (plus `pruning/weight_bytes_kept` for a bytes budget), so they show in
    the progress bar and in `History`. `verbose=1` prints one line per event.

    Bad input is refused in the constructor where possible, else in `on_train_begin`,
    before any step: a model with nothing to prune (`NothingToPruneError`), a target the
    minimums make unreachable (`InvalidTargetError`, saying what is reachable), a criterion
    that needs calibration data without it (`MissingCalibrationDataError`). An event at which
    the last training loss or a calibration gradient is not finite is skipped with a warning.

    Args:
        criterion: a `tfprune.criteria.Criterion` or a name (`"l1"`, `"l2"`, `"bn_scale"`,
            `"taylor"`, `"random"`).
        target: a `tfprune.Target`.
        schedule: a `tfprune.PolynomialDecay`, `ConstantSparsity` or `OneShot`
            (default: `OneShot(0)`, prune before the first step, then fine-tune).
        allocation: `"normalized"` (rank all units together, each group's scores over
            their mean), `"global"` (rank the scores as they are), `"per_unit_cost"` (rank by
            score per FLOP/param/byte saved), `"uniform"` (same fraction everywhere, tfmot's
            way), or a callable taking a `tfprune.allocation.AllocationProblem`. None (the
            default): `"normalized"` at channel granularity, where raw scores of groups of
            different widths and depths are on different scales and a plain global ranking
            empties whole groups (`docs/concepts/targets_and_schedules.md`), `"global"` at
            weight granularity (global magnitude pruning).
        granularity: `"channel"` (structured: the model gets smaller) or `"weight"`.
        calibration_data: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches, for
            criteria that need data (gradients, curvature).
        min_channels: channels every group keeps (channel granularity, `>= 1`).
        min_density: fraction of each group's channels, or of each kernel's weights, kept.
        verbose: 0 silent, 1 one line per pruning event.
        seed: seed of every random draw (with the event's step).
        merge_rule: channel granularity: fold each newly removed channel into the kept
            channels of its group instead of only removing it, fitted on the calibration
            activations at its consumers' inputs (`tfprune.merging.merge_channels`; needs
            `calibration_data`): `"regression"` (its activation regressed on every kept
            channel of the group), `"least_squares"` (one partner each, the least
            salient removed with the most salient kept, cycling) or `"half"`
            (`w_q += w_p / 2`). None (the default): plain removal. Each event's
            `PruningEvent.fold` says what was folded.

    Example:

    ```python
    import tfprune
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    pruning = tfprune.PruningCallback(
        "l1", tfprune.Target(flops=0.5),
        tfprune.PolynomialDecay(begin_step=0, end_step=1000, frequency=100))
    model.fit(x, y, epochs=3, callbacks=[pruning])
    small = tfprune.strip(model)
    ```
    """

    def __init__(self, criterion, target, schedule=None, allocation=None,
                 granularity: str = CHANNEL, calibration_data=None, min_channels: int = 1,
                 min_density: float = 0.0, verbose: int = 1, seed: int = 0,
                 merge_rule: Optional[str] = None):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise InvalidPruningArgumentError(
                f"granularity={granularity!r}: accepted are 'channel' (remove whole channels: "
                "the model gets smaller) and 'weight' (zero single weights)")
        self.criterion = criteria_lib.get(criterion)
        if granularity not in self.criterion.granularities:
            raise InvalidCriterionError(
                f"{self.criterion!r} cannot score at granularity={granularity!r}; it supports "
                f"{', '.join(self.criterion.granularities)}")
        if not isinstance(target, Target):
            raise InvalidTargetError(
                f"target must be a tfprune.Target, e.g. tfprune.Target(flops=0.5); received "
                f"{target!r}")
        if granularity == WEIGHT and set(target.keep) != {"sparsity"}:
            raise InvalidTargetError(
                f"{target!r} with granularity='weight': single zero weights make no dense "
                "kernel cheaper, so the weight granularity only takes Target(sparsity=...); "
                "use granularity='channel' for FLOPs, params or bytes budgets")
        schedule = OneShot(0) if schedule is None else schedule
        if not isinstance(schedule, PruningSchedule):
            raise InvalidScheduleError(
                "schedule must be a tfprune.PolynomialDecay, ConstantSparsity or OneShot (or a "
                f"tfprune.keras.schedules.PruningSchedule); received {schedule!r}")
        check_calibration_data(calibration_data)
        if merge_rule is not None:
            check_rule(merge_rule)
            if granularity != CHANNEL:
                raise InvalidPruningArgumentError(
                    f"merge_rule={merge_rule!r} folds channels; granularity={granularity!r} "
                    "takes merge_rule=None (tfprune.CampHiVe folds single weights)")
            if calibration_data is None:
                raise MissingCalibrationDataError(
                    f"merge_rule={merge_rule!r} fits the fold on the consumers' inputs: pass "
                    "calibration_data=(x, y) or a tf.data.Dataset of (x, y) batches")
        if self.criterion.requires_calibration_data and calibration_data is None:
            raise MissingCalibrationDataError(
                f"{self.criterion!r} needs calibration data: pass calibration_data=(x, y) or a "
                "tf.data.Dataset of (x, y) batches (a few hundred training samples are enough)")
        self.target = target
        self.schedule = schedule
        if allocation is None:
            allocation = "normalized" if granularity == CHANNEL else "global"
        self.allocation = allocation_lib.get(allocation)
        self.granularity = granularity
        self.calibration_data = calibration_data
        self.min_channels = _integer("min_channels", min_channels, 1)
        self.min_density = _fraction("min_density", min_density, 0.0, 1.0)
        self.verbose = _integer("verbose", verbose, 0)
        self.seed = _integer("seed", seed, 0)
        self.merge_rule = merge_rule
        self._fold: Optional[FoldRecord] = None
        self.events: List[PruningEvent] = []
        self._masks = None

    # --- setup -------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        if not model.optimizer.built:  # its slots must exist to be masked
            with model.distribute_strategy.scope():
                model.optimizer.build(model.trainable_variables)
        subject = self.subject
        if self.granularity == CHANNEL:
            self._setup_channels(subject, model)
        else:
            self._setup_weights(subject, model)
        self._gradient_fn = loss_and_gradients(subject) if self.calibration_data is not None \
            else None
        self._check_reachable()
        self._masks.attach()
        self._synced = False
        self._last_loss = 0.0
        self._logs = {}
        _ACTIVE[model] = self
        self._warn_if_schedule_too_long()
        self._record_target(subject)

    @property
    def subject(self) -> keras.Model:
        """The model being pruned: the model of `fit`, or the student of a `tfprune.Distiller`."""
        return pruned_model(self.model)

    def _record_target(self, model):
        """Keeps the target in a wrapped model's file; a resumed run toward another one warns."""
        if not is_wrapped(model):
            return
        saved = saved_target(model)
        if saved is not None and saved != self.target:
            warnings.warn(f"{type(self).__name__}: this model was pruned toward {saved!r}; this "
                          f"run prunes it toward {self.target!r} and records the new target")
        record_target(model, self.target)

    def _setup_channels(self, model, fitted):
        from tfprune.graph import channel_groups
        from tfprune.profile import CostModel

        self._graph_model = unwrap(model) if is_wrapped(model) else model
        groups = channel_groups(self._graph_model)
        self.groups = [g for g in groups if g.prunable]
        if not self.groups:
            reasons = "; ".join(g.describe() for g in groups[:4]) or "no channel group"
            raise NothingToPruneError(
                f"model {model.name!r} has no prunable channel group ({reasons}); prune single "
                "weights with granularity='weight', or see docs/concepts/channel_groups.md")
        self.cost_model = CostModel(self._graph_model, groups)
        position = {g.id: i for i, g in enumerate(groups)}
        self._cost_index = np.array([position[g.id] for g in self.groups], dtype=np.int64)
        self._granules = np.array([g.granule for g in self.groups], dtype=np.int64)
        variables = {}
        for g in self.groups:
            for p in g.params:
                variables.setdefault(f"{p.layer}/{p.weight}",
                                     find_variable(model, p.layer, p.weight))
        self._masks = MaskSet(fitted, variables)
        self._removed = {g.id: np.zeros(g.size, bool) for g in self.groups}
        self._dense_params = self.cost_model.dense["params"]

    def _setup_weights(self, model, fitted):
        variables = prunable_weights(model)
        if not variables:
            raise NothingToPruneError(
                f"model {model.name!r} has no kernel to prune (variables named "
                f"{', '.join(KERNELS)}, or a layer's get_prunable_weights())")
        self.groups, self.cost_model = [], None
        self._masks = MaskSet(fitted, variables)
        self._removed = {n: np.zeros(v.shape, bool) for n, v in zip(self._masks.names,
                                                                  self._masks.variables)}
        masks = {id(m) for m, owned in zip(self._masks.masks, self._masks.owned) if not owned}
        self._dense_params = sum(math.prod(v.shape) for v in model.weights if id(v) not in masks)

    def _check_reachable(self):
        problem = self._problem([np.zeros(p.size) for p in self._removed.values()],
                                self.target.keep)
        if problem.meets(problem.max_counts()):
            return
        if self.granularity == CHANNEL:
            limits = f"min_channels={self.min_channels}, min_density={self.min_density}"
            best = self._costs(self._counts(problem.max_counts()))
            best = {r: best["sparsity" if r == "sparsity" else f"{r}_kept"]
                    for r in self.target.keep}
            reachable = ", ".join(f"{r}={v:.4f}" for r, v in best.items())
            raise InvalidTargetError(
                f"{self.target!r} cannot be met: with {limits}, pruning every prunable group to "
                f"its minimum leaves {reachable}; ask for no less, or lower min_channels / "
                "min_density")
        total = sum(p.scores.size for p in problem.pools)
        most = problem.max_counts().sum() / total
        raise InvalidTargetError(
            f"{self.target!r} cannot be met: with min_density={self.min_density} the kernels "
            f"reach at most sparsity={most:.4f}; ask for no more, or lower min_density")

    def _warn_if_schedule_too_long(self):
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        end = self.schedule.end_step
        if steps and epochs and end is not None:
            last = self._step() + steps * epochs - 1
            if end > last:
                warnings.warn(f"the pruning schedule ends at step {end}, after the last step of "
                              f"this fit ({last}): the target will not be reached in it",
                              stacklevel=2)

    # --- training loop -----------------------------------------------------------------

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_begin(self, batch, logs=None):
        if not self._synced:
            self._sync_from_model()
            self._synced = True
        step = self._step()
        events = self.schedule.events(step, step + int(getattr(self.model,
                                                               "steps_per_execution", 1) or 1))
        if events:
            self.prune(events[-1])

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            if "loss" in logs:
                self._last_loss = float(logs["loss"])
            logs.update(self._logs)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._logs)

    def on_train_end(self, logs=None):
        if self._masks is not None:
            self._masks.detach()
        if _ACTIVE.get(self.model) is self:
            del _ACTIVE[self.model]

    def _sync_from_model(self):
        """Adopts units that are already zero (a resumed run, a model pruned before)."""
        if self.granularity == CHANNEL:
            from tfprune.shrink import zeroed_channels

            subject = self.subject
            zero = zeroed_channels(unwrap(subject) if is_wrapped(subject) else subject,
                                   self.groups)
            for g in self.groups:
                self._removed[g.id][np.asarray(zero.get(g.id, []), dtype=np.int64)] = True
        else:
            for name, v, m in zip(self._masks.names, self._masks.variables, self._masks.masks):
                value = v.numpy() * m.numpy()
                self._removed[name] |= value == 0
        self._set_masks(self._removed)

    # --- a pruning event ---------------------------------------------------------------

    def prune(self, step: int) -> PruningEvent:
        """Runs the pruning event of `step` now (the callback calls it on schedule)."""
        keep = self.target.at(self.schedule.progress(step))
        context = ScoringContext(
            self.subject, step=step, seed=self.seed, granularity=self.granularity,
            groups=self.groups, cost_model=self.cost_model,
            calibration_data=self.calibration_data,
            removed=self.removed,
            names={id(v): n for n, v in zip(self._masks.names, self._masks.variables)},
            gradient_fn=self._gradient_fn)
        try:
            if not math.isfinite(self._last_loss):
                raise NonFiniteError(f"the training loss is {self._last_loss}")
            self.criterion.prepare(context)
            scores = self.score(context)
            bad = [k for k, s in zip(self._removed, scores) if np.any(np.isnan(s) | (s == -np.inf))]
            if bad:
                raise NonFiniteError(f"{self.criterion!r} gave non-finite scores for {bad[:3]}")
        except NonFiniteError as e:
            warnings.warn(f"pruning event at step {step} skipped, masks unchanged: {e}",
                          stacklevel=2)
            return self._record(step, keep, skipped=str(e))
        context.cache[SCORES] = scores
        removed = self.allocate(context, scores, keep)
        self._fold = None
        self.after_selection(context, removed)
        self._removed = removed
        self._set_masks(removed)
        return self._record(step, keep, fold=self._fold)

    def score(self, context) -> List[np.ndarray]:
        """One score array per unit pool: per prunable group (channels) or kernel (weights)."""
        if self.granularity == CHANNEL:
            return [np.asarray(self.criterion(g, context), dtype=np.float64).reshape(g.size)
                    for g in self.groups]
        return [np.asarray(self.criterion(v, context), dtype=np.float64).reshape(v.shape)
                for v in self._masks.variables]

    def allocate(self, context, scores, keep) -> Dict:
        """The removed units after the event: `{group id: bool (size,)}` or `{name: bool mask}`."""
        problem = self._problem(scores, keep)
        flags = self.allocation(problem)
        if self.granularity == CHANNEL and len(keep) > 1:
            # Several budgets: a per-unit-cost ranking counts savings in the one that binds.
            binding = self._binding(flags, keep)
            if self._unit_cost(keep, binding) != self._unit_cost(keep):
                flags = self.allocation(self._problem(scores, keep, binding))
        if self.granularity == CHANNEL:
            return {g.id: np.repeat(f, g.granule) for g, f in zip(self.groups, flags)}
        return {n: f.reshape(r.shape) for (n, r), f in zip(self._removed.items(), flags)}

    def after_selection(self, context, removed: Dict) -> None:
        """Hook: runs after the allocation, before the masks change (e.g. to merge units).

        The engine folds the removed channels into kept ones when `merge_rule` is set; a
        method that overrides it and folds channels itself calls `_fold_channels` and keeps
        its `FoldRecord` in `self._fold`, which the event's `PruningEvent.fold` gets.

        Args:
            context: the event's `ScoringContext` (`context.removed` holds the units removed
                before the event; `context.cache[SCORES]` the event's scores).
            removed: the units removed after it, as returned by `allocate`.
        """
        if self.merge_rule is not None and self.granularity == CHANNEL:
            self._fold = self._fold_channels(context, removed, self.merge_rule)

    def _fold_channels(self, context, removed: Dict, rule: str) -> FoldRecord:
        """Folds the channels this event removes into kept ones of their groups, by `rule`.

        Partners (`"least_squares"`, `"half"`) pair the least salient removed channel with
        the most salient kept one, cycling (`tfprune.merging.cyclic_partners`); with
        `"regression"` they only say which channels to fold. Edits the consumers' kernels and
        biases of the model in place, before the masks zero the removed channels.
        """
        partners = {}
        for group, s in zip(self.groups, context.cache[SCORES]):
            new = removed[group.id] & ~context.removed[group.id]
            if new.any():
                partners[group.id] = cyclic_partners(
                    s, new, ~removed[group.id], rule=HALF if rule == HALF else LEAST_SQUARES)
        paths, skipped = consumers_to_fold(context.model, self.groups, partners)
        report = merge_channels(context.model, self.groups, partners,
                                context.activations(paths) if paths else {}, rule, removed)
        skipped.update(report.skipped)
        return FoldRecord.of(report.channels, report.folds, skipped)

    # --- budgets -----------------------------------------------------------------------

    def _counts(self, unit_counts) -> np.ndarray:
        counts = np.zeros(len(self.cost_model.groups), dtype=np.int64)
        counts[self._cost_index] = np.asarray(unit_counts, dtype=np.int64) * self._granules
        return counts

    def _costs(self, counts) -> Dict[str, float]:
        totals, dense = self.cost_model.evaluate(counts), self.cost_model.dense
        out = {f"{r}_kept": totals[r] / dense[r] if dense[r] else 1.0
               for r in ("flops", "params", "weight_bytes")}
        out["sparsity"] = 1.0 - out["params_kept"]
        return out

    def _unit_cost(self, keep, binding: Optional[str] = None) -> str:
        """The resource whose saving per unit the allocation's `unit_costs` give: `binding`,
        the budget that a first allocation met most tightly, when known; else the target's
        first."""
        return binding or _COST_OF[next(iter(keep))]

    def _binding(self, flags, keep) -> str:
        """The budget of `keep` with the least room left (as a fraction of the dense model)
        once the units flagged in `flags` (one bool array per pool) are removed."""
        totals = self.cost_model.evaluate(self._counts([int(f.sum()) for f in flags]))
        dense = self.cost_model.dense
        room = {c: (b - totals[c]) / max(dense[c], 1e-12) for c, b in self._bounds(keep).items()}
        return min(room, key=room.get)

    def _bounds(self, keep) -> Dict[str, float]:
        """Per cost (`flops`, `params`, `weight_bytes`), the most that `keep` allows."""
        dense = self.cost_model.dense
        return {_COST_OF[r]: k * dense[_COST_OF[r]] for r, k in keep.items()}

    def _problem(self, scores, keep,
                 binding: Optional[str] = None) -> "allocation_lib.AllocationProblem":
        pools = []
        if self.granularity == CHANNEL:
            for g, s in zip(self.groups, scores):
                minimum = max(self.min_channels, math.ceil(self.min_density * g.size - 1e-9))
                minimum = min(g.size, -(-minimum // g.granule) * g.granule)
                pools.append(allocation_lib.Pool(
                    g.describe(), np.asarray(s).reshape(-1, g.granule).sum(axis=1),
                    self._removed[g.id].reshape(-1, g.granule).all(axis=1),
                    (g.size - minimum) // g.granule))
            bounds = self._bounds(keep)

            def meets(unit_counts):
                totals = self.cost_model.evaluate(self._counts(unit_counts))
                return all(totals[c] <= b * (1 + 1e-12) for c, b in bounds.items())

            primary = self._unit_cost(keep, binding)

            def unit_costs(unit_counts):
                saved = self.cost_model.marginal(self._counts(unit_counts))[primary]
                return np.asarray(saved, dtype=np.float64)[self._cost_index] * self._granules

            return allocation_lib.AllocationProblem(pools, meets, unit_costs, primary)
        for (name, removed), s in zip(self._removed.items(), scores):
            size = removed.size
            minimum = max(1, math.ceil(self.min_density * size - 1e-9))
            pools.append(allocation_lib.Pool(name, np.asarray(s).reshape(-1), removed.reshape(-1),
                                             size - minimum))
        total = sum(p.scores.size for p in pools)
        bound = keep["sparsity"] * total

        def meets_sparsity(unit_counts):
            return total - int(np.sum(unit_counts)) <= bound * (1 + 1e-12)

        return allocation_lib.AllocationProblem(pools, meets_sparsity,
                                                lambda unit_counts: np.ones(len(pools)))

    # --- masks and reporting -----------------------------------------------------------

    def _set_masks(self, removed):
        if self.granularity == CHANNEL:
            masks = {n: np.ones(v.shape) for n, v in zip(self._masks.names, self._masks.variables)}
            for g in self.groups:
                channels = np.flatnonzero(removed[g.id])
                if channels.size:
                    for p in g.params:
                        mask = masks[f"{p.layer}/{p.weight}"]
                        index = [slice(None)] * mask.ndim
                        index[p.axis] = p.indices(channels)
                        mask[tuple(index)] = 0.0
        else:
            masks = {n: (~r).astype(np.float64) for n, r in removed.items()}
        self._masks.assign(masks)
        self._logs = {f"pruning/{k}": v for k, v in self.achieved().items()}

    @property
    def removed(self) -> Dict:
        """Units removed now: `{group id: bool (channels,)}` or `{"layer/weight": bool mask}`."""
        return {k: v.copy() for k, v in self._removed.items()}

    def achieved(self) -> Dict[str, float]:
        """`flops_kept`, `params_kept`, `sparsity` (and `weight_bytes_kept`) of the masks now."""
        if self.granularity == CHANNEL:
            costs = self._costs(self._counts([int(r.sum()) // g.granule for g, r in
                                              zip(self.groups, self._removed.values())]))
            out = {k: costs[k] for k in ("flops_kept", "params_kept", "sparsity")}
            if "weight_bytes" in self.target.keep:
                out["weight_bytes_kept"] = costs["weight_bytes_kept"]
            return out
        removed = sum(int(r.sum()) for r in self._removed.values())
        total = sum(r.size for r in self._removed.values())
        return {"flops_kept": 1.0, "params_kept": 1.0 - removed / self._dense_params,
                "sparsity": removed / total}

    def _record(self, step, keep, skipped=None, fold=None) -> PruningEvent:
        event = PruningEvent(step, dict(keep), self.achieved(),
                             {k: int(v.sum()) for k, v in self._removed.items()}, skipped, fold)
        self.events.append(event)
        if self.verbose and not skipped:
            wanted = ", ".join(f"{r}<={k:.3f}" if r != "sparsity" else f"sparsity>={1 - k:.3f}"
                               for r, k in keep.items())
            got = ", ".join(f"{k} {v:.3f}" for k, v in event.achieved.items())
            # Start a new line when a progress bar is being drawn on the current one.
            lead = "\n" if (self.params or {}).get("verbose") == 1 else ""
            print(f"{lead}tfprune: step {step}: {got} (target {wanted})")
            if fold is not None:
                print(f"tfprune: step {step}: {fold.describe()}")
        return event

    def summary_histograms(self) -> Dict[str, np.ndarray]:
        """Per-unit arrays that `PruningSummaries` writes as histograms.

        By default the kept fraction of each group's channels (channel granularity) and the
        sparsity of each masked kernel. Methods add their own (e.g. curvature per layer).
        """
        out = {"sparsity_per_variable": np.array(
            [1.0 - self._masks.value(n).mean() for n in self._masks.names])}
        if self.granularity == CHANNEL:
            out["kept_channels_per_group"] = np.array(
                [1.0 - r.mean() for r in self._removed.values()])
        return out

    def layer_report(self) -> Dict[str, float]:
        """`{"layer/weight": fraction of its entries masked}` for every masked variable."""
        return {n: 1.0 - float(self._masks.value(n).mean()) for n in self._masks.names}

    def get_config(self):
        return {
            "criterion": {"class_name": type(self.criterion).__name__,
                          "config": self.criterion.get_config()},
            "target": self.target.get_config(),
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "allocation": repr(self.allocation),
            "granularity": self.granularity,
            "min_channels": self.min_channels,
            "min_density": self.min_density,
            "verbose": self.verbose,
            "seed": self.seed,
            "merge_rule": self.merge_rule,
        }
