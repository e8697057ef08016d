"""Shared pieces of tfprune's benchmark scripts (see `docs/BENCHMARKS.md`).

Everything a benchmark needs to follow `BENCHMARK_PROTOCOL.md` lives here, once:

- CIFAR-10 as uint8 arrays, decoded once into `cache/cifar10_uint8.npz`;
- the protocol's settings and data stream, re-exported from `bench_protocol` (plain TensorFlow,
  shared with the tfmot baseline that runs under legacy Keras);
- the protocol's training recipe (`train`) and the fine-tuning variant used after pruning
  (`fine_tune`), with a seeded, deterministic `tf.data` augmentation pipeline;
- `evaluate` (float top-1), `machine_info` and `append_result` (JSON rows in `cache/results/`);
- the cached reference models: `dense_resnet8` and the narrow-from-scratch baselines
  `narrow_resnet8`, plus `export_weights_npz` for the tfmot baseline that runs in its own process;
- the protocol's deployment columns (int8 bytes, arena, TFLite Micro / LiteRT times, int8
  top-1), measured with `tfprune.export`: `deployment_figures`, `tflite_figures`.

Scripts in `tools/` import it as `import bench_common` (Python puts a script's folder on
`sys.path`); code elsewhere puts `tools/` on `sys.path` first.

Example:

```python
import bench_common as bc
data = bc.load_cifar10()
model = bc.dense_resnet8()
print(bc.evaluate(model, *data[1]))
```
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfprune  # noqa: E402
from tfprune import datasets, zoo  # noqa: E402
from tfprune.errors import DataError  # noqa: E402

# The protocol's TF-only half sits beside this file; importing it must not depend on how this
# module itself was found (script folder on sys.path, or `tools.bench_common`).
if str(pathlib.Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_protocol import (  # noqa: E402,F401  (re-exported: the protocol's settings)
    AUGMENTATIONS, CACHE_DIR, CIFAR10_NPZ, FINE_TUNE_LR, PROTOCOL_BATCH, PROTOCOL_DENSE_EPOCHS,
    PROTOCOL_LR, REPRESENTATIVE_IMAGES, ROOT, TRANSLATION, load_cifar10_npz,
    representative_images, steps_per_epoch)
import bench_protocol  # noqa: E402

RESNET8_WIDTHS = (16, 32, 64)

Arrays = Tuple[np.ndarray, np.ndarray]


# --- data ----------------------------------------------------------------------------------


def add_data_dir_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds `--data-dir` (default: `tfprune.datasets.shared_data_dir()`) to a parser."""
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder holding cifar10/ (default: $TFPRUNE_DATA_DIR or ../shared/data)")
    return parser


