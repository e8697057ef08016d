"""`CurvatureOperator`: compiled products of the Hessian or Gauss-Newton matrix with vectors.

Every public curvature function goes through one of these. An operator is made once per
model, loss, weights and kind of product (`operator_for` keeps them, holding the model only
weakly), and compiles one `tf.function` per data signature and *block layout*: the tuple of
weight-index sets, one per vector, that a call multiplies. A plain product has one set (all
weights); a Hutchinson pass several copies of it; a block power iteration one set per layer or
channel group. Several vectors in one call share the forward pass and the gradient (the
primal computation), and a vector restricted to a block only propagates tangents through the
part of the network that depends on it.

Per batch and per replica the compiled function returns the loss summed over the samples,
the number of samples and the products summed over the samples; batches and replicas are
summed (`strategy.reduce`) and divided by the number of samples at the end, so the result is
the mean over all samples however they are batched or split across devices.
"""

from __future__ import annotations

import collections
import weakref
from typing import List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfprune.curvature.data import CalibrationData
from tfprune.curvature.losses import CROSS_ENTROPIES, MSE, resolve_loss
from tfprune.curvature.model_view import ModelView
from tfprune.errors import CurvatureError, NonFiniteError

EXACT = "exact"
GAUSS_NEWTON = "gauss_newton"
HESSIANS = (EXACT, GAUSS_NEWTON)
FORWARD_OVER_REVERSE = "forward_over_reverse"
REVERSE_OVER_REVERSE = "reverse_over_reverse"
METHODS = (FORWARD_OVER_REVERSE, REVERSE_OVER_REVERSE)
_ZERO = tf.UnconnectedGradients.ZERO


