"""Tests of the quality benchmark (`tools/bench_quality.py`) on a tiny ResNet-8 and random data."""

import json
import pathlib
import sys

import keras
import numpy as np
import pytest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import bench_quality as bq  # noqa: E402
import tfprune  # noqa: E402
from tfprune.errors import InvalidPruningArgumentError  # noqa: E402


def test_continued_schedule_goes_on_from_its_offset_and_round_trips():
    base = keras.optimizers.schedules.CosineDecay(5e-4, decay_steps=100)
    rest = bq.ContinuedSchedule(base, offset=40)
    for step in (0, 7, 60):
        assert float(rest(step)) == pytest.approx(float(base(step + 40)))
    again = bq.ContinuedSchedule.from_config(rest.get_config())
    assert float(again(10)) == pytest.approx(float(rest(10)))
    with pytest.raises(InvalidPruningArgumentError, match="offset"):
        bq.ContinuedSchedule(base, offset=-1)
    with pytest.raises(InvalidPruningArgumentError, match="LearningRateSchedule"):
        bq.ContinuedSchedule(1e-3, offset=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "obd"}, "accepted are"),
    ({"method": "sosp_h", "granularity": "weight", "target": 0.9}, "weight granularity takes"),
    ({"method": "l1", "target": 1.5}, "FLOPs fraction"),
    ({"method": "rd_prune", "granularity": "weight", "target": 1.0}, "sparsity"),
    ({"method": "l1", "epochs": 0}, "epochs"),
    ({"method": "camp_hive", "min_density": 1.0}, "min_density"),
    ({"method": "l1", "epochs": 4, "prune_epochs": 5}, "prune_epochs=5 > epochs=4"),
    ({"method": "dense_ft", "target": 0.5}, "target 1.0"),
    ({"method": "narrow_ft", "options": "merge=False"}, "only camp_hive"),
    ({"method": "taylor", "options": "merge=False"}, "taylor takes only allocation"),
    ({"method": "camp_hive", "options": "merge"}, "name=value"),
    ({"method": "random", "calibration": 256}, "calibration=256"),
    ({"method": "camp_hive", "calibration": 0}, "images >= 1"),
    ({"method": "l1", "distill": 1.5}, r"distill=1.5: a weight in \[0, 1\]"),
    ({"method": "narrow", "distill": 0.9}, "takes no distillation"),
    ({"method": "l1", "after_strip": "restart"}, "accepted are continue, rewind"),
    ({"method": "narrow", "after_strip": "rewind"}, "only pruning runs at channel"),
    ({"method": "magnitude", "granularity": "weight", "target": 0.9, "after_strip": "rewind"},
     "only pruning runs at channel"),
    ({"method": "l1", "batch_size": 0}, "batch_size=0: an integer >= 1"),
    ({"method": "narrow", "batch_size": 32}, "only the fine-tuning runs"),
    ({"method": "l1", "lr": 0.0}, r"lr=0.0: a learning rate in \(0, 1\)"),
    ({"method": "dense", "target": 1.0, "lr": 1e-3}, "only the fine-tuning runs take another"),
    ({"method": "l1", "augment": "crop"}, "augment='crop': accepted are protocol, flip, none"),
    ({"method": "narrow", "augment": "flip"}, "protocol's augmentation"),
])
def test_run_spec_refuses_bad_input(kwargs, match):
    with pytest.raises(InvalidPruningArgumentError, match=match):
        bq.RunSpec(**kwargs)


def test_plans_cover_every_method_of_the_issue():
    runs = {(m, g, t) for m, g, t in bq.PLANS["all"]}
    for method in ("l1", "taylor", "random", "camp_hive", "sosp_h", "rd_prune"):
        assert (method, "channel", 0.25) in runs and (method, "channel", 0.5) in runs
    assert {("rd_prune", "weight", 0.9), ("magnitude", "weight", 0.9)} <= runs
    names = {bq.RunSpec("camp_hive", target=0.5).name, bq.RunSpec("camp_hive").name,
             bq.RunSpec("camp_hive", min_density=0.25).name,
             bq.RunSpec("camp_hive", prune_epochs=0).name}
    assert len(names) == 4
    spec = bq.RunSpec("camp_hive", options="merge=False, hutchinson_samples=32")
    assert spec.keyword_arguments() == {"merge": False, "hutchinson_samples": 32}
    assert spec.name == "camp_hive_channel_flops0.25_e10_p5_hutchinson_samples32_mergeFalse_s0"
    pruning = bq.make_pruning(spec, 10, (np.zeros((4, 8, 8, 3)), np.zeros(4)))
    assert pruning.merge is False and pruning.criterion.hutchinson_samples == 32


