import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tfprune import criteria
from tfprune.criteria import ScoringContext, channel_sum
from tfprune.errors import (InvalidCriterionError, InvalidPruningArgumentError,
                            MissingCalibrationDataError)


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(3, 3, name="c2")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, name="d")(x)
    model = keras.Model(inputs, outputs)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bn = model.get_layer("bn1")
    bn.gamma.assign(np.array([0.5, -2.0, 1.0, 0.1], np.float32))
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    by_producer = {g.producers[0].layer: g for g in groups}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 2, size=10)
    return model, by_producer["c1"], by_producer["c2"], (x, y)


def test_magnitude_sums_producer_kernels(setup):
    model, g1, g2, _ = setup
    context = ScoringContext(model, groups=[g1, g2])
    k1 = model.get_layer("c1").kernel.numpy()
    np.testing.assert_allclose(criteria.get("l1")(g1, context), np.abs(k1).sum(axis=(0, 1, 2)),
                               rtol=1e-6)
    np.testing.assert_allclose(criteria.get("l2")(g1, context),
                               np.sqrt((k1 ** 2).sum(axis=(0, 1, 2))), rtol=1e-6)
    k2 = model.get_layer("d").kernel
    np.testing.assert_allclose(criteria.get("l1")(k2, context), np.abs(k2.numpy()))


def test_bn_scale_and_groups_without_batchnorm(setup):
    model, g1, g2, _ = setup
    context = ScoringContext(model)
    np.testing.assert_allclose(criteria.get("bn_scale")(g1, context), [0.5, 2.0, 1.0, 0.1])
    with pytest.warns(UserWarning, match="no BatchNormalization scale"):
        assert np.all(np.isinf(criteria.get("bn_scale")(g2, context)))
    with pytest.raises(InvalidCriterionError, match="does not score single weights"):
        criteria.get("bn_scale")(model.get_layer("d").kernel, context)


def test_channel_sum_expands_flatten_index_maps(setup):
    model, _, g2, _ = setup
    dense = [p for p in g2.params if p.layer == "d" and p.weight == "kernel"][0]
    assert dense.index_map.shape == (3, 16)
    kernel = model.get_layer("d").kernel.numpy()     # (48, 2), Flatten of (4, 4, 3)
    expected = np.abs(kernel).reshape(16, 3, 2).sum(axis=(0, 2))
    np.testing.assert_allclose(channel_sum(np.abs(kernel), dense), expected, rtol=1e-6)


def test_taylor_is_gradient_times_weight_over_all_params(setup):
    model, g1, g2, (x, y) = setup
    context = ScoringContext(model, groups=[g1, g2], calibration_data=(x, y), batch_size=4)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            y, model(x, training=False))
    grads = dict(zip([v.path for v in model.trainable_variables],
                     [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]))
    assert context.loss() == pytest.approx(float(loss), rel=1e-5)

    def gw(layer, weight):
        v = model.get_layer(layer)
        v = [w for w in v.weights if w.name == weight][0]
        return np.abs(grads[v.path] * v.numpy())

    expected = (gw("c2", "kernel").reshape(-1, 3).sum(0) + gw("c2", "bias")
                + gw("d", "kernel").reshape(16, 3, 2).sum(axis=(0, 2)))
    np.testing.assert_allclose(criteria.get("taylor")(g2, context), expected, rtol=1e-4)
    expected = (gw("c1", "kernel").sum(axis=(0, 1, 2)) + gw("c1", "bias") + gw("bn1", "gamma")
                + gw("bn1", "beta") + gw("c2", "kernel").sum(axis=(0, 1, 3)))
    np.testing.assert_allclose(criteria.get("taylor")(g1, context), expected, rtol=1e-4)
    np.testing.assert_allclose(criteria.get("taylor")(model.get_layer("d").kernel, context),
                               gw("d", "kernel"), rtol=1e-4)


def test_taylor_without_data_and_unknown_variables(setup):
    model, g1, _, (x, y) = setup
    with pytest.raises(MissingCalibrationDataError, match="calibration_data"):
        criteria.get("taylor")(g1, ScoringContext(model))
    context = ScoringContext(model, calibration_data=(x, y))
    with pytest.raises(InvalidPruningArgumentError, match="no gradient"):
        context.gradient(model.get_layer("bn1").moving_mean)


def test_random_depends_on_seed_and_step_only(setup):
    model, g1, _, _ = setup
    score = criteria.get("random")
    a = score(g1, ScoringContext(model, step=7, seed=1))
    np.testing.assert_array_equal(a, score(g1, ScoringContext(model, step=7, seed=1)))
    assert not np.array_equal(a, score(g1, ScoringContext(model, step=8, seed=1)))
    assert not np.array_equal(a, score(g1, ScoringContext(model, step=7, seed=2)))
    kernel = model.get_layer("c1").kernel
    assert score(kernel, ScoringContext(model)).shape == tuple(kernel.shape)


def test_activations_are_layer_inputs(setup):
    model, _, _, (x, y) = setup
    context = ScoringContext(model, calibration_data=(x, y), batch_size=3)
    acts = context.activations(["c2"])["c2"]
    inner = keras.Model(model.input, model.get_layer("c2").input)
    np.testing.assert_allclose(acts, inner(x, training=False), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidPruningArgumentError, match="nested"):
        context.activations(["outer/c2"])


def test_get_rejects_unknown_criteria():
    with pytest.raises(InvalidCriterionError, match="unknown criterion 'l3'.*'l1'"):
        criteria.get("l3")
    with pytest.raises(InvalidCriterionError, match="'l1' and 'l2'"):
        criteria.Magnitude("l0")
    assert criteria.get("l2").get_config() == {"norm": "l2"}
