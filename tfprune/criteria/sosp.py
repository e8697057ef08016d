"""`SOSPSaliency`: second-order saliency of removing a channel, with correlations (SOSP-H).

Removing structure `s` (a channel of a group) is the weight perturbation `-theta_s`, where
`theta_s` holds the current values of every trainable entry that carries `s` (the group's
`ParamSlice`s: producers' output slices, biases, BatchNormalization scales and offsets, the
consumers' input slices) and zeros elsewhere. The second-order model of the loss change is
`-theta_s . g + 1/2 theta_s . H theta_s`. SOSP-H (Nonnenmacher et al., ICLR 2022) replaces the
second `theta_s` by `theta_P`, all prunable structures' weights together, so that the
curvature term also counts the correlations between `s` and every other structure, and one
product `H theta_P` gives every saliency at once:

    lambda_s = | -theta_s . g + 1/2 theta_s . (H theta_P) |

`g` is the gradient of the mean calibration loss, and `H` the Gauss-Newton matrix of the mean
loss (positive semi-definite; `hessian="exact"` for the Hessian), both with BatchNormalization
in inference mode. The product is one pass over the calibration data (one product per batch,
averaged over samples by `tfprune.curvature`).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import keras
import numpy as np

from tfprune.criteria.base import CHANNEL, Criterion, channel_sum
from tfprune.curvature.blocks import slice_entries
from tfprune.criteria.context import model_loss
from tfprune.curvature.losses import resolve_loss
from tfprune.curvature.operator import (FORWARD_OVER_REVERSE, GAUSS_NEWTON, HESSIANS,
                                        operator_for)
from tfprune.curvature.products import gauss_newton_vector_product, hessian_vector_product
from tfprune.errors import CurvatureError, InvalidCriterionError
from tfprune.graph.paths import find_variable

_CACHE_KEY = "sosp_per_entry"


def _union_channel_sum(values: np.ndarray, slices, size: int) -> np.ndarray:
    """Per channel, `values` summed over the union of the entries its slices carry.

    Several slices of one group can lie on one variable (a convolution that reads and writes
    the same residual group carries channel `c` on its input and its output axis); an entry
    on both must count once, as it does in `theta_s`.
    """
    if len(slices) == 1:
        return channel_sum(values, slices[0])
    out = np.zeros(size)
    for c in range(size):
        entries = np.zeros(values.shape, dtype=bool)
        for p in slices:
            index = [slice(None)] * values.ndim
            index[p.axis] = p.index_map[c]
            entries[tuple(index)] = True
        out[c] = values[entries].sum()
    return out


def _trainable_slices_by_variable(group) -> Dict[Tuple[str, str], List]:
    by_variable: Dict[Tuple[str, str], List] = {}
    for p in group.params:
        if p.trainable:
            by_variable.setdefault((p.layer, p.weight), []).append(p)
    return by_variable


class SOSPSaliency(Criterion):
    """SOSP-H saliency of every channel: `| -theta_s . g + 1/2 theta_s . (H theta_P) |`.

    At each pruning event `prepare` computes the calibration gradient `g` (the engine's
    `context.gradient`: the model's compiled loss, regularisation included) and one curvature
    product `H theta_P` with `tfprune.curvature` over the calibration data, where `theta_P` is
    the current (masked-in) value of every trainable entry of every prunable group. Channels
    already removed have `theta_s = 0` and score 0. Scores are non-negative, lower is pruned
    first, and rank globally across groups (the second-order model is one loss change).

    Args:
        hessian: `"gauss_newton"` (the Gauss-Newton matrix: positive semi-definite; softmax
            cross-entropy or mean squared error) or `"exact"` (the Hessian, any loss).
        loss: the loss whose curvature is taken (a `keras.losses.Loss`, a Keras loss name or a
            callable `(y_true, y_pred)`); None uses the model's compiled loss.
        batch_size: samples per batch of the curvature product for `(x, y)` arrays.

    Raises:
        InvalidCriterionError: an unknown `hessian`, a `loss` tfprune cannot take, or a
            `batch_size` that is not a positive integer.

    Example:

    ```python
    import numpy as np, keras, tfprune
    from tfprune.criteria.sosp import SOSPSaliency
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 10, 32)
    callback = tfprune.PruningCallback(SOSPSaliency(), tfprune.Target(flops=0.5),
                                       calibration_data=(x, y))
    ```
    """

    granularities = (CHANNEL,)
    requires_calibration_data = True

    def __init__(self, hessian: str = GAUSS_NEWTON, loss=None, batch_size: int = 128):
        if hessian not in HESSIANS:
            raise InvalidCriterionError(
                f"SOSPSaliency(hessian={hessian!r}): accepted are 'gauss_newton' (positive "
                "semi-definite, softmax cross-entropy or mean squared error) and 'exact'")
        if loss is not None:
            try:
                resolve_loss(loss)
            except CurvatureError as e:
                raise InvalidCriterionError(f"SOSPSaliency(loss={loss!r}): {e}") from None
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise InvalidCriterionError(
                f"SOSPSaliency(batch_size={batch_size!r}): expected an integer >= 1")
        self.hessian = hessian
        self.loss = loss
        self.batch_size = int(batch_size)

    def _loss(self, model):
        return model_loss(model, self.loss, "SOSP-H")

    @staticmethod
    def _variables(groups, variable) -> Dict[Tuple[str, str], object]:
        """`{(layer, weight): variable}` of every trainable slice of the groups, in order."""
        out = {}
        for group in groups:
            for key, slices in _trainable_slices_by_variable(group).items():
                if key not in out:
                    out[key] = variable(slices[0])
        return out

    def check(self, model, groups) -> None:
        """Raises now what the first event would: no loss, or one the product cannot take.

        Builds the curvature operator that `prepare` will reuse (`tfprune.curvature` keeps
        it per model), so the check costs nothing later.

        Raises:
            MissingLossError: the model has no (single) compiled loss and `loss` is None.
            CurvatureError: the loss or model cannot be differentiated twice as asked (e.g.
                a Gauss-Newton product for a loss other than cross-entropy or MSE).
        """
        variables = self._variables(groups, lambda p: find_variable(model, p.layer, p.weight))
        if variables:
            operator_for(model, self._loss(model), self.hessian, FORWARD_OVER_REVERSE,
                         list(variables.values()))

    def prepare(self, context) -> None:
        loss = self._loss(context.model)
        variables = self._variables(context.groups, context.variable)
        if not variables:
            context.cache[_CACHE_KEY] = {}
            return
        keys = list(variables)
        weights = [variables[k] for k in keys]
        theta_p = []
        for key, v in zip(keys, weights):
            covered = np.zeros(tuple(v.shape), dtype=bool)
            for group in context.groups:
                for p in _trainable_slices_by_variable(group).get(key, ()):
                    covered |= slice_entries(p, tuple(v.shape))
            theta_p.append(np.where(covered, np.asarray(context.value(v), np.float64), 0.0))
        product = gauss_newton_vector_product if self.hessian == GAUSS_NEWTON else \
            hessian_vector_product
        h_theta = product(context.model, loss, context.calibration_data, theta_p,
                          weights=weights, batch_size=self.batch_size)
        # Per entry, -theta_i g_i + 1/2 theta_i (H theta_P)_i: a channel sums its entries.
        context.cache[_CACHE_KEY] = {
            k: np.asarray(context.value(v), np.float64)
            * (0.5 * np.asarray(ht, dtype=np.float64) - context.gradient(v))
            for k, v, ht in zip(keys, weights, h_theta)}

    def channel_scores(self, group, context):
        per_entry = context.cache[_CACHE_KEY]
        total = np.zeros(group.size)
        for key, slices in _trainable_slices_by_variable(group).items():
            total += _union_channel_sum(per_entry[key], slices, group.size)
        return np.abs(total)

    def get_config(self):
        loss = self.loss
        if loss is not None and not isinstance(loss, str):
            loss = keras.saving.serialize_keras_object(loss)
        return {"hessian": self.hessian, "loss": loss, "batch_size": self.batch_size}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("loss"), dict):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
