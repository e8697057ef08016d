"""The loss's gradient and Gauss-Newton diagonal in channel-gate coordinates.

A *gate* scales chosen input channels of chosen layers: each of them reads `(1 + s) x_j`
instead of `x_j` for the channels `j` the gate names, and `s = 0` is the model as it is. A
channel of a channel group has one gate that names it at every layer consuming the group (the
input slices of every Conv or Dense that reads it), so `s = -1` is exactly removing that
channel. Along that path the loss is, to second order,

    L(-1) - L(0) ~ -dL/ds + 1/2 d2L/ds2,

and `gate_curvature` computes, for every gate at once and deterministically:

- `gradient`: `dL/ds` at `s = 0`, the mean over samples of the per-sample derivative;
- `gauss_newton`: the Gauss-Newton curvature `(1/N) sum_n u_n^T Lambda_n u_n`, with
  `u_n = d outputs_n / ds` (the logits for a cross-entropy) and `Lambda_n` the Hessian of the
  per-sample loss with respect to the outputs: the diagonal of the Gauss-Newton matrix in gate
  coordinates, exactly (no random probe vectors).

How: one forward pass records each gated layer's input `x` and output; for each output entry
`k` (a class), one backward pass gives every sample's derivative of output `k` with respect to
each gated layer's output, the layer's input gradient through that layer alone follows from one
more product with the layer, and `sum over positions of x_j * dx_j` is the per-sample
derivative of output `k` with respect to that channel's gate. The gates' derivatives are sums
of these over the channels and layers they name. The cost is one forward pass and `classes`
backward passes per batch, without any weight gradient.

**Residual gates** (`residuals=`, what CAMP-HiVe's regression fold removes). A channel
removed with the fold (`tfprune.merging`, `merge_rule="regression"`) does not take its whole
activation `x_j` away from its consumers: the kept channels carry their least-squares
prediction of it, and what is lost is the residual `r_j = x_j - sum_k B_kj x_k - c_j` of
regressing `x_j` on the other channels of its block at that layer (with the intercept `c_j`
where the layer has a bias, as the fold; the fold's relative ridge). With residuals a gate
reads `x_j + s r_j` instead of `(1 + s) x_j`, so `s = -1` is removing the channel with the
fold (at every input position, before any padding), and `sum over positions of r_j * dx_j` its
derivative. The residuals of all channels come from one extra pass over the data (the inputs'
means and second moments): `r = (x - mean) P[:, S] P[S, S]^-1` for a gate's channels `S`, with
`P` the inverse of the regularized covariance of the block's channels (one channel: its
residual on all the others).

Only top-level layers of a functional (or Sequential) model with one input tensor can be
gated; the loss must be a softmax cross-entropy (on logits, or on a model that ends in a
softmax) or a mean squared error, as for `gauss_newton_vector_product`. BatchNormalization and
Dropout run in inference mode, in float32 also for mixed-precision models.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfprune.curvature.data import CalibrationData
from tfprune.curvature.losses import CROSS_ENTROPIES, MSE, resolve_loss
from tfprune.curvature.model_view import ModelView
from tfprune.curvature.operator import check_positive_int
from tfprune.errors import CurvatureError, NonFiniteError
from tfprune.graph.paths import SEP, find_layer

#: A gate: for each gated layer, `(layer path, channel axis of its input, channel indices)`.
Gate = Sequence[Tuple[str, int, Sequence[int]]]


@dataclasses.dataclass(frozen=True)
class GateCurvature:
    """First and second derivatives of the loss along each gate (`gate_curvature`).

    Attributes:
        gradient: `(gates,)` float64, `dL/ds` at `s = 0` (mean loss over the samples).
        gauss_newton: `(gates,)` float64, the Gauss-Newton curvature `d2L/ds2` (>= 0).
        loss: the mean loss on the data.
        samples: how many samples the means are over.
        passes: backward passes per batch (the number of model outputs).
        blocks: with `gate_curvature(..., blocks=...)`, for each block of gates the
            Gauss-Newton matrix between them, `(len(block), len(block))` float64 (its diagonal
            is their `gauss_newton`); else an empty tuple.
    """

    gradient: np.ndarray
    gauss_newton: np.ndarray
    loss: float
    samples: int
    passes: int
    blocks: Tuple[np.ndarray, ...] = ()

    def removal_estimate(self) -> np.ndarray:
        """Second-order estimate of the loss change at `s = -1` (every gate removing its
        channels alone): `-gradient + gauss_newton / 2`."""
        return -self.gradient + 0.5 * self.gauss_newton


def gate_curvature(model, loss_fn, data, gates: Sequence[Gate],
                   batch_size: int = 128,
                   blocks: Optional[Sequence[Sequence[int]]] = None,
                   residuals: Optional[Sequence[Sequence[int]]] = None) -> GateCurvature:
    """Gradient and Gauss-Newton diagonal of the loss with respect to channel gates.

    Args:
        model: a built functional or Sequential `keras.Model` with one output.
        loss_fn: softmax cross-entropy (a `keras.losses.Loss`, a name, or the Keras function)
            on logits or on a model ending in a softmax, or mean squared error.
        data: `(x, y)` arrays/tensors or a finite `tf.data.Dataset` of `(x, y)` batches.
        gates: for each gate, a list of `(layer_path, axis, channels)`: the gate scales the
            channels `channels` (indices along `axis`, the channel axis of the layer's input
            counted with the batch axis) of the input of the top-level layer `layer_path`.
        batch_size: samples per batch for `(x, y)` arrays.
        blocks: lists of gate indices; for each, the Gauss-Newton matrix between its gates
            (`GateCurvature.blocks`): what removing several of them together costs to second
            order, `-sum_{a in M} dL/ds_a + 1/2 sum_{a,b in M} G_ab`. A block of `b` gates
            costs `batch x b^2 x outputs` multiply-adds per batch more (one block per channel
            group keeps that small); `[range(len(gates))]` is the whole matrix.
        residuals: lists of gate indices (e.g. one per channel group); each gate of a list
            scales the residual of its channels regressed on the channels the list's other
            gates name at the same layer (module docstring), which is the loss change of
            removing it with the regression fold. A gate in no list scales its channels'
            activations. The lists must not share gates.

    Returns:
        A `GateCurvature`.

    Raises:
        CurvatureError: a gate names a layer that is not a top-level single-input layer of
            the model, an axis or channel out of range; the loss is not one of those
            accepted; the model is not functional.
        NonFiniteError: the loss or a derivative is NaN or infinite.

    Example:

    ```python
    import numpy as np, keras, tfprune
    from tfprune.curvature.gates import gate_curvature
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=16)
    x = np.random.randint(0, 16, (64, 8, 8, 1)).astype("float32")
    y = np.random.randint(0, 10, 64)
    # one gate per input channel of the second convolution
    conv = [l for l in model.layers if l.__class__.__name__ == "Conv2D"][1]
    gates = [[(conv.name, 3, [c])] for c in range(conv.input.shape[-1])]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # small_cnn: logits
    result = gate_curvature(model, loss, (x, y), gates)
    result.removal_estimate()      # second-order loss change of removing each channel
    ```
    """
    check_positive_int("batch_size", batch_size)
    blocks = _check_blocks(blocks, len(gates))
    residuals = _check_blocks(residuals, len(gates), "residuals")
    shared = [g for g, n in zip(*np.unique([g for r in residuals for g in r],
                                           return_counts=True)) if n > 1]
    if shared:
        raise CurvatureError(f"residuals: gate(s) {shared} are in several lists; each gate is "
                             "regressed within one list")
    loss, view, logits = check_gate_model(model, loss_fn)
    layers, widths, assignment = _layout(model, gates)
    data = CalibrationData.of(data, batch_size)
    forward = view.forward_model()
    step = _program(forward, layers, widths, assignment, len(gates), loss, logits, view.dtype,
                    blocks, bool(residuals))
    maps = (_residual_maps(forward, data, model, gates, layers, widths, residuals, view.dtype)
            if residuals else ())
    total_first = np.zeros(len(gates))
    total_second = np.zeros(len(gates))
    total_blocks = [np.zeros((len(b), len(b))) for b in blocks]
    total_loss, count, passes = 0.0, 0, 0
    for x, y in data.dataset:
        loss_sum, first, second, matrices, passes = step(x, y, maps)
        total_loss += float(loss_sum)
        total_first += first.numpy()
        total_second += second.numpy()
        for total, m in zip(total_blocks, matrices):
            total += m.numpy()
        count += int(tf.shape(tf.nest.flatten(x)[0])[0])
    mean_loss = total_loss / count
    if not np.isfinite(mean_loss):
        raise NonFiniteError(f"the loss ({loss.name}) of model {model.name!r} is {mean_loss} "
                             "on the gate-curvature data")
    gradient, curvature = total_first / count, total_second / count
    matrices = tuple(0.5 * (m + m.T) / count for m in total_blocks)  # symmetric, exactly
    if not (np.all(np.isfinite(gradient)) and np.all(np.isfinite(curvature))
            and all(np.all(np.isfinite(m)) for m in matrices)):
        raise NonFiniteError("the gate derivatives are not finite (NaN or inf)")
    return GateCurvature(gradient, curvature, mean_loss, count, int(passes), matrices)


def _check_blocks(blocks, n_gates: int, name: str = "blocks") -> Tuple[Tuple[int, ...], ...]:
    if blocks is None:
        return ()
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
        raise CurvatureError(f"{name} must be a list of lists of gate indices; received "
                             f"{type(blocks).__name__}")
    out = []
    for b, block in enumerate(blocks):
        try:
            idx = tuple(int(i) for i in block)
        except (TypeError, ValueError):
            raise CurvatureError(f"{name}[{b}] must be a list of gate indices; received "
                                 f"{block!r}") from None
        if not idx or min(idx) < 0 or max(idx) >= n_gates or len(set(idx)) != len(idx):
            raise CurvatureError(f"{name}[{b}]: gate indices {list(idx)} must be distinct and "
                                 f"within 0..{n_gates - 1} ({n_gates} gates)")
        out.append(idx)
    return tuple(out)


def check_gate_model(model, loss_fn):
    """`(resolved loss, ModelView, logits)` when the model's channels can be gated for this
    loss; raises `CurvatureError` naming the cause otherwise (before any computation)."""
    loss = resolve_loss(loss_fn)
    strip = loss.kind in CROSS_ENTROPIES and not loss.from_logits
    views = _VIEWS.setdefault(model, {})
    key = (strip, tuple(id(v) for v in model.trainable_variables))
    if key not in views:  # one view (and twin) per model: the compiled step is reused
        views.clear()
        views[key] = ModelView(model, strip_softmax=strip)
    view = views[key]
    logits = loss.kind in CROSS_ENTROPIES and (loss.from_logits or view.logits)
    if not (logits or loss.kind == MSE):
        raise CurvatureError(
            f"gate curvature is a Gauss-Newton curvature: it needs softmax cross-entropy (from "
            f"logits, or on a functional/Sequential model that ends in a softmax) or mean "
            f"squared error; the loss is {loss.name} on model {model.name!r}")
    if getattr(model, "inputs", None) is None:
        raise CurvatureError(f"model {model.name!r} is not a functional or Sequential model: "
                             "its layers' inputs cannot be gated")
    return loss, view, logits


def _layout(model, gates):
    """The gated layers, each one's channel count, and the sparse gate assignment."""
    if isinstance(gates, (str, bytes)) or not isinstance(gates, Sequence) or not gates:
        raise CurvatureError("gates must be a non-empty list of gates, each a list of "
                             "(layer_path, axis, channels)")
    layers: List[Tuple[str, int]] = []
    position: Dict[Tuple[str, int], int] = {}
    widths: List[int] = []
    rows, cols = [], []
    for g, gate in enumerate(gates):
        if isinstance(gate, (str, bytes)) or not isinstance(gate, Sequence) or not gate:
            raise CurvatureError(f"gate {g} must be a non-empty list of (layer_path, axis, "
                                 f"channels); received {gate!r}")
        for entry in gate:
            if not isinstance(entry, (tuple, list)) or len(entry) != 3:
                raise CurvatureError(f"gate {g}: each entry is (layer_path, axis, channels); "
                                     f"received {entry!r}")
            path, axis, channels = entry
            key = (str(path), int(axis))
            if key not in position:
                width = _input_width(model, *key)
                position[key] = sum(widths)
                layers.append(key)
                widths.append(width)
            width = widths[layers.index(key)]
            channels = np.asarray(channels, dtype=np.int64).reshape(-1)
            if channels.size == 0 or channels.min() < 0 or channels.max() >= width:
                raise CurvatureError(f"gate {g}: channels {channels.tolist()} of layer "
                                     f"{path!r}'s input are outside 0..{width - 1}")
            for c in np.unique(channels):
                rows.append(position[key] + int(c))
                cols.append(g)
    pairs = sorted(set(zip(rows, cols)))
    return tuple(layers), tuple(widths), tuple(pairs)


