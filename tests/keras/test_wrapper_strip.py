import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tfprune.errors import UnsupportedModelError


def _nested_model():
    keras.utils.set_random_seed(2)
    block = keras.Sequential([keras.Input((8, 8, 6)),
                              keras.layers.Conv2D(5, 3, padding="same", name="conv"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.ReLU(name="relu")], name="block")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="stem")(inputs)
    x = block(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def test_prunable_copies_and_wraps_without_touching_the_model(data):
    model = _nested_model()
    config, weights = json.dumps(model.get_config()), [w.copy() for w in model.get_weights()]
    wrapped = tfprune.prunable(model)
    np.testing.assert_allclose(wrapped(data[0]), model(data[0]), rtol=1e-6, atol=1e-6)
    assert json.dumps(model.get_config()) == config
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    wrapped_names = {path for path, layer in tfprune.graph.iter_layers(wrapped)
                     if isinstance(layer, tfprune.PruningWrapper)}
    assert wrapped_names == {"stem", "block/conv", "block/bn", "head"}


def test_wrapper_masks_outputs_and_gradients_exactly(data):
    model = tfprune.prunable(_nested_model())
    stem = model.get_layer("stem")
    mask = np.ones(stem.layer.kernel.shape, np.float32)
    mask[..., 2] = 0
    dict((v.name, m) for v, m in stem.masked_weights())["kernel"].assign(mask)
    with pytest.warns(UserWarning, match="zero but stay"):
        reference = tfprune.strip(model)  # a plain model with the masked kernel
    np.testing.assert_allclose(model(data[0]), reference(data[0]), rtol=1e-5, atol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(data[0], training=True) ** 2)
    grad = tape.gradient(loss, stem.layer.kernel.value).numpy()
    assert np.all(grad[..., 2] == 0) and np.any(grad[..., 1] != 0)
    bn = model.get_layer("block").get_layer("bn").layer
    assert np.any(bn.moving_mean.numpy() != 0)   # training updates still reach the layer


def test_wrapped_model_saves_masks(tmp_path, data):
    model = tfprune.prunable(_nested_model())
    head = model.get_layer("head")
    mask = (np.random.default_rng(0).random(head.layer.kernel.shape) > 0.5).astype(np.float32)
    head.masked_weights()[0][1].assign(mask)
    path = os.path.join(tmp_path, "wrapped.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.get_layer("head").masked_weights()[0][1].numpy(), mask)
    np.testing.assert_allclose(loaded(data[0]), model(data[0]), rtol=1e-6, atol=1e-6)


def test_subclassed_models_are_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), np.float32))
    with pytest.raises(UnsupportedModelError, match="only functional and Sequential"):
        tfprune.prunable(net)


@pytest.mark.parametrize("wrap", [False, True])
def test_strip_removes_pruned_channels_with_same_outputs(tiny_cnn, data, drive, wrap):
    model = tiny_cnn(compile=False)
    if wrap:
        model = tfprune.prunable(model)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = drive(tfprune.MagnitudePruning(tfprune.Target(flops=0.5), verbose=0), model)
    weights = [w.copy() for w in model.get_weights()]
    small = tfprune.strip(model)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert not any(isinstance(l, tfprune.PruningWrapper) for l in small.layers)
    assert "tfprune" not in json.dumps(small.get_config())
    np.testing.assert_allclose(small(data[0]), model(data[0]), rtol=1e-5, atol=1e-5)
    dense = cb.cost_model.dense["flops"]
    assert tfprune.profile(small).flops == pytest.approx(
        cb.events[-1].achieved["flops_kept"] * dense)
    assert tfprune.profile(small).flops <= 0.5 * dense


def test_strip_of_weight_pruning_warns_and_keeps_zeros(tiny_cnn, data, drive):
    model = tiny_cnn()
    drive(tfprune.MagnitudePruning(tfprune.Target(sparsity=0.5), granularity="weight",
                                   verbose=0), model)
    with pytest.warns(UserWarning, match="50.0% of the kernel weights .* are zero but stay"):
        small = tfprune.strip(model)
    assert small is not model
    assert (small.get_layer("conv1").kernel.numpy() == 0).mean() > 0.2
    np.testing.assert_allclose(small(data[0]), model(data[0]), rtol=1e-5, atol=1e-6)