def test_rd_prune_ranks_its_units_by_a_named_second_order_saliency():
    pool = (np.zeros((4, 8, 8, 3), "float32"), np.zeros(4))
    gates = bq.make_pruning(bq.RunSpec("rd_prune", options="criterion=gates"), 10, pool)
    assert isinstance(gates.criterion, bq.CampHiVeSaliency)
    assert gates.criterion.diagonal == "gates"
    sosp = bq.make_pruning(bq.RunSpec("rd_prune", options="criterion=sosp"), 10, pool)
    assert isinstance(sosp.criterion, bq.SOSPSaliency)
    assert bq.RunSpec("rd_prune", options="criterion=gates").name == \
        "rd_prune_channel_flops0.25_e10_p5_criteriongates_s0"
    plain = bq.make_pruning(bq.RunSpec("rd_prune", options="criterion=taylor"), 10, pool)
    assert type(plain.criterion).__name__ == "Taylor"


def test_l1_per_flop_ranks_normalized_l1_per_flop_like_sosp_h_per_flop():
    pool = (np.zeros((4, 8, 8, 3), "float32"), np.zeros(4))
    pruning = bq.make_pruning(bq.RunSpec("l1_per_flop", min_density=0.25), 10, pool)
    ranking = pruning.allocation
    assert isinstance(ranking, tfprune.allocation.GlobalRanking)
    assert ranking.per_unit_cost is True and ranking.normalize == "mean"
    assert pruning.min_density == 0.25
    assert bq.label({"method": "l1_per_flop", "run": "x"}) == \
        "L1 magnitude (normalized, per FLOP)"
    # SOSP-H's per-FLOP ranking counted in the budget that binds, by name.
    spec = bq.RunSpec("sosp_h", options="allocation=per_unit_cost_mean", max_params=0.18)
    sosp = bq.make_pruning(spec, 10, pool)
    assert not sosp.per_flop and isinstance(sosp.allocation, tfprune.allocation.GlobalRanking)
    assert sosp.allocation.per_unit_cost is True and sosp.allocation.normalize == "mean"
    assert sosp.target.keep == {"flops": 0.25, "params": 0.18}


def test_taylor_and_random_take_another_allocation():
    pool = (np.zeros((2048, 8, 8, 3), "float32"), np.zeros(2048))
    spec = bq.RunSpec("taylor", options="allocation=uniform")
    assert spec.name == "taylor_channel_flops0.25_e10_p5_allocationuniform_s0"
    uniform = tfprune.allocation.UniformAllocation
    assert isinstance(bq.make_pruning(spec, 10, pool).allocation, uniform)
    assert not isinstance(bq.make_pruning(bq.RunSpec("taylor"), 10, pool).allocation, uniform)
    random = bq.make_pruning(bq.RunSpec("random", options="allocation=uniform"), 10, pool)
    assert isinstance(random.allocation, uniform)


def test_l1_takes_the_engines_fold_with_calibration_images():
    pool = (np.zeros((2048, 8, 8, 3), "float32"), np.zeros(2048))
    spec = bq.RunSpec("l1_uniform", options="merge_rule=regression", calibration=1024)
    assert spec.name == "l1_uniform_channel_flops0.25_e10_p5_merge_ruleregression_cal1024_s0"
    pruning = bq.make_pruning(spec, 10, pool)
    assert pruning.merge_rule == "regression" and len(pruning.calibration_data[0]) == 1024
    plain = bq.make_pruning(bq.RunSpec("l1_uniform"), 10, pool)
    assert plain.merge_rule is None and plain.calibration_data is None
    with pytest.raises(tfprune.errors.MissingCalibrationDataError, match="merge_rule"):
        bq.make_pruning(bq.RunSpec("l1_uniform", options="merge_rule=regression"), 10, pool)


