"""recalibrate_batchnorm: exact pooled statistics, inference mode elsewhere, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tfprune.errors import DataError, InvalidPruningArgumentError
from tfprune.keras.batchnorm import batchnorm_layers


def _model(dropout=False, seed=0):
    keras.utils.set_random_seed(seed)
    x_in = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="c1")(x_in)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    if dropout:
        x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.Conv2D(5, 3, padding="same", name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(x_in, keras.layers.Dense(4, name="fc")(x))


def _data(n=96, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(0.5, 2.0, (n, 8, 8, 3)).astype("float32"),
            rng.integers(0, 4, n))


def _stats(values):
    v = np.asarray(values, np.float64)
    axes = tuple(range(v.ndim - 1))
    return v.mean(axis=axes), v.var(axis=axes)


def test_first_layer_statistics_are_exact_population_statistics_with_any_batching():
    model = _model()
    x, y = _data()
    conv = keras.Model(model.input, model.get_layer("c1").output)
    mean, var = _stats(conv(x))
    for batch_size in (96, 32, 40):          # one batch, equal batches, a shorter last batch
        tfprune.recalibrate_batchnorm(model, (x, y), batch_size=batch_size, verbose=0)
        bn = model.get_layer("bn1")
        np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-4, atol=1e-5)


def test_one_batch_equals_a_training_mode_pass_over_all_data():
    model = _model()
    x, _ = _data()
    inputs = keras.Model(model.input, [model.get_layer("bn1").input,
                                       model.get_layer("bn2").input])
    expected = [_stats(t) for t in inputs(x, training=True)]
    tfprune.recalibrate_batchnorm(model, x, batch_size=len(x), verbose=0)
    for name, (mean, var) in zip(("bn1", "bn2"), expected):
        bn = model.get_layer(name)
        np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-4, atol=1e-5)


def test_only_moving_statistics_change_and_the_model_is_restored():
    model = _model()
    x, _ = _data()
    before = {v.path: v.numpy().copy() for v in model.weights}
    out = tfprune.recalibrate_batchnorm(model, x, verbose=0)
    assert out is model
    changed = {p for p, v in ((v.path, v.numpy()) for v in model.weights)
               if not np.array_equal(v, before[p])}
    assert changed == {f"{b}/{s}" for b in ("bn1", "bn2")
                       for s in ("moving_mean", "moving_variance")}
    bn = model.get_layer("bn1")
    assert bn.momentum == 0.99 and "call" not in bn.__dict__
    # inference leaves the statistics alone again; training updates them with momentum 0.99
    stats = bn.moving_mean.numpy().copy()
    model(x, training=False)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), stats)
    model(x, training=True)
    batch_mean = _stats(keras.Model(model.input, model.get_layer("c1").output)(x))[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.99 * stats + 0.01 * batch_mean,
                               rtol=1e-4, atol=1e-6)


def test_inference_outputs_match_batch_statistics_after_recalibration():
    model = _model()
    x, _ = _data(n=256)
    for bn in ("bn1", "bn2"):                 # statistics far from the data's
        layer = model.get_layer(bn)
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, "float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 0.1, "float32"))
    target = keras.ops.convert_to_numpy(model(x, training=True))
    gap_before = np.abs(keras.ops.convert_to_numpy(model(x)) - target).max()
    tfprune.recalibrate_batchnorm(model, x, batch_size=len(x), verbose=0)
    gap_after = np.abs(keras.ops.convert_to_numpy(model(x)) - target).max()
    assert gap_after < 1e-3 * gap_before and gap_after < 1e-3


def test_dropout_stays_in_inference_mode():
    model = _model(dropout=True)
    x, _ = _data()
    inputs = keras.Model(model.input, model.get_layer("bn2").input)
    # with Dropout off, the one-batch statistics are those of a pass with only BN in training
    # mode: not reachable through `training=True`, so build them from the layers by hand
    h = model.get_layer("c1")(x)
    h = model.get_layer("bn1")(h, training=True)
    h = keras.ops.relu(h)
    mean, var = _stats(model.get_layer("c2")(h))
    tfprune.recalibrate_batchnorm(model, x, batch_size=len(x), verbose=0)
    bn = model.get_layer("bn2")
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-4, atol=1e-5)
    _, var_dropout = _stats(inputs(x, training=True))
    assert not np.allclose(var_dropout, var, rtol=0.05)   # a training pass would differ


def test_wrapped_model_dataset_steps_and_frozen_layers():
    model = tfprune.prunable(_model())
    x, y = _data()
    assert [p for p, _ in batchnorm_layers(model)] == ["bn1", "bn2"]
    frozen = batchnorm_layers(model)[1][1]
    frozen.trainable = False
    kept = frozen.moving_mean.numpy().copy()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    tfprune.recalibrate_batchnorm(model, ds, steps=1, verbose=0)
    mean, var = _stats(keras.Model(model.input, model.get_layer("c1").output)(x[:32]))
    bn = batchnorm_layers(model)[0][1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), kept)


def test_progress_line(capsys):
    model = _model()
    tfprune.recalibrate_batchnorm(model, _data()[0], verbose=1)
    assert "recalibrated 2 BatchNormalization layer(s)" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, error, words", [
    ({"batch_size": 0}, InvalidPruningArgumentError, "batch_size=0"),
    ({"steps": 0}, InvalidPruningArgumentError, "steps=0"),
    ({"verbose": -1}, InvalidPruningArgumentError, "verbose=-1"),
    ({"data": {"x": 1}}, DataError, "expected an array"),
    ({"data": np.zeros((0, 8, 8, 3), "float32")}, DataError, "no samples"),
])
def test_bad_input(kwargs, error, words):
    model = _model()
    before = [v.numpy().copy() for v in model.weights]
    kwargs = {"data": _data()[0], **kwargs}
    with pytest.raises(error, match=words):
        tfprune.recalibrate_batchnorm(model, **kwargs)
    for a, v in zip(before, model.weights):
        np.testing.assert_array_equal(a, v.numpy())


def test_not_a_model_and_unbuilt_model():
    with pytest.raises(InvalidPruningArgumentError, match="keras.Model"):
        tfprune.recalibrate_batchnorm(keras.layers.BatchNormalization(), np.zeros((2, 3)))
    unbuilt = keras.Sequential([keras.layers.BatchNormalization()])
    with pytest.raises(InvalidPruningArgumentError, match="not built"):
        tfprune.recalibrate_batchnorm(unbuilt, np.zeros((2, 3), "float32"))