class CurvatureOperator:
    """Products `H v` (exact Hessian) or `G v` (Gauss-Newton) of a model's mean loss.

    Args:
        model: a built single-output `keras.Model`; it is never modified, and the operator
            holds it weakly (keep a reference while you use the operator).
        loss_fn: a `keras.losses.Loss`, a Keras loss name or a callable `(y_true, y_pred)`.
        hessian: `"exact"` or `"gauss_newton"`.
        method: how the exact product is differentiated: `"forward_over_reverse"` (a forward-mode
            JVP of the gradient) or `"reverse_over_reverse"` (the gradient of `<g, v>`). The
            Gauss-Newton product is always a forward-mode `J v` and a reverse-mode `J^T r`.
        weights: the variables the products act on (a subset of `model.trainable_weights`);
            None for all.
        jit_compile: compile the per-replica computation with XLA.

    Example:

    ```python
    import numpy as np, keras
    from tfprune.curvature.operator import CurvatureOperator
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    op = CurvatureOperator(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.random.rand(32, 4).astype("float32"), np.random.randint(0, 3, 32)
    hv = op.products((x, y), [[np.ones(w.shape, "float32") for w in op.weights]])[0]
    ```
    """

    def __init__(self, model, loss_fn, hessian: str = EXACT, method: str = FORWARD_OVER_REVERSE,
                 weights: Optional[Sequence] = None, jit_compile: bool = False):
        check_choice("hessian", hessian, HESSIANS)
        check_choice("method", method, METHODS)
        self.loss = resolve_loss(loss_fn)
        self.hessian = hessian
        self.method = method
        self.jit_compile = bool(jit_compile)
        strip = self.loss.kind in CROSS_ENTROPIES and not self.loss.from_logits
        self.view = ModelView(model, weights, strip_softmax=strip)
        self._logits = self.loss.kind in CROSS_ENTROPIES and (self.loss.from_logits
                                                              or self.view.logits)
        if hessian == GAUSS_NEWTON and not (self._logits or self.loss.kind == MSE):
            raise CurvatureError(
                f"the Gauss-Newton product needs softmax cross-entropy (from logits, or on a "
                f"functional/Sequential model that ends in a softmax) or mean squared error; the "
                f"loss is {self.loss.name} on model {self.view.model_name!r}. Use "
                "hessian='exact' for other losses")
        self._programs = {}

    @property
    def weights(self) -> List:
        return self.view.weights

    @property
    def names(self) -> List[str]:
        return self.view.names

    def check_vectors(self, vectors, what: str = "vectors") -> List[tf.Tensor]:
        """`vectors` as tensors of the weights' shapes and the curvature dtype, or a clear error."""
        if isinstance(vectors, (tf.Tensor, np.ndarray)) or not isinstance(vectors, (list, tuple)):
            raise CurvatureError(f"{what} must be a list with one array per weight "
                                 f"({len(self.weights)} weights); received {type(vectors).__name__}")
        if len(vectors) != len(self.weights):
            raise CurvatureError(f"{what} has {len(vectors)} arrays; expected one per weight: "
                                 f"{len(self.weights)} ({', '.join(self.names)})")
        out = []
        for v, w, name in zip(vectors, self.weights, self.names):
            if tuple(np.shape(v)) != tuple(w.shape):
                raise CurvatureError(f"{what}: the array for {name} has shape {tuple(np.shape(v))}; "
                                     f"expected {tuple(w.shape)}")
            t = tf.cast(tf.convert_to_tensor(v), self.view.dtype)
            if not bool(tf.reduce_all(tf.math.is_finite(t))):
                raise NonFiniteError(f"{what}: the array for {name} is not finite (NaN or inf)")
            out.append(t)
        return out

    def products(self, data, vectors: Sequence[Sequence], blocks: Optional[Sequence] = None,
                 batch_size: int = 128) -> List[List[tf.Tensor]]:
        """Curvature times each of several vectors, in one pass over the data.

        Args:
            data: `(x, y)` or a `tf.data.Dataset` of `(x, y)` batches (or a `CalibrationData`).
            vectors: for each product, a list of tensors: one per weight index of its block
                (in the block's order), or one per weight when `blocks` is None.
            blocks: for each product, a tuple of weight indices (into `self.weights`) that its
                vector lives on; the product is the diagonal block `H[b, b] v_b`. None: every
                product acts on all weights.
            batch_size: samples per batch for `(x, y)` arrays.

        Returns:
            One list of tensors per product, shaped like its block's weights: the mean over
            samples.

        Raises:
            NonFiniteError: the loss or a product is NaN or infinite.
        """
        data = CalibrationData.of(data, batch_size)
        self._check_inputs(data)
        full = tuple(range(len(self.weights)))
        blocks = tuple(tuple(b) for b in blocks) if blocks is not None else (full,) * len(vectors)
        if len(blocks) != len(vectors):
            raise CurvatureError(f"{len(vectors)} vectors for {len(blocks)} blocks")
        flat = [tf.cast(t, self.view.dtype) for vs in vectors for t in vs]
        strategy = tf.distribute.get_strategy()
        step = self._program(data, strategy, blocks)
        total = None
        for batch in data.batches(strategy):
            out = step(batch, flat)
            total = out if total is None else tf.nest.map_structure(tf.add, total, out)
        loss_sum, count, sums = total
        count = float(count)
        loss = float(loss_sum) / count
        if not np.isfinite(loss):
            raise NonFiniteError(f"the loss ({self.loss.name}) of model {self.view.model_name!r} "
                                 f"is {loss} on the curvature data")
        values, finite = _mean_and_check(list(sums), tf.constant(count, sums[0].dtype))
        finite = finite.numpy()                 # one transfer for every weight's check
        results, k = [], 0
        for block in blocks:
            result = []
            for i in block:
                if not finite[k]:
                    raise NonFiniteError(f"the {self._kind_name()} product is not finite (NaN or "
                                         f"inf) for weight {self.names[i]}")
                result.append(values[k])
                k += 1
            results.append(result)
        return results

    def _kind_name(self) -> str:
        return "Gauss-Newton" if self.hessian == GAUSS_NEWTON else "Hessian-vector"

    def _check_inputs(self, data: CalibrationData):
        ranks = self.view.input_ranks
        if ranks is None:
            return
        given = [t.shape.rank for t in tf.nest.flatten(data.x)]
        if len(given) != len(ranks) or given != ranks:
            raise CurvatureError(
                f"model {self.view.model_name!r} takes {len(ranks)} input(s) of rank {ranks} "
                f"(batch axis included); the data's x has {len(given)} of rank {given}. A dataset "
                "must yield batches (dataset.batch(n))")

    def _program(self, data: CalibrationData, strategy, blocks):
        dist = data.batches(strategy)
        spec = dist.element_spec
        key = (id(strategy), repr(spec), blocks)
        if key not in self._programs:
            vector_specs = [tf.TensorSpec(self.weights[i].shape, self.view.dtype)
                            for block in blocks for i in block]
            replica = self._replica_products
            if self.jit_compile:
                replica = tf.function(replica, jit_compile=True)

            def step(batch, vectors):
                x, y = batch
                per_replica = strategy.run(replica, args=(x, y, vectors, blocks))
                return tf.nest.map_structure(
                    lambda t: strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None),
                    per_replica)

            self._programs[key] = (strategy, tf.function(step, input_signature=[spec, vector_specs]))
        return self._programs[key][1]

    def _replica_products(self, x, y, vectors, blocks):
        trainable, non_trainable = self.view.read()
        idx = self.view.indices
        groups, k = [], 0
        for block in blocks:
            groups.append(list(vectors[k:k + len(block)]))
            k += len(block)

        def outputs():
            return self.view.call(trainable, non_trainable, x)

        def loss_sum(out):
            return self.loss.sum_over_samples(y, out, self._logits)

        if self.hessian == GAUSS_NEWTON:
            loss, sums = self._gauss_newton(outputs, loss_sum, y, trainable, idx, blocks, groups)
        elif self.method == REVERSE_OVER_REVERSE:
            loss, sums = self._reverse_over_reverse(outputs, loss_sum, trainable, idx, blocks, groups)
        else:
            loss, sums = self._forward_over_reverse(outputs, loss_sum, trainable, idx, blocks, groups)
        count = tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], self.view.dtype)
        return loss, count, sums

    @staticmethod
    def _forward_over_reverse(outputs, loss_sum, trainable, idx, blocks, groups):
        # One accumulator per block (nested accumulators would also differentiate each other's
        # tangents); the primal forward pass and gradient are identical across blocks and are
        # computed once after graph optimisation (common subexpression elimination).
        sums, loss = [], None
        for block, vs in zip(blocks, groups):
            primals = [trainable[idx[i]] for i in block]
            with tf.autodiff.ForwardAccumulator(primals, vs) as acc:
                with tf.GradientTape() as tape:
                    tape.watch(primals)
                    block_loss = loss_sum(outputs())
                grads = tape.gradient(block_loss, primals, unconnected_gradients=_ZERO)
            sums.extend(acc.jvp(grads, unconnected_gradients=_ZERO))
            loss = block_loss if loss is None else loss
        return loss, sums

    @staticmethod
    def _reverse_over_reverse(outputs, loss_sum, trainable, idx, blocks, groups):
        # Differentiate <g, v> with respect to the weights, v held constant; one persistent outer
        # tape serves every block, so the forward pass and the gradient are computed once.
        used = sorted({i for block in blocks for i in block})
        primals = {i: trainable[idx[i]] for i in used}
        with tf.GradientTape(persistent=len(blocks) > 1) as outer:
            outer.watch(list(primals.values()))
            with tf.GradientTape() as inner:
                inner.watch(list(primals.values()))
                loss = loss_sum(outputs())
            grads = dict(zip(used, inner.gradient(loss, [primals[i] for i in used],
                                                  unconnected_gradients=_ZERO)))
            dots = [tf.add_n([tf.reduce_sum(grads[i] * v) for i, v in zip(block, vs)])
                    for block, vs in zip(blocks, groups)]
        sums = []
        for block, dot in zip(blocks, dots):
            sums.extend(outer.gradient(dot, [primals[i] for i in block],
                                       unconnected_gradients=_ZERO))
        return loss, sums

    def _gauss_newton(self, outputs, loss_sum, y, trainable, idx, blocks, groups):
        # G v = J^T Lambda J v: J v by forward mode, Lambda per sample in closed form, J^T r by
        # one reverse pass from the outputs.
        sums, loss = [], None
        for block, vs in zip(blocks, groups):
            primals = [trainable[idx[i]] for i in block]
            with tf.GradientTape() as tape:
                tape.watch(primals)
                with tf.autodiff.ForwardAccumulator(primals, vs) as acc:
                    out = outputs()
                jv = acc.jvp(out, unconnected_gradients=_ZERO)
            r = tf.stop_gradient(self.loss.output_hessian_product(y, out, jv))
            sums.extend(tape.gradient(out, primals, output_gradients=r,
                                      unconnected_gradients=_ZERO))
            loss = loss_sum(out) if loss is None else loss
        return loss, sums


