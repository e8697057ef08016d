"""Small models and inputs for the export tests."""

import numpy as np


def random_images(n, shape=(32, 32, 3), seed=0):
    """Raw 0-255 pixels as float32, the way the reference models take them."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.float32)


def tiny_cnn(input_shape=(8, 8, 1), widths=(4, 8), name="tiny", head=None):
    """A small Conv-BN-ReLU classifier; `head` is an optional layer inserted before pooling."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    for w in widths:
        x = layers.Conv2D(w, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    if head is not None:
        x = head(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name)
