"""Compilation, distribution, precision, non-finite values, bad input, and the user's model."""

import gc
import json
import os
import subprocess
import sys
import textwrap
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

import curvature_reference as ref
from tfprune import curvature
from tfprune.errors import CurvatureError, NonFiniteError

LOGITS_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _vectors(model, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(w.shape).astype("float32") for w in model.trainable_weights]


def _rel(a, b):
    a = np.concatenate([np.ravel(t) for t in a])
    b = np.concatenate([np.ravel(t) for t in b])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_traced_once_per_model_and_data_signature():
    traces = []

    def loss(y_true, logits):  # runs only while the product is being traced
        traces.append(1)
        return ref.sparse_ce_logits(y_true, logits)

    model = ref.mlp()
    v = _vectors(model)
    for n in (48, 80, 20):  # different sizes and partial last batches, one signature
        x, y = ref.classification_data(model, n, 3, seed=n)
        curvature.hessian_vector_product(model, loss, (x, y), v, batch_size=32)
    assert len(traces) == 1
    curvature.power_iteration(model, loss, (x, y), max_iter=4, batch_size=32)
    assert len(traces) == 1
    curvature.hessian_vector_product(model, loss, (x.astype("float64"), y), v)  # new signature
    assert len(traces) == 2

    class Counting(keras.losses.Loss):
        def call(self, y_true, y_pred):
            traces.append(1)
            return ref.sparse_ce_logits(y_true, y_pred)

    for _ in range(2):  # equal Keras losses (same class and config) share the compiled product
        curvature.hessian_vector_product(model, Counting(name="counting"), (x, y), v)
    assert len(traces) == 3


def test_dropout_and_batchnorm_run_in_inference_mode():
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    dropout = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh"),
                                keras.layers.BatchNormalization(), keras.layers.Dropout(0.9),
                                keras.layers.Dense(3)])
    dropout.set_weights(plain.get_weights())
    x, y = ref.classification_data(plain, 32, 3)
    v = _vectors(plain)
    a = curvature.hessian_vector_product(plain, LOGITS_CE, (x, y), v, batch_size=8)
    b = curvature.hessian_vector_product(dropout, LOGITS_CE, (x, y), v, batch_size=8)
    assert _rel(b, a) < 1e-6
    # Training-mode BatchNorm would use batch statistics and change with the batch size.
    c = curvature.hessian_vector_product(plain, LOGITS_CE, (x, y), v, batch_size=32)
    assert _rel(c, a) < 1e-5


_DISTRIBUTED = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, {testdir!r})
    import curvature_reference as ref
    from tfprune import curvature

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = ref.mlp()
    x, y = ref.classification_data(model, 21, 3)  # 21: uneven splits over batches and replicas
    rng = np.random.default_rng(0)
    v = [rng.standard_normal(w.shape).astype("float32") for w in model.trainable_weights]

    def run(m):
        return {{
            "hvp": curvature.hessian_vector_product(m, loss, (x, y), v, batch_size=8),
            "gnvp": curvature.gauss_newton_vector_product(m, loss, (x, y), v, batch_size=8),
            "hutchinson": curvature.hutchinson(m, loss, (x, y), samples=2, vectors_per_pass=2,
                                               method="reverse_over_reverse",
                                               batch_size=8).diagonal,
            "gates": [curvature.gate_curvature(m, loss, (x, y), [[("dense_1", 1, [c])]
                                                                 for c in range(6)],
                                               batch_size=8).gauss_newton],
        }}

    def rel(a, b):
        a = np.concatenate([np.ravel(t) for t in a]); b = np.concatenate([np.ravel(t) for t in b])
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    one = run(model)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = ref.mlp()  # variables created under the strategy: MirroredVariables
        mirrored.set_weights(model.get_weights())
        errors = {{"replicas": strategy.num_replicas_in_sync}}
        for name, m in (("outside", model), ("mirrored", mirrored)):
            two = run(m)
            errors.update({{f"{{name}}/{{k}}": rel(two[k], one[k]) for k in one}})
    print("RESULT" + json.dumps(errors))
