"""Every example in `examples/` runs on its tiny setting and its results hold up.

`demo.py` has its own test (`tests/profile/test_profile_demo.py`).
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

import tfprune

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"tfprune_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_states_its_runtime_and_has_a_test():
    tested = {"demo", "one_shot_prune", "migrate_from_tfmot", "distributed",
              "cifar10_resnet8_micro"}
    found = {p.stem for p in EXAMPLES.glob("*.py")}
    assert found == tested
    for path in EXAMPLES.glob("*.py"):
        doc = _docstring(path)
        assert "Runtime" in doc, f"{path.name} does not state its runtime"


def _docstring(path):
    import ast

    return ast.get_docstring(ast.parse(path.read_text())) or ""


def test_one_shot_prune_every_method_meets_the_target(capsys):
    rows = _load("one_shot_prune").main(["--epochs", "1", "--methods", "l1,taylor",
                                        "--flops", "0.5", "--finetune-epochs", "1"])
    printed = capsys.readouterr().out
    assert [r["method"] for r in rows] == ["dense", "l1", "taylor"]
    dense = rows[0]
    for r in rows[1:]:
        assert r["flops_kept"] <= 0.5 and r["params"] < dense["params"]
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["finetuned"] <= 1.0
        assert f"{r['flops_kept']:.3f}" in printed


def test_one_shot_prune_refuses_an_unknown_method():
    with pytest.raises(SystemExit):
        _load("one_shot_prune").parse_args(["--methods", "l1,obs"])


def test_migrate_from_tfmot_weight_pruning_is_no_smaller_channels_are(capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = _load("migrate_from_tfmot").main(["--epochs", "1", "--prune-epochs", "2"])
    dense = rows["dense"]
    like_tfmot = rows["weights, sparsity 0.75 (tfmot's job)"]
    channels = rows["channels, flops 0.25"]
    # tfmot's job: three quarters of the kernels are zero, yet the model is about as large
    # (strip removes only the few channels whose every consumer weight happens to be zero).
    assert like_tfmot["zeros"] >= 0.7
    assert like_tfmot["params"] >= 0.9 * dense["params"]
    assert like_tfmot["flops"] >= 0.9 * dense["flops"]
    assert like_tfmot["int8_bytes"] >= 0.9 * dense["int8_bytes"]
    # Channel pruning: a quarter of the FLOPs, and a smaller flatbuffer than either.
    assert channels["flops"] <= 0.25 * dense["flops"]
    assert channels["int8_bytes"] < min(0.9 * dense["int8_bytes"], like_tfmot["int8_bytes"])
    assert "tfprune.strip warned" in capsys.readouterr().out


def test_distributed_prunes_on_two_replicas():
    # Logical devices must be set before TensorFlow starts: a fresh process.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    code = ("import json, sys; sys.argv[0] = 'distributed'; "
            f"sys.path.insert(0, {str(EXAMPLES)!r}); import distributed; "
            "r = distributed.main(['--epochs', '1', '--prune-epochs', '2']); "
            "print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["flops_kept"] <= 0.25
    assert len(result["events"]) >= 2
    assert 0.0 <= result["pruned_accuracy"] <= 1.0


def test_cifar10_resnet8_micro_tiny(shared_data, tmp_path, capsys):
    out = tmp_path / "bundle"
    result = _load("cifar10_resnet8_micro").main(
        ["--data-dir", str(shared_data), "--dense-epochs", "1", "--epochs", "2",
         "--limit-per-class", "10", "--calibration-samples", "32", "--no-baseline",
         "--latency-runs", "2", "--out", str(out)])
    report = result["report"]
    assert report.profile["flops"] <= 0.25 * tfprune.profile(tfprune.zoo.resnet8()).flops
    assert report.accuracy["samples"] == 200                 # the lossless MLPerf Tiny set
    assert 0.0 <= report.accuracy["top1_micro_int8"] <= 1.0
    assert report.arena["bytes"] > 0
    assert (out / "resnet8_model_data.cc").is_file() and (out / "model_int8.tflite").is_file()
    assert "top-1 micro_int8" in capsys.readouterr().out
