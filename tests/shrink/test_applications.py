"""Keras Applications (random weights, small inputs): shrink == mask, and smaller.

Every model of `keras.applications` runs in the slow test; a representative subset (depthwise
and squeeze-excitation nets, residual nets, dense concatenations, LayerNorm + custom layers)
runs in CI.
"""

import gc

import keras
import pytest

import tfprune
from equivalence import check_equivalence, random_inputs, randomize_statistics

# Smallest input each model accepts without pretrained weights (32 for the others).
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
ZOO = sorted(name for name in dir(keras.applications)
             if name[0].isupper() and callable(getattr(keras.applications, name)))
CI_SUBSET = ["MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "ResNet50", "DenseNet121",
             "ConvNeXtTiny"]
# Checked in float64: with random weights and statistics these networks are chaotic at float32
# (EfficientNetV2L: a 1e-6 relative change of the input changes its logits by 88%), so the
# rounding of the shrunk model's smaller sums alone moves its float32 outputs by about 1%;
# in float64 shrink and mask agree to 4e-9 (the same amplification of float64 rounding).
FLOAT64 = {"EfficientNetV2L"}


def build(name):
    """`keras.applications.<name>` with random weights, at its smallest input size."""
    size = MIN_SIZE.get(name, 32)
    # Logits, not probabilities: a softmax of random deep networks saturates to one-hot
    # outputs that would hide differences.
    kwargs = dict(weights=None, input_shape=(size, size, 3), classes=10,
                  classifier_activation=None)
    if name == "MobileNetV2":
        kwargs["alpha"] = 0.35
    return getattr(keras.applications, name)(**kwargs)


def check_application(name):
    if name in FLOAT64:
        policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        try:
            return _check_application(name, "float64")
        finally:
            keras.config.set_dtype_policy(policy)
            keras.config.set_floatx(floatx)
    return _check_application(name, "float32")


def _check_application(name, dtype):
    model = build(name)
    assert model.dtype_policy.name == dtype
    randomize_statistics(model)
    groups = tfprune.channel_groups(model)
    assert any(g.prunable for g in groups)
    inputs = [x.astype(dtype) for x in random_inputs(model)]
    small, masked, removed, error = check_equivalence(model, fraction=0.3, inputs=inputs)
    assert small.dtype_policy.name == dtype
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
