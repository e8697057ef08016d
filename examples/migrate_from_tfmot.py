"""Migrating from tfmot: the same pruning job, and the structured one that shrinks the model.

The tfmot code this replaces (Keras 2 / `tf_keras`; tfmot does not accept Keras 3 models):

    import tensorflow_model_optimization as tfmot

    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.75, begin_step=0, end_step=end, frequency=freq)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    pruned.fit(x, y, epochs=epochs,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    final = tfmot.sparsity.keras.strip_pruning(pruned)

What runs here, in Keras 3, on scikit-learn's 8x8 digits, from the same trained weights:

1. `tfprune.MagnitudePruning(Target(sparsity=0.75), granularity="weight",
   allocation="uniform")` in `fit`: tfmot's job (75% of each kernel's weights zeroed), no
   wrapper and no `UpdatePruningStep`. `tfprune.strip` warns that the zeros stay: the int8
   `.tflite` is as large as the dense one.
2. `tfprune.MagnitudePruning(Target(flops=0.25))`: channels removed instead; `tfprune.strip`
   gives a model with a quarter of the FLOPs and a smaller `.tflite`.

The table shows params, FLOPs, int8 `.tflite` bytes and test accuracy of all three.

Runtime: about 1 minute on 2 CPU cores (45 s of CPU); `--epochs 1 --prune-epochs 2` about
20 seconds.

    python examples/migrate_from_tfmot.py
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfprune  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BATCH = 32


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs (15)")
    parser.add_argument("--prune-epochs", type=int, default=10,
                        help="epochs of fit with pruning, the ramp in the first half (10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.prune_epochs < 1:
        parser.error("--epochs and --prune-epochs must be >= 1")
    return args


def build_and_train(x, y, epochs, seed):
    keras.utils.set_random_seed(seed)
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(16, 32), dense=64,
                                  scale=1.0 / 16, name="digits_cnn")
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return model


def prune_in_fit(dense, pruning, x, y, epochs, seed):
    """A copy of `dense` fitted with `pruning`, then stripped (warnings collected)."""
    model = keras.models.clone_model(dense)
    model.set_weights(dense.get_weights())
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    keras.utils.set_random_seed(seed)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[pruning])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        final = tfprune.strip(model)
    return final, [str(w.message) for w in caught]


def figures(model, x_calibration, x_test, y_test):
    model.compile(loss=LOSS, metrics=["accuracy"])
    p = tfprune.profile(model)
    int8 = tfprune.export.to_tflite(model, calibration=x_calibration)
    return {"params": p.params, "flops": p.flops, "int8_bytes": len(int8),
            "zeros": float(np.mean([np.mean(w == 0) for w in model.get_weights()
                                    if w.ndim > 1])),
            "accuracy": model.evaluate(x_test, y_test, verbose=0)[1]}


def main(argv=None):
    args = parse_args(argv)
    (x, y), (x_test, y_test) = tfprune.datasets.load_digits(seed=args.seed)
    dense = build_and_train(x, y, args.epochs, args.seed)
    steps = math.ceil(len(x) / BATCH)
    end = max(1, steps * args.prune_epochs // 2)

    def schedule():
        return tfprune.PolynomialDecay(begin_step=0, end_step=end, frequency=max(1, steps // 2))

    # tfmot's prune_low_magnitude + PolynomialDecay(final_sparsity=0.75), in tfprune.
    like_tfmot, notes = prune_in_fit(
        dense, tfprune.MagnitudePruning(tfprune.Target(sparsity=0.75), schedule(),
                                        granularity="weight", allocation="uniform", verbose=0),
        x, y, args.prune_epochs, args.seed)
    structured, _ = prune_in_fit(
        dense, tfprune.MagnitudePruning(tfprune.Target(flops=0.25), schedule(), verbose=0),
        x, y, args.prune_epochs, args.seed)

    rows = {"dense": figures(dense, x[:200], x_test, y_test),
            "weights, sparsity 0.75 (tfmot's job)": figures(like_tfmot, x[:200], x_test, y_test),
            "channels, flops 0.25": figures(structured, x[:200], x_test, y_test)}
    for note in notes:
        print(f"tfprune.strip warned: {note}")
    print(f"\n{'':<38} {'params':>8} {'FLOPs':>9} {'int8 bytes':>11} {'zero w.':>8} "
          f"{'accuracy':>9}")
    for name, r in rows.items():
        print(f"{name:<38} {r['params']:>8,} {r['flops']:>9,} {r['int8_bytes']:>11,} "
              f"{r['zeros']:>8.1%} {r['accuracy']:>9.2%}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