""")


def test_mirrored_strategy_on_two_devices_matches_one_device():
    code = _DISTRIBUTED.format(testdir=os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    errors = json.loads(lines[-1][len("RESULT"):])
    assert errors.pop("replicas") == 2
    assert len(errors) == 8
    assert all(e <= 1e-5 for e in errors.values()), errors


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_is_computed_in_float32(policy):
    plain, (x, y), _, _ = ref.case("residual")
    keras.config.set_dtype_policy(policy)
    try:
        mixed = ref.residual()
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.set_weights(plain.get_weights())
    # The model itself computes in low precision: its outputs differ from float32 ones.
    assert np.abs(mixed(x).numpy().astype("float32") - plain(x).numpy()).max() > 1e-5
    v = _vectors(plain)
    for fn in (curvature.hessian_vector_product, curvature.gauss_newton_vector_product):
        low = fn(mixed, "sparse_categorical_crossentropy", (x, y), v)
        full = fn(plain, "sparse_categorical_crossentropy", (x, y), v)
        assert all(t.dtype == tf.float32 for t in low)
        assert _rel(low, full) < 1e-5
    assert mixed.dtype_policy.name == policy  # the user's model is left as it was
    assert mixed.layers[-1].activation is keras.activations.softmax


def test_non_finite_loss_and_products_raise():
    model = ref.mlp()
    x, y = ref.classification_data(model, 16, 3)
    v = _vectors(model)
    with pytest.raises(NonFiniteError, match="vectors: the array for dense/kernel"):
        curvature.hessian_vector_product(model, LOGITS_CE, (x, y),
                                         [np.full_like(v[0], np.nan)] + v[1:])
    with pytest.raises(NonFiniteError, match="product is not finite .* for weight dense"):
        curvature.hessian_vector_product(model, LOGITS_CE, (x, y),
                                         [np.full(w.shape, 3e38, "float32") for w in v])
    kernel = model.layers[0].kernel
    kernel.assign(np.where(np.arange(kernel.shape[1]) == 0, np.nan, kernel.numpy()))
    with pytest.raises(NonFiniteError, match=r"the loss .* is nan"):
        curvature.gauss_newton_vector_product(model, LOGITS_CE, (x, y), v)


def test_bad_input_is_refused_with_the_cause():
    model = ref.mlp()
    x, y = ref.classification_data(model, 16, 3)
    v = _vectors(model)
    hvp = curvature.hessian_vector_product
    cases = [
        (lambda: hvp(model, "no_such_loss", (x, y), v), "unknown loss 'no_such_loss'"),
        (lambda: hvp(model, 3, (x, y), v), "loss_fn must be"),
        (lambda: curvature.gauss_newton_vector_product(model, "mae", (x, y), v),
         "Gauss-Newton product needs softmax cross-entropy"),
        (lambda: hvp(model, LOGITS_CE, (x, y), v, method="forward"), "method must be one of"),
        (lambda: curvature.power_iteration(model, LOGITS_CE, (x, y), hessian="diag"),
         "hessian must be one of"),
        (lambda: hvp("model", LOGITS_CE, (x, y), v), "model must be a keras.Model"),
        (lambda: hvp(model, LOGITS_CE, (x, y), v[:-1]), "has 3 arrays; expected one per weight: 4"),
        (lambda: hvp(model, LOGITS_CE, (x, y), [v[1]] + v[1:]),
         r"array for dense/kernel has shape \(6,\); expected \(5, 6\)"),
        (lambda: hvp(model, LOGITS_CE, (x, y), v[0]), "must be a list with one array per weight"),
        (lambda: hvp(model, LOGITS_CE, (x, y, y), v), "received a tuple of 3 elements"),
        (lambda: hvp(model, LOGITS_CE, {"x": x}, v), "received dict"),
        (lambda: hvp(model, LOGITS_CE, (x, y[:10]), v), "same number of samples"),
        (lambda: hvp(model, LOGITS_CE, (x[:0], y[:0]), v), "no samples"),
        (lambda: hvp(model, LOGITS_CE, (x, y), v, batch_size=0), "batch_size must be"),
        (lambda: hvp(model, LOGITS_CE, tf.data.Dataset.from_tensor_slices((x, y, y)).batch(4), v),
         "sample weights are not supported"),
        (lambda: hvp(model, LOGITS_CE, tf.data.Dataset.from_tensor_slices((x, y)).repeat(), v),
         "infinite"),
        (lambda: hvp(model, LOGITS_CE, tf.data.Dataset.from_tensor_slices((x, y)), v),
         "not batched"),
        (lambda: hvp(model, LOGITS_CE, (x[..., None], y), v),
         r"takes 1 input\(s\) of rank \[2\] .* rank \[3\]"),
        (lambda: hvp(model, LOGITS_CE, (x, y), v, weights=[ref.mlp().layers[0].kernel]),
         "not one of them"),
        (lambda: curvature.power_iteration(model, LOGITS_CE, (x, y), k=0), "k must be"),
        (lambda: curvature.power_iteration(model, LOGITS_CE, (x, y), tol=-1.0), "tol must be"),
        (lambda: curvature.power_iteration(model, LOGITS_CE, (x, y), seed="0"), "seed must be"),
        (lambda: curvature.block_power_iteration(model, LOGITS_CE, (x, y), blocks="weights"),
         "blocks must be 'layers' or"),
        (lambda: curvature.block_power_iteration(model, LOGITS_CE, (x, y), blocks=[1]),
         "must be tfprune.ChannelGroup"),
        (lambda: curvature.hutchinson(model, LOGITS_CE, (x, y), samples=0), "samples must be"),
    ]
    for call, message in cases:
        with pytest.raises(CurvatureError, match=message):
            call()
    frozen = ref.mlp()
    frozen.trainable = False
    with pytest.raises(CurvatureError, match="has no trainable weights"):
        hvp(frozen, LOGITS_CE, (x, y), [])
    inputs = keras.Input((5,))
    two = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])
    with pytest.raises(CurvatureError, match="has 2 outputs"):
        hvp(two, LOGITS_CE, (x, y), [])
    assert issubclass(CurvatureError, ValueError)


def test_the_users_model_is_not_changed_nor_kept_alive():
    model = ref.residual()
    before = [w.copy() for w in model.get_weights()]
    x, y = ref.classification_data(model, 16, 4)
    out = model(x).numpy()
    curvature.gauss_newton_vector_product(model, "sparse_categorical_crossentropy", (x, y),
                                          _vectors(model))
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
    assert model.layers[-1].activation is keras.activations.softmax
    np.testing.assert_array_equal(model(x).numpy(), out)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
