"""Folding removed single weights into kept weights of the same output unit.

A kernel entry `W[..., i, o]` weighs input channel `i` for output unit `o` (at one spatial tap
of a convolution). When it is removed, the kept entry `W[..., j, o]` chosen by
`cyclic_partners` (same output unit, same tap) takes `alpha W[..., i, o]`, with `alpha` the
least-squares fit of input activation `a_i` on `a_j` over the calibration data (centred when
the layer has a bias, which then takes the residual mean of each output unit). Every output
unit is then checked exactly on the calibration data: where the folded column reconstructs the
layer's output worse than plain removal would (several removed entries of one unit can
interact, and a convolution's taps see shifted activations), that unit falls back to removal.
So the output error of every unit is never above plain removal's.

The `"half"` rule is the CAMP-HiVe prototype's: `W[..., j, o] += W[..., i, o] / 2`, partners by
position, no check.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfprune.merging.consumers import LinearConsumer
from tfprune.merging.pairing import HALF, LEAST_SQUARES, check_rule, cyclic_partners


@dataclasses.dataclass
class WeightFold:
    """What folding did to one kernel.

    Attributes:
        weights: removed entries folded into a partner.
        units: output units whose fold was kept (the others fell back to removal).
        error_removal: squared output error with the entries only removed (calibration data,
            summed over samples, positions and outputs); None for `"half"`.
        error_merged: the same after folding; None for `"half"`.
    """

    weights: int
    units: int
    error_removal: float = None
    error_merged: float = None


def merge_weights(layer, pruned, kept, scores, inputs, rule: str = "least_squares") -> WeightFold:
    """Folds the `pruned` entries of `layer`'s kernel into kept entries of the same output unit.

    Edits the kernel (and bias) in place; the pruned entries themselves are set to zero.

    Args:
        layer: a `Dense`, `Conv1D` or `Conv2D` layer (or a `PruningWrapper` of one; see
            `tfprune.merging.consumers`).
        pruned: bool array shaped like the kernel: entries removed now.
        kept: bool array shaped like the kernel: entries that stay.
        scores: the entries' saliencies (pairs the least salient removed entry of a unit with
            its most salient kept one).
        inputs: the layer's input on the calibration data.
        rule: `"least_squares"` or `"half"`.

    Returns:
        A `WeightFold`.

    Raises:
        ValueError: a layer that cannot be folded into (`unsupported_reason` says why).

    Example:

    ```python
    import numpy as np, keras
    from tfprune.merging import merge_weights
    dense = keras.layers.Dense(3)
    x = np.random.rand(64, 5).astype("float32")
    dense(x)
    w = np.abs(dense.kernel.numpy())
    fold = merge_weights(dense, w < np.median(w), w >= np.median(w), w, x)
    ```
    """
    rule = check_rule(rule, (LEAST_SQUARES, HALF))
    consumer = LinearConsumer(layer)
    kernel = np.asarray(consumer.kernel.numpy(), dtype=np.float64)
    axis = consumer.in_axis
    partner = cyclic_partners(scores, pruned, kept, axis=axis, rule=rule)
    source = np.argwhere(partner >= 0)
    target = source.copy()
    target[:, axis] = partner[tuple(source.T)]
    removal = np.where(np.asarray(pruned, dtype=bool), 0.0, kernel)
    if rule == HALF:
        alpha = np.full(len(source), 0.5)
    else:
        alpha = _pair_alpha(np.asarray(inputs), source[:, axis], target[:, axis],
                            consumer.bias is not None)
    folded = removal.copy()
    np.add.at(folded, tuple(target.T), alpha * kernel[tuple(source.T)])
    if rule == HALF:
        consumer.kernel.assign(folded.astype(consumer.kernel.dtype))
        return WeightFold(len(source), int(np.unique(source[:, -1]).size))
    use, shift, err_removal, err_merged = _unit_check(consumer, np.asarray(inputs),
                                                       folded - kernel, removal - kernel)
    final = np.where(use, folded, removal)
    consumer.kernel.assign(final.astype(consumer.kernel.dtype))
    if consumer.bias is not None:
        consumer.bias.assign((consumer.bias.numpy() - np.where(use, shift, 0.0))
                             .astype(consumer.bias.dtype))
    units = np.zeros(consumer.outputs, dtype=bool)
    units[source[:, -1]] = True
    return WeightFold(int(np.sum(use[source[:, -1]])), int(np.sum(use & units)),
                      float(err_removal.sum()),
                      float(np.where(use, err_merged, err_removal).sum()))


def _pair_alpha(inputs, removed, partner, centred) -> np.ndarray:
    """Least-squares `alpha` of `a_removed ~ alpha a_partner` for every pair of input channels."""
    rows = inputs.reshape(-1, inputs.shape[-1])
    pairs, index = np.unique(np.stack([removed, partner], 1), axis=0, return_inverse=True)
    i, j = pairs[:, 0], pairs[:, 1]
    cross, square, sum_i, sum_j = (np.zeros(len(pairs)) for _ in range(4))
    step = max(1, (1 << 22) // max(1, len(pairs)))
    for start in range(0, len(rows), step):
        block = rows[start:start + step].astype(np.float64)
        a_i, a_j = block[:, i], block[:, j]
        cross += np.einsum("rn,rn->n", a_i, a_j)
        square += np.einsum("rn,rn->n", a_j, a_j)
        sum_i += a_i.sum(0)
        sum_j += a_j.sum(0)
    if centred:
        cross -= sum_i * sum_j / len(rows)
        square -= sum_j * sum_j / len(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(square > 1e-12 * max(square.max(initial=0.0), 1e-30),
                         cross / square, 0.0)
    return alpha[index.reshape(-1)]


def _unit_check(consumer: LinearConsumer, inputs, fold_delta, removal_delta):
    """Per output unit: whether the fold beats removal, the bias shift, and both errors."""
    outputs = consumer.outputs
    total_f, square_f, square_r = (np.zeros(outputs) for _ in range(3))
    count = 0
    step = consumer.sample_chunk(inputs, 2 * outputs)
    for start in range(0, len(inputs), step):
        chunk = inputs[start:start + step]
        f = tf.reshape(consumer.apply(chunk, fold_delta), (-1, outputs)).numpy().astype(np.float64)
        r = tf.reshape(consumer.apply(chunk, removal_delta), (-1, outputs)).numpy()
        total_f += f.sum(0)
        square_f += (f * f).sum(0)
        square_r += (r.astype(np.float64) ** 2).sum(0)
        count += f.shape[0]
    shift = total_f / count if consumer.bias is not None else np.zeros(outputs)
    merged = square_f - (total_f * shift if consumer.bias is not None else 0.0)
    return merged <= square_r, shift, square_r, np.maximum(merged, 0.0)
