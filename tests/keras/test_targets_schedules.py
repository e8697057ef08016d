import json

import keras
import numpy as np
import pytest

import tfprune
from tfprune.errors import InvalidScheduleError, InvalidTargetError


def test_target_fractions_reductions_and_config():
    t = tfprune.Target(flops_reduction=4.0, params=0.5, sparsity=0.2)
    assert t.keep == {"flops": 0.25, "params": 0.5, "sparsity": pytest.approx(0.8)}
    assert tfprune.Target.from_config(json.loads(json.dumps(t.get_config()))) == t
    assert t.get_config() == {"params": 0.5, "sparsity": 0.2, "flops_reduction": 4.0}
    assert t.at(0.0) == {"flops": 1.0, "params": 1.0, "sparsity": 1.0}
    half = t.at(0.5)
    assert half["flops"] == pytest.approx(0.625) and half["params"] == pytest.approx(0.75)
    assert t.at(2.0)["flops"] == pytest.approx(0.25)   # clipped
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(t))
    assert restored == t


@pytest.mark.parametrize("kwargs, message", [
    ({}, "needs a budget"),
    ({"flops": 0.0}, r"flops=0.0\): the fraction to keep must be in \(0, 1\]"),
    ({"flops": 1.5}, "flops_reduction="),
    ({"params": -0.1}, "must be in"),
    ({"sparsity": 1.0}, r"sparsity=1.0\).*\[0, 1\)"),
    ({"flops_reduction": 0.5}, "must be >= 1"),
    ({"flops": 0.5, "flops_reduction": 2.0}, "not both"),
    ({"flops": "0.5"}, "must be a number; received '0.5' of type str"),
    ({"flops": True}, "must be a number"),
    ({"weight_bytes": float("nan")}, "must be finite"),
])
def test_target_refuses_bad_values(kwargs, message):
    with pytest.raises(InvalidTargetError, match=message):
        tfprune.Target(**kwargs)


def test_polynomial_decay_matches_tfmot_formula_and_reaches_end():
    s = tfprune.PolynomialDecay(begin_step=10, end_step=105, frequency=20, power=3)
    assert s.events(0, 200) == [10, 30, 50, 70, 90, 105]
    for step in (10, 37, 80, 105, 300):
        p = min(max((step - 10) / 95, 0.0), 1.0)
        assert s.progress(step) == pytest.approx(1 - (1 - p) ** 3)
    # keep(t) = target + (1 - target) * (1 - p)^power, tfmot's sparsity ramp in keep terms.
    target = tfprune.Target(sparsity=0.8)
    p = (50 - 10) / 95
    assert target.at(s.progress(50))["sparsity"] == pytest.approx(0.2 + 0.8 * (1 - p) ** 3)
    assert s.progress(5) == 0.0


def test_constant_sparsity_and_one_shot():
    c = tfprune.ConstantSparsity(begin_step=100, frequency=50, end_step=220)
    assert c.events(0, 400) == [100, 150, 200]
    assert (c.progress(99), c.progress(100)) == (0.0, 1.0)
    assert tfprune.ConstantSparsity(begin_step=0, frequency=10).events(0, 35) == [0, 10, 20, 30]
    o = tfprune.OneShot(7)
    assert o.events(0, 20) == [7] and o.progress(6) == 0.0 and o.progress(8) == 1.0


@pytest.mark.parametrize("schedule", [
    tfprune.PolynomialDecay(0, 1000, 100, 2.0), tfprune.ConstantSparsity(5, 10, 50),
    tfprune.OneShot(3)])
def test_schedules_serialize(schedule):
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(schedule)))
    restored = keras.saving.deserialize_keras_object(config)
    assert restored == schedule and restored is not schedule
    assert [restored.should_prune(s) for s in range(60)] == \
        [schedule.should_prune(s) for s in range(60)]


@pytest.mark.parametrize("build, message", [
    (lambda: tfprune.PolynomialDecay(100, 50),
     r"end_step \(50\) must come after begin_step \(100\)"),
    (lambda: tfprune.PolynomialDecay(10, 10), "must come after"),
    (lambda: tfprune.PolynomialDecay(0, 10, frequency=0), r"frequency=0\) must be >= 1"),
    (lambda: tfprune.PolynomialDecay(0, 10, power=0), "power=0"),
    (lambda: tfprune.PolynomialDecay(0.5, 10), "must be an integer number of optimizer steps"),
    (lambda: tfprune.ConstantSparsity(10, 5, end_step=3), r"end_step \(3\) precedes begin_step"),
    (lambda: tfprune.OneShot(-1), r"step=-1\) must be >= 0"),
    (lambda: tfprune.OneShot(True), "integer"),
])
def test_schedules_refuse_bad_values(build, message):
    with pytest.raises(InvalidScheduleError, match=message):
        build()


def test_schedule_steps_accept_numpy_integers():
    assert tfprune.OneShot(np.int64(4)).step == 4
