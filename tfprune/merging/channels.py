"""Folding removed channels into kept partners, in the layers that read them.

A channel group's channel `p` reaches each consumer (a layer that reads a tensor of the group
and mixes channels) as its input activation `a_p`. Removing `p` drops the term `W_p * a_p`
from the consumer's output (`W_p`: the consumer's input weights of `p`, every spatial tap of
a convolution, every position of a Dense after a Flatten). Folding `p` into a kept partner
`q` instead adds `alpha_p W_p * a_q` through `q`'s input weights,
`W[..., q, :] += alpha_p W[..., p, :]`, and a constant `d` through the bias, so that the
consumer's output on the calibration data changes as little as possible.

`alpha` and `d` are the least-squares solution for all the consumer's folded channels at once:
minimise `|| sum_p W_p * a_p - sum_p alpha_p W_p * a_q(p) - d ||^2` over the calibration
samples, every output position and every output unit kept at this event. With a single
channel and a 1x1 consumer that is `alpha = <a_p, a_q> / <a_q, a_q>` on centred activations,
and `d = W_p . mean(a_p - alpha a_q)`; without a bias `d = 0` and the activations are not
centred. Since `alpha = 0, d = 0` is plain removal, the fit never does worse than removal on
the calibration data: the consumer's reconstruction error can only go down (the fit is
checked against removal and dropped if rounding ever says otherwise).

The `"half"` rule is the CAMP-HiVe prototype's: `alpha = 1/2`, no bias change, no fit.

The `"regression"` rule folds each removed channel into *every* kept channel of its group
instead of one partner: its activation is regressed on theirs over the calibration samples
and positions, `a_p ~ sum_k B_kp a_k + c_p` (`B` by least squares, with a small ridge; `c`
only when the consumer has a bias), and the consumer takes `W[..., k, :] += sum_p B_kp
W[..., p, :]` and the bias `sum_p c_p sum_taps W_p`. For a Dense or 1x1 consumer that is the
least-squares reconstruction of its output from the kept channels, whatever its weights: each
residual `a_p - B_p a` is orthogonal to every kept activation. For a wider kernel the taps see
shifted activations and the map is close to, not exactly, the best; every consumer's output
error is measured on the calibration data and a fold that would do worse than plain removal
is dropped, as for the other rules.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfprune.graph.group import PRODUCER, ChannelGroup
from tfprune.graph.paths import find_layer
from tfprune.merging.consumers import LinearConsumer, unsupported_reason
from tfprune.merging.pairing import HALF, REGRESSION, check_rule


@dataclasses.dataclass
class ConsumerFold:
    """What folding did to one consumer.

    Attributes:
        layer: the consumer's path.
        channels: how many removed channels were folded into it.
        error_removal: squared error of its output on the calibration data with the channels
            only removed (sum over samples, positions and kept outputs); None for `"half"`.
        error_merged: the same after folding; None for `"half"`.
    """

    layer: str
    channels: int
    error_removal: float = None
    error_merged: float = None


@dataclasses.dataclass
class MergeReport:
    """The consumers folded into, and those left to plain removal with the reason.

    Attributes:
        folds: one `ConsumerFold` per consumer that received channels.
        skipped: `{layer path: why it was not folded into}`.
    """

    folds: List[ConsumerFold] = dataclasses.field(default_factory=list)
    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def channels(self) -> int:
        """Folds made (a channel read by two consumers counts twice)."""
        return sum(f.channels for f in self.folds)


@dataclasses.dataclass
class _Terms:
    """The folded channels of one consumer: activation channels and kernel rows per pair."""

    removed_channels: List[np.ndarray] = dataclasses.field(default_factory=list)
    partner_channels: List[np.ndarray] = dataclasses.field(default_factory=list)
    removed_rows: List[np.ndarray] = dataclasses.field(default_factory=list)
    partner_rows: List[np.ndarray] = dataclasses.field(default_factory=list)

    def stacked(self):
        return tuple(np.concatenate(a).astype(np.int64) for a in (
            self.removed_channels, self.partner_channels, self.removed_rows, self.partner_rows))


@dataclasses.dataclass
class _Part:
    """One group's channels as one consumer reads them, for the `"regression"` rule."""

    channels: np.ndarray  # (group size, k): the consumer's input channels of each
    rows: np.ndarray  # (group size, k): the kernel rows (input axis) that weigh them
    folded: np.ndarray  # group channels to fold
    kept: np.ndarray  # group channels that stay: the regressors


