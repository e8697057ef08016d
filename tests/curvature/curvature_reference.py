"""Exact curvature of tiny models, built independently of tfprune.curvature, in float64.

The Hessian is the Jacobian of the gradient (nested tapes) of the mean loss over all samples,
with BatchNormalization in inference mode, on a float64 clone of the model carrying the same
weights. The losses are written out here (cross-entropy as `-log softmax`, or on probabilities
for models that end in a softmax) rather than taken from tfprune.
"""

import functools

import keras
import numpy as np
import tensorflow as tf


def float64_clone(model, linear_output=False):
    """A float64 copy of `model`; `linear_output`: without the final layer's activation."""
    last = model.layers[-1]

    def clone_layer(layer):
        config = {**layer.get_config(), "dtype": "float64"}
        if linear_output and layer is last:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return clone


def sparse_ce_logits(y, z):
    return -tf.gather(tf.nn.log_softmax(z), tf.cast(y, tf.int32), batch_dims=1)


def sparse_ce_probs(y, p):
    return -tf.math.log(tf.gather(p, tf.cast(y, tf.int32), batch_dims=1))


def mse(y, out):
    return tf.reduce_mean(tf.square(out - tf.cast(y, out.dtype)), axis=-1)


class Reference:
    """Flat float64 Hessian, gradient and Gauss-Newton matrix of `mean(per_sample(y, model(x)))`.

    Args:
        model: a tiny float32 model.
        per_sample: `(y, outputs) -> (batch,)` float64 losses.
        x, y: all the data.
        weights: the variables to differentiate (default: all trainable ones).
    """

    def __init__(self, model, per_sample, x, y, weights=None):
        self.model = model
        self.clone = float64_clone(model)
        self.per_sample = per_sample
        self.x = tf.constant(np.asarray(x, dtype=np.float64))
        self.y = tf.constant(y)
        trainable = model.trainable_weights
        weights = trainable if weights is None else weights
        position = {id(v): i for i, v in enumerate(trainable)}
        self.indices = [position[id(w)] for w in weights]
        self.shapes = [tuple(w.shape) for w in weights]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.theta = tf.constant(np.concatenate(
            [np.asarray(trainable[i].numpy(), np.float64).ravel() for i in self.indices]))

    def _values(self, theta):
        trainable = [tf.convert_to_tensor(v) for v in self.clone.trainable_variables]
        for k, i in enumerate(self.indices):
            trainable[i] = tf.reshape(theta[self.offsets[k]:self.offsets[k + 1]], self.shapes[k])
        non_trainable = [tf.convert_to_tensor(v) for v in self.clone.non_trainable_variables]
        return trainable, non_trainable

    def outputs(self, theta, strip_softmax=False):
        """The model's outputs; `strip_softmax`: the logits of a model ending in Dense(softmax)."""
        trainable, non_trainable = self._values(theta)
        model = float64_clone(self.model, linear_output=True) if strip_softmax else self.clone
        out, _ = model.stateless_call(trainable, non_trainable, self.x, training=False)
        return out

    def loss(self, theta):
        return tf.reduce_mean(self.per_sample(self.y, self.outputs(theta)))

    def hessian(self):
        theta = self.theta
        with tf.GradientTape() as outer:
            outer.watch(theta)
            with tf.GradientTape() as inner:
                inner.watch(theta)
                loss = self.loss(theta)
            grad = inner.gradient(loss, theta)
        return outer.jacobian(grad, theta).numpy()

    def gauss_newton(self, kind, strip_softmax=False):
        """`mean_n J_n^T Lambda_n J_n`, built from the explicit Jacobian of the outputs."""
        theta = self.theta
        with tf.GradientTape() as tape:
            tape.watch(theta)
            out = self.outputs(theta, strip_softmax)
        jac = tape.jacobian(out, theta).numpy()  # (n, c, p)
        out = out.numpy()
        n, c = out.shape
        total = np.zeros((theta.shape[0],) * 2)
        for i in range(n):
            if kind == "ce":
                p = np.exp(out[i] - out[i].max())
                p /= p.sum()
                lam = np.diag(p) - np.outer(p, p)
            else:
                lam = 2.0 / c * np.eye(c)
            total += jac[i].T @ lam @ jac[i]
        return total / n

    def flatten(self, arrays):
        return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])

    def unflatten(self, flat):
        return [flat[self.offsets[k]:self.offsets[k + 1]].reshape(s).astype(np.float32)
                for k, s in enumerate(self.shapes)]


def relative_error(result, expected) -> float:
    result, expected = np.asarray(result, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(result - expected) / np.linalg.norm(expected))


def assert_exact(result, expected, rtol=1e-4):
    """The exactness check every product must pass: relative error (2-norm) at most `rtol`."""
    err = relative_error(result, expected)
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g}"


def top_eigenpairs(matrix, k):
    """Eigenpairs of a symmetric matrix ordered by decreasing |eigenvalue|."""
    values, vectors = np.linalg.eigh(matrix)
    order = np.argsort(-np.abs(values))[:k]
    return values[order], vectors[:, order]


# --- tiny models (layers named explicitly: tests refer to them by name) --------------------


def mlp(seed=0, outputs=3, activation="tanh"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)),
                             keras.layers.Dense(6, activation=activation, name="dense"),
                             keras.layers.Dense(outputs, name="dense_1")], name="mlp")


def _randomize_bn(model, seed):
    """Non-trivial inference statistics, so that BatchNormalization is not the identity."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.3, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))


def cnn_bn(seed=0):
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, padding="same", name="conv2d")(inputs)
    x = layers.BatchNormalization(name="batch_normalization")(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(4, 3, strides=2, padding="same", name="conv2d_1")(x)
    x = layers.BatchNormalization(name="batch_normalization_1")(x)
    x = layers.Activation("tanh")(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(3, name="dense")(x)
    model = keras.Model(inputs, outputs, name="cnn_bn")
    _randomize_bn(model, seed)
    return model


def residual(seed=0):
    """A residual block with BatchNorm, ending in a softmax."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((5, 5, 3))
    y = layers.Conv2D(3, 3, padding="same", name="conv2d")(inputs)
    y = layers.BatchNormalization(name="batch_normalization")(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(3, 3, padding="same", name="conv2d_1")(y)
    y = layers.BatchNormalization(name="batch_normalization_1")(y)
    x = layers.Add()([inputs, y])
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(4, activation="softmax", name="dense")(x)
    model = keras.Model(inputs, outputs, name="residual")
    _randomize_bn(model, seed)
    return model


def classification_data(model, n, classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + tuple(model.input_shape[1:])).astype("float32")
    return x, rng.integers(0, classes, n)


CLASSES = {"mlp": 3, "cnn_bn": 3, "residual": 4}
BUILDERS = {"mlp": mlp, "cnn_bn": cnn_bn, "residual": residual}
PER_SAMPLE = {"mlp": sparse_ce_logits, "cnn_bn": sparse_ce_logits, "residual": sparse_ce_probs}


@functools.lru_cache(maxsize=None)
def case(name, n=24):
    """`(model, (x, y), Reference, exact Hessian)` of a tiny model, computed once per process.

    The model is shared by the tests that ask for it: they must not change it.
    """
    model = BUILDERS[name]()
    x, y = classification_data(model, n, CLASSES[name])
    reference = Reference(model, PER_SAMPLE[name], x, y)
    return model, (x, y), reference, reference.hessian()
