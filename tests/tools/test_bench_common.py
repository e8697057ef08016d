"""Tests of the benchmark infrastructure (`tools/bench_common.py`, `tools/bench_protocol.py`,
`tools/train_dense.py`) on tiny synthetic data, plus slow checks on the real CIFAR-10."""

import json
import pathlib
import sys

import keras
import numpy as np
import pytest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import bench_common as bc  # noqa: E402
import train_dense  # noqa: E402
from tfprune import zoo  # noqa: E402
from tfprune.errors import DataError  # noqa: E402


def _images(n, seed=0, size=32):
    """Distinct random uint8 images (distinct so that each augmented one has one source)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


# --- data stream ---------------------------------------------------------------------------


def test_stream_is_a_function_of_the_seed_and_resumes_exactly():
    x, y = _images(300)
    full = _batches(bc.train_dataset(x, y, epochs=3, seed=7, batch_size=100))
    again = _batches(bc.train_dataset(x, y, epochs=3, seed=7, batch_size=100))
    resumed = _batches(bc.train_dataset(x, y, epochs=3, seed=7, batch_size=100, initial_epoch=2))
    other = _batches(bc.train_dataset(x, y, epochs=3, seed=8, batch_size=100))
    assert len(full) == 9 and len(resumed) == 3
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(full, again))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(full[6:], resumed))
    assert not np.array_equal(full[0][0], other[0][0])
    # Each epoch is a permutation: every label appears as often as in the data.
    epoch = np.concatenate([b[1] for b in full[:3]])
    assert np.array_equal(np.bincount(epoch, minlength=10), np.bincount(y, minlength=10))


def test_augmentation_is_a_flip_and_a_translation_of_at_most_four_pixels():
    x, y = _images(64, seed=1)
    y = np.arange(64)  # labels identify the source image
    (images, labels), = _batches(bc.train_dataset(x, y, epochs=1, seed=0, batch_size=64))
    assert images.dtype == np.float32
    shifts, flips = set(), 0
    for image, src in zip(images, labels):
        matches = []
        for flip in (False, True):
            base = x[src][:, ::-1] if flip else x[src]
            padded = np.pad(base, ((4, 4), (4, 4), (0, 0)), mode="symmetric")
            for dy in range(9):
                for dx in range(9):
                    if np.array_equal(padded[dy:dy + 32, dx:dx + 32], image):
                        matches.append((flip, dy - 4, dx - 4))
        assert matches, f"image from source {src} is not a flip + translation of it"
        flips += matches[0][0]
        shifts.add(matches[0][1:])
    assert 0 < flips < 64 and len(shifts) > 10  # both flips and many offsets occur


def test_unaugmented_stream_feeds_the_images_unchanged():
    x, _ = _images(128)
    (images, labels), = _batches(bc.train_dataset(x, np.arange(128), epochs=1, seed=0, augment=False))
    assert sorted(labels) == list(range(128)) and not np.array_equal(labels, np.arange(128))
    assert np.array_equal(images, x[labels].astype(np.float32))


def test_flip_only_stream_flips_some_images_and_translates_none():
    x, _ = _images(64, seed=2)
    (images, labels), = _batches(bc.train_dataset(x, np.arange(64), epochs=1, seed=0,
                                                  batch_size=64, augment="flip"))
    flipped = [np.array_equal(image, x[src][:, ::-1]) for image, src in zip(images, labels)]
    same = [np.array_equal(image, x[src]) for image, src in zip(images, labels)]
    assert all(f or s for f, s in zip(flipped, same)) and 0 < sum(flipped) < 64
    with pytest.raises(DataError, match="augment='crop'"):
        bc.train_dataset(x, np.arange(64), epochs=1, seed=0, batch_size=64, augment="crop")


@pytest.mark.parametrize("kwargs, message", [
    (dict(x=np.zeros((200, 32, 32, 3), np.uint8), y=np.zeros(199)), "200 images but 199 labels"),
    (dict(x=np.zeros((100, 32, 32, 3), np.uint8), y=np.zeros(100)), "fewer than one batch of 128"),
    (dict(x=np.zeros((200, 32, 32, 3), np.uint8), y=np.zeros(200), initial_epoch=2),
     "initial_epoch must be in [0, epochs=2)"),
])
def test_stream_rejects_bad_input(kwargs, message):
    kwargs = dict(dict(epochs=2, seed=0), **kwargs)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        bc.train_dataset(**kwargs)


def test_representative_images_are_seeded_training_images():
    x, _ = _images(1000)
    a, b = bc.representative_images(x, seed=0), bc.representative_images(x, seed=1)
    assert a.shape == (200, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, bc.representative_images(x, seed=0)) and not np.array_equal(a, b)
    assert len({bytes(i) for i in a}) == 200 and {bytes(i) for i in a} <= {bytes(i) for i in x}


# --- training and evaluation ---------------------------------------------------------------


def _tiny_resnet8():
    return zoo.resnet8(widths=(4, 4, 8))


def test_training_is_seeded_logs_every_epoch_and_decays_the_rate_to_zero():
    x, y = _images(256)
    runs, logs = [], []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        model = _tiny_resnet8()
        logs.append(bc.EpochLog())
        history = bc.train(model, (x, y), epochs=2, seed=5, lr=1e-3, callbacks=[logs[-1]],
                           verbose=0)
        runs.append(model.get_weights())
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(*runs))
    assert len(history.history["loss"]) == 2
    assert [e["epoch"] for e in logs[0].epochs] == [0, 1]
    assert all(e["wall_s"] > 0 and e["cpu_s"] >= 0 and "loss" in e for e in logs[0].epochs)
    assert logs[0].totals["wall_s"] == pytest.approx(sum(e["wall_s"] for e in logs[0].epochs), abs=0.2)
    schedule = model.optimizer._learning_rate  # the schedule object given to Adam
    assert int(model.optimizer.iterations) == 4
    assert float(schedule(0)) == pytest.approx(1e-3) and float(schedule(4)) == pytest.approx(0, abs=1e-9)


def test_fine_tune_defaults_to_cosine_from_the_fine_tuning_rate():
    x, y = _images(128)
    model = _tiny_resnet8()
    bc.fine_tune(model, ((x, y), (x[:10], y[:10])), epochs=3, initial_epoch=2, seed=0, verbose=0)
    schedule = model.optimizer._learning_rate
    assert int(model.optimizer.iterations) == 1
    assert float(schedule(0)) == pytest.approx(bc.FINE_TUNE_LR)
    assert float(schedule(1)) == pytest.approx(0, abs=1e-9)  # one epoch of one step
    with pytest.raises(DataError, match="lr must be a positive number"):
        bc.fine_tune(model, (x, y), epochs=1, seed=0, lr=-1.0)
    with pytest.raises(DataError, match="lr must be a positive number"):
        bc.train(model, (x, y), epochs=1, seed=0, lr="fast")


def test_a_given_schedule_replaces_the_cosine_decay():
    constant = keras.optimizers.schedules.ExponentialDecay(1e-4, 10, 1.0)
    assert bc._schedule(constant, 100) is constant
    cosine = bc._schedule(2e-3, 100)
    assert float(cosine(50)) == pytest.approx(1e-3, rel=1e-5)


def test_evaluate_matches_argmax_of_the_outputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1234, 5)).astype(np.float32)
    y = rng.integers(0, 5, 1234)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(5, use_bias=False,
                                                   kernel_initializer="identity")(inputs))
    expected = 100.0 * np.mean(np.argmax(x, axis=1) == y)
    assert bc.evaluate(model, x, y, batch_size=100) == pytest.approx(expected)
    with pytest.raises(DataError, match="1234 images, 3 labels"):
        bc.evaluate(model, x, y[:3])


# --- reports -------------------------------------------------------------------------------


def test_append_result_appends_rows_atomically(tmp_path):
    path = bc.append_result("dense", {"top1": 1.5}, results_dir=tmp_path)
    bc.append_result("dense", {"top1": 2.5}, results_dir=tmp_path)
    rows = json.loads(path.read_text())
    assert [r["top1"] for r in rows] == [1.5, 2.5] and all("recorded_utc" in r for r in rows)
    with pytest.raises(TypeError):
        bc.append_result("dense", {"bad": object()}, results_dir=tmp_path)
    assert len(json.loads(path.read_text())) == 2
    with pytest.raises(DataError, match="plain file stem"):
        bc.append_result("../x", {}, results_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["dense.json"]


def test_machine_info_names_the_cpu_and_the_versions():
    import tensorflow as tf

    info = bc.machine_info()
    assert info["cpu"] and info["cores"] >= 1
    assert info["versions"]["tensorflow"] == tf.__version__
    assert info["versions"]["keras"] == keras.__version__
    json.dumps(info)


# --- reference models ----------------------------------------------------------------------


def test_width_multiplier_is_chosen_on_the_mac_count():
    import tfprune

    dense = tfprune.profile(zoo.resnet8()).macs
    m = bc.width_mult_for_flops(0.25)
    widths = bc.narrow_widths(m)
    assert widths == (8, 16, 32)
    ratio = tfprune.profile(zoo.resnet8(widths=widths)).macs / dense
    for k in (7, 9):  # the neighbouring multipliers are farther from the target
        other = tfprune.profile(zoo.resnet8(widths=bc.narrow_widths(k / 16))).macs / dense
        assert abs(other - 0.25) > abs(ratio - 0.25)
    with pytest.raises(DataError, match=r"fraction must be a number in \(0, 1\]"):
        bc.width_mult_for_flops(1.5)
    with pytest.raises(DataError, match="width_mult"):
        bc.narrow_widths(0)


def test_narrow_model_is_trained_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    x, y = _images(256)
    monkeypatch.setattr(bc, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(bc, "load_cifar10", lambda data_dir=None: ((x, y), (x[:50], y[:50])))
    model = bc.narrow_resnet8(0.25, epochs=1, seed=0, log_stream=None)
    path = bc.narrow_resnet8_path(0.25, epochs=1, seed=0)
    assert path.parent == tmp_path and path.is_file()
    info = bc.model_info(path)
    assert info["widths"] == [4, 8, 16] and info["epochs"] == 1 and len(info["epoch_log"]) == 1
    assert info["top1"] == pytest.approx(bc.evaluate(model, x[:50], y[:50]), abs=0.01)
    assert info["params"] == model.count_params() and info["train_cpu_s"] > 0

    def no_training(*a, **k):
        raise AssertionError("a cached model must not be trained again")

    monkeypatch.setattr(bc, "train", no_training)
    again = bc.narrow_resnet8(0.25, epochs=1, seed=0, log_stream=None)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), again.get_weights()))
    assert not list(tmp_path.glob(".*.keras"))  # no temporary file left behind


def test_cifar_cache_is_written_once_and_read_back(tmp_path, monkeypatch):
    x, y = _images(20)
    calls = []

    def fake_loader(base):
        calls.append(base)
        return (x, y), (x[:5], y[:5])

    monkeypatch.setattr(bc.datasets, "load_cifar10", fake_loader)
    first = bc.load_cifar10(tmp_path / "data", cache_dir=tmp_path)
    second = bc.load_cifar10(tmp_path / "data", cache_dir=tmp_path)
    assert len(calls) == 1 and (tmp_path / "cifar10_uint8.npz").is_file()
    assert np.array_equal(first[0][0], second[0][0]) and np.array_equal(first[1][1], second[1][1])


def test_exported_weights_rebuild_the_same_function(tmp_path):
    model = _tiny_resnet8()
    model(np.zeros((1, 32, 32, 3), np.float32))
    x, _ = _images(8)
    path = bc.export_weights_npz(model, tmp_path / "w.npz", check_inputs=x)
    with np.load(path) as d:
        weights = [d[k] for k in sorted(k for k in d.files if k[0] == "w" and k[1:].isdigit())]
        owners, check_x, check_y = list(d["layers"]), d["check_inputs"], d["check_outputs"]
    assert len(weights) == len(owners) == len(model.get_weights())
    assert owners.count("BatchNormalization") == 4 * 7 and owners[-2:] == ["Dense", "Dense"]
    rebuilt = _tiny_resnet8()
    rebuilt.set_weights(weights)
    assert np.allclose(rebuilt(check_x.astype(np.float32), training=False), check_y, atol=1e-6)

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    outer = keras.Sequential([keras.Input((4,)), inner])
    with pytest.raises(DataError, match="nested model"):
        bc.export_weights_npz(outer, tmp_path / "nested.npz")
    assert not (tmp_path / "nested.npz").exists()


def test_train_dense_cli_rejects_conflicting_widths():
    with pytest.raises(SystemExit):
        train_dense.build_parser().parse_args(["--width-mult", "0.5", "--flops", "0.25"])
    with pytest.raises(SystemExit, match="--epochs must be at least 1"):
        train_dense.main(["--epochs", "0"])


@pytest.mark.slow
def test_deployment_figures_agree_with_the_export_and_with_tflite_figures(tmp_path):
    x, y = _images(64)
    model = zoo.resnet8(widths=(4, 4, 8))
    bc.train(model, (x, y), epochs=1, seed=0, batch_size=32, verbose=0)
    figures = bc.deployment_figures(model, tmp_path / "export", x[:32], eval_data=(x[32:], y[32:]))
    int8 = (tmp_path / "export" / "model_int8.tflite").read_bytes()
    assert figures["int8_bytes"] == len(int8) and figures["arena_bytes"] > 0
    assert figures["micro_ms"] > 0 and figures["litert_ref_int8_ms"] > 0
    assert figures["top1_float_eval"] == pytest.approx(bc.evaluate(model, x[32:], y[32:]), abs=0.01)
    again = bc.tflite_figures(int8, eval_data=(x[32:], y[32:]))
    assert again["int8_bytes"] == figures["int8_bytes"]
    assert again["arena_bytes"] == figures["arena_bytes"]
    assert again["top1_micro_int8"] == figures["top1_micro_int8"]


# --- the real data -------------------------------------------------------------------------


@pytest.mark.slow
def test_real_cifar10_through_the_cache(shared_data):
    (x_train, y_train), (x_test, y_test) = bc.load_cifar10(shared_data)
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert x_train.dtype == np.uint8
    assert np.array_equal(np.bincount(y_train), np.full(10, 5000))
    assert np.array_equal(np.bincount(y_test), np.full(10, 1000))


@pytest.mark.slow
def test_cached_dense_resnet8_reproduces_the_protocol(shared_data):
    """The protocol's dense ResNet-8 (trains it, about an hour, when the cache is empty)."""
    model = bc.dense_resnet8(shared_data, seed=0, log_stream=None)
    info = bc.model_info(bc.dense_resnet8_path(0))
    (_, _), (x_test, y_test) = bc.load_cifar10(shared_data)
    assert bc.evaluate(model, x_test, y_test) == pytest.approx(info["top1"], abs=0.01)
    # The protocol's figure is 78.50; this recipe has measured 80.68, 81.03 and 81.22 on three
    # machines (docs/BENCHMARKS.md): not below the protocol's by more than 1.5 points, and
    # not implausibly far above it.
    assert 78.50 - 1.5 <= info["top1"] <= 78.50 + 4.0