def consumers_to_fold(model, groups: Sequence[ChannelGroup],
                      partners: Mapping[int, np.ndarray]) -> Tuple[List[str], Dict[str, str]]:
    """The consumers of the groups with channels to fold, and why others cannot take them.

    Args:
        model: the model (its layers at the groups' paths; wrapped layers are fine).
        groups: channel groups of the model.
        partners: `{group id: int array (size,)}` from `cyclic_partners` (-1: nothing to fold).

    Returns:
        `(paths, skipped)`: the consumer paths to fold into (their input activations are
        needed), and `{path: reason}` for the others.
    """
    paths, skipped = [], {}
    for group in groups:
        if group.id not in partners or not np.any(np.asarray(partners[group.id]) >= 0):
            continue
        for member in group.consumers:
            if member.layer in paths or member.layer in skipped:
                continue
            reason = _member_reason(model, member)
            if reason is None:
                paths.append(member.layer)
            else:
                skipped[member.layer] = reason
    return paths, skipped


def _member_reason(model, member):
    if "/" in member.layer:
        return "a layer of a nested model (its activations are not recorded)"
    try:
        layer = find_layer(model, member.layer)
    except KeyError as e:
        return str(e)
    reason = unsupported_reason(layer)
    if reason is not None:
        return reason
    kernels = [p for p in member.params if p.weight == "kernel"]
    if len(kernels) != 1 or kernels[0].index_map.shape != member.index_map.shape:
        return "its input weights do not follow its input channels one to one"
    rank = len(layer.input.shape)
    if member.axis != rank - 1:
        return f"its input channels are on axis {member.axis}, not last"
    return None


def _removed_outputs(path: str, groups, removed, outputs: int) -> np.ndarray:
    """Outputs of the consumer's kernel that this event removes (they need no reconstruction)."""
    gone = np.zeros(outputs, dtype=bool)
    for group in groups:
        flags = removed.get(group.id) if removed else None
        if flags is None or not np.any(flags):
            continue
        for p in group.params:
            if p.layer == path and p.weight == "kernel" and p.role == PRODUCER:
                gone[p.indices(np.flatnonzero(flags))] = True
    return gone


def merge_channels(model, groups: Sequence[ChannelGroup], partners: Mapping[int, np.ndarray],
                   activations: Mapping[str, np.ndarray], rule: str = "least_squares",
                   removed: Mapping[int, np.ndarray] = None) -> MergeReport:
    """Folds removed channels into their partners in every consumer that can take them.

    Edits the consumers' kernels (and biases) of `model` in place; the removed channels' own
    input weights are left for the caller's masks to zero. All folded channels of one consumer
    (from every group it reads) are fitted together. Activations are those of the model
    before the edit: a consumer's fit does not see the edits made upstream at the same time.

    Args:
        model: the model to edit.
        groups: its channel groups (`tfprune.channel_groups`, of the unwrapped model).
        partners: `{group id: int array (size,)}`: for each channel to fold, its kept partner
            (from `cyclic_partners`), -1 for the others.
        activations: `{consumer path: its input on the calibration data}`
            (`ScoringContext.activations`); consumers missing here are skipped.
        rule: `"least_squares"` (fit `alpha` and the bias), `"half"` (`alpha = 1/2`) or
            `"regression"` (every kept channel of the group takes a fitted share; the
            partners only say which channels to fold).
        removed: `{group id: bool array}` of every channel removed after this event: the
            consumers' outputs it removes are left out of the fit, and with `"regression"`
            the channels it does not flag are the regressors. None: none removed (the
            regressors are the channels without a partner).

    Returns:
        A `MergeReport`.

    Example:

    ```python
    import numpy as np, keras, tfprune
    from tfprune.merging import cyclic_partners, merge_channels
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=8)
    x = np.random.rand(64, 8, 8, 1).astype("float32")
    group = [g for g in tfprune.channel_groups(model) if g.prunable][0]
    scores = np.arange(group.size, dtype=float)
    partners = {group.id: cyclic_partners(scores, scores < 1, scores >= 1)}
    path = group.consumers[0].layer
    inputs = keras.Model(model.input, model.get_layer(path).input)(x)
    report = merge_channels(model, [group], partners, {path: np.asarray(inputs)})
    ```
    """
    rule = check_rule(rule)
    terms: Dict[str, _Terms] = {}
    parts: Dict[str, List[_Part]] = {}
    report = MergeReport()
    for group in groups:
        partner = np.asarray(partners.get(group.id, ()), dtype=np.int64)
        folded = np.flatnonzero(partner >= 0)
        if not folded.size:
            continue
        for member in group.consumers:
            if member.layer not in activations:
                report.skipped.setdefault(member.layer, "no calibration activations")
                continue
            reason = _member_reason(model, member)
            if reason is not None:
                report.skipped[member.layer] = reason
                continue
            kernel = next(p for p in member.params if p.weight == "kernel")
            if rule == REGRESSION:
                gone = partner >= 0
                if removed is not None and group.id in removed:
                    gone = gone | np.asarray(removed[group.id], dtype=bool)
                parts.setdefault(member.layer, []).append(_Part(
                    member.index_map, kernel.index_map, folded, np.flatnonzero(~gone)))
                continue
            t = terms.setdefault(member.layer, _Terms())
            t.removed_channels.append(member.index_map[folded])
            t.partner_channels.append(member.index_map[partner[folded]])
            t.removed_rows.append(kernel.index_map[folded])
            t.partner_rows.append(kernel.index_map[partner[folded]])
    for path, t in terms.items():
        consumer = LinearConsumer(find_layer(model, path))
        keep = ~_removed_outputs(path, groups, removed, consumer.outputs)
        report.folds.append(_fold(consumer, path, t, np.asarray(activations[path]), keep, rule))
    for path, found in parts.items():
        consumer = LinearConsumer(find_layer(model, path))
        keep = ~_removed_outputs(path, groups, removed, consumer.outputs)
        report.folds.append(_fold_regression(consumer, path, found,
                                             np.asarray(activations[path]), keep))
    return report


