"""tfprune.prune: every method once on a small model, a new model back, the input untouched."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune.errors import (InvalidPruningArgumentError, InvalidScheduleError, MissingLossError,
                            UnsupportedModelError)
from tfprune.keras.oneshot import METHODS
from tfprune.keras.schedules import PruningSchedule

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
TARGET = tfprune.Target(flops=0.5)


def _small(seed=0):
    keras.utils.set_random_seed(seed)
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 6), dense=6, num_classes=3,
                                  scale=1.0)
    rng = np.random.default_rng(seed)
    return model, (rng.normal(size=(24, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 24))


def _state(model):
    return [w.copy() for w in model.get_weights()], [v.constraint for v in model.weights]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_meets_the_target_and_leaves_the_input_alone(method):
    model, data = _small()
    weights, constraints = _state(model)
    small = tfprune.prune(model, method, TARGET, data, loss=LOSS, grid=4) if method == "rd" \
        else tfprune.prune(model, method, TARGET, data, loss=LOSS)
    assert small is not model and not small.compiled
    assert tfprune.profile(small).flops <= 0.5 * tfprune.profile(model).flops
    assert tfprune.profile(small).flops < tfprune.profile(model).flops
    after, after_constraints = _state(model)
    assert all(np.array_equal(a, b) for a, b in zip(weights, after))
    assert after_constraints == constraints and not model.compiled
    assert small(data[0]).shape == model(data[0]).shape


def test_shrunk_and_masked_results_compute_the_same():
    model, data = _small(1)
    model.compile("adam", LOSS)                           # the compiled loss is used
    masked = tfprune.prune(model, "taylor", TARGET, data, shrink=False)
    small = tfprune.prune(model, "taylor", TARGET, data)
    assert [l.name for l in masked.layers] == [l.name for l in model.layers]
    assert [l.name for l in small.layers] == [l.name for l in model.layers]
    assert not masked.compiled
    assert masked.count_params() == model.count_params() > small.count_params()
    np.testing.assert_allclose(small(data[0]), masked(data[0]), rtol=1e-5, atol=1e-5)
    assert model.optimizer.iterations.numpy() == 0        # the user's optimizer never moved


def test_a_configured_callback_runs_every_event_of_its_schedule():
    model, data = _small(2)
    gradual = tfprune.MagnitudePruning(
        TARGET, tfprune.PolynomialDecay(begin_step=0, end_step=100, frequency=50, power=1),
        verbose=0)
    tfprune.prune(model, gradual)
    assert [e.step for e in gradual.events] == [0, 50, 100]
    assert [e.keep["flops"] for e in gradual.events] == pytest.approx([1.0, 0.75, 0.5])
    assert gradual.events[-1].achieved["flops_kept"] <= 0.5


def test_wrapped_models():
    model, data = _small(3)
    wrapped = tfprune.prunable(model)
    masked = tfprune.prune(wrapped, "l1", TARGET, shrink=False)
    assert any(isinstance(l, tfprune.PruningWrapper) for l in masked.layers)
    small = tfprune.prune(wrapped, "l1", TARGET)
    assert not any(isinstance(l, tfprune.PruningWrapper) for l in small.layers)
    np.testing.assert_allclose(small(data[0]), masked(data[0]), rtol=1e-5, atol=1e-5)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


class _NeverReaches(PruningSchedule):
    end_step = 10

    def should_prune(self, step):
        return step == 5

    def progress(self, step):
        return 0.5

    def get_config(self):
        return {}


def test_bad_input():
    model, data = _small()
    with pytest.raises(InvalidPruningArgumentError, match="unknown method 'obs'.*'sosp_h'"):
        tfprune.prune(model, "obs", TARGET, data)
    with pytest.raises(InvalidPruningArgumentError, match="method must be"):
        tfprune.prune(model, 3, TARGET, data)
    with pytest.raises(InvalidPruningArgumentError, match="configure the callback"):
        tfprune.prune(model, tfprune.MagnitudePruning(TARGET), TARGET)
    with pytest.raises(MissingLossError, match="loss="):
        tfprune.prune(model, "taylor", TARGET, data)
    with pytest.raises(InvalidScheduleError, match="progress 1"):
        tfprune.prune(model, tfprune.MagnitudePruning(TARGET, _NeverReaches(), verbose=0))
    subclassed = _Subclassed()
    subclassed(np.zeros((1, 3)))
    with pytest.raises(UnsupportedModelError, match="functional and Sequential"):
        tfprune.prune(subclassed, "l1", TARGET)