def _atomic_write(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """Calls `write(tmp)` on a temporary sibling of `path`, then renames it into place."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp = pathlib.Path(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path, obj) -> pathlib.Path:
    """Writes `obj` as indented JSON, atomically."""
    return _atomic_write(pathlib.Path(path), lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def load_cifar10(data_dir=None, cache_dir=None) -> Tuple[Arrays, Arrays]:
    """CIFAR-10 as `((x_train, y_train), (x_test, y_test))`, uint8 HWC images, int64 labels.

    The first call decodes the 60,000 JPEGs with `tfprune.datasets.load_cifar10` and stores
    the arrays in `<cache_dir>/cifar10_uint8.npz`; later calls read that file.

    Args:
        data_dir: folder holding `cifar10/` (default: `tfprune.datasets.shared_data_dir()`).
        cache_dir: where the decoded arrays are kept (default: `cache/` of the repository).

    Returns:
        `((x_train, y_train), (x_test, y_test))`.

    Example:

    ```python
    (x_train, y_train), (x_test, y_test) = load_cifar10()
    assert x_train.shape == (50000, 32, 32, 3)
    ```
    """
    cache = pathlib.Path(cache_dir or CACHE_DIR) / CIFAR10_NPZ
    if cache.is_file():
        return load_cifar10_npz(cache)
    base = data_dir if data_dir is not None else datasets.shared_data_dir(required=True)
    (x_train, y_train), (x_test, y_test) = datasets.load_cifar10(base)
    _atomic_write(cache, lambda p: np.savez(p, x_train=x_train, y_train=y_train,
                                            x_test=x_test, y_test=y_test))
    return (x_train, y_train), (x_test, y_test)


def train_dataset(x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
                  batch_size: int = PROTOCOL_BATCH, initial_epoch: int = 0,
                  augment=True) -> tf.data.Dataset:
    """The protocol's training stream: epochs `initial_epoch .. epochs-1`, shuffled, augmented.

    `bench_protocol.train_dataset` with its arguments checked. Epoch `e` is a permutation of
    the whole training set and per-image augmentations (flip, translation of up to 12.5%)
    that depend only on `(seed, e)`, so a run that starts at `initial_epoch` sees exactly the
    batches an uninterrupted run would. Incomplete last batches are dropped (`len(x) //
    batch_size` steps per epoch). Images are float32 in the 0-255 range (the reference models
    rescale inside).

    Args:
        x, y: training images (uint8 or float, NHWC) and integer labels.
        epochs: index of the last epoch + 1.
        seed: seed of the shuffling and of the augmentation.
        batch_size: images per batch.
        initial_epoch: first epoch of the stream.
        augment: one of `AUGMENTATIONS`: `"protocol"` (or True) flips and translates,
            `"flip"` only flips (a fine-tuning option), `"none"` (or False) feeds the
            images unchanged.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches.

    Raises:
        DataError: images and labels differ in number, fewer images than one batch, an
            `initial_epoch` outside the run, or an unknown `augment`.

    Example:

    ```python
    x = np.zeros((256, 32, 32, 3), np.uint8); y = np.zeros(256, np.int64)
    batches = list(train_dataset(x, y, epochs=1, seed=0))
    assert len(batches) == 2
    ```
    """
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels: they must be the same number")
    if len(x) < batch_size:
        raise DataError(f"{len(x)} training images is fewer than one batch of {batch_size}")
    if not 0 <= initial_epoch < epochs:
        raise DataError(f"initial_epoch must be in [0, epochs={epochs}); got {initial_epoch}")
    if not isinstance(augment, bool) and augment not in AUGMENTATIONS:
        raise DataError(f"augment={augment!r}: accepted are True, False or one of "
                        f"{', '.join(AUGMENTATIONS)}")
    return bench_protocol.train_dataset(x, y, epochs, seed, batch_size, initial_epoch, augment)


# --- training ------------------------------------------------------------------------------


class EpochLog(keras.callbacks.Callback):
    """Records each epoch's wall time and process CPU time (user + system, all threads).

    Example:

    ```python
    log = EpochLog()
    # model.fit(..., callbacks=[log]); log.epochs -> [{"epoch": 0, "wall_s": ..., ...}, ...]
    ```
    """

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream
        self.epochs = []

    @staticmethod
    def cpu_seconds() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._c0 = time.perf_counter(), self.cpu_seconds()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": int(epoch), "wall_s": round(time.perf_counter() - self._t0, 2),
               "cpu_s": round(self.cpu_seconds() - self._c0, 2)}
        row.update({k: round(float(v), 5) for k, v in (logs or {}).items()})
        self.epochs.append(row)
        if self.stream is not None:
            print(json.dumps(row), file=self.stream, flush=True)

    @property
    def totals(self) -> Dict[str, float]:
        return {"wall_s": round(sum(e["wall_s"] for e in self.epochs), 1),
                "cpu_s": round(sum(e["cpu_s"] for e in self.epochs), 1)}


def recipe_suffix(batch_size: int, lr: float, augment: str) -> str:
    """The part of a run's name that says how its fine-tuning differs from the protocol's:
    `"_b16_lr0.004_augflip"`, `""` for the protocol's batch, rate and augmentation (the
    names of `tools/bench_quality.py`'s runs and of `tools/bench_vs_tfmot.py`'s tfmot
    folders)."""
    return ("" if batch_size == PROTOCOL_BATCH else f"_b{batch_size}") \
        + ("" if lr == FINE_TUNE_LR else f"_lr{lr:g}") \
        + ("" if augment == "protocol" else f"_aug{augment}")


def train(model: keras.Model, data, epochs: int, seed: int, lr=PROTOCOL_LR,
          batch_size: int = PROTOCOL_BATCH, callbacks: Sequence = (), initial_epoch: int = 0,
          from_logits: bool = False, jit_compile=False, verbose=2,
          augment="protocol") -> keras.callbacks.History:
    """Trains `model` in place with the protocol's recipe.

    Adam, learning rate cosine-decayed from `lr` to 0 over the steps of this run (epochs
    `initial_epoch .. epochs-1`), batch 128, random flip + 12.5% translation, sparse
    categorical cross-entropy on probabilities (the reference ResNet-8 ends in softmax).
    The model is (re)compiled, so an existing optimizer state is replaced.

    Args:
        model: the Keras model to train; its weights change.
        data: `((x_train, y_train), (x_test, y_test))` or `(x_train, y_train)`.
        epochs: index of the last epoch + 1, as in `model.fit`.
        seed: seed of the data stream and of Keras' random state.
        lr: peak of the cosine schedule, or any Keras `LearningRateSchedule` to use instead.
        batch_size: images per step.
        callbacks: Keras callbacks for `fit` (pruning callbacks, `EpochLog`, ...).
        initial_epoch: first epoch; the data stream then is what an uninterrupted run would
            have fed from that epoch on, and callbacks see the epoch numbers of the whole run.
        from_logits: set when the model ends in logits rather than softmax.
        jit_compile: passed to `compile`; XLA is off by default (see `docs/BENCHMARKS.md`).
        verbose: `fit` verbosity.
        augment: the training images' augmentation (`train_dataset`); the protocol's by
            default.

    Returns:
        The `History` of `fit`.

    Example:

    ```python
    model = zoo.resnet8()
    train(model, load_cifar10(), epochs=30, seed=0)
    ```
    """
    (x_train, y_train) = data[0] if isinstance(data[0], tuple) else data
    steps = steps_per_epoch(len(x_train), batch_size)
    schedule = _schedule(lr, (epochs - initial_epoch) * steps)
    ds = train_dataset(x_train, y_train, epochs, seed, batch_size, initial_epoch, augment)
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                  metrics=["accuracy"], jit_compile=jit_compile)
    return model.fit(ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                     callbacks=list(callbacks), verbose=verbose, shuffle=False)


def fine_tune(model: keras.Model, data, epochs: int, seed: int, lr=FINE_TUNE_LR,
              **kwargs) -> keras.callbacks.History:
    """Fine-tunes a trained `model` in place: the protocol's recipe at a lower learning rate.

    `train` with its own default rate: cosine decay from `FINE_TUNE_LR` (2e-3, the dense
    peak rewound) to 0 over the steps of this run. Same data stream, augmentation, loss and
    optimizer. Pass a float to change the peak, or a `LearningRateSchedule` to replace it.

    Args:
        model: the trained (possibly pruned) model; its weights change.
        data: `((x_train, y_train), (x_test, y_test))` or `(x_train, y_train)`.
        epochs: index of the last epoch + 1 (e.g. 40 after 30 dense epochs).
        seed: seed of the data stream.
        lr: peak of the cosine schedule, or a `LearningRateSchedule`.
        **kwargs: `batch_size`, `callbacks`, `initial_epoch`, `from_logits`, `jit_compile`,
            `verbose`, `augment`, as in `train`.

    Returns:
        The `History` of `fit`.

    Example:

    ```python
    fine_tune(pruned, load_cifar10(), epochs=40, initial_epoch=30, seed=0,
              callbacks=[pruning_callback])
    ```
    """
    return train(model, data, epochs, seed, lr=lr, **kwargs)


def _schedule(lr, steps: int):
    """`lr` itself if it is a schedule, else cosine decay from `lr` to 0 over `steps` steps."""
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise DataError(f"lr must be a positive number or a keras LearningRateSchedule; got {lr!r}")
    return keras.optimizers.schedules.CosineDecay(float(lr), decay_steps=max(steps, 1))


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Float top-1 accuracy in percent (BatchNorm in inference mode).

    Args:
        model: a Keras model taking raw images as the data holds them.
        x, y: images and integer labels (the 10k CIFAR-10 test set for the protocol).
        batch_size: images per forward pass.

    Returns:
        Top-1 accuracy in percent.

    Example:

    ```python
    top1 = evaluate(model, x_test, y_test)
    ```
    """
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"evaluate needs as many labels as images (and at least one); "
                        f"got {len(x)} images, {len(y)} labels")
    correct = 0
    for i in range(0, len(x), batch_size):
        probs = model(tf.cast(x[i:i + batch_size], tf.float32), training=False)
        correct += int(np.sum(np.argmax(np.asarray(probs), axis=-1) == np.asarray(y[i:i + batch_size])))
    return 100.0 * correct / len(x)