def _fold(consumer: LinearConsumer, path, terms: _Terms, inputs, keep, rule) -> ConsumerFold:
    removed_ch, partner_ch, removed_rows, partner_rows = terms.stacked()
    n = removed_ch.shape[0]
    bias = None
    if rule == HALF:
        alpha = np.full(n, 0.5)
        fold = ConsumerFold(path, n)
    else:
        alpha, bias, fold = _least_squares(consumer, path, inputs, removed_ch, partner_ch,
                                           removed_rows, keep, consumer.bias is not None)
    kernel = np.asarray(consumer.kernel.numpy(), dtype=np.float64)
    moved = np.moveaxis(kernel, consumer.in_axis, 0)
    # Several removed channels may share a partner: accumulate.
    update = np.zeros_like(moved)
    for j in range(removed_rows.shape[1]):
        np.add.at(update, partner_rows[:, j],
                  alpha.reshape((-1,) + (1,) * (moved.ndim - 1)) * moved[removed_rows[:, j]])
    kernel = np.moveaxis(moved + update, 0, consumer.in_axis)
    consumer.kernel.assign(kernel.astype(consumer.kernel.dtype))
    if bias is not None and consumer.bias is not None:
        consumer.bias.assign((consumer.bias.numpy() + bias).astype(consumer.bias.dtype))
    return fold


def _least_squares(consumer, path, inputs, removed_ch, partner_ch, removed_rows, keep,
                   has_bias):
    """`alpha`, the bias change and the errors of the joint fit (see the module docstring)."""
    n = removed_ch.shape[0]
    outputs = consumer.outputs
    keep = tf.constant(keep.astype(np.float32))
    gram = np.zeros((n, n))
    sum_z = np.zeros((n, outputs))
    z_dot_y = np.zeros(n)
    sum_y = np.zeros(outputs)
    y_sq = 0.0
    count = 0
    step = consumer.sample_chunk(inputs, n * removed_ch.shape[1] * outputs)
    for start in range(0, len(inputs), step):
        chunk = inputs[start:start + step]
        y = tf.reduce_sum(consumer.contributions(chunk, removed_ch, removed_rows), -2) * keep
        z = consumer.contributions(chunk, partner_ch, removed_rows) * keep
        y = tf.reshape(y, (-1, outputs))
        z = tf.reshape(z, (-1, n, outputs))
        flat = tf.reshape(tf.transpose(z, (1, 0, 2)), (n, -1))
        gram += tf.matmul(flat, flat, transpose_b=True).numpy()
        sum_z += tf.reduce_sum(z, 0).numpy()
        z_dot_y += tf.einsum("rno,ro->n", z, y).numpy()
        sum_y += tf.reduce_sum(y, 0).numpy()
        y_sq += float(tf.reduce_sum(y * y))
        count += int(y.shape[0])
    g, b, y_c = gram, z_dot_y, y_sq
    if has_bias:  # the bias takes each output's mean: fit the centred terms
        g = gram - sum_z @ sum_z.T / count
        b = z_dot_y - sum_z @ sum_y / count
        y_c = y_sq - float(sum_y @ sum_y) / count
    alpha = np.linalg.lstsq(g, b, rcond=None)[0]
    merged = y_c - 2.0 * float(alpha @ b) + float(alpha @ g @ alpha)
    if not np.isfinite(merged) or merged > y_sq:
        return np.zeros(n), None, ConsumerFold(path, n, y_sq, y_sq)
    bias = (sum_y - alpha @ sum_z) / count if has_bias else None
    return alpha, bias, ConsumerFold(path, n, y_sq, max(merged, 0.0))