def _input_width(model, path: str, axis: int) -> int:
    if SEP in path:
        raise CurvatureError(f"layer {path!r} is inside a nested model; only top-level layers "
                             f"of model {model.name!r} can be gated")
    try:
        layer = find_layer(model, path)
    except KeyError as e:
        raise CurvatureError(f"no layer {path!r} in model {model.name!r}: {e}") from None
    try:
        tensor = layer.input
    except (AttributeError, ValueError) as e:
        raise CurvatureError(f"layer {path!r} has no single input tensor in model "
                             f"{model.name!r} ({e})") from None
    if isinstance(tensor, (list, tuple, dict)):
        raise CurvatureError(f"layer {path!r} takes several inputs; only single-input layers "
                             "can be gated")
    rank = len(tensor.shape)
    if not 1 <= axis < rank or tensor.shape[axis] is None:
        raise CurvatureError(f"axis {axis} is not a channel axis of layer {path!r}'s input, of "
                             f"shape {tuple(tensor.shape)} (axis 1..{rank - 1}, batch axis 0)")
    return int(tensor.shape[axis])


_PROGRAMS = weakref.WeakKeyDictionary()
_VIEWS = weakref.WeakKeyDictionary()


def _last_axis_order(rank: int, axis: int) -> List[int]:
    """The transpose that moves the channel axis `axis` last."""
    return [a for a in range(rank) if a != axis] + [axis]


