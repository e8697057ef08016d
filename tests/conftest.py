"""Shared fixtures.

Tests that read the real datasets use the `shared_data` fixture. Outside CI they are skipped
when `../shared/data` is absent; in CI (`CI=true`) a missing folder is a failure, never a skip.
"""

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    from tfprune.datasets import shared_data_dir

    path = shared_data_dir()
    if path is None:
        if IN_CI:
            pytest.fail("../shared/data is missing: CI must run with the shared data beside "
                        "the clone")
        pytest.skip("../shared/data is not available on this machine")
    return path


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def flops_and_params_net():
    """A builder of a network whose FLOPs and params sit in different layers: `conv0` (`width`
    channels at 8x8) holds the FLOPs, `conv1` (6 channels at 2x2, reading all of conv0's) the
    params. Uncompiled; seeded by `seed`."""
    def build(width: int, classes: int, seed: int = 0):
        import keras

        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv0")(inputs)
        x = keras.layers.MaxPooling2D(4)(x)
        x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(x)
        x = keras.layers.Flatten()(x)
        return keras.Model(inputs, keras.layers.Dense(classes, name="head")(x))
    return build