#: Ridge of the `"regression"` rule, relative to the kept activations' mean variance.
RIDGE = 1e-6


def _moments(inputs, channels: np.ndarray, centre: bool, step: int):
    """Mean and (centred) second moment of a group's channels over samples and positions,
    `step` samples at a time."""
    size, k = channels.shape
    second = np.zeros((size, size))
    total = np.zeros(size)
    count = 0
    for start in range(0, len(inputs), step):
        x = np.take(inputs[start:start + step], channels.reshape(-1), axis=-1)
        x = np.swapaxes(x.reshape(x.shape[:-1] + (size, k)), -1, -2).reshape(-1, size)
        x = x.astype(np.float64)
        second += x.T @ x
        total += x.sum(0)
        count += x.shape[0]
    mean = total / max(count, 1)
    second /= max(count, 1)
    if centre:
        second -= np.outer(mean, mean)
    return mean, second


def _fold_regression(consumer: LinearConsumer, path, parts, inputs, keep) -> ConsumerFold:
    """The `"regression"` fold of one consumer (see the module docstring)."""
    has_bias = consumer.bias is not None
    moved = np.moveaxis(np.asarray(consumer.kernel.numpy(), np.float64), consumer.in_axis, 0)
    delta = np.zeros_like(moved)  # the change of the kept rows
    dropped = np.zeros_like(moved)  # the removed rows: the term plain removal loses
    bias = np.zeros(consumer.outputs)
    n = 0
    for part in parts:
        n += part.folded.size
        for j in range(part.rows.shape[1]):
            dropped[part.rows[part.folded, j]] = moved[part.rows[part.folded, j]]
        if not part.kept.size:
            continue
        mean, cov = _moments(inputs, part.channels, has_bias,
                             consumer.sample_chunk(inputs, np.shape(inputs)[-1]))
        kk = cov[np.ix_(part.kept, part.kept)]
        ridge = RIDGE * max(float(np.trace(kk)) / part.kept.size, 1e-12)
        share = np.linalg.solve(kk + ridge * np.eye(part.kept.size),
                                cov[np.ix_(part.kept, part.folded)])  # (kept, folded)
        offset = mean[part.folded] - mean[part.kept] @ share if has_bias else None
        for j in range(part.rows.shape[1]):
            removed_rows = moved[part.rows[part.folded, j]]
            delta[part.rows[part.kept, j]] += np.tensordot(share, removed_rows, axes=1)
            if has_bias:
                bias += np.tensordot(offset, removed_rows, axes=1).reshape(
                    -1, consumer.outputs).sum(0)
    lost, merged = _errors(consumer, inputs, np.moveaxis(dropped, 0, consumer.in_axis),
                           np.moveaxis(delta, 0, consumer.in_axis), bias, keep)
    if not np.isfinite(merged) or merged > lost:
        return ConsumerFold(path, n, lost, lost)
    kernel = np.moveaxis(moved + delta, 0, consumer.in_axis)
    consumer.kernel.assign(kernel.astype(consumer.kernel.dtype))
    if has_bias:
        consumer.bias.assign((consumer.bias.numpy() + bias).astype(consumer.bias.dtype))
    return ConsumerFold(path, n, lost, merged)


def _errors(consumer, inputs, dropped, delta, bias, keep):
    """Squared output error on the kept outputs: plain removal, and removal with the fold."""
    keep = tf.constant(keep.astype(np.float32))
    bias = tf.constant(bias.astype(np.float32))
    lost = merged = 0.0
    step = consumer.sample_chunk(inputs, 2 * consumer.outputs)
    for start in range(0, len(inputs), step):
        chunk = inputs[start:start + step]
        y = consumer.apply(chunk, dropped) * keep
        z = (consumer.apply(chunk, delta) + bias) * keep
        lost += float(tf.reduce_sum(y * y))
        merged += float(tf.reduce_sum(tf.square(y - z)))
    return lost, merged
