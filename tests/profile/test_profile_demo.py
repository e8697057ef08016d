"""`examples/demo.py` (what `make demo` runs) on a tiny setting: the table's figures hold up."""

import importlib.util
import json
import pathlib

import keras
import numpy as np
import pytest

import tfprune

DEMO = pathlib.Path(__file__).resolve().parents[2] / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("tfprune_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_one_epoch(demo, tmp_path, capsys):
    results = demo.main(["--epochs", "1", "--seed", "0", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    dense, pruned = results["dense"], results["pruned"]

    # Half of every prunable group is gone: about a quarter of the conv MACs remain.
    assert pruned["params"] < 0.5 * dense["params"]
    assert pruned["flops"] < 0.5 * dense["flops"]
    assert pruned["tflite_bytes"] < dense["tflite_bytes"]
    assert 0.3 < dense["accuracy"] <= 1.0          # chance is 0.1; one epoch is plenty
    assert 0.1 < pruned["accuracy"] <= 1.0

    # The table shows the figures, and they are those of the files written.
    for key in ("params", "flops", "tflite_bytes"):
        assert f"{dense[key]:,}" in printed and f"{pruned[key]:,}" in printed
    assert f"{100 * pruned['accuracy']:.2f}%" in printed
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "pruned.tflite").stat().st_size == pruned["tflite_bytes"]
    assert (tmp_path / "dense.tflite").stat().st_size == dense["tflite_bytes"]
    small = keras.saving.load_model(tmp_path / "pruned.keras")
    p = tfprune.profile(small)
    assert (p.params, p.flops) == (pruned["params"], pruned["flops"])
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]   # no temporary left

    # Every prunable group lost half of its channels, the lowest-L1 ones.
    removed = {int(k): v for k, v in results["removed"].items()}
    groups = tfprune.channel_groups(demo.build_model())
    assert set(removed) == {g.id for g in groups if g.prunable}
    assert all(len(removed[g.id]) == g.size // 2 for g in groups if g.prunable)


def test_lowest_l1_half_picks_the_smallest_filters(demo):
    model = demo.build_model()
    groups = tfprune.channel_groups(model)
    first = next(g for g in groups if g.prunable)
    layer = tfprune.graph.find_layer(model, first.producers[0].layer)
    kernel, bias = layer.get_weights()
    kernel[..., :] = np.arange(kernel.shape[-1])[::-1]    # channel c has L1 ~ (size - 1 - c)
    layer.set_weights([kernel, bias])
    removed = demo.lowest_l1_half(model, groups)
    assert removed[first.id] == list(range(first.size // 2, first.size))


def test_demo_arguments(demo):
    assert demo.parse_args([]).epochs == 30
    assert demo.parse_args(["--epochs", "4"]).finetune_epochs == 2
    with pytest.raises(SystemExit):
        demo.parse_args(["--epochs", "0"])