def test_distillation_is_part_of_the_name_and_the_label():
    spec = bq.RunSpec("l1_uniform", distill=0.9)
    assert spec.name == "l1_uniform_channel_flops0.25_e10_p5_kd0.9_s0"
    assert bq.RunSpec("l1_uniform").name != spec.name
    row = {"method": "l1_uniform", "distill": 0.9, "run": spec.name}
    assert bq.label(row) == "L1 magnitude (uniform) (distilled, alpha 0.9)"
    assert bq.label({"method": "l1_uniform", "run": "x"}) == "L1 magnitude (uniform)"


def test_a_rewound_rate_after_strip_is_part_of_the_name_label_and_command_line():
    spec = bq.RunSpec("camp_hive", after_strip="rewind")
    assert spec.name == "camp_hive_channel_flops0.25_e10_p5_rewind_s0"
    row = {"method": "camp_hive", "after_strip": "rewind", "run": spec.name}
    assert bq.label(row) == "CAMP-HiVe (learning rate rewound after strip)"
    args = bq.parse_args(["--method", "l1_uniform,narrow", "--after-strip", "rewind"])
    assert [s.after_strip for s in bq.specs_from_args(args)] == ["rewind", "continue"]


def test_the_pruning_phase_and_the_batch_are_part_of_the_name_label_and_command_line():
    spec = bq.RunSpec("sosp_h", prune_epochs=0, after_strip="rewind", batch_size=32)
    assert spec.name == "sosp_h_channel_flops0.25_e10_p0_rewind_b32_s0"
    row = {"method": "sosp_h", "after_strip": "rewind", "prune_epochs": 0, "batch_size": 32,
           "run": spec.name}
    assert bq.label(row) == ("SOSP-H (learning rate rewound after strip, pruned once, before "
                             "the first step, batch 32)")
    assert bq.label({**row, "prune_epochs": 2, "batch_size": 128, "after_strip": "continue"}) \
        == "SOSP-H (pruning over 2 epochs)"
    assert bq.label({"method": "narrow", "prune_epochs": 0, "run": "n"}) == bq.LABELS["narrow"]
    assert bq.RunSpec("sosp_h").name == "sosp_h_channel_flops0.25_e10_p5_s0"
    args = bq.parse_args(["--method", "l1_uniform,narrow", "--batch-size", "32"])
    assert [s.batch_size for s in bq.specs_from_args(args)] == [32, bq.bc.PROTOCOL_BATCH]


def test_the_augmentation_is_part_of_the_name_label_and_command_line():
    spec = bq.RunSpec("l1_uniform", prune_epochs=0, batch_size=16, augment="flip")
    assert spec.name == "l1_uniform_channel_flops0.25_e10_p0_b16_augflip_s0"
    assert bq.RunSpec("l1_uniform", prune_epochs=0, batch_size=16).name == \
        "l1_uniform_channel_flops0.25_e10_p0_b16_s0"
    row = {"method": "l1_uniform", "prune_epochs": 0, "augment": "flip", "run": spec.name}
    assert bq.label(row) == "L1 magnitude (uniform) (pruned once, before the first step, " \
        "flip only)"
    assert bq.label({**row, "augment": "none"}).endswith("no augmentation)")
    args = bq.parse_args(["--method", "l1_uniform,narrow,narrow_ft", "--augment", "flip"])
    assert [s.augment for s in bq.specs_from_args(args)] == ["flip", "protocol", "flip"]


def test_calibration_images_default_per_method_and_can_be_set():
    assert bq.RunSpec("camp_hive").calibration_images == bq.CALIBRATION_IMAGES["camp_hive"]
    assert bq.RunSpec("l1").calibration_images == 0
    spec = bq.RunSpec("camp_hive", options="diagonal='gates'", calibration=1024)
    assert spec.calibration_images == 1024
    assert spec.name == "camp_hive_channel_flops0.25_e10_p5_diagonalgates_cal1024_s0"
    pool = (np.arange(2048 * 3, dtype="float32").reshape(2048, 1, 1, 3), np.zeros(2048))
    pruning = bq.make_pruning(spec, 10, pool)
    assert len(pruning.calibration_data[0]) == 1024
    assert len(bq.make_pruning(bq.RunSpec("camp_hive"), 10, pool).calibration_data[0]) == 128


