"""`CampHiVe`: curvature-adaptive pruning with cyclic pair merging (Uddin et al., ICMLA 2025)."""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, Optional

import keras
import numpy as np

from tfprune.allocation.adaptive import AdaptiveThresholds
from tfprune.criteria.base import CHANNEL
from tfprune.criteria.camp_hive import CACHE_KEY, CampHiVeSaliency
from tfprune.graph.paths import SEP, iter_layers
from tfprune.keras.callback import SCORES, FoldRecord, PruningCallback
from tfprune.keras.targets import Target
from tfprune.merging import merge_weights, unsupported_reason
from tfprune.merging.pairing import REGRESSION, check_rule
from tfprune.errors import InvalidPruningArgumentError


@dataclasses.dataclass
class CampHiVeRecord:
    """What CAMP-HiVe measured and did at one pruning event.

    Attributes:
        step: the optimizer step of the event.
        curvature: `{pool: lambda_l}`, the top eigenvalue of each pool's diagonal Hessian
            block (pools: group ids, or `"layer/weight"` names of kernels); empty for
            `beta = 0`.
        thresholds: `{pool: tau_l}`, each pool's saliency threshold (empty when nothing new
            was removed).
        tau: the global threshold `tau`, or None.
        top_eigenvalues: the global top eigenvalues (`diagonal="lowrank"` / `"both"`).
        trace: Hutchinson's estimate of the trace (`"hutchinson"` / `"both"`), or None.
        folded: removed units folded into partners (a channel per consumer it reached).
        error_removal: the folded consumers' output error on the calibration data with plain
            removal (sum of squares), or None (nothing folded, or `merge_rule="half"`).
        error_merged: the same error after folding, or None.
        skipped: `{layer: why nothing was folded into it}`.
        seconds: wall time per phase (`eigenpairs`, `blocks`, `diagonal`, `merge`, `total`).
    """

    step: int
    curvature: Dict
    thresholds: Dict
    tau: Optional[float]
    top_eigenvalues: np.ndarray
    trace: Optional[float]
    folded: int = 0
    error_removal: Optional[float] = None
    error_merged: Optional[float] = None
    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)


