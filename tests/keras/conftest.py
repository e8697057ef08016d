"""Tiny models and data shared by the tests of pruning during fit."""

import keras
import numpy as np
import pytest


def _tiny_cnn(batchnorm=True, widths=(6, 8), name="tiny_cnn"):
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for i, w in enumerate(widths):
        x = keras.layers.Conv2D(w, 3, padding="same", name=f"conv{i}")(x)
        if batchnorm:
            x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(scope="session")
def tiny_cnn():
    """Builds a seeded Conv-BN-ReLU x2 + GAP + Dense(4) model on 8x8x3 inputs."""
    def build(seed=0, compile=True, optimizer="adam", **kwargs):
        keras.utils.set_random_seed(seed)
        model = _tiny_cnn(**kwargs)
        if compile:
            model.compile(optimizer=optimizer,
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model
    return build


@pytest.fixture(scope="session")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=64)
    return x, y


@pytest.fixture(scope="session")
def drive():
    """Runs a pruning callback's hooks without `fit` (no train step is traced): on_train_begin,
    then the batch-begin hook (adopting zeros, pruning on schedule) at the optimizer's step."""
    def run(callback, model, epochs=1, steps=4, loss=0.0):
        callback.set_model(model)
        callback.set_params({"epochs": epochs, "steps": steps, "verbose": 0})
        callback.on_train_begin()
        callback.on_train_batch_end(0, {"loss": loss})
        callback.on_train_batch_begin(0)
        callback.on_train_end()
        return callback
    return run
