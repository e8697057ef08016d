"""Bad input gives a typed error from `tfprune.errors` that names what was wrong."""

import keras
import numpy as np
import pytest
from keras import layers

import tfprune
from tfprune.errors import (InvalidRemovalError, NotPrunableError, TfpruneError,
                            UnknownGroupError, UnsupportedModelError)


@pytest.fixture(scope="module")
def model():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, name="c1")(inputs)
    x = layers.GroupNormalization(groups=3, name="gn")(x)
    x = layers.Conv2D(4, 3, name="c2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(2, name="out")(x), name="net")


@pytest.fixture(scope="module")
def groups(model):
    return tfprune.channel_groups(model)


def gid(groups, producer):
    return next(g.id for g in groups for m in g.producers if m.layer == producer)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = layers.Dense(3)

    def call(self, x):
        return self.dense(x)


@pytest.mark.parametrize("fn", [tfprune.channel_groups,
                                lambda m: tfprune.shrink(m, {}),
                                lambda m: tfprune.mask_channels(m, {}),
                                tfprune.shrink.zeroed_channels])
def test_subclassed_model(fn):
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(UnsupportedModelError) as e:
        fn(model)
    message = str(e.value)
    assert "subclassed" in message and "Subclassed" in message
    assert "functional" in message and "Sequential" in message and "nested" in message
    assert isinstance(e.value, TypeError)


def test_unbuilt_sequential_and_non_models():
    with pytest.raises(UnsupportedModelError, match="not built"):
        tfprune.channel_groups(keras.Sequential([layers.Dense(3)], name="unbuilt"))
    with pytest.raises(UnsupportedModelError, match="expected a keras.Model, got Dense"):
        tfprune.channel_groups(layers.Dense(3))


def test_functional_subclass_with_its_own_constructor_cannot_be_rebuilt():
    class Net(keras.Model):
        def __init__(self):
            inputs = keras.Input((4,))
            super().__init__(inputs, layers.Dense(2)(layers.Dense(8, name="h")(inputs)))

    net = Net()
    groups = tfprune.channel_groups(net)              # its graph can still be read
    hidden = gid(groups, "h")
    with pytest.raises(UnsupportedModelError, match="own constructor"):
        tfprune.shrink(net, {hidden: [0]})


def test_removing_every_channel(model, groups):
    g = gid(groups, "c1")
    with pytest.raises(InvalidRemovalError) as e:
        tfprune.shrink(model, {g: list(range(6))})
    assert f"group {g}" in str(e.value) and "all 6 channels" in str(e.value)
    assert "c1" in str(e.value)


def test_unaligned_granule_block(model, groups):
    g = gid(groups, "c1")
    assert groups[g].granule == 2
    with pytest.raises(InvalidRemovalError, match=r"whole aligned blocks of 2 .*blocks \[0\]"):
        tfprune.shrink(model, {g: [1]})
    with pytest.raises(InvalidRemovalError, match=r"blocks \[0, 1\]"):
        tfprune.mask_channels(model, {g: [1, 2]})
    tfprune.mask_channels(model, {g: [2, 3]})        # a whole block is fine


@pytest.mark.parametrize("channels,words", [
    ([4], ["out of range", "[4]", "0..3"]),
    ([-1, 2], ["out of range", "[-1]"]),
    ([2, 3, 2, 3], ["duplicated", "[2, 3]"]),
    ([1.0, 2.0], ["must be integers", "float64"]),
    (np.array([True, False, True, False, False, False]), ["boolean mask", "np.flatnonzero"]),
    (3, ["sequence of integer indices", "3"]),
    ("01", ["sequence of integer indices"]),
    ([[0, 1]], ["flat sequence", "(1, 2)"]),
])
def test_bad_indices(model, groups, channels, words):
    g = gid(groups, "c2")
    with pytest.raises(InvalidRemovalError) as e:
        tfprune.shrink(model, {g: channels})
    assert f"group {g}" in str(e.value)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert isinstance(e.value, ValueError)


def test_not_prunable_group(model, groups):
    out = gid(groups, "out")
    with pytest.raises(NotPrunableError) as e:
        tfprune.shrink(model, {out: [0]})
    assert f"group {out}" in str(e.value) and "model output 0" in str(e.value)
    assert groups[out].reason in str(e.value)
    tfprune.shrink(model, {out: []})                  # nothing asked of it: fine


@pytest.mark.parametrize("key", [99, -1, "0", 1.0, True])
def test_unknown_group(model, groups, key):
    with pytest.raises(UnknownGroupError) as e:
        tfprune.mask_channels(model, {key: [0]})
    assert "no channel group" in str(e.value) and f"0..{len(groups) - 1}" in str(e.value)
    assert "'net'" in str(e.value) and isinstance(e.value, KeyError)


@pytest.mark.parametrize("removed", [[0, 1], None, "0"])
def test_removed_is_not_a_mapping(model, removed):
    with pytest.raises(InvalidRemovalError, match="must map channel-group ids"):
        tfprune.shrink(model, removed)


def test_errors_are_raised_before_building_anything(model, groups, monkeypatch):
    from tfprune.shrink import physical

    def fail(*args, **kwargs):
        raise AssertionError("the model was rebuilt before the input was checked")

    monkeypatch.setattr(physical, "rebuild", fail)
    with pytest.raises(InvalidRemovalError):
        tfprune.shrink(model, {gid(groups, "c2"): [9]})