class CampHiVe(PruningCallback):
    """CAMP-HiVe: second-order saliency, curvature-adaptive thresholds, cyclic pair merging.

    tfprune's documented reconstruction of Uddin, Ghanta, Seymour and Baidya (arXiv
    2511.06265, ICMLA 2025); see `docs/methods/camp_hive.md`. At every event of the schedule:

    1. curvature on the calibration data (`tfprune.curvature`): the top eigenvalue of each
       pool's diagonal Hessian block by block power iteration (pools: channel groups, or
       kernels), the Hessian diagonal (Hutchinson, the top-k eigenpairs, or both), and the
       gradient;
    2. saliency `|g w| + 1/2 H_ii w^2` per weight, summed over a channel's weights (a
       negative curvature term counts as zero)
       (`tfprune.criteria.camp_hive.CampHiVeSaliency`);
    3. a unit is removed when its saliency is below `tau_l = tau (mean_lambda/lambda_l)^beta`,
       `tau` the smallest threshold that meets the schedule's current target (FLOPs, params,
       bytes or sparsity) exactly, to within one unit of one pool
       (`tfprune.allocation.adaptive.AdaptiveThresholds`);
    4. each removed unit is folded into a kept partner, the least salient removed unit with
       the most salient kept one, cycling (`tfprune.merging`): its consumers' input weights
       (channels) or its output unit's partner weight (single weights) take a least-squares
       multiple of it, fitted on the calibration activations, so that the consumers'
       outputs change as little as possible;
    5. the masks are set and enforced after every optimizer step until the next event.

    An event whose target the masks already meet measures nothing. Each event leaves a
    `CampHiVeRecord` in `records` (curvature, thresholds, folds, timings), and
    `summary_histograms` gives `PruningSummaries` the per-pool curvature and thresholds.

    Args:
        target: a `tfprune.Target` (FLOPs, params, bytes or sparsity; only sparsity for
            `granularity="weight"`).
        schedule: a pruning schedule; CAMP-HiVe is iterative, e.g.
            `tfprune.PolynomialDecay(begin_step=0, end_step=..., frequency=...)`
            (default `OneShot(0)`).
        calibration_data: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches, without
            augmentation; 128 to 256 training samples (its cost grows with its size).
        granularity: `"channel"` (structured: the model gets smaller) or `"weight"`.
        merge: fold removed units into partners (False: plain removal).
        merge_rule: `"least_squares"` (fitted fold into one partner), `"half"` (the
            prototype's `w_j += w_i / 2`, partners by position) or, for channels,
            `"regression"` (each removed channel's activation regressed on every kept
            channel of its group, folded into all of them; `tfprune.merging.channels`).
        beta: strength of the curvature-adaptive thresholds, `>= 0`; 0 (the default) is one
            global threshold (and skips the block curvature). On ResNet-8 a group's block
            eigenvalue was lowest in the widest, most redundant group, and `beta > 0` emptied
            it (`docs/methods/camp_hive.md`): use it with a `min_density`.
        diagonal: `H_ii` from `"hutchinson"`, `"lowrank"` (top-k eigenpairs) or `"both"`;
            or `"gates"` (channels): instead of a diagonal over weights, the exact
            Gauss-Newton curvature of removing each channel, `|dL/ds| + 1/2 G_ss` along a
            gate `s` on the channel's input slices (`tfprune.curvature.gates`;
            deterministic, one backward pass per model output and calibration batch).
        hessian: `"exact"` or `"gauss_newton"` (positive semi-definite).
        power_iters: most products of each power iteration.
        hutchinson_samples: Rademacher vectors of the Hutchinson estimate.
        top_k: global eigenpairs for `diagonal="lowrank"` / `"both"`.
        per_unit_cost: compare saliency per FLOP (or param, byte: the target's budget that
            binds) removed with the thresholds.
        normalize: `"mean"` (default) divides each pool's saliencies by their mean before
            the thresholds apply, so a unit is judged against its own group (see
            `tfprune.allocation.GlobalRanking`); None compares raw saliencies, which lets
            a wide group of individually weak channels be emptied.
        loss: the loss of the curvature; None uses the model's compiled loss.
        batch_size: samples per batch of the curvature products.
        min_channels: channels every group keeps (`>= 1`).
        min_density: fraction of each group's channels (or kernel's weights) kept.
        verbose: 0 silent; 1 prints each event and the phases of its curvature.
        seed: seed of every random draw (with the event's step: resumed runs agree).
        joint: with `diagonal="gates"`, choose *which* channels a group loses together:
            greedily on the second-order model of removing them at once, from the whole
            Gauss-Newton matrix of the group's gates, so that two channels carrying one
            feature are not both removed for each being cheap alone; *how many* each group
            loses stays what the single saliencies decide
            (`tfprune.criteria.camp_hive.joint_scores`).
        fold_aware: with `diagonal="gates"`, score what removing a channel costs *after* the
            regression fold (`merge_rule="regression"`): the gates scale only the part of the
            channel's activation that the group's other channels cannot predict, so redundant
            channels go first (`tfprune.criteria.camp_hive.CampHiVeSaliency`).

    Raises:
        InvalidPruningArgumentError, InvalidCriterionError: an argument outside what is
            accepted (the message says what is).
        MissingCalibrationDataError: no `calibration_data`.

    Example:

    ```python
    import numpy as np, keras, tfprune
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(8, 16), dense=16)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(256, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 10, 256)
    pruning = tfprune.CampHiVe(tfprune.Target(flops=0.5),
                               tfprune.PolynomialDecay(begin_step=0, end_step=24, frequency=8),
                               calibration_data=(x[:64], y[:64]), verbose=0)
    model.fit(x, y, batch_size=32, epochs=4, callbacks=[pruning], verbose=0)
    small = tfprune.strip(model)
    pruning.records[-1].curvature        # lambda_l per channel group at the last event
    ```
    """

    def __init__(self, target, schedule=None, calibration_data=None,
                 granularity: str = CHANNEL, merge: bool = True,
                 merge_rule: str = "least_squares", beta: float = 0.0,
                 diagonal: str = "hutchinson", hessian: str = "exact", power_iters: int = 3,
                 hutchinson_samples: int = 8, top_k: int = 1, per_unit_cost: bool = False,
                 normalize: Optional[str] = "mean", loss=None, batch_size: int = 128,
                 min_channels: int = 1,
                 min_density: float = 0.0, verbose: int = 1, seed: int = 0,
                 joint: bool = False, fold_aware: bool = False):
        if not isinstance(merge, bool):
            raise InvalidPruningArgumentError(f"merge={merge!r}: expected True or False")
        if not isinstance(per_unit_cost, bool):
            raise InvalidPruningArgumentError(
                f"per_unit_cost={per_unit_cost!r}: expected True or False")
        if diagonal == "gates" and granularity != CHANNEL:
            raise InvalidPruningArgumentError(
                f"diagonal='gates' scores channels; granularity={granularity!r} needs "
                "diagonal='hutchinson', 'lowrank' or 'both'")
        rule = check_rule(merge_rule)
        if merge_rule == REGRESSION and granularity != CHANNEL:
            raise InvalidPruningArgumentError(
                "merge_rule='regression' folds channels; granularity="
                f"{granularity!r} needs merge_rule='least_squares' or 'half'")
        thresholds = AdaptiveThresholds(beta, per_unit_cost=per_unit_cost, normalize=normalize)
        # The engine validates `verbose`; the criterion only needs to know whether to print.
        talk = int(isinstance(verbose, int) and not isinstance(verbose, bool) and verbose > 0)
        criterion = CampHiVeSaliency(diagonal, hessian, hutchinson_samples, power_iters, top_k,
                                     block_curvature=thresholds.beta > 0, loss=loss,
                                     batch_size=batch_size, verbose=talk, joint=joint,
                                     fold_aware=fold_aware)
        super().__init__(criterion, target, schedule, allocation=thresholds,
                         granularity=granularity, calibration_data=calibration_data,
                         min_channels=min_channels, min_density=min_density, verbose=verbose,
                         seed=seed)
        self.merge = merge
        self.merge_rule = rule  # CAMP-HiVe's own fold (channels and weights), not the engine's
        self.beta = thresholds.beta
        self.per_unit_cost = per_unit_cost
        self.normalize = thresholds.normalize
        self.records: List[CampHiVeRecord] = []

    # --- setup ---------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        try:  # a missing or unusable loss is refused before the first step, not at an event
            self.criterion.check(self.subject, None if self.granularity == CHANNEL
                                 else self._kernels().values())
        except Exception:
            self.on_train_end()
            raise

    def _kernels(self) -> Dict[str, object]:
        """`{name: variable}` of the masked kernels (weight granularity)."""
        return dict(zip(self._masks.names, self._masks.variables))

    def _pool_keys(self) -> List:
        """The curvature key of each pool: group ids, or each kernel's layer path."""
        if self.granularity == CHANNEL:
            return [g.id for g in self.groups]
        owner = _owners(self.subject)
        return [owner.get(id(v), (None, None))[0] for v in self._kernels().values()]

    # --- the event -----------------------------------------------------------------------

    def prune(self, step: int):
        keep = self.target.at(self.schedule.progress(step))
        problem = self._problem([np.zeros(r.size) for r in self._removed.values()], keep)
        if problem.meets(problem.removed_counts()):  # nothing to remove: measure nothing
            return self._record(step, keep)
        start = time.perf_counter()
        self._event = None
        event = super().prune(step)
        if self._event is not None:
            self._event.seconds["total"] = time.perf_counter() - start
            self.records.append(self._event)
        return event

    def allocate(self, context, scores, keep) -> Dict:
        estimate = context.cache[CACHE_KEY]
        keys = self._pool_keys()
        curvature = [estimate.block_eigenvalues.get(k) for k in keys]
        self.allocation = AdaptiveThresholds(self.beta, curvature, self.per_unit_cost,
                                             self.normalize)
        removed = super().allocate(context, scores, keep)
        names = list(self._removed) if self.granularity != CHANNEL else keys
        thresholds = self.allocation.thresholds
        self._event = CampHiVeRecord(
            context.step,
            {n: c for n, c in zip(names, curvature) if c is not None},
            {} if thresholds is None else dict(zip(names, thresholds.tolist())),
            self.allocation.tau, estimate.eigenvalues, estimate.trace,
            seconds=dict(estimate.seconds))
        return removed

    def after_selection(self, context, removed) -> None:
        if not self.merge:
            return
        start = time.perf_counter()
        if self.granularity == CHANNEL:
            fold = self._fold_channels(context, removed, self.merge_rule)
        else:
            fold = self._fold_weights(context, removed, context.cache[SCORES])
        record = self._event
        record.folded, record.skipped = fold.folded, fold.skipped
        record.error_removal, record.error_merged = fold.error_removal, fold.error_merged
        record.seconds["merge"] = time.perf_counter() - start
        self._fold = fold

    def _fold_weights(self, context, removed, scores) -> FoldRecord:
        owner = _owners(context.model)
        kernels = self._kernels()
        work, skipped = [], {}
        for (name, flags), s in zip(removed.items(), scores):
            new = flags & ~context.removed[name]
            if not new.any():
                continue
            path, layer = owner.get(id(kernels[name]), (None, None))
            reason = "a layer of a nested model (its activations are not recorded)" \
                if path is None or SEP in path else unsupported_reason(layer)
            if reason is None:
                work.append((path, layer, new, ~flags, s))
            else:
                skipped[name] = reason
        inputs = context.activations(list(dict.fromkeys(w[0] for w in work))) if work else {}
        folds = [merge_weights(layer, new, kept, s, inputs[path], self.merge_rule)
                 for path, layer, new, kept, s in work]
        return FoldRecord.of(sum(f.weights for f in folds), folds, skipped)

    # --- reporting -----------------------------------------------------------------------

    def summary_histograms(self) -> Dict[str, np.ndarray]:
        """The engine's histograms, plus the last event's curvature and thresholds per pool."""
        out = super().summary_histograms()
        if self.records:
            last = self.records[-1]
            if last.curvature:
                out["curvature_per_pool"] = np.array(list(last.curvature.values()))
            if last.thresholds:
                out["threshold_per_pool"] = np.array(list(last.thresholds.values()))
            if len(last.top_eigenvalues):
                out["top_eigenvalues"] = np.asarray(last.top_eigenvalues)
        return out

    def get_config(self):
        criterion = self.criterion.get_config()
        return {
            "target": self.target.get_config(),
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "granularity": self.granularity,
            "merge": self.merge,
            "merge_rule": self.merge_rule,
            "beta": self.beta,
            "diagonal": criterion["diagonal"],
            "joint": criterion["joint"],
            "fold_aware": criterion["fold_aware"],
            "hessian": criterion["hessian"],
            "power_iters": criterion["power_iters"],
            "hutchinson_samples": criterion["hutchinson_samples"],
            "top_k": criterion["top_k"],
            "per_unit_cost": self.per_unit_cost,
            "normalize": self.normalize,
            "loss": criterion["loss"],
            "batch_size": criterion["batch_size"],
            "min_channels": self.min_channels,
            "min_density": self.min_density,
            "verbose": self.verbose,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config, calibration_data=None):
        """A `CampHiVe` from `get_config()`; the calibration data (arrays) is given again."""
        config = dict(config)
        config["target"] = Target.from_config(config["target"])
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        if isinstance(config.get("loss"), dict):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(calibration_data=calibration_data, **config)


def _owners(model) -> Dict[int, tuple]:
    """`{id(variable): (layer path, layer)}` for every variable of a (non-model) layer."""
    out = {}
    for path, layer in iter_layers(model):
        if not isinstance(layer, keras.Model):
            for v in layer.weights:
                out.setdefault(id(v), (path, layer))
    return out
