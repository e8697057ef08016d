"""`CampHiVeSaliency`: the second-order loss change of removing a unit, `|g w| + 1/2 H_ii w^2`.

At each pruning event `prepare` measures, on the calibration data, with `tfprune.curvature`:

- the diagonal of the Hessian (or Gauss-Newton matrix), `H_ii`, as asked by `diagonal`:
  `"hutchinson"`, Hutchinson's estimate `mean(z * Hz)` over Rademacher vectors `z`;
  `"lowrank"`, `sum_j lambda_j v_ji^2` over the top `top_k` eigenpairs found by power
  iteration (global norm, deflation); `"both"`, the low-rank part exactly plus Hutchinson's
  estimate of what remains, `mean(z * (Hz - sum_j lambda_j (v_j . z) v_j))` (the same
  Rademacher vectors, so the top directions add no noise); `"gates"` (channels only), not a
  diagonal over weights but the exact Gauss-Newton diagonal in channel-gate coordinates
  (`tfprune.curvature.gates`): each channel's gate scales its input slice at every consumer,
  `s = -1` removes it, and the saliency is `|dL/ds| + 1/2 G_ss` (deterministic; one backward
  pass per model output and calibration batch); with `joint=True` the channels of a group are
  scored together instead (below);
- the top eigenvalue `lambda_l` of each pool's diagonal block (channel group, or layer for
  single weights) by block power iteration, which `tfprune.allocation.adaptive` turns into
  curvature-adaptive thresholds;
- the gradient `g` of the calibration loss (`context.gradient`).

A unit's saliency is the second-order estimate of the loss change of removing it: summed over
its entries (a weight: itself; a channel: every trainable entry of its group, producers' output
slices, normalisation parameters, consumers' input slices, an entry two slices share counted
once), `sum |g_i w_i| + max(1/2 sum H_ii w_i^2, 0)`. A negative curvature term (Hutchinson's
noise, which makes a large share of single diagonal estimates negative, or negative curvature
of the exact Hessian) counts as zero, so that removing a unit is never scored below its
first-order term and scores stay non-negative for ranking per unit of cost; it is clipped after
the sum over the unit's entries, where the estimator's noise has largely averaged out.

**Joint scores** (`diagonal="gates", joint=True`). Channels removed together do not cost the
sum of what each costs alone: two channels that carry the same feature are each cheap to
remove, and expensive to remove both. With the whole Gauss-Newton matrix `G` of a group's
gates, removing a set `M` of its channels costs, to second order,
`q(M) = -sum_{a in M} dL/ds_a + 1/2 sum_{a,b in M} G_ab`. The group's channels are ordered
greedily on that model (`joint_order`): the removed channels first, then at each step the
channel whose removal adds least to `q` given those before it. The group's single saliencies,
sorted, are then handed out along that order (`joint_scores`): the allocation across groups
sees the same values as without `joint` and takes as many channels from each group, and the
channels it takes are the first ones of the joint order.

**Fold-aware scores** (`diagonal="gates", fold_aware=True`). With the regression fold
(`merge_rule="regression"`) a removed channel's consumers keep the kept channels'
least-squares prediction of it, and only the residual is lost. The gates then scale that
residual (regressed on the group's other channels at each consumer, all of them, not only the
kept ones): `|dL/ds| + 1/2 G_ss` is the second-order loss change of removing the channel with
the fold, and a channel that others duplicate scores near zero whatever its magnitude.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Dict, List, Optional

import keras
import numpy as np

from tfprune import curvature
from tfprune.criteria.base import CHANNEL, WEIGHT, Criterion
from tfprune.criteria.sosp import _trainable_slices_by_variable, _union_channel_sum
from tfprune.curvature.data import CalibrationData
from tfprune.criteria.context import model_loss
from tfprune.curvature.losses import resolve_loss
from tfprune.curvature.operator import FORWARD_OVER_REVERSE, HESSIANS, operator_for
from tfprune.curvature import gates
from tfprune.errors import CurvatureError, InvalidCriterionError, NonFiniteError

HUTCHINSON = "hutchinson"
LOWRANK = "lowrank"
BOTH = "both"
GATES = "gates"
DIAGONALS = (HUTCHINSON, LOWRANK, BOTH, GATES)
#: Where `prepare` leaves its `CurvatureEstimate` in `context.cache`.
CACHE_KEY = "camp_hive/curvature"
#: Relative change of a Rayleigh quotient at which power iteration stops early.
POWER_TOL = 1e-3
#: Hutchinson products computed together in one pass over the calibration data. One is the
#: program power iteration compiles too; several share the forward pass, but each extra vector
#: makes the compiled program slower to trace than it saves on a few events (measured on
#: ResNet-8: 4 per pass halve the products' time and add 100 s of tracing on the project CPU).
VECTORS_PER_PASS = 1


@dataclasses.dataclass
class CurvatureEstimate:
    """The curvature measured at one pruning event.

    Attributes:
        diagonal: `{id(variable): estimated H_ii}`, arrays shaped like the variables.
        block_eigenvalues: `{group id or layer path: top eigenvalue of the block}`; empty
            when the thresholds do not use them (`block_curvature=False`).
        eigenvalues: the global top eigenvalues (empty unless `diagonal` uses them).
        trace: Hutchinson's estimate of `tr(H)` over the estimated weights (None for
            `"lowrank"`).
        seconds: wall time of each phase (`"eigenpairs"`, `"blocks"`, `"diagonal"`).
        gates: `{group id: (dL/ds, 1/2 d2L/ds2 per channel)}` for `diagonal="gates"` (the
            diagonal is then empty); the saliency takes `|dL/ds|`.
        gate_blocks: `{group id: the group's Gauss-Newton matrix in gate coordinates}` for
            `joint=True`.
    """

    diagonal: Dict[int, np.ndarray]
    block_eigenvalues: Dict[object, float] = dataclasses.field(default_factory=dict)
    eigenvalues: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    trace: Optional[float] = None
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
    gates: Dict[int, tuple] = dataclasses.field(default_factory=dict)
    gate_blocks: Dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


def saliency_terms(gradient, weight, diagonal):
    """Per entry, the first-order term `|g w|` and the second-order term `1/2 H_ii w^2`."""
    w = np.asarray(weight, dtype=np.float64)
    first = np.abs(np.asarray(gradient, dtype=np.float64) * w)
    return first, 0.5 * np.asarray(diagonal, dtype=np.float64) * w * w


def joint_order(gradient, matrix, removed=None) -> np.ndarray:
    """A group's channels in the greedy order of the second-order model of removing them
    together, `q(M) = -sum_{a in M} dL/ds_a + 1/2 sum_{a,b in M} G_ab`: the removed channels
    first, then at each step the channel whose conditional cost
    `-dL/ds_c + 1/2 G_cc + sum_{m before c} G_cm` is least.

    Args:
        gradient: `(n,)` `dL/ds` per channel's gate.
        matrix: `(n, n)` Gauss-Newton matrix of the gates.
        removed: `(n,)` bool, channels removed already.

    Returns:
        `(n,)` channel indices.
    """
    gradient = np.asarray(gradient, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    n = len(gradient)
    removed = np.zeros(n, bool) if removed is None else np.asarray(removed, bool)
    order = [int(c) for c in np.flatnonzero(removed)]
    conditional = -gradient + 0.5 * np.diag(matrix) + matrix[:, removed].sum(axis=1)
    free = ~removed
    while free.any():
        c = int(np.argmin(np.where(free, conditional, np.inf)))
        order.append(c)
        free[c] = False
        conditional = conditional + matrix[:, c]
    return np.asarray(order, dtype=np.int64)


def joint_scores(single, gradient, matrix, removed=None) -> np.ndarray:
    """A group's single saliencies, reassigned along the joint order (`joint_order`).

    How many channels a group loses is left to the single saliencies (their values, sorted, are
    what the allocation across groups sees, unchanged); which channels go follows the
    second-order model of removing them together: the `k`-th channel of the joint order gets
    the `k`-th smallest single saliency, so the lowest `k` scores are the order's first `k`.

    Args:
        single: `(n,)` the channels' single saliencies (CAMP-HiVe's `|dL/ds| + 1/2 G_cc`).
        gradient: `(n,)` `dL/ds` per channel's gate.
        matrix: `(n, n)` Gauss-Newton matrix of the gates.
        removed: `(n,)` bool, channels removed already (first in the order).

    Returns:
        `(n,)` scores, strictly increasing along the joint order (a tie-break far below
        their scale separates equal values).

    Example:

    ```python
    import numpy as np
    from tfprune.criteria.camp_hive import joint_scores
    # channels 0 and 1 carry the same feature: each is cheap alone, not both
    g = np.zeros(3)
    G = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.5]])
    joint_scores(0.5 * np.diag(G), g, G)   # [0.5, 0.75, 0.5]: 0 goes, then 2 (1 stays)
    ```
    """
    values = np.sort(np.asarray(single, dtype=np.float64))
    step = 1e-12 * max(float(np.max(np.abs(values))), 1e-30)
    for k in range(1, len(values)):           # strictly increasing: the order is a prefix
        values[k] = max(values[k], values[k - 1] + step)
    scores = np.empty(len(values))
    scores[joint_order(gradient, matrix, removed)] = values
    return scores


def _positive_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidCriterionError(f"CampHiVeSaliency({name}={value!r}): expected an integer "
                                    f">= {low}")
    return int(value)


def _check_gates_option(name: str, value, diagonal: str, what: str) -> None:
    """A True/False option that only `diagonal="gates"` takes."""
    if not isinstance(value, bool):
        raise InvalidCriterionError(f"{name}={value!r}: expected True or False")
    if value and diagonal != GATES:
        raise InvalidCriterionError(f"{name}=True {what}: it needs diagonal='gates' "
                                    f"(diagonal={diagonal!r})")


class CampHiVeSaliency(Criterion):
    """CAMP-HiVe's second-order saliency of channels or single weights (module docstring).

    Args:
        diagonal: where `H_ii` comes from: `"hutchinson"`, `"lowrank"` or `"both"`; or
            `"gates"` (channel granularity only): the exact Gauss-Newton curvature of each
            channel's removal, whatever `hessian` (which still sets the block eigenvalues).
        hessian: `"exact"` (the Hessian) or `"gauss_newton"` (positive semi-definite;
            softmax cross-entropy or mean squared error).
        hutchinson_samples: Rademacher vectors of the Hutchinson estimate.
        power_iters: most products of each power iteration (global and block).
        top_k: global eigenpairs for `"lowrank"` and `"both"`.
        block_curvature: measure each pool's top block eigenvalue (the adaptive thresholds
            need it; off for `beta = 0`).
        loss: the loss whose curvature is taken; None uses the model's compiled loss.
        batch_size: samples per batch of the curvature products.
        verbose: 1 prints each phase of `prepare` as it starts and ends, 0 is silent.
        joint: with `diagonal="gates"`, hand each group's single saliencies out along the
            greedy order of removing its channels together (`joint_scores`, module
            docstring): the same values per group, the joint choice of channels.
        fold_aware: with `diagonal="gates"`, score the removal of a channel *with the
            regression fold* (`merge_rule="regression"`): its gate scales only the residual
            of its activation regressed on the other channels of its group at each consumer
            (`tfprune.curvature.gates`, "Residual gates"), so a channel the others can stand
            in for scores near zero (module docstring, "Fold-aware scores").

    Raises:
        InvalidCriterionError: an argument outside what is accepted.

    Example:

    ```python
    import numpy as np, keras, tfprune
    from tfprune.criteria.camp_hive import CampHiVeSaliency
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 10, 32)
    callback = tfprune.PruningCallback(CampHiVeSaliency(verbose=0), tfprune.Target(flops=0.5),
                                       calibration_data=(x, y), verbose=0)
    ```
    """

    granularities = (CHANNEL, WEIGHT)
    requires_calibration_data = True

    def __init__(self, diagonal: str = HUTCHINSON, hessian: str = "exact",
                 hutchinson_samples: int = 8, power_iters: int = 3, top_k: int = 1,
                 block_curvature: bool = True, loss=None, batch_size: int = 128,
                 verbose: int = 0, joint: bool = False, fold_aware: bool = False):
        if diagonal not in DIAGONALS:
            raise InvalidCriterionError(
                f"diagonal={diagonal!r}: accepted are 'hutchinson' (Hutchinson's estimate), "
                "'lowrank' (sum_j lambda_j v_j^2 over the top eigenpairs), 'both' and 'gates' "
                "(channels: the Gauss-Newton curvature of each channel's removal)")
        if hessian not in HESSIANS:
            raise InvalidCriterionError(
                f"hessian={hessian!r}: accepted are 'exact' and 'gauss_newton' (positive "
                "semi-definite; softmax cross-entropy or mean squared error)")
        if loss is not None:
            try:
                resolve_loss(loss)
            except CurvatureError as e:
                raise InvalidCriterionError(f"CampHiVeSaliency(loss={loss!r}): {e}") from None
        if not isinstance(block_curvature, bool):
            raise InvalidCriterionError(
                f"block_curvature={block_curvature!r}: expected True or False")
        _check_gates_option("joint", joint, diagonal, "scores channels together from their "
                            "gates' Gauss-Newton matrix")
        _check_gates_option("fold_aware", fold_aware, diagonal, "scores the residual each "
                            "channel's regression fold leaves along its gate")
        self.joint = joint
        self.fold_aware = fold_aware
        self.diagonal = diagonal
        self.hessian = hessian
        self.hutchinson_samples = _positive_int("hutchinson_samples", hutchinson_samples)
        self.power_iters = _positive_int("power_iters", power_iters)
        self.top_k = _positive_int("top_k", top_k)
        self.block_curvature = block_curvature
        self.loss = loss
        self.batch_size = _positive_int("batch_size", batch_size)
        self.verbose = _positive_int("verbose", verbose, low=0)
        self._data = None

    # --- curvature -----------------------------------------------------------------------

    def model_loss(self, model):
        """The loss of the curvature: `loss`, or the model's single compiled loss.

        Raises:
            MissingLossError: no `loss` and the model has no single compiled loss.
        """
        return model_loss(model, self.loss, "CAMP-HiVe")

    def check(self, model, kernels=None) -> None:
        """Raises now what the first event would: no loss, or one the curvature cannot take.

        Builds the curvature operator that `prepare` reuses (`tfprune.curvature` keeps it per
        model), so the check costs nothing later.

        Args:
            model: the model to be pruned.
            kernels: the masked kernels (weight granularity), or None (channels).

        Raises:
            MissingLossError: the model has no single compiled loss and `loss` is None.
            CurvatureError: the model or loss cannot be differentiated twice as asked.
        """
        weights = None
        if self.diagonal == GATES:
            if kernels is not None:
                raise InvalidCriterionError(
                    "diagonal='gates' scores channels: use granularity='channel', or another "
                    "diagonal ('hutchinson', 'lowrank', 'both') for single weights")
            gates.check_gate_model(model, self.model_loss(model))
        if kernels is not None:
            ids = {id(k) for k in kernels}
            weights = [v for v in model.trainable_weights if id(v) in ids]
        operator_for(model, self.model_loss(model), self.hessian, FORWARD_OVER_REVERSE, weights)

    def _calibration(self, data) -> CalibrationData:
        # Read once and reused by every event: a dataset is not re-read (and re-shuffled).
        if self._data is None or self._data[0] is not data:
            self._data = (data, CalibrationData.of(data, self.batch_size))
        return self._data[1]

    @staticmethod
    def weights(context) -> Optional[List]:
        """The variables whose curvature is needed: all trainable ones for channels, the
        masked kernels for single weights."""
        if context.granularity == CHANNEL:
            return None
        return [v for v in context.model.trainable_weights if context.name(v) in context.removed]

    def prepare(self, context) -> None:
        """Measures the curvature of this event into `context.cache[CACHE_KEY]`."""
        model = context.model
        loss = self.model_loss(model)
        data = self._calibration(context.calibration_data)
        weights = self.weights(context)
        variables = list(weights) if weights is not None else list(model.trainable_weights)
        seed = int(context.rng("camp_hive").integers(2 ** 31 - 1))
        common = dict(weights=weights, hessian=self.hessian, batch_size=self.batch_size)
        estimate = CurvatureEstimate({})

        eigen = None
        if self.diagonal in (LOWRANK, BOTH):
            with self._phase(estimate, "eigenpairs",
                             f"top {self.top_k} eigenpair(s), {self.power_iters} iterations"):
                eigen = curvature.power_iteration(model, loss, data, k=self.top_k,
                                                  max_iter=self.power_iters, tol=POWER_TOL,
                                                  seed=seed, **common)
            estimate.eigenvalues = np.asarray(eigen.eigenvalues, dtype=np.float64)
        if self.block_curvature:
            blocks = context.groups if context.granularity == CHANNEL else "layers"
            with self._phase(estimate, "blocks",
                             f"block curvature, {self.power_iters} iterations"):
                result = curvature.block_power_iteration(
                    model, loss, data, blocks=blocks, max_iter=self.power_iters,
                    tol=POWER_TOL, seed=seed + 1, **common)
            estimate.block_eigenvalues = dict(result.eigenvalues)
        if self.diagonal == GATES:
            with self._phase(estimate, "diagonal", "Gauss-Newton curvature of the channels' "
                             "gates"):
                estimate.gates, estimate.gate_blocks = self._gate_terms(context, model, loss,
                                                                        data)
            context.cache[CACHE_KEY] = estimate
            return
        with self._phase(estimate, "diagonal", self._diagonal_description()):
            if self.diagonal == HUTCHINSON:
                est = curvature.hutchinson(model, loss, data, samples=self.hutchinson_samples,
                                           seed=seed + 2, vectors_per_pass=VECTORS_PER_PASS,
                                           **common)
                diagonal, estimate.trace = est.diagonal, est.trace
            elif self.diagonal == LOWRANK:
                diagonal = _low_rank_diagonal(eigen)
            else:
                diagonal, estimate.trace = self._deflated_hutchinson(
                    model, loss, data, weights, eigen, seed + 2)
        estimate.diagonal = {id(v): d for v, d in zip(variables, diagonal)}
        context.cache[CACHE_KEY] = estimate

    def _gate_terms(self, context, model, loss, data):
        """`{group id: (dL/ds, 1/2 d2L/ds2)}` per channel, from one gate per channel that
        scales its input slice at every consumer of the group, and with `joint`, `{group id:
        the Gauss-Newton matrix of its gates}` (else empty)."""
        layout, gate_list = [], []
        for group in context.groups:
            if not group.consumers:
                raise InvalidCriterionError(
                    f"diagonal='gates' needs a consumer layer (Conv, Dense) reading every pruned "
                    f"group; {group.describe()} has none: use diagonal='hutchinson'")
            layout.append((group.id, len(gate_list), group.size))
            for c in range(group.size):
                gate_list.append([(m.layer, m.axis, m.index_map[c]) for m in group.consumers])
        try:
            spans = [range(start, start + size) for _, start, size in layout]
            result = gates.gate_curvature(model, loss, data, gate_list,
                                          blocks=spans if self.joint else None,
                                          residuals=spans if self.fold_aware else None)
        except CurvatureError as e:
            if isinstance(e, NonFiniteError):
                raise
            raise InvalidCriterionError(f"diagonal='gates': {e}") from None
        terms = {gid: (result.gradient[start:start + size],
                       0.5 * result.gauss_newton[start:start + size])
                 for gid, start, size in layout}
        return terms, {gid: m for (gid, _, _), m in zip(layout, result.blocks)}

    def _deflated_hutchinson(self, model, loss, data, weights, eigen, seed):
        """`sum_j lambda_j v_j^2` plus Hutchinson's estimate of the deflated diagonal."""
        op = operator_for(model, loss, self.hessian, FORWARD_OVER_REVERSE, weights)
        rng = np.random.default_rng(seed)
        shapes = [tuple(w.shape) for w in op.weights]
        diagonal = _low_rank_diagonal(eigen)
        residual = [np.zeros(s) for s in shapes]
        trace = float(np.sum(eigen.eigenvalues))
        done = 0
        while done < self.hutchinson_samples:
            m = min(VECTORS_PER_PASS, self.hutchinson_samples - done)
            zs = [[rng.choice((-1.0, 1.0), size=s) for s in shapes] for _ in range(m)]
            for z, hz in zip(zs, op.products(data, zs, batch_size=self.batch_size)):
                hz = [np.asarray(t, dtype=np.float64) for t in hz]
                for lam, v in zip(eigen.eigenvalues, eigen.eigenvectors):
                    c = lam * sum(float(np.vdot(a, b)) for a, b in zip(v, z))
                    hz = [h - c * a for h, a in zip(hz, v)]
                for r, a, h in zip(residual, z, hz):
                    r += a * h
                    trace += float(np.sum(a * h)) / self.hutchinson_samples
            done += m
        return [d + r / self.hutchinson_samples for d, r in zip(diagonal, residual)], trace

    def _diagonal_description(self) -> str:
        if self.diagonal == LOWRANK:
            return f"low-rank diagonal from {self.top_k} eigenpair(s)"
        rest = " of the deflated Hessian" if self.diagonal == BOTH else ""
        return f"Hutchinson diagonal{rest}, {self.hutchinson_samples} samples"

    @contextlib.contextmanager
    def _phase(self, estimate, name, what):
        if self.verbose:
            print(f"tfprune: CAMP-HiVe curvature: {what} ...", end="", flush=True)
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            estimate.seconds[name] = time.perf_counter() - start
            if self.verbose:
                print(f" {estimate.seconds[name]:.1f} s" if ok else " failed", flush=True)

    # --- scores --------------------------------------------------------------------------

    def channel_scores(self, group, context):
        estimate = context.cache[CACHE_KEY]
        if self.diagonal == GATES:
            first, second = estimate.gates[group.id]
            single = np.abs(first) + np.maximum(second, 0.0)
            if self.joint:
                return joint_scores(single, first, estimate.gate_blocks[group.id],
                                    context.removed.get(group.id))
            return single
        diagonal = estimate.diagonal
        first, second = np.zeros(group.size), np.zeros(group.size)
        for slices in _trainable_slices_by_variable(group).values():
            v = context.variable(slices[0])
            terms = saliency_terms(context.gradient(v), context.value(v), diagonal[id(v)])
            first += _union_channel_sum(terms[0], slices, group.size)
            second += _union_channel_sum(terms[1], slices, group.size)
        return first + np.maximum(second, 0.0)

    def weight_scores(self, variable, context):
        diagonal = context.cache[CACHE_KEY].diagonal[id(variable)]
        first, second = saliency_terms(context.gradient(variable), context.value(variable),
                                       diagonal)
        return first + np.maximum(second, 0.0)

    def get_config(self):
        loss = self.loss
        if loss is not None and not isinstance(loss, str):
            loss = keras.saving.serialize_keras_object(loss)
        return {"diagonal": self.diagonal, "hessian": self.hessian,
                "hutchinson_samples": self.hutchinson_samples, "power_iters": self.power_iters,
                "top_k": self.top_k, "block_curvature": self.block_curvature, "loss": loss,
                "batch_size": self.batch_size, "verbose": self.verbose, "joint": self.joint,
                "fold_aware": self.fold_aware}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("loss"), dict):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)


def _low_rank_diagonal(eigen) -> List[np.ndarray]:
    """`sum_j lambda_j v_j^2` for the eigenpairs of an `EigenResult`."""
    out = [np.zeros(np.shape(a)) for a in eigen.eigenvectors[0]]
    for lam, v in zip(eigen.eigenvalues, eigen.eigenvectors):
        for d, a in zip(out, v):
            d += lam * np.asarray(a, dtype=np.float64) ** 2
    return out
