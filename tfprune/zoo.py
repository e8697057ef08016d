"""Reference models used by tfprune's tests, examples and benchmarks.

These are plain Keras 3 functional models built the way their public references build them.

- `resnet8`: MLPerf Tiny image classification (mlcommons/tiny
  `benchmark/training/image_classification/keras_model.py`), with `Rescaling(1/255)` first.
- `cifar_resnet`: He et al.'s CIFAR ResNets (ResNet-20, -56: 3 stages of 16/32/64 filters,
  `(depth - 2) / 6` basic blocks per stage, 1x1 projection shortcuts where the shape changes).
- `ds_cnn`: MLPerf Tiny keyword spotting DS-CNN (49x10 MFCC input, 64 channels).
- `small_cnn`: a small CNN for MNIST-like and 8x8 digits data.

Example:

```python
from tfprune import zoo
model = zoo.resnet8()
model.summary()
```
"""

from __future__ import annotations

import keras
from keras import layers


def _conv(filters, kernel, strides=1, weight_decay=1e-4, name=None):
    return layers.Conv2D(filters, kernel, strides=strides, padding="same",
                         kernel_initializer="he_normal",
                         kernel_regularizer=keras.regularizers.l2(weight_decay) if weight_decay else None,
                         name=name)


def resnet8(input_shape=(32, 32, 3), num_classes=10, widths=(16, 32, 64), softmax=True,
            rescale=True, weight_decay=1e-4, name="resnet8"):
    """MLPerf Tiny ResNet-8 (3 stacks, residual adds, 1x1 projection shortcuts).

    Args:
        widths: filters of the three stacks; `(8, 16, 32)` is the half-width model.
        softmax: end with a softmax (as MLPerf Tiny does) or with logits.
        rescale: start with `Rescaling(1/255)` so the model takes raw uint8-range pixels.
    """
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs) if rescale else inputs
    x = _conv(widths[0], 3, weight_decay=weight_decay)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for stack, filters in enumerate(widths):
        strides = 1 if stack == 0 else 2
        y = _conv(filters, 3, strides, weight_decay)(x)
        y = layers.BatchNormalization()(y)
        y = layers.Activation("relu")(y)
        y = _conv(filters, 3, 1, weight_decay)(y)
        y = layers.BatchNormalization()(y)
        if stack > 0:
            x = _conv(filters, 1, strides, weight_decay)(x)
        x = layers.Add()([x, y])
        x = layers.Activation("relu")(x)
    x = layers.AveragePooling2D(pool_size=int(min(x.shape[1:3])))(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(num_classes, activation="softmax" if softmax else None,
                           kernel_initializer="he_normal")(x)
    return keras.Model(inputs, outputs, name=name)


def cifar_resnet(depth=20, input_shape=(32, 32, 3), num_classes=10, width=16, softmax=False,
                 rescale=True, weight_decay=1e-4, name=None):
    """He et al.'s CIFAR ResNet of `depth = 6n + 2` layers (20, 32, 44, 56, 110)."""
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...); got {depth}")
    n = (depth - 2) // 6
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs) if rescale else inputs
    x = _conv(width, 3, weight_decay=weight_decay)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for stage in range(3):
        filters = width * 2 ** stage
        for block in range(n):
            strides = 2 if stage > 0 and block == 0 else 1
            y = _conv(filters, 3, strides, weight_decay)(x)
            y = layers.BatchNormalization()(y)
            y = layers.Activation("relu")(y)
            y = _conv(filters, 3, 1, weight_decay)(y)
            y = layers.BatchNormalization()(y)
            if strides != 1 or x.shape[-1] != filters:
                x = _conv(filters, 1, strides, weight_decay)(x)
                x = layers.BatchNormalization()(x)
            x = layers.Add()([x, y])
            x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def ds_cnn(input_shape=(49, 10, 1), num_classes=12, filters=64, blocks=4, name="ds_cnn"):
    """MLPerf Tiny keyword-spotting DS-CNN: strided conv, then depthwise-separable blocks."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(filters, (10, 4), strides=(2, 2), padding="same",
                      kernel_regularizer=keras.regularizers.l2(1e-4))(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Dropout(0.2)(x)
    for _ in range(blocks):
        x = layers.DepthwiseConv2D(3, padding="same", depthwise_regularizer=keras.regularizers.l2(1e-4))(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2D(filters, 1, padding="same", kernel_regularizer=keras.regularizers.l2(1e-4))(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
    x = layers.Dropout(0.4)(x)
    x = layers.AveragePooling2D(pool_size=tuple(int(d) for d in x.shape[1:3]))(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def small_cnn(input_shape=(28, 28, 1), num_classes=10, widths=(16, 32), dense=64,
              scale=1.0 / 255, name="small_cnn"):
    """A small Conv-BN-ReLU CNN with a Flatten + Dense head (MNIST, 8x8 digits).

    `scale` is the Rescaling factor applied to raw inputs (1/255 for uint8 images, 1/16
    for scikit-learn's digits).
    """
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(scale)(inputs)
    for i, f in enumerate(widths):
        x = layers.Conv2D(f, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        if min(x.shape[1:3]) >= 4:
            x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, activation="relu")(x)
    outputs = layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=name)


def mobilenet_v2(input_shape=(96, 96, 3), alpha=0.35, num_classes=10, name=None):
    """`keras.applications.MobileNetV2` with random weights (offline), e.g. alpha 0.35."""
    return keras.applications.MobileNetV2(input_shape=input_shape, alpha=alpha, weights=None,
                                          classes=num_classes, name=name or "mobilenetv2")
