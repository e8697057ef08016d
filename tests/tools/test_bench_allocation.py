"""Tests of `tools/bench_allocation.py` on a small CNN and random data."""

import pathlib
import sys

import keras
import numpy as np
import pytest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import bench_allocation as ba  # noqa: E402
import tfprune  # noqa: E402
from tfprune.errors import InvalidPruningArgumentError  # noqa: E402


def test_configs_parse_to_method_and_arguments():
    assert ba.parse_config("l1") == ("l1", {})
    assert ba.parse_config("camp_hive,normalize=null,beta=1") == \
        ("camp_hive", {"normalize": None, "beta": 1})
    assert ba.parse_config("l1,allocation=uniform") == ("l1", {"allocation": "uniform"})
    with pytest.raises(InvalidPruningArgumentError, match="method 'obd'"):
        ba.parse_config("obd")
    with pytest.raises(InvalidPruningArgumentError, match="not arg=value"):
        ba.parse_config("l1,global")


def test_additivity_measures_single_and_joint_removal():
    keras.utils.set_random_seed(0)
    cnn = tfprune.zoo.small_cnn(input_shape=(8, 8, 3), widths=(4, 8), dense=8)
    model = keras.Model(cnn.input, keras.layers.Softmax()(cnn.output))
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 10, 64)
    out = ba.additivity(model, (x, y))
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    assert set(out["groups"]) == {ba.group_name(g) for g in groups}
    first = groups[0]
    row = out["groups"][ba.group_name(first)]
    assert row["channels"] == first.size
    # The joint removal is measured, not summed: check it against a direct computation.
    base = float(ba.LOSS(y, model.predict(x, verbose=0)))
    single = [float(ba.LOSS(y, tfprune.mask_channels(model, {first.id: [c]}).predict(
        x, verbose=0))) - base for c in range(first.size)]
    half = np.argsort(single, kind="stable")[:first.size // 2]
    joint = float(ba.LOSS(y, tfprune.mask_channels(model, {first.id: half.tolist()}).predict(
        x, verbose=0))) - base
    assert row["mean_single"] == pytest.approx(np.mean(single), abs=1e-4)
    assert row["sum_cheapest_half"] == pytest.approx(np.sum(np.array(single)[half]), abs=1e-4)
    assert row["joint_cheapest_half"] == pytest.approx(joint, abs=1e-4)
