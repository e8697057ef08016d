"""Tests of the no-fine-tuning benchmark (`tools/bench_no_finetune.py`) on a tiny CNN."""

import pathlib
import sys

import keras
import numpy as np
import pytest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import bench_no_finetune as bn  # noqa: E402
import tfprune  # noqa: E402
from tfprune.errors import InvalidPruningArgumentError  # noqa: E402


def _tiny_case():
    """A tiny compiled CNN ending in a softmax, and 128 random uint8 images with labels."""
    keras.utils.set_random_seed(0)
    cnn = tfprune.zoo.small_cnn(input_shape=(8, 8, 3), widths=(4, 8), dense=8)
    dense = keras.Model(cnn.input, keras.layers.Softmax()(cnn.output))
    dense.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (128, 8, 8, 3), dtype=np.uint8)
    return dense, (x, rng.integers(0, 10, 128))


def test_configurations_parse_to_one_shot_runs_and_bad_ones_are_refused():
    spec = bn.parse_config("camp_hive:diagonal=gates,merge=False", 0.5, 1, calibration=256)
    assert (spec.method, spec.target, spec.seed, spec.prune_epochs) == ("camp_hive", 0.5, 1, 0)
    assert spec.keyword_arguments() == {"diagonal": "gates", "merge": False}
    assert spec.calibration_images == 256
    assert bn.parse_config("l1_uniform", 0.25, 0, calibration=256).calibration_images == 0
    folded = bn.parse_config("l1_uniform:merge_rule=regression", 0.25, 0, calibration=256)
    assert folded.calibration_images == 256 and folded.options == "merge_rule=regression"
    floored = bn.parse_config("camp_hive:min_density=0.375,merge_rule=regression", 0.25, 0)
    assert floored.min_density == 0.375
    assert floored.keyword_arguments() == {"merge_rule": "regression"}
    assert bn.parse_config("l1_per_flop:min_density=0.25", 0.25, 0).options == ""
    with pytest.raises(InvalidPruningArgumentError, match="min_density"):
        bn.parse_config("l1_per_flop:min_density=half", 0.25, 0)
    for bad in ("obd", "narrow", "dense"):
        with pytest.raises(InvalidPruningArgumentError, match="must be one of"):
            bn.parse_config(bad, 0.25, 0)
    with pytest.raises(InvalidPruningArgumentError, match="random takes only allocation"):
        bn.parse_config("random:merge=False", 0.25, 0)


@pytest.mark.parametrize("config", ["l1_uniform", "camp_hive:merge=False"])
def test_measure_prunes_a_copy_once_and_evaluates_it_before_and_after_bn(config):
    dense, (x, y) = _tiny_case()
    before = [w.copy() for w in dense.get_weights()]
    spec = bn.parse_config(config, 0.5, 0, calibration=64)
    row = bn.measure(spec, dense, ((x, y), (x[:64], y[:64])), recalibrate=128)
    assert all(np.array_equal(a, b) for a, b in zip(before, dense.get_weights()))
    assert 0 < row["flops_fraction"] <= 0.5
    full = bn.bq.kept_channels(dense)
    assert set(row["kept_channels"]) == set(full)
    assert sum(row["kept_channels"].values()) < sum(full.values())
    assert 0 <= row["top1_as_pruned"] <= 100 and 0 <= row["top1"] <= 100
    assert row["events"] == row["events_run"] == 1
    assert row["calibration_images"] == (64 if config.startswith("camp_hive") else 0)
    assert row["config"].startswith("L1 magnitude (uniform)" if config == "l1_uniform"
                                    else "CAMP-HiVe (merge=False, 64 images)")
    assert "pruned once" not in row["config"]
    lines = bn.table([row]).splitlines()
    assert len(lines) == 3 and row["config"] in lines[2]


def test_weight_granularity_takes_the_weight_methods_and_a_sparsity():
    spec = bn.parse_config("rd_prune:distortion=mean", 0.7, 0, calibration=64,
                           granularity="weight")
    assert (spec.granularity, spec.target, spec.calibration_images) == ("weight", 0.7, 64)
    assert spec.keyword_arguments() == {"distortion": "mean"}
    assert bn.parse_config("magnitude", 0.9, 0, granularity="weight").method == "magnitude"
    with pytest.raises(InvalidPruningArgumentError, match="rd_prune, magnitude"):
        bn.parse_config("l1_uniform", 0.9, 0, granularity="weight")
    with pytest.raises(InvalidPruningArgumentError, match="must be one of"):
        bn.parse_config("magnitude", 0.25, 0)


@pytest.mark.parametrize("config", ["magnitude", "rd_prune:grid=4",
                                    "rd_prune:grid=4,rounds=3"])
def test_weight_rows_reach_the_sparsity_and_keep_every_channel(config):
    dense, (x, y) = _tiny_case()
    spec = bn.parse_config(config, 0.6, 0, calibration=64, granularity="weight")
    row = bn.measure(spec, dense, ((x, y), (x[:64], y[:64])), recalibrate=0)
    assert row["granularity"] == "weight" and abs(row["sparsity"] - 0.6) < 0.01
    assert row["flops_fraction"] == 1.0
    assert row["kept_channels"] == bn.bq.kept_channels(dense)
    kernels = [l for l in dense.layers if hasattr(l, "kernel")]
    assert set(row["density"]) == {l.name for l in kernels}
    sizes = [l.kernel.shape.num_elements() for l in kernels]
    kept = sum(row["density"][l.name] * n for l, n in zip(kernels, sizes)) / sum(sizes)
    assert abs(kept - (1 - row["sparsity"])) < 1e-3
    assert "top1" not in row and 0 <= row["top1_as_pruned"] <= 100
    line = bn.table([row]).splitlines()[2]
    assert "sparsity 0.6" in line and f"{row['sparsity']:.3f}" in line


def test_events_prune_gradually_without_training_and_bad_counts_are_refused():
    dense, (x, y) = _tiny_case()
    before = [w.copy() for w in dense.get_weights()]
    spec = bn.parse_config("camp_hive:merge=False", 0.5, 0, calibration=64, events=3)
    assert spec.prune_events == 3 and bn.parse_config("l1_uniform", 0.5, 0).prune_events == 0
    row = bn.measure(spec, dense, ((x, y), (x[:64], y[:64])), recalibrate=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, dense.get_weights()))
    assert row["events"] == 3 and 0 < row["flops_fraction"] <= 0.5
    assert row["events_run"] >= 2       # the schedule's events ran one after another
    assert "events" not in row["config"] and "pruned once" not in row["config"]
    assert "| 3 |" in bn.table([row]).splitlines()[2]
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InvalidPruningArgumentError, match="events"):
            bn.parse_config("l1_uniform", 0.5, 0, events=bad)
