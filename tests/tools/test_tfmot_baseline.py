"""Tests of the tfmot baseline runner (`tools/tfmot_baseline.py`), which runs in `.venv-tfmot`."""

import ast
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
TFMOT_PY = ROOT / ".venv-tfmot" / "bin" / "python"
sys.path.insert(0, str(TOOLS))


def _imported_modules(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("script", ["tfmot_baseline.py", "bench_protocol.py"])
def test_legacy_keras_side_never_imports_keras3_or_tfprune(script):
    """Keras 3 or tfprune in the tfmot process would mix two Keras versions in one TensorFlow."""
    imported = _imported_modules(TOOLS / script)
    assert not imported & {"keras", "tfprune", "bench_common"}, imported
    if script == "tfmot_baseline.py":
        assert {"tf_keras", "tensorflow_model_optimization", "bench_protocol"} <= imported


@pytest.mark.slow
@pytest.mark.skipif(not TFMOT_PY.exists(), reason="needs .venv-tfmot (make bench-venv-tfmot)")
def test_tfmot_baseline_end_to_end_on_a_small_run(tmp_path):
    import keras

    import bench_common as bc
    from tfprune import zoo

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (512, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 512)
    np.savez(tmp_path / "cifar.npz", x_train=x, y_train=y, x_test=x[:100], y_test=y[:100])
    keras.utils.set_random_seed(0)
    model = zoo.resnet8()
    bc.train(model, (x, y), epochs=1, seed=0, verbose=0)  # non-trivial BatchNorm statistics
    bc.export_weights_npz(model, tmp_path / "w.npz", check_inputs=x[:16])

    out = tmp_path / "out"
    cmd = [str(TFMOT_PY), str(TOOLS / "tfmot_baseline.py"), "--weights", str(tmp_path / "w.npz"),
           "--cifar-npz", str(tmp_path / "cifar.npz"), "--out", str(out),
           "--batch-size", "64", "--augment", "flip", "--sparsity", "0.5",
           "--epochs", "1", "--frequency", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["check_max_abs_diff"] < 1e-5
    assert result["dense_top1"] == pytest.approx(bc.evaluate(model, x[:100], y[:100]), abs=0.01)
    assert result["sparsity_achieved"] == pytest.approx(0.5, abs=0.01)
    assert result["int8_tflite_bytes"] == (out / "model_int8.tflite").stat().st_size
    assert (result["batch_size"], result["augment"]) == (64, "flip")
    assert len(result["epoch_log"]) == 1

    with np.load(out / "weights.npz") as d:
        weights = [d[k] for k in sorted(k for k in d.files if k[0] == "w" and k[1:].isdigit())]
    pruned = zoo.resnet8()
    pruned.set_weights(weights)
    assert result["top1"] == pytest.approx(bc.evaluate(pruned, x[:100], y[:100]), abs=0.01)

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(out / "model_int8.tflite"))
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape"]) == [1, 32, 32, 3] and inp["dtype"] == np.int8
    assert outp["dtype"] == np.int8

    bad = subprocess.run(cmd[:-6] + ["--sparsity", "1.5"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--sparsity must be in (0, 1)" in bad.stderr
    bad = subprocess.run(cmd[:-6] + ["--batch-size", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--batch-size must be at least 1" in bad.stderr