@tf.function(reduce_retracing=True)
def _mean_and_check(sums, count):
    """`sums / count` and, per tensor, whether every entry is finite (one compiled call)."""
    values = [t / count for t in sums]
    return values, tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in values])


_OPERATORS = weakref.WeakKeyDictionary()
_PER_MODEL = 8


def operator_for(model, loss_fn, hessian: str = EXACT, method: str = FORWARD_OVER_REVERSE,
                 weights: Optional[Sequence] = None, jit_compile: bool = False) -> CurvatureOperator:
    """The `CurvatureOperator` for these arguments, reused across calls for the same model.

    Reuse keeps the compiled functions: a model is traced once per data signature and block
    layout. Losses are the same when they are the same name, the same Keras loss class with
    the same config, or the same object. The cache holds the model weakly (operators only hold
    its variables), and keeps the last few operators per model.
    """
    check_choice("hessian", hessian, HESSIANS)
    check_choice("method", method, METHODS)
    if hessian == GAUSS_NEWTON:  # one way to compute it: share the operator
        method = FORWARD_OVER_REVERSE
    try:
        entries = _OPERATORS.setdefault(model, collections.OrderedDict())
    except TypeError:  # not weak-referenceable: no reuse
        return CurvatureOperator(model, loss_fn, hessian, method, weights, jit_compile)
    key = (hessian, method, bool(jit_compile), _loss_key(loss_fn),
           None if weights is None else tuple(id(w) for w in weights),
           tuple(id(v) for v in getattr(model, "trainable_variables", ())))
    if key in entries:
        entries.move_to_end(key)
        return entries[key][1]
    op = CurvatureOperator(model, loss_fn, hessian, method, weights, jit_compile)
    entries[key] = (loss_fn, op)  # the loss is kept so that an id in a key stays unique
    while len(entries) > _PER_MODEL:
        entries.popitem(last=False)
    return op


def _loss_key(loss_fn):
    """Equal for equal losses: a name, a Keras loss class and config, else the object itself."""
    if isinstance(loss_fn, str):
        return loss_fn
    if isinstance(loss_fn, keras.losses.Loss):
        try:
            return type(loss_fn), repr(sorted(loss_fn.get_config().items()))
        except NotImplementedError:
            pass
    return id(loss_fn)


def check_choice(name: str, value, choices: Tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        raise CurvatureError(f"{name} must be one of {choices}; received {value!r}")


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CurvatureError(f"{name} must be a positive int; received {value!r}")


def check_tolerance(tol) -> None:
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) \
            or not np.isfinite(tol) or tol < 0:
        raise CurvatureError(f"tol must be a finite number >= 0; received {tol!r}")


def check_seed(seed) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise CurvatureError(f"seed must be an int or None; received {seed!r}")