@pytest.mark.parametrize("distill, after_strip", [(0.0, "continue"), (0.9, "continue"),
                                                  (0.0, "rewind")])
def test_a_run_prunes_strips_fine_tunes_records_and_is_skipped_when_done(tmp_path, distill,
                                                                          after_strip):
    keras.utils.set_random_seed(0)
    # A small CNN ending in softmax, like the benchmark's ResNet-8 (fast to trace).
    cnn = tfprune.zoo.small_cnn(input_shape=(8, 8, 3), widths=(4, 8), dense=8)
    dense = keras.Model(cnn.input, keras.layers.Softmax()(cnn.output))
    dense_path = tmp_path / "dense.keras"
    dense.save(dense_path)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (128, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 128)
    data = ((x, y), (x[:64], y[:64]))
    spec = bq.RunSpec("l1", "channel", 0.5, epochs=3, prune_epochs=2, distill=distill,
                      after_strip=after_strip, batch_size=32,
                      lr=1e-3 if after_strip == "rewind" else bq.bc.FINE_TUNE_LR)
    kwargs = dict(results="q", results_dir=tmp_path, models_dir=tmp_path / "models",
                  deploy=False, log=None)
    row = bq.run(spec, data, dense_path, **kwargs)

    saved = json.loads((tmp_path / "q.json").read_text())
    assert [r["run"] for r in saved] == [spec.name]
    assert [e["epoch"] for e in row["epoch_log"]] == [30, 31, 32]
    assert row["events"] == [0, 2, 4, 6]  # every half epoch (4 steps) of the 2 pruning epochs
    # "continue": the stripped model's schedule went on from the 8 steps of the pruning
    # epochs (cosine decay over the run's 12 steps: a quarter of the peak there);
    # "rewind": the run's peak again. Either way it ended at 0 after the last step.
    peak = spec.lr
    assert row["strip_lr"] == pytest.approx(peak / 4 if after_strip == "continue" else peak)
    assert row["final_lr"] == pytest.approx(0.0, abs=1e-12)
    assert spec.name.endswith("_rewind_b32_lr0.001_s0") == (after_strip == "rewind")
    assert row["achieved"]["flops_kept"] <= 0.5
    small = keras.models.load_model(row["model_path"])
    assert not isinstance(small, tfprune.Distiller) and row["distill"] == distill
    assert tfprune.profile(small).macs == row["macs"]
    assert row["flops_fraction"] == pytest.approx(row["achieved"]["flops_kept"], abs=1e-3)
    widths = bq.kept_channels(keras.models.load_model(dense_path))
    assert sum(row["kept_channels"].values()) < sum(widths.values())
    assert 0 <= row["top1"] <= 100 and 0 <= row["top1_as_trained"] <= 100
    assert row["bn_recalibration"]["images"] == 128     # all of them (fewer than 10,000)
    # The saved model carries the recalibrated statistics: recalibrating again changes nothing.
    again = tfprune.recalibrate_batchnorm(
        keras.models.load_model(row["model_path"]),
        bq.recalibration_images(x, spec.seed, 128), batch_size=bq.RECALIBRATION_BATCH, verbose=0)
    for a, b in zip(small.weights, again.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)

    # Done runs are not run again (the dense model is not even read).
    dense_path.unlink()
    assert bq.run(spec, data, dense_path, **kwargs) == saved[0]
    assert len(json.loads((tmp_path / "q.json").read_text())) == 1


