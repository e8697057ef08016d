"""The tfmot baseline of the benchmark protocol: `prune_low_magnitude` on the dense ResNet-8.

tensorflow-model-optimization needs legacy Keras (`tf_keras`), and importing it switches
TensorFlow to it, so this script runs in its own environment (`make bench-venv-tfmot`) and never
imports tfprune or Keras 3. It shares the protocol's data stream through `bench_protocol`
(plain TensorFlow) and reads two files that tfprune's side writes:

- the dense weights, `model.get_weights()` in layer order with a check batch
  (`bench_common.export_weights_npz`, `train_dense.py --export-npz`);
- the decoded CIFAR-10 arrays `cache/cifar10_uint8.npz` (`bench_common.load_cifar10`).

It rebuilds the same ResNet-8 in `tf_keras`, checks that it computes what the Keras 3 model
computed on the check batch, prunes it while fine-tuning with the protocol's augmentation and
batch (or `--augment`, `--batch-size`, `--lr`: the quality benchmark's recipes) under a cosine
decay from `--lr` to 0 (`UpdatePruningStep`), with `ConstantSparsity(sparsity, begin_step=0)`
or, with `--prune-epochs P`, with the quality benchmark's ramp (`PolynomialDecay` from 0 to
`sparsity`, power 3, every half epoch from step 0 to the middle of epoch P), strips the
wrappers, and writes into `--out` (atomically: a temporary sibling folder renamed at the end):

- `model_int8.tflite`: full-integer post-training quantization (200 training images as the
  representative set, batch fixed to 1, int8 input and output);
- `weights.npz`: the stripped model's weights in the same format as the input, so tfprune's
  side can load them into `tfprune.zoo.resnet8()` and measure them with `tfprune.export`;
- `result.json`: float top-1 on the 10k test set before and after, achieved sparsity, times,
  .tflite bytes, settings and versions.

Example:

```
.venv-tfmot/bin/python tools/tfmot_baseline.py --weights cache/resnet8_dense_seed0_weights.npz \\
    --sparsity 0.75 --epochs 5 --out cache/tfmot/sparsity0.75_e5_seed0
```
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import shutil
import sys
import tempfile
import time

# tfmot and the TFLite converter must both see legacy Keras as `tf.keras`.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

import bench_protocol as bp  # noqa: E402

# Largest difference allowed between the Keras 3 and the tf_keras outputs (probabilities).
CHECK_ATOL = 1e-5


def resnet8(widths=(16, 32, 64), batch_size=None, num_classes=10, weight_decay=1e-4):
    """`tfprune.zoo.resnet8` written with `tf_keras`: same layers, same order, same weights.

    Args:
        widths: filters of the three stacks.
        batch_size: fixed batch dimension (1 for microcontroller conversion) or None.
        num_classes: classifier outputs (softmax).
        weight_decay: L2 factor of the convolution kernels.

    Returns:
        A `tf_keras` functional model.
    """
    layers = keras.layers

    def conv(filters, kernel, strides=1):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same",
                             kernel_initializer="he_normal",
                             kernel_regularizer=keras.regularizers.l2(weight_decay))

    inputs = keras.Input((32, 32, 3), batch_size=batch_size)
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = conv(widths[0], 3)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for stack, filters in enumerate(widths):
        strides = 1 if stack == 0 else 2
        y = conv(filters, 3, strides)(x)
        y = layers.BatchNormalization()(y)
        y = layers.Activation("relu")(y)
        y = conv(filters, 3)(y)
        y = layers.BatchNormalization()(y)
        if stack > 0:
            x = conv(filters, 1, strides)(x)
        x = layers.Add()([x, y])
        x = layers.Activation("relu")(x)
    x = layers.AveragePooling2D(pool_size=int(min(x.shape[1:3])))(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer="he_normal")(x)
    return keras.Model(inputs, outputs, name="resnet8")


def read_weights(path):
    """`(weights, owners, check_inputs, check_outputs)` from an `export_weights_npz` file."""
    with np.load(path) as d:
        names = sorted(k for k in d.files if k.startswith("w") and k[1:].isdigit())
        weights = [d[k] for k in names]
        owners = [str(o) for o in d["layers"]]
        check = (d["check_inputs"], d["check_outputs"]) if "check_inputs" in d.files else (None, None)
    return weights, owners, check[0], check[1]


def load_into(model, weights, owners):
    """Sets `weights` on `model` after checking layer classes and shapes line up, weight by weight."""
    mine = [(type(layer).__name__, tuple(w.shape)) for layer in model.layers for w in layer.weights]
    theirs = list(zip(owners, (tuple(w.shape) for w in weights)))
    if mine != theirs:
        bad = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        raise SystemExit(f"the weights file does not match the tf_keras ResNet-8: {len(theirs)} weights "
                         f"vs {len(mine)}; first difference at weight {bad}: file "
                         f"{theirs[bad] if bad < len(theirs) else None} vs model "
                         f"{mine[bad] if bad < len(mine) else None}")
    model.set_weights(weights)


def wrap_prunable(model, schedule):
    """`prune_low_magnitude` on every Conv2D and Dense layer, as tfmot's guide does per layer.

    tfmot refuses to wrap a whole model that holds a layer its registry does not know
    (`Rescaling` here); the layers it would prune are the same either way.
    """
    def wrap(layer):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(model, clone_function=wrap)


def top1(model, x, y, batch_size=500):
    """Float top-1 accuracy in percent, inference mode."""
    probs = model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0)
    return 100.0 * float(np.mean(np.argmax(probs, axis=-1) == y))


def kernel_sparsity(model):
    """Fraction of zeros over the Conv2D and Dense kernels (the weights tfmot prunes)."""
    kernels = [layer.kernel.numpy() for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    return float(sum(np.sum(k == 0) for k in kernels) / sum(k.size for k in kernels))


def to_int8_tflite(model, representative):
    """Full-integer TFLite flatbuffer, batch 1, int8 input and output."""
    fixed = resnet8(batch_size=1)
    fixed.set_weights(model.get_weights())
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([img[None].astype(np.float32)] for img in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


class EpochTimes(keras.callbacks.Callback):
    """Wall and process CPU seconds of each epoch, with the epoch's logs."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._c0 = time.perf_counter(), cpu_seconds()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": int(epoch), "wall_s": round(time.perf_counter() - self._t0, 2),
               "cpu_s": round(cpu_seconds() - self._c0, 2)}
        row.update({k: round(float(v), 5) for k, v in (logs or {}).items()})
        self.epochs.append(row)
        print(json.dumps(row), flush=True)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, type=pathlib.Path,
                   help="dense weights .npz written by bench_common.export_weights_npz")
    p.add_argument("--out", required=True, type=pathlib.Path, help="output folder (replaced)")
    p.add_argument("--sparsity", type=float, default=0.75, help="fraction of kernel weights zeroed")
    p.add_argument("--epochs", type=int, default=5, help="pruning + fine-tuning epochs")
    p.add_argument("--lr", type=float, default=bp.FINE_TUNE_LR,
                   help="peak of the cosine-decayed learning rate (default: the fine-tuning rate "
                        "of bench_common.fine_tune)")
    p.add_argument("--frequency", type=int, default=100,
                   help="steps between mask updates (tfmot's ConstantSparsity default)")
    p.add_argument("--prune-epochs", type=int, default=0,
                   help="ramp the sparsity over these first epochs as tools/bench_quality.py "
                        "does (PolynomialDecay, every half epoch); 0: ConstantSparsity")
    p.add_argument("--batch-size", type=int, default=bp.PROTOCOL_BATCH,
                   help=f"fine-tuning batch (default: the protocol's {bp.PROTOCOL_BATCH})")
    p.add_argument("--augment", choices=bp.AUGMENTATIONS, default="protocol",
                   help="fine-tuning augmentation: 'protocol' (flip + translation, default), "
                        "'flip' or 'none' (tools/bench_quality.py --augment)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None,
                   help="train on this many training images only (quick checks, not the protocol)")
    p.add_argument("--cifar-npz", type=pathlib.Path, default=bp.CACHE_DIR / bp.CIFAR10_NPZ,
                   help="decoded CIFAR-10 arrays written by bench_common.load_cifar10")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not 0 < args.sparsity < 1:
        raise SystemExit(f"--sparsity must be in (0, 1); got {args.sparsity}")
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be at least 1; got {args.epochs}")
    if not 0 <= args.prune_epochs <= args.epochs:
        raise SystemExit(f"--prune-epochs must be in [0, --epochs]; got {args.prune_epochs}")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.train_limit is not None and args.train_limit < args.batch_size:
        raise SystemExit(f"--train-limit must be at least one batch ({args.batch_size}); "
                         f"got {args.train_limit}")
    for path, how in ((args.weights, "tools/train_dense.py --export-npz"),
                      (args.cifar_npz, "tools/train_dense.py (it caches the decoded arrays)")):
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: write it first with {how}")

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = bp.load_cifar10_npz(args.cifar_npz)
    if args.train_limit is not None:
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(x_train))[:args.train_limit])
        x_train, y_train = x_train[keep], y_train[keep]
    weights, owners, check_x, check_y = read_weights(args.weights)
    model = resnet8()
    load_into(model, weights, owners)
    check_diff = None
    if check_x is not None:
        check_diff = float(np.max(np.abs(model(check_x.astype(np.float32), training=False).numpy()
                                         - check_y)))
        if check_diff > CHECK_ATOL:
            raise SystemExit(f"the tf_keras model's outputs differ from the Keras 3 model's by "
                             f"{check_diff:.3g} (> {CHECK_ATOL}) on the check batch")
    dense_top1 = top1(model, x_test, y_test)
    print(json.dumps({"dense_top1": dense_top1, "check_max_abs_diff": check_diff}), flush=True)

    steps = bp.steps_per_epoch(len(x_train), args.batch_size)
    if args.prune_epochs:
        half = max(1, steps // 2)
        pruning_schedule = tfmot.sparsity.keras.PolynomialDecay(
            0.0, args.sparsity, begin_step=0, end_step=(2 * args.prune_epochs - 1) * half,
            power=3, frequency=half)
        method = f"tfmot prune_low_magnitude + PolynomialDecay over {args.prune_epochs} epochs"
    else:
        pruning_schedule = tfmot.sparsity.keras.ConstantSparsity(
            args.sparsity, begin_step=0, frequency=args.frequency)
        method = "tfmot prune_low_magnitude + ConstantSparsity"
    pruned = wrap_prunable(model, pruning_schedule)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=args.epochs * steps)
    pruned.compile(optimizer=keras.optimizers.Adam(schedule),
                   loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    times = EpochTimes()
    t0, c0 = time.perf_counter(), cpu_seconds()
    stream = bp.train_dataset(x_train, y_train, args.epochs, args.seed,
                              batch_size=args.batch_size, augment_images=args.augment)
    pruned.fit(stream, epochs=args.epochs,
               steps_per_epoch=steps, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), times])
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)

    calibration = bp.representative_images(x_train, seed=args.seed)
    tflite = to_int8_tflite(stripped, calibration)
    result = {
        "method": method, "prune_epochs": args.prune_epochs,
        "sparsity_target": args.sparsity, "sparsity_achieved": round(kernel_sparsity(stripped), 4),
        "epochs": args.epochs, "train_images": len(x_train), "lr": args.lr,
        "batch_size": args.batch_size, "augment": args.augment, "frequency": args.frequency,
        "seed": args.seed,
        "dense_top1": round(dense_top1, 2), "top1": round(top1(stripped, x_test, y_test), 2),
        "check_max_abs_diff": check_diff, "int8_tflite_bytes": len(tflite),
        "representative_images": len(calibration),
        "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1), "epoch_log": times.epochs,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "tf_keras": keras.__version__, "tfmot": tfmot.__version__,
                     "numpy": np.__version__},
        "weights": str(args.weights),
    }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}."))
    try:
        (tmp / "model_int8.tflite").write_bytes(tflite)
        arrays = {f"w{i:03d}": w for i, w in enumerate(stripped.get_weights())}
        arrays["layers"] = np.asarray([type(layer).__name__ for layer in stripped.layers
                                       for _ in layer.weights])
        np.savez(tmp / "weights.npz", **arrays)
        (tmp / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        if args.out.exists():
            shutil.rmtree(args.out)
        os.replace(tmp, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "epoch_log"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
