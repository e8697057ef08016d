"""Tests of `tools/bench_vs_tfmot.py`: arguments, the table and the plot, on made-up rows."""

import ast
import pathlib
import sys

import pytest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import bench_vs_tfmot as bvt  # noqa: E402


def _rows():
    dense = bvt.Row("dense", "dense", "d.keras", {
        "top1_float": 80.68, "top1_micro_int8": 77.5, "params": 78666, "macs": 12_500_000,
        "int8_bytes": 100_000, "arena_bytes": 56_000, "litert_ref_cpu_ms": 10.0,
        "micro_cpu_ms": 20.0})
    tfmot = bvt.Row("tfmot 50% sparsity", "tfmot", "folder", {
        "top1_float": 79.98, "top1_micro_int8": 77.0, "params": 78666, "macs": 12_500_000,
        "int8_bytes": 98_000, "arena_bytes": 56_000, "litert_ref_cpu_ms": 11.0,
        "micro_cpu_ms": 20.0, "micro_cpu_ms_ratio": 0.95})
    small = bvt.Row("tfprune 25% FLOPs", "tfprune", "s.keras", {
        "top1_float": 76.0, "top1_micro_int8": 74.5, "params": 20000, "macs": 3_125_000,
        "int8_bytes": 30_000, "arena_bytes": 28_000, "litert_ref_cpu_ms": 2.5,
        "micro_cpu_ms": None})
    return [dense, tfmot, small]


def test_table_shows_values_and_ratios_to_dense():
    lines = bvt.table(_rows()).splitlines()
    assert len(lines) == 2 + 3
    assert lines[0].count("|") == len(bvt.COLUMNS) + 2
    dense, tfmot, small = lines[2:]
    assert "(" not in dense                           # no ratio on the dense row itself
    assert "100,000" in dense and "80.68" in dense
    assert "98,000 (0.98x)" in tfmot and "1.10x" in tfmot
    # A measured per-round ratio wins over the quotient of the medians (20/20 = 1.00).
    assert "20.00 (0.95x)" in tfmot
    assert "30,000 (0.30x)" in small and "2.50 (0.25x)" in small
    assert small.rstrip(" |").endswith("-")          # a missing figure shows as "-"


def test_table_needs_a_dense_row():
    with pytest.raises(ValueError, match="dense row"):
        bvt.table(_rows()[1:])


def test_times_take_the_median_of_rounds_and_of_paired_ratios():
    rows = _rows()
    times = {"dense": {"micro_cpu_ms": [10.0, 40.0, 20.0]},
             "tfmot 50% sparsity": {"micro_cpu_ms": [11.0, 40.0, 30.0]},
             "tfprune 25% FLOPs": {"micro_cpu_ms": [5.0, 10.0, 5.0]}}
    bvt.apply_times(rows, times)
    assert rows[0].figures["micro_cpu_ms"] == 20.0 and "micro_cpu_ms_ratio" not in rows[0].figures
    assert rows[1].figures["micro_cpu_ms"] == 30.0
    assert rows[1].figures["micro_cpu_ms_ratio"] == pytest.approx(1.1)      # median of 1.1, 1, 1.5
    assert rows[2].figures["micro_cpu_ms_ratio"] == pytest.approx(0.25)     # median of .5, .25, .25


def test_arguments(tmp_path, monkeypatch):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    monkeypatch.setattr(bvt.bc, "CACHE_DIR", tmp_path)
    args = bvt.build_parser().parse_args(["--tfprune", f"CampHiVe = 50%={model}",
                                          "--sparsity", "0.5", "--run-tfmot"])
    bvt.check_args(args)
    assert args.tfprune == [("CampHiVe = 50%", model)] and args.sparsity == [0.5]
    assert bvt.tfmot_folder(0.5, 5, 0) == tmp_path / "tfmot" / "sparsity0.5_e5_seed0"
    assert bvt.tfmot_folder(0.5, 10, 0, 5) == tmp_path / "tfmot" / "sparsity0.5_e10_p5_seed0"
    # Another recipe than the protocol's is part of the name: two recipes never share a cache.
    assert bvt.tfmot_folder(0.75, 10, 1, 0, 16, 4e-3, "flip") \
        == tmp_path / "tfmot" / "sparsity0.75_e10_b16_lr0.004_augflip_seed1"
    assert bvt.tfmot_folder(0.5, 10, 0, 0, bvt.bc.PROTOCOL_BATCH, bvt.bc.FINE_TUNE_LR,
                            "protocol") == bvt.tfmot_folder(0.5, 10, 0)
    with pytest.raises(SystemExit):
        bvt.build_parser().parse_args(["--tfprune", "no-label-here"])
    for argv, message in ((["--sparsity", "1.5"], "--sparsity"),
                          (["--rounds", "0"], "--rounds"),
                          (["--batch-size", "0"], "--batch-size"),
                          (["--lr", "0"], "--lr must be positive"),
                          (["--prune-epochs", "11"], "--prune-epochs"),
                          ([], "not found"),
                          (["--tfprune", f"a={tmp_path / 'none.keras'}"], "not found"),
                          (["--tfprune", f"a={model}"], "--run-tfmot")):
        with pytest.raises(SystemExit, match=message):
            bvt.check_args(bvt.build_parser().parse_args(argv))


def test_report_redraws_the_last_recorded_run(tmp_path, monkeypatch, capsys):
    import dataclasses

    monkeypatch.setattr(bvt.bc, "CACHE_DIR", tmp_path)
    with pytest.raises(SystemExit, match="run tools/bench_vs_tfmot.py first"):
        bvt.main(["--report"])
    old, new = _rows(), _rows()
    new[1].figures["int8_bytes"] = 50_000
    for rows in (old, new):
        bvt.bc.append_result("vs_tfmot", {"rows": [dataclasses.asdict(r) for r in rows]})
    assert bvt.main(["--report", "--plot", str(tmp_path / "img" / "vs.png")]) == 0
    assert "50,000 (0.50x)" in capsys.readouterr().out           # the last run, not the first
    path = tmp_path / "img" / "vs.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*"))           # written atomically: no temporary left


def test_never_imports_tfmot_in_the_main_environment():
    tree = ast.parse((TOOLS / "bench_vs_tfmot.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"tensorflow_model_optimization", "tf_keras"}, imported


def test_the_plot_title_states_the_recorded_budget():
    assert bvt.budget_text(10, 5) == "10 fine-tuning epochs each, pruning in the first 5"
    assert bvt.budget_text(5) == "5 fine-tuning epochs each"
    assert bvt.budget_text(None) == "the same fine-tuning budget each"   # older records


def test_int8_top1_scores_a_flatbuffer_over_the_given_images():
    import keras
    import numpy as np

    from tfprune import export

    # A classifier whose answer is known: class = the larger of the two inputs.
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", kernel_initializer=
                                                   keras.initializers.Constant([[4, -4], [-4, 4]]),
                                                   bias_initializer="zeros")(inputs))
    x = np.random.default_rng(0).uniform(0, 1, (200, 2)).astype(np.float32)
    fb = export.to_tflite(model, calibration=x[:50])
    truth = np.argmax(x, axis=-1)
    assert bvt.int8_top1(fb, x, truth) >= 97.0
    assert bvt.int8_top1(fb, x, 1 - truth) <= 3.0
    assert bvt.int8_top1(fb, x[:4], truth[:4]) in (0.0, 25.0, 50.0, 75.0, 100.0)