def test_narrow_ft_fine_tunes_the_30_epoch_narrow_model_at_the_runs_batch(tmp_path,
                                                                         monkeypatch):
    keras.utils.set_random_seed(0)
    def softmax_cnn(widths):
        cnn = tfprune.zoo.small_cnn(input_shape=(8, 8, 3), widths=widths, dense=8)
        return keras.Model(cnn.input, keras.layers.Softmax()(cnn.output))

    dense_path = tmp_path / "dense.keras"
    softmax_cnn((4, 8)).save(dense_path)
    narrow = softmax_cnn((2, 4))
    before = [w.copy() for w in narrow.get_weights()]
    asked = []

    def cached_narrow(width_mult, epochs, seed, log_stream):
        asked.append((width_mult, epochs, seed))
        return narrow

    monkeypatch.setattr(bq.bc, "narrow_resnet8", cached_narrow)
    monkeypatch.setattr(bq.bc, "model_info", lambda path: {"widths": [2, 4]})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (128, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 128)
    spec = bq.RunSpec("narrow_ft", "channel", 0.25, epochs=2, prune_epochs=0, batch_size=32)
    assert spec.name == "narrow_ft_channel_flops0.25_e2_b32_s0"
    row = bq.run(spec, ((x, y), (x[:64], y[:64])), dense_path, results="q",
                 results_dir=tmp_path, models_dir=tmp_path / "models", deploy=False, log=None)
    # The 30-epoch narrow model, fine-tuned for the run's 2 epochs (30 and 31).
    assert asked == [(bq.bc.width_mult_for_flops(0.25), bq.bc.PROTOCOL_DENSE_EPOCHS, 0)]
    assert [e["epoch"] for e in row["epoch_log"]] == [30, 31]
    assert any(not np.array_equal(a, b) for a, b in zip(before, narrow.get_weights()))
    assert 0 <= row["top1_before_fine_tuning"] <= 100 and row["widths"] == [2, 4]
    assert row["params"] == tfprune.profile(narrow).params
    assert bq.label(row) == "narrow from scratch, 30 epochs + fine-tuned (batch 32)"
    args = bq.parse_args(["--method", "narrow,narrow_ft", "--batch-size", "32",
                          "--lr", "1e-3"])
    assert [(s.batch_size, s.lr) for s in bq.specs_from_args(args)] == [
        (bq.bc.PROTOCOL_BATCH, bq.bc.FINE_TUNE_LR), (32, 1e-3)]
    spec = bq.RunSpec("l1_uniform", lr=1e-3)
    assert spec.name == "l1_uniform_channel_flops0.25_e10_p5_lr0.001_s0"
    assert bq.label({"method": "l1_uniform", "lr": 1e-3, "run": "x"}) == \
        "L1 magnitude (uniform) (peak rate 0.001)"


def test_gates_uniform_prunes_each_group_alike_with_the_gate_saliency():
    keras.utils.set_random_seed(0)
    cnn = tfprune.zoo.small_cnn(input_shape=(8, 8, 3), widths=(8, 8), dense=8)
    model = keras.Model(cnn.input, keras.layers.Softmax()(cnn.output))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 10, 64)
    spec = bq.RunSpec("gates_uniform", "channel", 0.5, epochs=1, prune_epochs=1)
    pruning = bq.make_pruning(spec, 4, (x, y))
    assert pruning.criterion.diagonal == "gates" and len(pruning.calibration_data[0]) == 64
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[pruning], verbose=0)
    assert pruning.achieved()["flops_kept"] <= 0.5
    kept = bq.kept_channels(tfprune.strip(model))
    assert max(kept.values()) - min(kept.values()) <= 1 and max(kept.values()) < 8  # uniform


def _row(method, target, top1, kept, seed=0, options="", calibration=None, **extra):
    spec = bq.RunSpec(method, "channel", target, 1 if method == "dense" else 10, seed,
                      prune_epochs=0 if method in bq.REFERENCE_METHODS else 5,
                      options=options, calibration=calibration)
    return {"run": spec.name, "method": method, "granularity": "channel", "target": target,
            "seed": seed, "options": options, "calibration": calibration,
            "flops_fraction": target, "top1": top1, "params": 100,
            "macs": int(target * 1e6), "kept_channels": kept,
            "deployment": {"int8_bytes": int(1000 * target), "arena_bytes": 500},
            **extra}


