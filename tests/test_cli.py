import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from tfprune.cli import main, parse_bytes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_model(path):
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, layers.Dense(3, activation="softmax")(x), name="cli_tiny").save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=rng.integers(0, 256, (16, 8, 8)).astype(np.uint8),
             y=rng.integers(0, 3, 16))
    return _tiny_model(folder / "tiny.keras"), folder / "data.npz"


def test_parse_bytes():
    assert parse_bytes("65536") == 65536
    assert parse_bytes("64K") == parse_bytes("64KiB") == parse_bytes("64kb") == 65536
    assert parse_bytes("1M") == 1 << 20
    for bad in ("abc", "64Q", "0", "-5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_bytes(bad)


def test_convert_writes_the_folder_and_prints_a_summary(files, tmp_path, capsys):
    model, data = files
    out = tmp_path / "out"
    rc = main(["convert", str(model), "--calibration", str(data), "--eval", str(data),
               "--out", str(out), "--name", "tiny", "--latency-runs", "2", "--max-flash", "1M"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "wrote" in captured.out and "arena bytes" in captured.out and "top-1" in captured.out
    report = json.loads((out / "report.json").read_text())
    assert report["name"] == "tiny" and report["verification"]["samples"] == 16
    assert report["accuracy"]["samples"] == 16 and report["budgets"]["max_flash"] == 1 << 20
    assert (out / "tiny_op_resolver.h").exists()


def test_json_output(files, tmp_path, capsys):
    model, data = files
    rc = main(["convert", str(model), "--calibration", str(data), "--out", str(tmp_path / "o"),
               "--no-int8", "--samples", "4", "--latency-runs", "1", "--json",
               "--dense-as-conv", "--latency-clock", "cpu"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["generator"] == "tfprune" and report["tflite"]["int8_bytes"] is None
    assert report["verification"]["samples"] == 4
    assert report["tflite"]["dense_as_conv"] is True and report["latency_ms"]["clock"] == "cpu"
    assert "FULLY_CONNECTED" not in report["tflite"]["ops"] and "CONV_2D" in report["tflite"]["ops"]


def test_errors_exit_non_zero_with_one_clear_line(files, tmp_path, capsys):
    model, data = files
    out = tmp_path / "out"
    (tmp_path / "model.txt").write_text("hello")
    assert main(["convert", str(tmp_path / "model.txt"), "--calibration", str(data),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tfprune convert: error: ") and "not a Keras model file" in err
    assert main(["convert", str(model), "--out", str(out)]) == 1
    assert "hybrid model" in capsys.readouterr().err
    assert main(["convert", str(model), "--calibration", str(data), "--out", str(out),
                 "--max-arena", "1K"]) == 1
    assert "--max-arena 1,024" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as info:
        main(["convert", str(model)])                                  # --out is required
    assert info.value.code == 2


def test_profile_prints_tfprune_profile(files, capsys):
    import keras
    import tfprune

    model, _ = files
    assert main(["profile", str(model)]) == 0
    text = capsys.readouterr().out
    expected = tfprune.profile(keras.saving.load_model(model))
    assert f"{expected.params:,}" in text or str(expected.params) in text
    assert main(["profile", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == expected.params


def test_strip_and_convert_script_is_the_convert_command(tmp_path):
    (tmp_path / "model.txt").write_text("hello")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "strip_and_convert.py"),
                          str(tmp_path / "model.txt"), "--calibration", "x.npz",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 1
    assert "tfprune convert: error:" in run.stderr and "not a Keras model file" in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_resnet8_on_cifar10_in_under_two_minutes(shared_data, tmp_path):
    """The whole tool on ResNet-8 with real data: 200 calibration images from the training
    set, the 200 lossless test images for accuracy, every measurement (BENCHMARK_PROTOCOL.md).

    The bound is on the CPU time of the tool's processes (user + system, the tool and its
    TFLite Micro children): on a machine shared with other jobs the wall time says more
    about the others, and on an idle machine the wall time of this mostly single-threaded
    job is not above its CPU time."""
    import resource

    import tfprune

    tfprune.zoo.resnet8().save(tmp_path / "resnet8.keras")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "strip_and_convert.py"),
                          str(tmp_path / "resnet8.keras"),
                          "--calibration", str(shared_data / "cifar10" / "train"),
                          "--eval", str(shared_data / "cifar10-lossless-200"),
                          "--out", str(tmp_path / "out"), "--name", "resnet8"],
                         capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verification"]["samples"] == 200 and report["accuracy"]["samples"] == 200
    assert report["edgetpu"]["ready"]
    assert report["verification"]["int8_vs_float"]["top1_agreement"] >= 0.8
    loadavg = pathlib.Path("/proc/loadavg")
    load = loadavg.read_text().split()[0] if loadavg.exists() else "?"
    print(f"strip_and_convert on ResNet-8: {cpu:.1f} s CPU, {wall:.1f} s wall at load {load}; "
          f"steps {report['timings_s']}")
    assert cpu < 120