# --- reports -------------------------------------------------------------------------------


def machine_info() -> Dict[str, object]:
    """CPU model, cores, load, memory and software versions, for reports.

    Example:

    ```python
    print(machine_info()["cpu"])
    ```
    """
    cpu, flags = platform.processor() or "unknown", ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(pathlib.Path("/proc/meminfo").read_text().split()[1])
        mem_gb = round(kb / 2**20, 1)
    versions = {"python": platform.python_version(), "tensorflow": tf.__version__,
                "keras": keras.__version__, "numpy": np.__version__}
    for name in ("ai_edge_litert", "tflite_micro"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version
            versions[name] = version(name.replace("_", "-"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512": "avx512f" in flags.split(),
        "memory_gb": mem_gb,
        "load_avg": [round(v, 2) for v in os.getloadavg()],
        "os": platform.platform(),
        "versions": versions,
        "git_commit": _git_commit(),
    }


def _git_commit() -> Optional[str]:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    return None


def append_result(name: str, row: Dict[str, object], results_dir=None) -> pathlib.Path:
    """Appends `row` (plus a UTC timestamp) to the JSON list `<results_dir>/<name>.json`.

    Writers are serialised with a lock file and each write is atomic, so several benchmark
    processes may append to the same file.

    Args:
        name: file stem, e.g. `"dense"`, `"narrow"`, `"tfmot"`.
        row: JSON-serialisable figures.
        results_dir: default `cache/results/`.

    Returns:
        The path of the JSON file.

    Example:

    ```python
    append_result("dense", {"model": "resnet8", "top1": 78.4})
    ```
    """
    if not name or "/" in name or name.startswith("."):
        raise DataError(f"result name must be a plain file stem like 'dense'; got {name!r}")
    folder = pathlib.Path(results_dir or CACHE_DIR / "results")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    row = dict(row, recorded_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    json.dumps(row)  # fail before touching the file if the row is not serialisable
    with open(folder / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = json.loads(path.read_text()) if path.is_file() else []
        rows.append(row)
        write_json(path, rows)
    return path


# --- reference models ----------------------------------------------------------------------


def narrow_widths(width_mult: float, base: Sequence[int] = RESNET8_WIDTHS) -> Tuple[int, ...]:
    """The ResNet-8 widths scaled by `width_mult`, rounded, at least 1.

    Example:

    ```python
    assert narrow_widths(0.5) == (8, 16, 32)
    ```
    """
    if not isinstance(width_mult, (int, float)) or not 0 < width_mult <= 1:
        raise DataError(f"width_mult must be a number in (0, 1]; got {width_mult!r}")
    return tuple(max(1, int(round(w * width_mult))) for w in base)


def width_mult_for_flops(fraction: float, base: Sequence[int] = RESNET8_WIDTHS) -> float:
    """The width multiplier whose ResNet-8 has the MAC count closest to `fraction` of the dense.

    Conv MACs scale about with width^2, but the first conv (3 input channels) and the classifier
    scale with width only, so the multiplier is chosen on the counts of `tfprune.profile`.
    Candidates are the multipliers `k / base[0]`, which keep the stacks' width ratios (1:2:4)
    exact.

    Example:

    ```python
    assert narrow_widths(width_mult_for_flops(0.25)) == (8, 16, 32)
    ```
    """
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise DataError(f"fraction must be a number in (0, 1]; got {fraction!r}")
    dense = tfprune.profile(zoo.resnet8(widths=tuple(base))).macs
    candidates = [k / base[0] for k in range(1, base[0] + 1)]
    errors = [abs(tfprune.profile(zoo.resnet8(widths=narrow_widths(m, base))).macs / dense - fraction)
              for m in candidates]
    return candidates[int(np.argmin(errors))]


def _cached_model(path: pathlib.Path, build: Callable[[], keras.Model], data_dir, epochs: int,
                  seed: int, meta: Dict[str, object], log_stream) -> keras.Model:
    """Loads `path` if present, else builds, trains with the protocol, evaluates and saves it.

    Next to the `.keras` file a `.json` holds test top-1, training wall and CPU time, epoch log,
    machine and settings. Both files are written atomically.
    """
    if path.is_file():
        return keras.models.load_model(path)
    data = load_cifar10(data_dir)
    keras.utils.set_random_seed(seed)
    model = build()
    log = EpochLog(stream=log_stream)
    t0, c0 = time.perf_counter(), EpochLog.cpu_seconds()
    train(model, data, epochs=epochs, seed=seed, callbacks=[log], verbose=0)
    wall, cpu = time.perf_counter() - t0, EpochLog.cpu_seconds() - c0
    top1 = evaluate(model, *data[1])
    info = dict(meta, epochs=epochs, seed=seed, top1=round(top1, 2), params=model.count_params(),
                macs=tfprune.profile(model).macs, train_wall_s=round(wall, 1), train_cpu_s=round(cpu, 1),
                epoch_log=log.epochs, machine=machine_info(), model_path=str(path))
    _atomic_write(path, lambda p: model.save(p))
    write_json(path.with_suffix(".json"), info)
    if log_stream is not None:
        print(json.dumps({k: v for k, v in info.items() if k not in ("epoch_log", "machine")}),
              file=log_stream, flush=True)
    return model


def model_info(model_path) -> Dict[str, object]:
    """The JSON written beside a cached model (`top1`, `train_cpu_s`, `epoch_log`, ...)."""
    return json.loads(pathlib.Path(model_path).with_suffix(".json").read_text())


def dense_resnet8(data_dir=None, seed: int = 0, epochs: int = PROTOCOL_DENSE_EPOCHS,
                  log_stream=sys.stdout) -> keras.Model:
    """The dense ResNet-8 trained with the protocol, cached in `cache/resnet8_dense_seed<seed>.keras`.

    Trains it (30 epochs, about an hour of a 2-core CPU) when the file is absent. Its figures
    are in the `.json` beside it (`model_info(dense_resnet8_path(seed))`).

    Args:
        data_dir: folder holding `cifar10/`.
        seed: seed of the weights and of the data stream.
        epochs: training epochs (the protocol: 30; other values get their own cache file).
        log_stream: where epoch rows are printed (None: silent).

    Returns:
        The trained model, compiled as it was trained (Adam state included); `train` and
        `fine_tune` recompile it. The cached file is never modified.

    Example:

    ```python
    model = dense_resnet8()
    ```
    """
    return _cached_model(dense_resnet8_path(seed, epochs), lambda: zoo.resnet8(), data_dir,
                         epochs, seed, {"model": "resnet8", "widths": list(RESNET8_WIDTHS)},
                         log_stream)


def dense_resnet8_path(seed: int = 0, epochs: int = PROTOCOL_DENSE_EPOCHS) -> pathlib.Path:
    """Cache path of `dense_resnet8(seed=seed, epochs=epochs)`."""
    suffix = "" if epochs == PROTOCOL_DENSE_EPOCHS else f"_e{epochs}"
    return CACHE_DIR / f"resnet8_dense_seed{seed}{suffix}.keras"


def narrow_resnet8(width_mult: float, epochs: int, seed: int = 0, data_dir=None,
                   log_stream=sys.stdout) -> keras.Model:
    """ResNet-8 with every width scaled by `width_mult`, trained from scratch with the protocol.

    The baseline that structured pruning must beat. Cached by its settings in
    `cache/resnet8_w<widths>_e<epochs>_seed<seed>.keras` (+ `.json`).

    Args:
        width_mult: scale of the widths (16, 32, 64), in (0, 1]; see `width_mult_for_flops`.
        epochs: training epochs (40 = 30 dense + 10 pruning epochs of the pruning runs).
        seed: seed of the weights and of the data stream.
        data_dir: folder holding `cifar10/`.
        log_stream: where epoch rows are printed (None: silent).

    Returns:
        The trained Keras model.

    Example:

    ```python
    half = narrow_resnet8(0.5, epochs=30)
    ```
    """
    widths = narrow_widths(width_mult)
    return _cached_model(narrow_resnet8_path(width_mult, epochs, seed),
                         lambda: zoo.resnet8(widths=widths), data_dir, epochs, seed,
                         {"model": "resnet8", "width_mult": width_mult, "widths": list(widths)},
                         log_stream)


def narrow_resnet8_path(width_mult: float, epochs: int, seed: int = 0) -> pathlib.Path:
    """Cache path of `narrow_resnet8(width_mult, epochs, seed)`."""
    tag = "-".join(map(str, narrow_widths(width_mult)))
    return CACHE_DIR / f"resnet8_w{tag}_e{epochs}_seed{seed}.keras"


def export_weights_npz(model: keras.Model, path, check_inputs: Optional[np.ndarray] = None
                       ) -> pathlib.Path:
    """Writes `model.get_weights()` (layer order) to an `.npz` for a process without Keras 3.

    Arrays are stored as `w000, w001, ...`; `layers` names, per weight, the class of the layer
    it belongs to, so the reader can check that its own model's weights line up. With
    `check_inputs`, the file also holds those inputs and this model's outputs on them
    (`check_inputs`, `check_outputs`, inference mode), so the reader can prove that its model
    computes the same function. The write is atomic.

    Args:
        model: the Keras 3 model (flat: nested models are refused).
        path: the `.npz` to write.
        check_inputs: a batch of inputs to record reference outputs on.

    Returns:
        The path written.

    Example:

    ```python
    (_, _), (x_test, _) = load_cifar10()
    export_weights_npz(dense_resnet8(), "cache/resnet8_dense_seed0_weights.npz", x_test[:64])
    ```
    """
    arrays, owners = {}, []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise DataError(f"layer {layer.name!r} of {model.name!r} is a nested model; "
                            "export_weights_npz accepts flat models only")
        for w in layer.weights:
            arrays[f"w{len(owners):03d}"] = np.asarray(w.numpy())
            owners.append(type(layer).__name__)
    arrays["layers"] = np.asarray(owners)
    if check_inputs is not None:
        arrays["check_inputs"] = np.asarray(check_inputs)
        arrays["check_outputs"] = np.asarray(
            model(tf.cast(check_inputs, tf.float32), training=False))
    _atomic_write(pathlib.Path(path), lambda p: np.savez(p, **arrays))
    return pathlib.Path(path)


# --- deployment figures --------------------------------------------------------------------


def deployment_figures(model, out_dir, calibration: np.ndarray, eval_data=None,
                       name: str = "model") -> Dict[str, object]:
    """The protocol's deployment columns of a Keras model, measured with `tfprune.export`.

    Runs `tfprune.export.convert` (full-int8, batch 1, int8 in/out, calibrated on
    `calibration`; arena searched in 64-byte steps; median of 50 single-thread invokes) and
    keeps the figures the protocol's tables report. The whole export (report, flatbuffers,
    C sources) stays in `out_dir`.

    Args:
        model: a Keras model or the path of a `.keras` file.
        out_dir: the export folder (replaced if it holds a previous export).
        calibration: representative images (the protocol: `representative_images(x_train)`).
        eval_data: labelled data for int8 top-1 (the protocol: the 200 lossless CIFAR-10
            images, `shared_data_dir() / "cifar10-lossless-200"`).
        name: C identifier of the export.

    Returns:
        A flat dict: `int8_bytes`, `float_bytes`, `arena_bytes`, `micro_ms`,
        `litert_ref_int8_ms`, `litert_int8_ms`, `macs`, `params`, and with `eval_data`
        `top1_micro_int8`, `top1_litert_int8`, `top1_float_eval` (percent).

    Example:

    ```python
    figures = deployment_figures(model, "cache/export/dense", representative_images(x_train),
                                 eval_data=shared_data_dir() / "cifar10-lossless-200")
    ```
    """
    from tfprune import export

    report = export.convert(model, out_dir, calibration=np.asarray(calibration), eval_data=eval_data,
                            name=name, samples=len(calibration))
    lat, acc = report.latency_ms, report.accuracy or {}
    figures = {
        "int8_bytes": report.tflite["int8_bytes"], "float_bytes": report.tflite["float_bytes"],
        "arena_bytes": (report.arena or {}).get("bytes"), "micro_ms": lat.get("micro"),
        "litert_ref_int8_ms": lat.get("litert_ref_int8"), "litert_int8_ms": lat.get("litert_int8"),
        "macs": report.profile["macs"], "params": report.profile["params"],
        "export_dir": str(out_dir)}
    for key, column in (("top1_micro_int8", "top1_micro_int8"),
                        ("top1_litert_int8", "top1_litert_int8"),
                        ("top1_float_keras", "top1_float_eval")):
        if key in acc:
            figures[column] = round(100.0 * acc[key], 2)
    return figures


def tflite_figures(tflite_bytes: bytes, eval_data=None) -> Dict[str, object]:
    """The protocol's deployment columns of an int8 flatbuffer converted elsewhere.

    For flatbuffers that `tfprune.export` did not convert (the tfmot baseline's): bytes,
    arena, TFLite Micro and LiteRT reference times, measured like `deployment_figures`.

    Args:
        tflite_bytes: the int8 flatbuffer.
        eval_data: `(x, y)` for TFLite Micro int8 top-1.

    Returns:
        A flat dict: `int8_bytes`, `arena_bytes`, `micro_ms`, `litert_ref_int8_ms`,
        `litert_int8_ms`, and with `eval_data` `top1_micro_int8` (percent).

    Example:

    ```python
    figures = tflite_figures(pathlib.Path("model_int8.tflite").read_bytes())
    ```
    """
    from tfprune import export

    arena = export.measure_arena(tflite_bytes)
    figures = {"int8_bytes": len(tflite_bytes), "arena_bytes": arena.bytes,
               "micro_ms": export.measure_latency(tflite_bytes, "micro", arena_size=arena.bytes),
               "litert_ref_int8_ms": export.measure_latency(tflite_bytes, "litert_ref"),
               "litert_int8_ms": export.measure_latency(tflite_bytes, "litert")}
    if eval_data is not None:
        x, y = eval_data
        (out,) = export.run_tflite(tflite_bytes, x, "micro", arena_size=arena.bytes)
        figures["top1_micro_int8"] = round(100.0 * float(np.mean(np.argmax(out, -1) == y)), 2)
    return figures