def test_report_table_and_plots(tmp_path, monkeypatch):
    monkeypatch.setattr(bq.bc, "CACHE_DIR", tmp_path)   # no tfmot runs to draw
    rows = [_row("dense", 1.0, 80.0, {"a": 16, "b": 32}),
            _row("camp_hive", 0.25, 72.0, {"a": 8, "b": 20}),
            _row("l1", 0.25, 23.0, {"a": 15, "b": 1}),
            _row("camp_hive", 0.25, 71.0, {"a": 9, "b": 19}, seed=1)]
    table = bq.report_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert any("`camp_hive_channel_flops0.25_e10_p5_s1`" in line and "71.00" in line
               for line in table)
    assert any("L1 magnitude (global)" in line and "(25%)" in line for line in table)
    flops = bq.plot_accuracy_flops(rows, tmp_path / "a.png")
    kept = bq.plot_kept_channels(rows, tmp_path / "k.png")
    # A results file of pruning runs only (no dense row) reports and plots too.
    alone = [bq.plot_accuracy_flops(rows[1:], tmp_path / "a1.png"),
             bq.plot_kept_channels(rows[1:], tmp_path / "k1.png")]
    assert len(bq.report_table(rows[1:]).splitlines()) == 2 + len(rows) - 1
    for path in (flops, kept, *alone):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_name_options_and_calibration_and_seeds_are_summarised():
    gates = dict(options="diagonal=gates", calibration=1024)
    rows = [_row("camp_hive", 0.25, 74.0, {"a": 8}, **gates),
            _row("camp_hive", 0.25, 73.0, {"a": 8}, seed=1, **gates),
            _row("camp_hive", 0.25, 72.5, {"a": 8}, seed=1, options="diagonal=gates"),
            _row("camp_hive", 0.25, 71.0, {"a": 8}, calibration=128),  # the default: unnamed
            _row("l1_uniform", 0.25, 75.0, {"a": 8}, seed=2),
            _row("l1_uniform", 0.25, 74.0, {"a": 8}, seed=0)]
    assert bq.label(rows[0]) == "CAMP-HiVe (diagonal=gates, 1,024 images)"
    assert bq.label(rows[2]) == "CAMP-HiVe (diagonal=gates)"
    assert bq.label(rows[3]) == "CAMP-HiVe"
    assert bq.configuration(rows[0]) == bq.configuration(rows[1]) != bq.configuration(rows[2])
    summary = bq.seed_summary(rows)
    assert [s["label"] for s in summary] == ["CAMP-HiVe (diagonal=gates, 1,024 images)",
                                             "L1 magnitude (uniform)"]
    assert summary[0]["seeds"] == [0, 1] and summary[0]["top1"] == [74.0, 73.0]
    assert summary[0]["mean"] == pytest.approx(73.5) and summary[0]["spread"] == pytest.approx(1.0)
    assert summary[1]["seeds"] == [0, 2] and summary[1]["top1"] == [74.0, 75.0]
    table = bq.seed_table(rows).splitlines()
    assert len(table) == 2 + 2 and "| 0, 1 | 74.00, 73.00 | 73.50 | 1.00 |" in table[2]


