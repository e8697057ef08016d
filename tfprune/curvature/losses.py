"""How a loss given to a curvature function becomes a sum of per-sample losses.

Curvature is always that of the *mean over samples* of the per-sample loss. A `keras.losses.Loss`
contributes `loss.call(y_true, y_pred)` (its unreduced values, whatever its `reduction`), a Keras
loss function or name its per-sample values, and a plain callable either per-sample values or a
scalar that is taken to be the mean over its batch. Per-sample values with more than one entry
per sample (e.g. per time step) are averaged over those entries.

Softmax cross-entropy (sparse or categorical) and mean squared error are recognised: they are
the losses whose Gauss-Newton matrix tfprune knows. Cross-entropy is always evaluated from
logits, `logsumexp(z) - <y, z>`, which is twice differentiable everywhere (TensorFlow's fused
cross-entropy kernels refuse second derivatives) and equals the loss on the softmax
probabilities up to Keras' probability clipping.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras
import tensorflow as tf

from tfprune.errors import CurvatureError

SPARSE_CE = "sparse_categorical_crossentropy"
CATEGORICAL_CE = "categorical_crossentropy"
MSE = "mean_squared_error"
CROSS_ENTROPIES = (SPARSE_CE, CATEGORICAL_CE)

_FUNCTIONS = {
    keras.losses.sparse_categorical_crossentropy: SPARSE_CE,
    keras.losses.categorical_crossentropy: CATEGORICAL_CE,
    keras.losses.mean_squared_error: MSE,
}
_CLASSES = (
    (keras.losses.SparseCategoricalCrossentropy, SPARSE_CE),
    (keras.losses.CategoricalCrossentropy, CATEGORICAL_CE),
    (keras.losses.MeanSquaredError, MSE),
)
ACCEPTED = ("a keras.losses.Loss, a Keras loss name (e.g. 'sparse_categorical_crossentropy', "
            "'categorical_crossentropy', 'mse') or a callable (y_true, y_pred) -> loss")


@dataclasses.dataclass(frozen=True)
class CurvatureLoss:
    """A loss resolved for curvature.

    Attributes:
        kind: `SPARSE_CE`, `CATEGORICAL_CE`, `MSE`, or None for any other loss.
        from_logits: whether a cross-entropy takes logits (False: softmax probabilities).
        label_smoothing: of a categorical cross-entropy.
        fn: `(y_true, y_pred) -> per-sample or scalar loss`, used for every loss that is not
            evaluated in logits form.
        name: how messages name the loss.
    """

    kind: Optional[str]
    from_logits: bool
    label_smoothing: float
    fn: Callable
    name: str

    def sum_over_samples(self, y, outputs, logits: bool):
        """Sum over the batch of the per-sample loss; `logits`: `outputs` are softmax logits."""
        if logits:
            return tf.reduce_sum(self._cross_entropy_from_logits(y, outputs))
        values = self.fn(y, outputs)
        values = tf.convert_to_tensor(values)
        count = tf.shape(tf.nest.flatten(outputs)[0])[0]
        if values.shape.rank == 0:  # the callable already averaged over its batch
            return tf.where(count > 0, values, tf.zeros_like(values)) * tf.cast(count, values.dtype)
        if values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        return tf.reduce_sum(values)

    def _targets(self, y, logits):
        """Per-sample target distributions `(batch, classes)` in the logits' dtype."""
        if self.kind == SPARSE_CE:
            labels = tf.reshape(tf.cast(y, tf.int32), [-1])
            return tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
        y = tf.cast(y, logits.dtype)
        if self.label_smoothing:
            classes = tf.cast(tf.shape(logits)[-1], logits.dtype)
            y = y * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        return y

    def _cross_entropy_from_logits(self, y, logits):
        if self.kind == SPARSE_CE:
            labels = tf.reshape(tf.cast(y, tf.int32), [-1])
            return tf.reduce_logsumexp(logits, -1) - tf.gather(logits, labels, batch_dims=1)
        t = self._targets(y, logits)
        return tf.reduce_sum(t, -1) * tf.reduce_logsumexp(logits, -1) - tf.reduce_sum(t * logits, -1)

    def output_hessian_product(self, y, outputs, u):
        """`Lambda u` per sample: the Hessian of the per-sample loss w.r.t. the outputs times `u`.

        For softmax cross-entropy on logits `z` (`p = softmax(z)`, targets summing to `s`):
        `s (p*u - p <p, u>)`; for mean squared error over `d` output entries: `2 u / d`.
        """
        if self.kind in CROSS_ENTROPIES:
            p = tf.nn.softmax(outputs, axis=-1)
            s = tf.reduce_sum(self._targets(y, outputs), -1, keepdims=True)
            return s * (p * u - p * tf.reduce_sum(p * u, -1, keepdims=True))
        per_sample = tf.reduce_prod(tf.shape(outputs)[1:])
        return u * (2.0 / tf.cast(per_sample, u.dtype))


def resolve_loss(loss_fn) -> CurvatureLoss:
    """A `CurvatureLoss` for a `keras.losses.Loss`, a Keras loss name or a callable.

    Raises:
        CurvatureError: for anything else, or a name Keras does not know.
    """
    if isinstance(loss_fn, str):
        try:
            resolved = keras.losses.get(loss_fn)
        except (ValueError, TypeError):
            resolved = None
        if resolved is None:
            raise CurvatureError(f"unknown loss {loss_fn!r}: pass {ACCEPTED}")
        return _resolve_object(resolved, name=repr(loss_fn))
    if isinstance(loss_fn, keras.losses.Loss) or callable(loss_fn):
        return _resolve_object(loss_fn, name=_describe(loss_fn))
    raise CurvatureError(f"loss_fn must be {ACCEPTED}; received {type(loss_fn).__name__}")


def _describe(obj) -> str:
    return getattr(obj, "name", None) or getattr(obj, "__name__", None) or type(obj).__name__


def _resolve_object(obj, name: str) -> CurvatureLoss:
    if isinstance(obj, keras.losses.Loss):
        for cls, kind in _CLASSES:
            if isinstance(obj, cls):
                config = obj.get_config()
                # Masked or non-last-axis cross-entropies are left to Keras' own code.
                if config.get("ignore_class") is None and config.get("axis", -1) == -1:
                    return CurvatureLoss(kind, bool(config.get("from_logits", False)),
                                         float(config.get("label_smoothing", 0.0) or 0.0),
                                         obj.call, name)
        return CurvatureLoss(None, False, 0.0, obj.call, name)
    try:
        kind = _FUNCTIONS.get(obj)
    except TypeError:  # unhashable callables
        kind = None
    return CurvatureLoss(kind, False, 0.0, obj, name)
