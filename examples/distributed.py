"""Pruning under `tf.distribute.MirroredStrategy`: the same callback, one mask for all replicas.

The model is built and compiled inside `strategy.scope()`; `tfprune.CampHiVe` goes into
`fit` as usual. The masks are computed once per event (on the calibration data) and assigned
to the mirrored variables, so every replica trains the same pruned model, and the step count is
the optimizer's. With no GPU, the CPU is split into two logical devices so that the strategy
really has two replicas (set before TensorFlow starts, hence the order of the imports).

Runtime: about 2 minutes on 2 CPU cores (digits, 20 + 20 epochs; BatchNormalization's moving
statistics need a few hundred steps to settle); `--epochs 1 --prune-epochs 2` about 20 seconds.

    python examples/distributed.py
    python examples/distributed.py --replicas 4
"""

from __future__ import annotations

import argparse
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="dense training epochs (20)")
    parser.add_argument("--prune-epochs", type=int, default=20,
                        help="epochs of fit with CampHiVe, the ramp in the first half (20)")
    parser.add_argument("--replicas", type=int, default=2,
                        help="logical CPU devices when there is no GPU (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.prune_epochs < 1 or args.replicas < 1:
        parser.error("--epochs, --prune-epochs and --replicas must be >= 1")
    return args


def make_strategy(replicas: int) -> tf.distribute.MirroredStrategy:
    """All GPUs, or `replicas` logical CPUs (only possible before TensorFlow initialises)."""
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:  # already initialised (e.g. imported by a test): use what exists
        pass
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")][:replicas])


def main(argv=None):
    args = parse_args(argv)
    strategy = make_strategy(args.replicas)

    import keras
    import tfprune

    (x, y), (x_test, y_test) = tfprune.datasets.load_digits(seed=args.seed)
    batch = 32 * strategy.num_replicas_in_sync        # 32 per replica
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(16, 32), dense=64,
                                      scale=1.0 / 16, name="digits_cnn")
        model.compile(keras.optimizers.Adam(3e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    print(f"{strategy.num_replicas_in_sync} replicas: "
          f"{', '.join(strategy.extended.worker_devices)}")
    model.fit(x, y, batch_size=batch, epochs=args.epochs, verbose=0)
    dense_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]

    steps = math.ceil(len(x) / batch)
    pruning = tfprune.CampHiVe(
        tfprune.Target(flops=0.25),
        tfprune.PolynomialDecay(begin_step=model.optimizer.iterations.numpy(),
                                end_step=model.optimizer.iterations.numpy()
                                + max(1, steps * args.prune_epochs // 2), frequency=steps),
        calibration_data=(x[:256], y[:256]), min_density=0.25, verbose=0, seed=args.seed)
    model.fit(x, y, batch_size=batch, epochs=args.epochs + args.prune_epochs,
              initial_epoch=args.epochs, verbose=0, callbacks=[pruning])
    pruned_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    small = tfprune.strip(model)
    kept = tfprune.profile(small).flops / tfprune.profile(model).flops
    print(f"dense accuracy {dense_accuracy:.2%}; pruned to {kept:.3f} of the FLOPs during fit "
          f"on {strategy.num_replicas_in_sync} replicas: {pruned_accuracy:.2%} "
          f"(events at steps {[e.step for e in pruning.events]})")
    return {"replicas": strategy.num_replicas_in_sync, "dense_accuracy": dense_accuracy,
            "pruned_accuracy": pruned_accuracy, "flops_kept": kept,
            "events": [e.step for e in pruning.events]}


if __name__ == "__main__":
    main(sys.argv[1:])