def test_report_reads_several_results_files_later_ones_replacing_runs(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(bq.bc, "CACHE_DIR", tmp_path)
    (tmp_path / "results").mkdir()
    first = [_row("dense", 1.0, 80.0, {"a": 16}), _row("l1_uniform", 0.25, 70.0, {"a": 8})]
    second = [_row("l1_uniform", 0.25, 71.0, {"a": 8}),
              _row("l1_uniform", 0.25, 73.0, {"a": 8}, seed=1)]
    for stem, rows in (("one", first), ("two", second)):
        (tmp_path / "results" / f"{stem}.json").write_text(json.dumps(rows))
    rows = bq.main(["--report", "--results", "one,two", "--plots", str(tmp_path / "img")])
    by_run = {r["run"]: r["top1"] for r in rows}
    assert by_run == {first[0]["run"]: 80.0, first[1]["run"]: 71.0, second[1]["run"]: 73.0}
    printed = capsys.readouterr().out
    assert "| 0, 1 | 71.00, 73.00 | 72.00 | 2.00 |" in printed
    assert (tmp_path / "img" / "quality_accuracy_flops.png").read_bytes()[:4] == b"\x89PNG"
    # --match keeps the matching runs and the dense reference.
    rows = bq.main(["--report", "--results", "one,two", "--match", "_s1$",
                    "--plots", str(tmp_path / "img")])
    assert sorted(r["run"] for r in rows) == sorted([first[0]["run"], second[1]["run"]])
    with pytest.raises(InvalidPruningArgumentError, match="--match '_s1\\(': not a regular"):
        bq.main(["--report", "--results", "one,two", "--match", "_s1("])
    with pytest.raises(InvalidPruningArgumentError, match="--match '_s1' selects the runs"):
        bq.main(["--results", "one,two", "--match", "_s1"])
    with pytest.raises(bq.DataError, match="no results file .*three.json"):
        bq.main(["--report", "--results", "one,three"])
    with pytest.raises(InvalidPruningArgumentError, match="one results file"):
        bq.main(["--latency", "2", "--results", "one,two"])


def test_events_within_the_first_epoch_name_label_schedule_and_refusals():
    spec = bq.RunSpec("l1_per_flop", prune_epochs=0, prune_events=4, after_strip="rewind")
    assert spec.name == "l1_per_flop_channel_flops0.25_e10_p0_ev4_rewind_s0"
    assert bq.RunSpec("l1_per_flop", prune_epochs=0, prune_events=1).name == \
        bq.RunSpec("l1_per_flop", prune_epochs=0).name
    row = {"method": "l1_per_flop", "prune_epochs": 0, "prune_events": 4, "run": spec.name}
    assert "pruned in 4 events over the first half epoch" in bq.label(row)
    # 100 steps an epoch: events every 50 / 4 = 12 steps from 0 to 48, the cubic ramp's end.
    pruning = bq.make_pruning(spec, 100, (np.zeros((4, 8, 8, 3)), np.zeros(4)))
    assert pruning.schedule.events(0, 100) == [0, 12, 24, 36, 48]
    assert pruning.schedule.progress(48) == 1.0 and pruning.schedule.progress(12) < 1.0
    rd = bq.make_pruning(bq.RunSpec("rd_prune", prune_epochs=0, prune_events=3), 100,
                         (np.zeros((4, 8, 8, 3)), np.zeros(4)))
    assert rd.get_config()["rounds"] == 3
    for kwargs in ({"prune_epochs": 2}, {"method": "narrow_ft", "prune_epochs": 0}):
        with pytest.raises(InvalidPruningArgumentError, match="prune_events=4"):
            bq.RunSpec(**{"method": "l1", "prune_events": 4, **kwargs})
    with pytest.raises(InvalidPruningArgumentError, match="prune_events=-1"):
        bq.RunSpec("l1", prune_epochs=0, prune_events=-1)
    args = bq.parse_args(["--method", "l1,narrow", "--prune-epochs", "0", "--prune-events", "4"])
    assert [s.prune_events for s in bq.specs_from_args(args)] == [4, 0]
    with pytest.raises(InvalidPruningArgumentError, match="prune_epochs=0"):
        bq.specs_from_args(bq.parse_args(["--method", "l1", "--prune-events", "4"]))


def test_a_parameter_budget_joins_the_flops_target_name_label_and_command_line():
    spec = bq.RunSpec("l1_uniform", max_params=0.18, min_density=0.375)
    assert spec.name == "l1_uniform_channel_flops0.25_params0.18_md0.375_e10_p5_s0"
    # The row's "params" is the final model's count: the budget has its own key.
    assert "params <= 0.18 of the dense" in bq.label({"method": "l1_uniform", "max_params": 0.18,
                                                      "params": 14066})
    assert "params" not in bq.label({"method": "l1_uniform", "params": 14066})
    pruning = bq.make_pruning(spec, 100, (np.zeros((4, 8, 8, 3)), np.zeros(4)))
    assert pruning.target.keep == {"flops": 0.25, "params": 0.18}
    assert bq.RunSpec("l1_uniform").name == "l1_uniform_channel_flops0.25_e10_p5_s0"
    for kwargs in ({"max_params": 0.0}, {"max_params": 1.5}, {"max_params": True},
                   {"method": "narrow", "max_params": 0.5},
                   {"method": "magnitude", "granularity": "weight", "target": 0.9,
                    "max_params": 0.5}):
        with pytest.raises(InvalidPruningArgumentError, match="max_params="):
            bq.RunSpec(**{"method": "l1", **kwargs})
    args = bq.parse_args(["--method", "l1,narrow", "--max-params", "0.2"])
    assert [s.max_params for s in bq.specs_from_args(args)] == [0.2, None]
