"""Random architectures: shrink equals mask on every one (20 graphs in CI, 300 slow)."""

import keras
import pytest

import tfprune
from equivalence import check_equivalence, randomize_statistics
from random_models import random_model


_built = {}


def built(seed):
    """The random model of `seed`, built once per test session (building dominates)."""
    if seed not in _built:
        _built[seed] = random_model(seed)
        randomize_statistics(_built[seed], seed)
    return _built[seed]


def check_random_model(seed):
    model = built(seed)
    fraction = [0.3, 0.5][seed % 2]
    small, _, removed, _ = check_equivalence(model, fraction=fraction, seed=seed)
    if removed:
        assert small.count_params() < model.count_params()
        assert tfprune.profile(small).flops <= tfprune.profile(model).flops


@pytest.mark.parametrize("seed", range(20))
def test_random_architectures(seed):
    check_random_model(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20, 320))
def test_random_architectures_slow(seed):
    check_random_model(seed)
    del _built[seed]
    keras.backend.clear_session()


def test_the_generator_covers_what_it_claims():
    classes = set()
    nested = 0
    for seed in range(20):
        for _, layer in tfprune.graph.iter_layers(built(seed)):
            classes.add(type(layer).__name__)
            nested += isinstance(layer, keras.Model)
    assert nested >= 3
    assert {"Add", "Concatenate", "DepthwiseConv2D", "SeparableConv2D", "Multiply",
            "Conv2DTranspose", "BatchNormalization", "Reshape", "Dense"} <= classes
    assert classes & {"Flatten", "Reshape"} and classes & {"MaxPooling2D", "ZeroPadding2D",
                                                          "UpSampling2D", "Cropping2D"}
