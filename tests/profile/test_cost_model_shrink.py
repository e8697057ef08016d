"""The key property of `CostModel`: its costs are those of the physically shrunk model, exactly."""

import time

import keras
import numpy as np
import pytest
from keras import layers

import tfprune
from tfprune.profile import CostModel


def _concat_flatten():
    """Branches concatenated on channels, a depthwise conv, and a Flatten + Dense head."""
    x = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    b = layers.Conv2D(4, 1, activation="relu")(x)
    y = layers.Concatenate()([a, b])
    y = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(y)
    y = layers.BatchNormalization()(y)
    y = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(y)
    y = layers.Flatten()(y)
    y = layers.Dense(16, activation="relu")(y)
    return keras.Model(x, layers.Dense(5)(y), name="concat_flatten")


def _nested():
    """A Sequential block and a functional block (called twice) inside a functional model."""
    inner_in = keras.Input((8, 8, 6))
    z = layers.Conv2D(6, 3, padding="same")(inner_in)
    z = layers.BatchNormalization()(z)
    block = keras.Model(inner_in, layers.Add()([inner_in, z]), name="res_block")
    stem = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(6, 3, padding="same"),
                             layers.ReLU()], name="stem")
    x = keras.Input((8, 8, 3))
    y = block(block(stem(x)))
    y = layers.SeparableConv2D(10, 3, padding="same")(y)
    y = layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, layers.Dense(4)(y), name="nested")


MODELS = {
    "resnet8": tfprune.zoo.resnet8,
    "mobilenet_v2_035": lambda: tfprune.zoo.mobilenet_v2(alpha=0.35),
    "ds_cnn": tfprune.zoo.ds_cnn,
    "concat_flatten": _concat_flatten,
    "nested": _nested,
}


def _random_removal(groups, rng):
    removed = {}
    for g in groups:
        if g.prunable and g.size > g.granule:
            blocks = int(rng.integers(0, g.size // g.granule))
            chosen = rng.choice(g.size // g.granule, size=blocks, replace=False)
            removed[g.id] = np.sort((chosen[:, None] * g.granule
                                     + np.arange(g.granule)).reshape(-1)).tolist()
    return removed


@pytest.mark.parametrize("name", MODELS)
def test_evaluate_equals_profile_of_shrunk_model(name):
    model = MODELS[name]()
    cost = CostModel(model)                 # groups from tfprune.channel_groups
    assert sum(g.prunable for g in cost.groups) >= 2
    p = tfprune.profile(model)
    assert cost.dense == {"flops": p.flops, "macs": p.macs, "params": p.params,
                          "trainable_params": p.trainable_params,
                          "weight_bytes": p.weight_bytes}
    rng = np.random.default_rng(0)
    for _ in range(2):
        removed = _random_removal(cost.groups, rng)
        small = tfprune.profile(tfprune.shrink(model, removed))
        got = cost.evaluate({gid: len(c) for gid, c in removed.items()})
        assert got == {"flops": small.flops, "macs": small.macs, "params": small.params,
                       "trainable_params": small.trainable_params,
                       "weight_bytes": small.weight_bytes}, removed
        assert got["flops"] < p.flops


def test_evaluate_speed_on_resnet8():
    cost = CostModel(tfprune.zoo.resnet8())
    counts = np.array([g.size // 2 if g.prunable else 0 for g in cost.groups])
    cost.evaluate(counts)
    times = []
    for _ in range(500):
        t = time.perf_counter()
        cost.evaluate(counts)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 1e-3   # measured: tens of microseconds


APPLICATIONS = {
    "ResNet50": 64, "ResNet50V2": 64, "MobileNet": 64, "MobileNetV2": 64,
    "MobileNetV3Small": 64, "MobileNetV3Large": 64, "EfficientNetB0": 64,
    "EfficientNetV2B0": 64, "DenseNet121": 64, "NASNetMobile": 64, "InceptionV3": 75,
    "Xception": 71, "VGG16": 32, "ConvNeXtTiny": 32,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", APPLICATIONS)
def test_evaluate_equals_profile_of_shrunk_application(name):
    size = APPLICATIONS[name]
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                              classes=10)
    cost = CostModel(model)
    rng = np.random.default_rng(0)
    for _ in range(2):
        removed = _random_removal(cost.groups, rng)
        small = tfprune.profile(tfprune.shrink(model, removed))
        got = cost.evaluate({gid: len(c) for gid, c in removed.items()})
        assert (got["flops"], got["params"], got["weight_bytes"]) == \
            (small.flops, small.params, small.weight_bytes)
