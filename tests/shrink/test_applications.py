"""Keras Applications (random weights, small inputs): shrink == mask, and smaller.

Every model of `keras.applications` runs in the slow test; a representative subset (depthwise
and squeeze-excitation nets, residual nets, dense concatenations, LayerNorm + custom layers)
runs in CI.
"""

import gc

import keras
import pytest

import tfprune
from equivalence import check_equivalence, randomize_statistics

# Smallest input each model accepts without pretrained weights (32 for the others).
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
ZOO = sorted(name for name in dir(keras.applications)
             if name[0].isupper() and callable(getattr(keras.applications, name)))
CI_SUBSET = ["MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "ResNet50", "DenseNet121",
             "ConvNeXtTiny"]


def build(name):
    size = MIN_SIZE.get(name, 32)
    # Logits, not probabilities: a softmax of random deep networks saturates to one-hot
    # outputs that would hide differences.
    kwargs = dict(weights=None, input_shape=(size, size, 3), classes=10,
                  classifier_activation=None)
    if name == "MobileNetV2":
        kwargs["alpha"] = 0.35
    return getattr(keras.applications, name)(**kwargs)


def check_application(name):
    model = build(name)
    randomize_statistics(model)
    groups = tfprune.channel_groups(model)
    assert any(g.prunable for g in groups)
    small, masked, removed, error = check_equivalence(model, fraction=0.3)
    before, after = tfprune.profile(model), tfprune.profile(small)
    assert after.params < before.params and after.flops < before.flops
    print(f"{name}: {len(groups)} groups, {sum(g.prunable for g in groups)} prunable; relative "
          f"error {error:.2g}; params {before.params:,} -> {after.params:,}; FLOPs "
          f"{before.flops:,} -> {after.flops:,}")
    del model, small, masked
    keras.backend.clear_session()
    gc.collect()


def test_zoo_lists_the_known_families():
    assert len(ZOO) >= 35 and set(CI_SUBSET) <= set(ZOO)


@pytest.mark.parametrize("name", CI_SUBSET)
def test_application_subset(name):
    check_application(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ZOO) - set(CI_SUBSET)))
def test_whole_zoo(name):
    check_application(name)