def _channels_last(t, axis: int):
    """`t` with its channel axis `axis` moved last, flattened to `(rows, channels)`."""
    return tf.reshape(tf.transpose(t, _last_axis_order(t.shape.rank, axis)),
                      [-1, t.shape[axis]])


def _residual_inputs(t, axis: int, mean, transform):
    """`(t - mean) transform` along the channel axis `axis` (`_residual_maps`)."""
    perm = _last_axis_order(t.shape.rank, axis)
    moved = tf.transpose(t, perm)
    out = tf.tensordot(moved - tf.cast(mean, t.dtype), tf.cast(transform, t.dtype), 1)
    return tf.transpose(out, np.argsort(perm))


def _residual_maps(forward, data, model, gates, layers, widths, residuals, dtype):
    """For each gated layer, `(mean, T)` such that `(x - mean) T` holds, in the columns of
    the `residuals` lists' gates, each channel's residual on the other channels its list names
    at that layer, and elsewhere `x` itself (module docstring, "Residual gates")."""
    from tfprune.merging.channels import RIDGE  # the fold's relative ridge

    gated = [find_layer(forward, path) for path, _ in layers]
    extractor = keras.Model(forward.inputs, [layer.input for layer in gated])

    @tf.function(reduce_retracing=True)
    def moments(x):
        outs = extractor(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        flat = [tf.cast(_channels_last(t, axis), tf.float64)
                for t, (_, axis) in zip(outs, layers)]
        return ([tf.reduce_sum(f, 0) for f in flat], [tf.matmul(f, f, transpose_a=True)
                                                       for f in flat],
                [tf.shape(f)[0] for f in flat])

    sums = [np.zeros(w) for w in widths]
    seconds = [np.zeros((w, w)) for w in widths]
    counts = np.zeros(len(layers))
    for x, _ in data.dataset:
        s1, s2, n = moments(x)
        for i in range(len(layers)):
            sums[i] += s1[i].numpy()
            seconds[i] += s2[i].numpy()
            counts[i] += int(n[i])
    maps = []
    for i, (path, axis) in enumerate(layers):
        mean = sums[i] / max(counts[i], 1.0)
        centre = getattr(find_layer(model, path), "bias", None) is not None
        cov = seconds[i] / max(counts[i], 1.0) - (np.outer(mean, mean) if centre else 0.0)
        transform, shift = np.eye(widths[i]), np.zeros(widths[i])
        for block in residuals:
            named = {g: np.unique(np.concatenate(
                [np.asarray(c, np.int64).reshape(-1) for p, a, c in gates[g]
                 if (str(p), int(a)) == (path, axis)] or [np.zeros(0, np.int64)]))
                for g in block}
            named = {g: c for g, c in named.items() if c.size}
            if not named:
                continue
            columns = np.unique(np.concatenate(list(named.values())))
            block_cov = cov[np.ix_(columns, columns)]
            ridge = RIDGE * max(float(np.trace(block_cov)) / columns.size, 1e-12)
            inverse = np.linalg.inv(block_cov + ridge * np.eye(columns.size))
            for own in named.values():
                at = np.searchsorted(columns, own)
                transform[np.ix_(columns, own)] = inverse[:, at] @ np.linalg.inv(
                    inverse[np.ix_(at, at)])
            if centre:
                shift[columns] = mean[columns]
        maps.append((tf.constant(shift, dtype), tf.constant(transform, dtype)))
    return tuple(maps)


def _program(forward, layers, widths, assignment, n_gates, loss, logits, dtype, blocks,
             residual_gates=False):
    """The compiled per-batch step, kept per model and layout (traced once per batch shape);
    with `residual_gates`, it takes each gated layer's `(mean, T)` (`_residual_maps`)."""
    cache = _PROGRAMS.setdefault(forward, {})
    key = (layers, widths, assignment, n_gates, loss.name, loss.kind, loss.from_logits, logits,
           dtype.name, blocks, residual_gates)
    if key in cache:
        return cache[key]
    gated = [find_layer(forward, path) for path, _ in layers]
    extractor = keras.Model(forward.inputs, [tf.nest.flatten(forward.outputs)[0]]
                            + [layer.input for layer in gated] + [layer.output for layer in gated])
    indices = np.asarray(assignment, dtype=np.int64).reshape(-1, 2)
    matrix = tf.sparse.reorder(tf.sparse.SparseTensor(
        indices, tf.ones(len(indices), dtype), (sum(widths), n_gates)))
    n = len(gated)

    @tf.function(reduce_retracing=True)
    def step(x, y, maps=()):
        with tf.GradientTape(persistent=True) as tape:
            outs = extractor(x, training=False)
            out = tf.cast(outs[0], dtype)
            if out.shape.rank != 2:
                raise CurvatureError(f"the model's output has shape {tuple(out.shape)}; gate "
                                     "curvature needs (batch, outputs)")
            loss_sum = loss.sum_over_samples(y, out, logits)
            picks = [tf.reduce_sum(out[:, k]) for k in range(out.shape[-1])]
        inputs, outputs = outs[1:1 + n], outs[1 + n:]
        directions = ([_residual_inputs(t, axis, *m) for t, (_, axis), m in
                       zip(inputs, layers, maps)] if residual_gates else inputs)
        residual = tape.gradient(loss_sum, out)          # d loss_n / d out_n, per sample
        with tf.GradientTape(persistent=True) as local:  # each gated layer alone
            local.watch(inputs)
            again = [layer(t, training=False) for layer, t in zip(gated, inputs)]
        columns = []
        for k, pick in enumerate(picks):
            upstream = tape.gradient(pick, outputs, unconnected_gradients="zero")
            per_layer = []
            for i, ((path, axis), t, y_again, dy) in enumerate(zip(layers, inputs, again,
                                                                     upstream)):
                dx = local.gradient(y_again, t, output_gradients=tf.cast(dy, y_again.dtype))
                reduce = [a for a in range(t.shape.rank) if a not in (0, axis)]
                per_layer.append(tf.cast(tf.reduce_sum(directions[i] * dx, axis=reduce),
                                         dtype))
            columns.append(tf.concat(per_layer, axis=1))       # (batch, sum of widths)
        del tape, local
        jac = tf.stack(columns, axis=1)                          # (batch, outputs, widths)
        batch, classes = tf.shape(jac)[0], jac.shape[1]
        u = tf.sparse.sparse_dense_matmul(tf.reshape(jac, [-1, sum(widths)]), matrix)
        u = tf.reshape(u, [batch, classes, n_gates])             # d out / d s, per sample
        first = tf.reduce_sum(residual[:, :, None] * u, axis=[0, 1])
        u_t = tf.reshape(tf.transpose(u, [0, 2, 1]), [-1, classes])
        y_rep = tf.repeat(y, n_gates, axis=0)
        out_rep = tf.repeat(out, n_gates, axis=0)
        lam_u = loss.output_hessian_product(y_rep, out_rep, u_t)
        second = tf.reduce_sum(tf.reshape(u_t * lam_u, [batch, n_gates, classes]), axis=[0, 2])
        u_g = tf.reshape(u_t, [batch, n_gates, classes])
        lam_g = tf.reshape(lam_u, [batch, n_gates, classes])
        matrices = [tf.einsum("ngk,nhk->gh", tf.gather(u_g, block, axis=1),   # sum_n u^T Lam u
                              tf.gather(lam_g, block, axis=1)) for block in blocks]
        return loss_sum, first, second, matrices, classes

    cache[key] = step
    return step
