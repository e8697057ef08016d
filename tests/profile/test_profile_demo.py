"""`examples/demo.py` (what `make demo` runs) on a tiny setting: the whole pipeline holds up."""

import importlib.util
import json
import pathlib

import keras
import pytest

import tfprune

DEMO = pathlib.Path(__file__).resolve().parents[2] / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("tfprune_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_tiny_run(demo, tmp_path, capsys):
    results = demo.main(["--epochs", "1", "--prune-epochs", "2", "--latency-runs", "2",
                         "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    table = results["table"]

    # CAMP-HiVe met the FLOPs target during fit; strip made the model really smaller.
    params, flops = table["params"], table["FLOPs"]
    assert flops["pruned"] <= 0.25 * flops["dense"]
    assert params["pruned"] < params["dense"]
    for label in (".tflite bytes (int8)", "latency ms, TFLite Micro"):
        assert table[label]["pruned"] < table[label]["dense"]
    assert table["arena bytes (TFLite Micro)"]["pruned"] <= \
        table["arena bytes (TFLite Micro)"]["dense"]
    assert table["accuracy, float (Keras)"]["dense"] > 0.3          # chance is 0.1
    assert all(0.0 <= table[k][m] <= 1.0 for k in table if k.startswith("accuracy")
               for m in ("dense", "pruned"))

    # The table prints the figures of the bundle written, and the bundle deploys.
    report = tfprune.export.Report.load(tmp_path / "bundle" / "report.json")
    assert report.profile["flops"] == flops["pruned"]
    assert report.baseline.profile["flops"] == flops["dense"]
    assert report.arena["bytes"] == table["arena bytes (TFLite Micro)"]["pruned"]
    assert (tmp_path / "bundle" / "model_int8.tflite").stat().st_size == \
        table[".tflite bytes (int8)"]["pruned"]
    for name in ("digits_cnn_model_data.cc", "digits_cnn_op_resolver.h"):
        assert (tmp_path / "bundle" / name).is_file()
    small = keras.saving.load_model(tmp_path / "bundle" / "model.keras")
    assert tfprune.profile(small).flops == flops["pruned"]
    for key in ("FLOPs", "params"):
        assert f"{table[key]['dense']:,}" in printed and f"{table[key]['pruned']:,}" in printed
    assert f"{100 * table['accuracy, int8 TFLite Micro']['pruned']:.2f}%" in printed

    # Kept channels per layer are those of the stripped model; the plot is a PNG.
    kept = results["kept_channels"]
    assert any(after < before for before, after in kept.values())
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]   # no temporary left


def test_demo_arguments(demo):
    args = demo.parse_args([])
    assert (args.dataset, args.epochs, args.prune_epochs, args.out) == \
        ("digits", 20, 20, "out/demo")
    cifar = demo.parse_args(["--data-dir", "data", "--epochs", "4"])
    assert (cifar.dataset, cifar.epochs, cifar.prune_epochs) == ("cifar10", 4, 20)
    for bad in (["--epochs", "0"], ["--prune-epochs", "0"], ["--flops", "1.5"],
                ["--limit-per-class", "0"]):
        with pytest.raises(SystemExit):
            demo.parse_args(bad)


def test_kept_channels_match_the_layers(demo):
    dense = demo.build_model("digits")
    narrow = tfprune.shrink(dense, {g.id: [0, 1] for g in tfprune.channel_groups(dense)
                                    if g.prunable})
    kept = demo.kept_channels(dense, narrow)
    # Two convolutions and the hidden Dense lose two channels each; the classifier keeps 10.
    assert sorted(before - after for before, after in kept.values()) == [0, 2, 2, 2]
    assert sorted(before for before, _ in kept.values()) == [10, 32, 64, 64]
