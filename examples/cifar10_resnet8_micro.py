"""MLPerf Tiny image classification end to end: ResNet-8 on CIFAR-10, pruned, on TFLite Micro.

1. the dense ResNet-8 of MLPerf Tiny (`tfprune.zoo.resnet8`): trained here (`--dense-epochs`),
   or loaded from a trained `.keras` file (`--model`, e.g. `cache/resnet8_dense_seed0.keras`
   from `make bench-dense`);
2. `--epochs` of fine-tuning at batch 16 with random horizontal flips, the recipe that did
   best in `docs/BENCHMARKS.md` (runs N, P and Q): the first epoch is `fit` with a
   `tfprune.CampHiVe` callback (channel-gate curvature on 1,024 training images, channels
   ranked per FLOP saved, every group keeping 3/8 of its channels, each removed channel folded
   into the kept ones of its group: `merge_rule="regression"`) that prunes to `--flops`
   of the FLOPs before the first step; then `tfprune.strip` and the remaining epochs on the
   physically smaller model, the learning rate rewound to the 4e-3 peak of a cosine decay;
   then `tfprune.recalibrate_batchnorm` on 10,000 clean training images;
3. `tfprune.export.convert`: int8 TFLite, TFLite Micro sources and op resolver, the measured
   arena, TFLite Micro checked against LiteRT's reference kernels, and top-1 on the 200
   pixel-exact MLPerf Tiny evaluation images (`cifar10-lossless-200`) in TFLite Micro, for the
   pruned model and the dense one side by side.

Data: `--data-dir` holds `cifar10/{train,test}/<class>/*.jpg` and `cifar10-lossless-200/`
(default: `$TFPRUNE_DATA_DIR` or `../shared/data`).

Runtime from a trained `--model` with the default 10 epochs: 502 s of CPU on one core of a
2-core machine (77.24% float top-1 at 0.250 of the FLOPs from an 80.68% dense model;
`docs/examples.md`); training the dense model here adds `--dense-epochs` epochs (batch 32). The
tiny setting `--dense-epochs 1 --epochs 2 --limit-per-class 10 --calibration-samples 32
--no-baseline --latency-runs 2` takes about a minute.

    python examples/cifar10_resnet8_micro.py --model cache/resnet8_dense_seed0.keras
    python examples/cifar10_resnet8_micro.py --dense-epochs 30 --epochs 10     # from scratch
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfprune  # noqa: E402

BATCH = 32              # the dense model's training here (no --model)
FINE_TUNE_BATCH = 16    # the pruned model's fine-tuning (docs/BENCHMARKS.md, run N)
PEAK_LR = 4e-3
CALIBRATION_SAMPLES = 1024
REPRESENTATIVE = 200    # int8 calibration images (the protocol's)
RECALIBRATION = 10_000  # clean training images that re-estimate the BatchNorm statistics


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None,
                        help="folder with cifar10/ and cifar10-lossless-200/ "
                             "(default: $TFPRUNE_DATA_DIR or ../shared/data)")
    parser.add_argument("--model", default=None,
                        help="a trained dense ResNet-8 .keras file (default: train one)")
    parser.add_argument("--dense-epochs", type=int, default=30,
                        help="training epochs of the dense model when no --model (30)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="fine-tuning epochs: the first with the CampHiVe callback, the "
                             "others on the stripped model (10)")
    parser.add_argument("--flops", type=float, default=0.25,
                        help="fraction of the dense FLOPs to keep (default 0.25)")
    parser.add_argument("--limit-per-class", type=int, default=None,
                        help="training and test images per class (default: all)")
    parser.add_argument("--calibration-samples", type=int, default=CALIBRATION_SAMPLES,
                        help="training images for CAMP-HiVe's curvature (default "
                             f"{CALIBRATION_SAMPLES}; the cost grows with it)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not measure the dense model beside the pruned one")
    parser.add_argument("--latency-runs", type=int, default=50,
                        help="timed invokes per runtime, median reported (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/cifar10_resnet8_micro",
                        help="deployable folder written by tfprune.export.convert")
    args = parser.parse_args(argv)
    for name in ("dense_epochs", "epochs", "latency_runs", "calibration_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit_per_class is not None and args.limit_per_class < 1:
        parser.error("--limit-per-class must be >= 1")
    if not 0 < args.flops <= 1:
        parser.error(f"--flops must be in (0, 1]; got {args.flops}")
    return args


def compile_for(model, learning_rate):
    # MLPerf Tiny's ResNet-8 ends with a softmax; a model with logits is accepted as well.
    probabilities = getattr(model.layers[-1], "activation", None) is keras.activations.softmax
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities),
                  metrics=["accuracy"])


def dense_model(args, x, y):
    if args.model is not None:
        model = keras.saving.load_model(args.model, compile=False)
        compile_for(model, 1e-3)
        return model
    keras.utils.set_random_seed(args.seed)
    model = tfprune.zoo.resnet8()
    compile_for(model, 1e-3)
    model.fit(x, y, batch_size=BATCH, epochs=args.dense_epochs, verbose=2)
    return model


def flipped(x, y, seed):
    """Shuffled batches of `x, y` with random horizontal flips, a new draw every epoch."""
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    data = data.map(lambda image, label: (tf.image.random_flip_left_right(image, seed), label))
    return data.batch(FINE_TUNE_BATCH).prefetch(tf.data.AUTOTUNE)


def main(argv=None):
    args = parse_args(argv)
    data_dir = pathlib.Path(args.data_dir) if args.data_dir else \
        tfprune.datasets.shared_data_dir(required=True)
    (x, y), (x_test, y_test) = tfprune.datasets.load_cifar10(data_dir, args.limit_per_class)
    x, x_test = x.astype(np.float32), x_test.astype(np.float32)   # raw 0-255 pixels
    lossless = data_dir / "cifar10-lossless-200"
    print(f"CIFAR-10: {len(y):,} train, {len(y_test):,} test images; evaluation on device: "
          f"{lossless}")

    model = dense_model(args, x, y)
    dense = keras.models.clone_model(model)
    dense.set_weights(model.get_weights())
    dense_top1 = model.evaluate(x_test, y_test, batch_size=500, verbose=0)[1]

    rng = np.random.default_rng(args.seed)
    calibration = rng.choice(len(x), size=min(args.calibration_samples, len(x)), replace=False)
    # Pruned once, before the first step, with the channel-gate curvature; each removed
    # channel folded into every kept channel of its group (the regression fold).
    pruning = tfprune.CampHiVe(tfprune.Target(flops=args.flops), tfprune.OneShot(0),
                               calibration_data=(x[calibration], y[calibration]),
                               diagonal="gates", per_unit_cost=True, min_density=0.375,
                               merge_rule="regression", verbose=1, seed=args.seed)
    steps = math.ceil(len(x) / FINE_TUNE_BATCH)
    keras.utils.set_random_seed(args.seed)
    # A fresh optimizer, its learning rate a cosine decay from the peak to 0 over the epochs.
    compile_for(model, keras.optimizers.schedules.CosineDecay(PEAK_LR, steps * args.epochs))
    model.fit(flipped(x, y, args.seed), epochs=1, shuffle=False, verbose=2,
              callbacks=[pruning])
    small = tfprune.strip(model)
    if args.epochs > 1:   # the smaller model, the rate rewound to the peak
        compile_for(small, keras.optimizers.schedules.CosineDecay(
            PEAK_LR, steps * (args.epochs - 1)))
        small.fit(flipped(x, y, args.seed + 1), epochs=args.epochs - 1, shuffle=False,
                  verbose=2)
    clean = rng.choice(len(x), size=min(RECALIBRATION, len(x)), replace=False)
    tfprune.recalibrate_batchnorm(small, x[clean], batch_size=250)
    compile_for(small, PEAK_LR)
    pruned_top1 = small.evaluate(x_test, y_test, batch_size=500, verbose=0)[1]

    report = tfprune.export.convert(
        small, args.out, calibration=x[calibration[:REPRESENTATIVE]], eval_data=lossless,
        baseline=None if args.no_baseline else dense, name="resnet8",
        latency_runs=args.latency_runs, seed=args.seed)
    print(f"\nCIFAR-10 test top-1 (float, {len(y_test):,} JPEG images): dense "
          f"{dense_top1:.2%}, pruned {pruned_top1:.2%}")
    print(report.summary())
    print(f"written: {args.out}/ (model_int8.tflite, resnet8_model_data.cc/.h, "
          "resnet8_op_resolver.h, report.md)")
    return {"dense_top1": dense_top1, "pruned_top1": pruned_top1, "report": report}


if __name__ == "__main__":
    main(sys.argv[1:])
