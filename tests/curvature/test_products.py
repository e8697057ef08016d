"""Hessian- and Gauss-Newton-vector products against the exact matrices of tiny models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import curvature_reference as ref
from tfprune import curvature
from tfprune.curvature.operator import CurvatureOperator

LOGITS_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
METHODS = ("forward_over_reverse", "reverse_over_reverse")

# name: (loss given to tfprune, the model ends in a softmax)
MODELS = {
    "mlp": (LOGITS_CE, False),
    "cnn_bn": (LOGITS_CE, False),
    "residual": ("sparse_categorical_crossentropy", True),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    model, (x, y), reference, hessian = ref.case(request.param)
    loss, softmax = MODELS[request.param]
    v = reference.unflatten(np.random.default_rng(1).standard_normal(reference.theta.shape[0]))
    return dict(model=model, x=x, y=y, loss=loss, ref=reference, hessian=hessian,
                softmax=softmax, v=v)


@pytest.mark.parametrize("method", METHODS)
def test_hvp_equals_exact_hessian_times_v(case, method):
    r = case["ref"]
    hv = curvature.hessian_vector_product(case["model"], case["loss"], (case["x"], case["y"]),
                                          case["v"], method=method, batch_size=10)
    assert [tuple(t.shape) for t in hv] == r.shapes
    assert all(t.dtype == tf.float32 for t in hv)
    ref.assert_exact(r.flatten(hv), case["hessian"] @ r.flatten(case["v"]))


def test_gauss_newton_equals_explicit_jt_lambda_j(case):
    r = case["ref"]
    gv = curvature.gauss_newton_vector_product(case["model"], case["loss"],
                                               (case["x"], case["y"]), case["v"], batch_size=10)
    explicit = r.gauss_newton("ce", strip_softmax=case["softmax"])
    ref.assert_exact(r.flatten(gv), explicit @ r.flatten(case["v"]))
    # G is not H on these models: the check above could not pass by accident.
    assert ref.relative_error(explicit, case["hessian"]) > 1e-2


def test_gradient_instead_of_hvp_fails_the_exactness_check(case):
    """Differentiating <g, v> with respect to v (the prototype's bug) returns the gradient."""
    model, r = case["model"], case["ref"]
    weights = model.trainable_weights
    vs = [tf.Variable(a) for a in case["v"]]
    per_sample = ref.PER_SAMPLE[model.name]
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = tf.reduce_mean(per_sample(case["y"], model(case["x"], training=False)))
        grads = inner.gradient(loss, weights)
        dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vs)])
    wrong = outer.gradient(dot, vs)
    with pytest.raises(AssertionError, match="relative error"):
        ref.assert_exact(r.flatten(wrong), case["hessian"] @ r.flatten(case["v"]))


def test_weights_subset_gives_the_diagonal_block():
    model = ref.mlp()
    x, y = ref.classification_data(model, 24, 3)
    subset = [model.layers[1].kernel, model.layers[0].bias]
    r = ref.Reference(model, ref.sparse_ce_logits, x, y, weights=subset)
    v = r.unflatten(np.random.default_rng(2).standard_normal(r.theta.shape[0]))
    hv = curvature.hessian_vector_product(model, LOGITS_CE, (x, y), v, weights=subset)
    assert [tuple(t.shape) for t in hv] == [(6, 3), (6,)]
    ref.assert_exact(r.flatten(hv), r.hessian() @ r.flatten(v))


def test_mean_squared_error_hvp_and_gauss_newton():
    model = ref.mlp(outputs=2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 5)).astype("float32")
    y = rng.normal(size=(24, 2)).astype("float32")
    r = ref.Reference(model, ref.mse, x, y)
    v = r.unflatten(rng.standard_normal(r.theta.shape[0]))
    hv = curvature.hessian_vector_product(model, "mse", (x, y), v)
    ref.assert_exact(r.flatten(hv), r.hessian() @ r.flatten(v))
    gv = curvature.gauss_newton_vector_product(model, keras.losses.MeanSquaredError(), (x, y), v)
    ref.assert_exact(r.flatten(gv), r.gauss_newton("mse") @ r.flatten(v))


def test_dataset_scalar_loss_and_batching_give_the_same_product():
    """A dataset, another batch size and a callable returning the batch mean agree."""
    model = ref.mlp()
    x, y = ref.classification_data(model, 40, 3)
    v = [np.random.default_rng(4).standard_normal(w.shape).astype("float32")
         for w in model.trainable_weights]

    def batch_mean(y_true, logits):
        return tf.reduce_mean(ref.sparse_ce_logits(y_true, logits))

    base = curvature.hessian_vector_product(model, LOGITS_CE, (x, y), v, batch_size=40)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    for data, loss in (((x, y), batch_mean), (dataset, LOGITS_CE),
                       ((x, y), "sparse_categorical_crossentropy")):
        if loss == "sparse_categorical_crossentropy":  # on probabilities: same curvature
            probs = keras.Sequential([model, keras.layers.Softmax()])
            other = curvature.hessian_vector_product(probs, loss, data, v, batch_size=9)
        else:
            other = curvature.hessian_vector_product(model, loss, data, v, batch_size=9)
        for a, b in zip(other, base):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_categorical_cross_entropy_with_label_smoothing():
    model, (x, labels), _, _ = ref.case("mlp")
    y = np.eye(3, dtype="float32")[labels]
    smooth = y * 0.9 + 0.1 / 3

    def per_sample(y_true, logits):
        return -tf.reduce_sum(tf.constant(smooth, tf.float64) * tf.nn.log_softmax(logits), -1)

    r = ref.Reference(model, per_sample, x, y)
    v = r.unflatten(np.random.default_rng(5).standard_normal(r.theta.shape[0]))
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    hv = curvature.hessian_vector_product(model, loss, (x, y), v, method="reverse_over_reverse")
    ref.assert_exact(r.flatten(hv), r.hessian() @ r.flatten(v))
    gv = curvature.gauss_newton_vector_product(model, loss, (x, y), v)
    ref.assert_exact(r.flatten(gv), r.gauss_newton("ce") @ r.flatten(v))


def test_xla_compiled_products_equal_the_plain_ones():
    model, data, _, _ = ref.case("mlp")
    v = [np.ones(w.shape, "float32") for w in model.trainable_weights]
    plain = CurvatureOperator(model, LOGITS_CE).products(data, [v])[0]
    xla = CurvatureOperator(model, LOGITS_CE, jit_compile=True).products(data, [v])[0]
    for a, b in zip(xla, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
