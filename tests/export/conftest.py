"""Models and flatbuffers shared by the export tests, built once per session.

The ResNet-8 is `tfprune.zoo.resnet8()` with random weights, trained a few steps on random
images so that its BatchNormalization statistics are not the identity.
"""

import numpy as np
import pytest
from export_models import random_images, tiny_cnn


@pytest.fixture(scope="session")
def resnet8():
    import keras
    import tfprune

    keras.utils.set_random_seed(0)
    model = tfprune.zoo.resnet8()
    x = random_images(64, seed=1)
    y = np.random.default_rng(2).integers(0, 10, 64)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="session")
def calibration():
    return random_images(48, seed=3)


@pytest.fixture(scope="session")
def resnet8_tflite(resnet8, calibration):
    """(float bytes, int8 bytes) of the ResNet-8."""
    from tfprune.export import tflite_variants

    return tflite_variants(resnet8, calibration)


@pytest.fixture(scope="session")
def tiny_tflite():
    """A tiny CNN, its calibration inputs, its int8 flatbuffer, and its weights and config
    as they were before the conversion (to check that converting leaves the model alone)."""
    import types

    import keras
    from tfprune.export import to_tflite

    keras.utils.set_random_seed(0)
    model = tiny_cnn()
    x = random_images(16, (8, 8, 1), seed=4)
    weights, config = [w.copy() for w in model.get_weights()], model.get_config()
    return types.SimpleNamespace(model=model, x=x, int8=to_tflite(model, x), weights=weights,
                                 config=config)
