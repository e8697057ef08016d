"""`RDPrune`: layer-adaptive pruning by rate-distortion optimisation (Xu et al., ICCV 2023)."""

from __future__ import annotations

import dataclasses
import numbers
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfprune.allocation.rd import rd_solve, rd_solve_budgets
from tfprune.allocation.rd_curves import (DISTORTIONS, DistortionCurve, OutputDistortion,
                                          WORST_CASE, distortion_curves)
from tfprune.criteria.base import CHANNEL
from tfprune.errors import InvalidPruningArgumentError, MissingCalibrationDataError
from tfprune.keras.callback import PruningCallback
from tfprune.keras.schedules import OneShot, PruningSchedule
from tfprune.keras.targets import Target


class _Rounds(PruningSchedule):
    """`rounds` events, `round_steps` apart from `begin_step`; round i of n is i/n of the way."""

    def __init__(self, begin_step: int, round_steps: int, rounds: int):
        self.begin_step, self.round_steps, self.rounds = begin_step, round_steps, rounds
        self.end_step = begin_step + (rounds - 1) * round_steps

    def should_prune(self, step):
        offset = int(step) - self.begin_step
        return 0 <= offset <= self.end_step - self.begin_step and offset % self.round_steps == 0

    def progress(self, step):
        offset = int(step) - self.begin_step
        return 0.0 if offset < 0 else min(1.0, (offset // self.round_steps + 1) / self.rounds)

    def get_config(self):
        return {"begin_step": self.begin_step, "round_steps": self.round_steps,
                "rounds": self.rounds}


class _GeometricTarget(Target):
    """A target reached in geometric steps: `progress` p keeps `keep ** p` of each resource."""

    def at(self, progress):
        progress = min(max(float(progress), 0.0), 1.0)
        return {r: k ** progress for r, k in self.keep.items()}


@dataclasses.dataclass(frozen=True)
class RDUnitReport:
    """One unit (channel group or kernel) of an `RDReport`.

    Attributes:
        name: the unit (`group 3 (...)` or `layer/kernel`).
        size: its channels (blocks of a group's granule) or weights.
        removed_before: removed before the event.
        removed: removed after it.
        distortion: the measured output distortion of this unit's pruning alone.
    """

    name: str
    size: int
    removed_before: int
    removed: int
    distortion: float


@dataclasses.dataclass(frozen=True)
class RDReport:
    """What one `RDPrune` event chose, and how well additivity held.

    The allocation minimises the *sum* of the single-unit distortions, which assumes that
    the distortion of pruning several units together is close to that sum. `predicted` is
    that sum for the chosen allocation (each unit's pruning measured alone) and `joint` the
    distortion measured with all of them pruned together.

    Attributes:
        step: the optimizer step of the event.
        units: one `RDUnitReport` per unit.
        curves: the measured `DistortionCurve` of each unit (removed counts, distortion), e.g.
            to plot them.
        predicted: sum of the single-unit distortions of the chosen allocation.
        joint: the measured distortion of the chosen allocation.
        distortion: `"worst_case"` or `"mean"`.
        evaluations: forward passes over the calibration set in the event.
        dp_steps: dynamic programs solved to meet the budget.
        seconds: wall time of the event's allocation.
        weights: with several budgets, the weight of each in the costs of the levels chosen
            (`tfprune.allocation.rd.rd_solve_budgets`); None with one.
    """

    step: int
    units: Tuple[RDUnitReport, ...]
    curves: Tuple[DistortionCurve, ...]
    predicted: float
    joint: float
    distortion: str
    evaluations: int
    dp_steps: int
    seconds: float
    weights: Optional[Dict[str, float]] = None

    @property
    def additivity_error(self) -> float:
        """`(joint - predicted) / joint`: 0 when additivity held exactly."""
        return (self.joint - self.predicted) / self.joint if self.joint else 0.0

    def __str__(self):
        width = max([len(u.name) for u in self.units] + [4])
        lines = [f"{'unit':<{width}}  removed/size  distortion alone"]
        for u in self.units:
            lines.append(f"{u.name:<{width}}  {u.removed:>7}/{u.size:<6}  {u.distortion:.4g}")
        lines.append(f"additivity ({self.distortion} distortion): sum of single-unit "
                     f"{self.predicted:.4g}, measured jointly {self.joint:.4g} (error "
                     f"{self.additivity_error:+.1%}); {self.evaluations} forward passes, "
                     f"{self.dp_steps} dynamic programs, {self.seconds:.1f} s")
        if self.weights:
            mix = ", ".join(f"{w:.3g} {r}" for r, w in self.weights.items())
            lines.append(f"levels costed by {mix} (each as a fraction of its budget)")
        return "\n".join(lines)


def _grid(grid) -> np.ndarray:
    if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
        if grid < 2:
            raise InvalidPruningArgumentError(f"RDPrune(grid={grid}): expected at least 2 levels")
        return np.arange(1, grid + 1) / grid
    try:
        values = np.asarray(grid, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if not values.size or not np.all((values > 0) & (values <= 1)):
        raise InvalidPruningArgumentError(
            f"RDPrune(grid={grid!r}): expected a number of levels (an integer >= 2) or a "
            "sequence of sparsities in (0, 1] (fractions of a unit removed)")
    return np.unique(values)


def _positive(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InvalidPruningArgumentError(f"RDPrune({name}={value!r}): expected an integer >= "
                                          f"{low}")
    return int(value)


class RDPrune(PruningCallback):
    """Layer-adaptive pruning: per-unit distortion curves, dynamic programming, exact budget.

    At each event, for every unit (a channel group at `granularity="channel"`, a kernel at
    `"weight"`) and every level of a sparsity grid, the unit alone is pruned (its
    lowest-ranked channels by `criterion`, L1 of the producing kernels by default; or its
    smallest weights) and the network is run on the calibration data with BatchNormalization
    in inference mode. The output distortion against the current network (the worst case
    over samples of the per-sample mean squared error of the logits, or the mean) makes one
    rate-distortion curve per unit. The curves are interpolated between grid levels and
    `tfprune.allocation.rd.rd_solve` chooses each unit's level to minimise the summed
    distortion under the target: each level's cost comes from the `CostModel` (FLOPs,
    params or weight bytes of the model with that unit pruned), and since structured costs
    are not additive (a convolution's FLOPs depend on both its input and output groups) the
    dynamic program's budget is bisected until the true cost meets the target, then single
    units are put back while it still holds. The target is met exactly (to within one unit)
    and every unit keeps its minimum (`min_channels`, `min_density`). With several budgets
    (`Target(flops=..., params=...)`) all hold: each budget's cost is counted as a fraction
    of it, the levels are costed by mixtures of them (`mixtures + 1` weightings with two,
    each budget alone among them) and the allocation of least predicted distortion is kept
    (`tfprune.allocation.rd.rd_solve_budgets`), on the same curves.

    Every variant is one forward pass over the calibration set through one compiled function
    that takes the masks as inputs (no retracing per level), with a progress bar
    (`verbose=1`). After each event `report` holds an `RDReport`: the sum of single-unit
    distortions against the measured joint distortion of the chosen allocation.

    With `rounds=t > 1` the target is reached in `t` geometric steps (round `i` keeps
    `keep ** (i / t)` of the budget; the paper's pace, each round keeping 80% of the
    previous, is `t = log(keep) / log(0.8)`), `round_steps` optimizer steps apart, so that
    training recovers between rounds when used as a callback.

    Args:
        target: a `tfprune.Target` (`Target(sparsity=...)` at weight granularity).
        calibration_data: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches (the
            paper uses 1,024 training images, no augmentation); read once per `fit`.
        granularity: `"channel"` (channel groups: the model gets smaller) or `"weight"`.
        grid: the sparsity levels measured per unit: a number of evenly spaced levels
            (20: 5%, 10%, ..., 100% of the unit, capped at its minimum) or a sequence of
            sparsities in (0, 1].
        distortion: `"worst_case"` (the paper's) or `"mean"` over calibration samples.
        min_density: fraction of each group's channels (or kernel's weights) kept.
        rounds: number of pruning rounds (>= 1).
        round_steps: optimizer steps between rounds.
        begin_step: the optimizer step of the first round.
        criterion: the ranking inside a unit (`"l1"`, `"l2"`, `"taylor"`, `"random"`, or any
            `tfprune.criteria.Criterion`, e.g. SOSP-H's or CAMP-HiVe's saliency).
        levels: the most levels per unit after interpolation (finer levels make the dynamic
            program slower; the final put-back step works at single units anyway).
        batch_size: samples per forward pass for `(x, y)` arrays.
        mixtures: with several budgets, the divisions of the weights given to each
            (`mixtures + 1` bisections of the dynamic program with two budgets).
        **kwargs: `min_channels`, `verbose`, `seed` of `tfprune.PruningCallback`, and its
            `merge_rule` (channels: fold the removed ones into the kept ones).

    Example:

    ```python
    import keras, numpy as np, tfprune
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(64, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 10, 64)
    rd = tfprune.RDPrune(tfprune.Target(flops=0.5), calibration_data=(x[:32], y[:32]),
                         grid=4, verbose=0)
    model.fit(x, y, epochs=1, callbacks=[rd], verbose=0)
    print(rd.report)
    small = tfprune.strip(model)
    ```
    """

    def __init__(self, target, calibration_data, granularity: str = CHANNEL, grid=20,
                 distortion: str = WORST_CASE, min_density: float = 0.0, rounds: int = 1,
                 round_steps: int = 1, begin_step: int = 0, criterion="l1", levels: int = 128,
                 batch_size: int = 128, mixtures: int = 8, **kwargs):
        if calibration_data is None:
            raise MissingCalibrationDataError(
                "RDPrune measures output distortion on calibration data: pass "
                "calibration_data=(x, y) or a tf.data.Dataset of (x, y) batches (the paper "
                "uses 1,024 training images)")
        if distortion not in DISTORTIONS:
            raise InvalidPruningArgumentError(
                f"RDPrune(distortion={distortion!r}): accepted are 'worst_case' and 'mean'")
        self.grid = _grid(grid)
        self.rounds = _positive("rounds", rounds, 1)
        self.round_steps = _positive("round_steps", round_steps, 1)
        self.begin_step = _positive("begin_step", begin_step, 0)
        self.levels = _positive("levels", levels, 2)
        self.mixtures = _positive("mixtures", mixtures, 1)
        self.batch_size = _positive("batch_size", batch_size, 1)
        schedule = OneShot(self.begin_step) if self.rounds == 1 else \
            _Rounds(self.begin_step, self.round_steps, self.rounds)
        super().__init__(criterion, target, schedule, allocation=self._allocate_rd,
                         granularity=granularity, calibration_data=calibration_data,
                         min_density=min_density, **kwargs)
        if self.rounds > 1:
            self.target = _GeometricTarget(**target.get_config())
        self.distortion = distortion
        self.reports: List[RDReport] = []
        self._measure: Optional[OutputDistortion] = None
        self._event_step = 0
        self._event = self._solved = None
        self._keep: Dict[str, float] = {}

    @property
    def report(self) -> Optional[RDReport]:
        """The `RDReport` of the last event that pruned, or None."""
        return self.reports[-1] if self.reports else None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._mask_index = {n: i for i, n in enumerate(self._masks.names)}
        try:  # bad calibration data is refused before the first step
            self._measure = OutputDistortion(self.subject, self._masks.variables,
                                             self.calibration_data, self.distortion,
                                             self.batch_size)
        except Exception:
            self.on_train_end()
            raise

    # --- the allocation ----------------------------------------------------------------

    def allocate(self, context, scores, keep) -> Dict:
        # The curves are measured once per event; with several budgets the levels are
        # costed by mixtures of all of them at once (`rd_solve_budgets`), so the engine's
        # second solve in the budget that binds returns the same allocation.
        self._keep = keep
        try:
            removed = super().allocate(context, scores, keep)
            if self._solved is not None:
                self._report(*self._solved)
        finally:
            self._event = self._solved = None
        return removed

    def _allocate_rd(self, problem) -> List[np.ndarray]:
        already = problem.removed_counts()
        if problem.meets(already):
            return [p.removed.copy() for p in problem.pools]
        problem.check_reachable()
        if self._event is None:
            start = time.perf_counter()
            evaluations = self._measure.evaluations
            base = [self._masks.value(n) for n in self._masks.names]
            self._measure.set_reference(base)
            units = [(pool.name, self._grid_counts(pool, n, top))
                     for pool, n, top in zip(problem.pools, already, problem.max_counts())]
            curves = distortion_curves(
                self._measure, units,
                lambda u, n: self._masks_with({}, base, problem.pools[u], u, n), base,
                self.verbose)
            fine = [np.union1d(c.counts, np.round(np.linspace(
                c.counts[0], c.counts[-1], min(c.counts[-1] - c.counts[0], self.levels) + 1)
            ).astype(np.int64)) for c in curves]
            self._event = (base, curves, fine, evaluations, start)
        base, curves, fine, evaluations, start = self._event
        at = [c.at(f) for c, f in zip(curves, fine)]
        if self.granularity == CHANNEL and len(self._keep) > 1:
            if self._solved is not None:  # the engine's solve again in the binding budget
                return problem.masks(self._solved[4].counts)
            budgets = self._bounds(self._keep)
            solution = rd_solve_budgets(
                problem, fine, at, {c: self._level_costs(problem, fine, c) for c in budgets},
                budgets, mixtures=self.mixtures)
        else:
            solution = rd_solve(problem, fine, at, self._level_costs(problem, fine))
        self._solved = (problem, base, already, curves, solution, evaluations, start)
        return problem.masks(solution.counts)

    def _grid_counts(self, pool, removed: int, top: int) -> np.ndarray:
        counts = np.round(self.grid * pool.scores.size).astype(np.int64)
        return np.unique(np.concatenate([[removed, top], np.clip(counts, removed, top)]))

    def _masks_with(self, masks: Dict[int, np.ndarray], base, pool, u: int,
                    count: int) -> Dict[int, np.ndarray]:
        """`masks` (variable index -> mask, copied from `base` when first changed) with unit
        `u` pruned to `count`: its lowest-ranked units beyond those already removed."""
        removed = pool.removed.copy()
        removed[pool.lowest_free(count - int(pool.removed.sum()))] = True
        if self.granularity == CHANNEL:
            group = self.groups[u]
            channels = np.flatnonzero(np.repeat(removed, group.granule))
            for p in group.params:
                i = self._mask_index[f"{p.layer}/{p.weight}"]
                mask = masks[i] if i in masks else base[i].copy()
                index = [slice(None)] * mask.ndim
                index[p.axis] = p.indices(channels)
                mask[tuple(index)] = 0.0
                masks[i] = mask
        else:
            masks[u] = (~removed).reshape(base[u].shape).astype(base[u].dtype)
        return masks

    def _level_costs(self, problem, fine, resource: Optional[str] = None) -> List[np.ndarray]:
        """Per unit and level, the cost (`resource`, by default the problem's) kept with that
        unit alone at that level."""
        if self.granularity != CHANNEL:
            return [(p.scores.size - f).astype(np.float64) for p, f in zip(problem.pools, fine)]
        resource = resource or problem.resource or self._unit_cost(self.target.keep)
        already = problem.removed_counts()
        out = []
        for u, levels in enumerate(fine):
            counts = np.tile(already, (len(levels), 1))
            counts[:, u] = levels
            full = np.zeros((len(levels), len(self.cost_model.groups)), dtype=np.int64)
            full[:, self._cost_index] = counts * self._granules
            out.append(np.asarray(self.cost_model.evaluate(full)[resource], dtype=np.float64))
        return out

    def _report(self, problem, base, already, curves, solution, evaluations, start):
        singles, joint = [], {}
        for u, (pool, n, before) in enumerate(zip(problem.pools, solution.counts, already)):
            alone = self._masks_with({}, base, pool, u, int(n)) if n > before else {}
            singles.append(self._measure(self._merge(base, alone)) if alone else 0.0)
            if alone:
                self._masks_with(joint, base, pool, u, int(n))
        units = tuple(RDUnitReport(p.name, p.scores.size, int(b), int(n), float(d))
                      for p, b, n, d in zip(problem.pools, already, solution.counts, singles))
        report = RDReport(
            step=self._event_step, units=units, curves=tuple(curves),
            predicted=float(sum(singles)),
            joint=self._measure(self._merge(base, joint)), distortion=self.distortion,
            evaluations=self._measure.evaluations - evaluations, dp_steps=solution.steps,
            seconds=time.perf_counter() - start, weights=solution.weights)
        self.reports.append(report)
        if self.verbose:
            print(report)

    @staticmethod
    def _merge(base: Sequence, changed: Dict[int, np.ndarray]) -> List[np.ndarray]:
        return [changed.get(i, m) for i, m in enumerate(base)]

    def prune(self, step: int):
        self._event_step = int(step)
        return super().prune(step)

    def get_config(self):
        config = {k: v for k, v in super().get_config().items()
                  if k not in ("schedule", "allocation")}
        config.update(grid=self.grid.tolist(), distortion=self.distortion, rounds=self.rounds,
                      round_steps=self.round_steps, begin_step=self.begin_step,
                      levels=self.levels, batch_size=self.batch_size, mixtures=self.mixtures)
        return config
