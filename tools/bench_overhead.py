"""Per-epoch time of `fit` with and without pruning, on ResNet-8 / CIFAR-10, interleaved.

Three copies of `tfprune.zoo.resnet8()` (same initial weights) train at once, each in one
ordinary `fit` call in its own thread, taking turns epoch by epoch so that only one trains at
any time and slow periods of a shared machine hit every variant alike:

- `plain`: no callback;
- `callback`: `tfprune.MagnitudePruning(Target(flops=0.5))` on the unmodified model (masks
  applied as variable constraints inside the train step), pruning every half epoch;
- `prunable`: the same callback on `tfprune.prunable(model)` (masks inside the layers).

The first epoch of each variant (tracing) is not counted. The table gives, per variant, the
median epoch time (wall and process CPU) and the median over rounds of its ratio to `plain`'s
epoch of the same round (goal: <= 1.10 for `callback`). A JSON row is appended to
`cache/results/overhead.json`.

    python tools/bench_overhead.py --images 5000 --epochs 5
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import bench_common as bc
import keras
import numpy as np

import tfprune

VARIANTS = ("plain", "callback", "prunable")


class Turns:
    """Lets named workers run one epoch at a time, in a fixed cyclic order."""

    def __init__(self, names):
        self.names = list(names)
        self.current = 0
        self.aborted = False
        self.condition = threading.Condition()

    def wait(self, name):
        with self.condition:
            self.condition.wait_for(lambda: self.aborted or self.names[self.current] == name)
            if self.aborted:
                raise RuntimeError("another variant failed")

    def done(self):
        with self.condition:
            self.current = (self.current + 1) % len(self.names)
            self.condition.notify_all()

    def abort(self):
        with self.condition:
            self.aborted = True
            self.condition.notify_all()


class EpochTimer(keras.callbacks.Callback):
    """Waits for its turn at the start of an epoch and times the epoch.

    Besides wall time it records the process's CPU time: while one variant trains the others
    wait, so the CPU time of the epoch is its own, and other processes on a shared machine
    disturb it much less than the wall time.
    """

    def __init__(self, name, turns):
        super().__init__()
        self.name, self.turns, self.seconds, self.cpu_seconds = name, turns, [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.turns.wait(self.name)
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        self.cpu_seconds.append(time.process_time() - self.cpu_start)
        self.turns.done()


def build(variant, weights, steps_per_epoch, epochs):
    keras.utils.set_random_seed(0)
    model = tfprune.zoo.resnet8()
    model.set_weights(weights)
    callbacks = []
    if variant != "plain":
        if variant == "prunable":
            model = tfprune.prunable(model)
        frequency = max(steps_per_epoch // 2, 1)
        callbacks.append(tfprune.MagnitudePruning(
            tfprune.Target(flops=0.5),
            tfprune.PolynomialDecay(0, steps_per_epoch * (epochs - 1), frequency), verbose=0))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model, callbacks


def main(argv=None):
    parser = bc.add_data_dir_argument(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--images", type=int, default=5000, help="training images (subset)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per variant (first untimed)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--results-dir", default=None,
                        help="where overhead.json is appended (default: cache/results)")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if "plain" not in variants or not set(variants) <= set(VARIANTS) or args.epochs < 2:
        parser.error(f"--variants must include plain and come from {VARIANTS}; --epochs >= 2")

    (x, y), _ = bc.load_cifar10(args.data_dir)
    order = np.random.default_rng(0).permutation(len(x))[:args.images]
    x, y = x[order], y[order]
    steps = -(-len(x) // args.batch_size)
    keras.utils.set_random_seed(0)
    weights = tfprune.zoo.resnet8().get_weights()

    turns = Turns(variants)
    timers, threads, results = {}, [], {}
    for name in variants:
        model, callbacks = build(name, weights, steps, args.epochs)
        timers[name] = EpochTimer(name, turns)

        def run(model=model, callbacks=callbacks, name=name):
            try:
                model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                          callbacks=[timers[name], *callbacks])
                results[name] = callbacks[0].achieved() if callbacks else None
            except BaseException as e:  # report in the main thread, never hang the others
                results[name] = e
                turns.abort()

        threads.append(threading.Thread(target=run, name=name))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = {n: r for n, r in results.items() if isinstance(r, BaseException)}
    if failed:
        raise RuntimeError(f"variants failed: {failed}")

    print(f"ResNet-8, CIFAR-10 subset of {len(x)} training images, batch {args.batch_size}, "
          f"{steps} steps per epoch, {args.epochs - 1} timed epochs per variant (interleaved); "
          "ratio = median over rounds of (epoch time / plain's epoch time in the same round)")
    print(f"{'variant':<10} {'wall s':>8} {'ratio':>6} {'CPU s':>8} {'ratio':>6}  pruned state")
    row = {"images": len(x), "batch_size": args.batch_size, "timed_epochs": args.epochs - 1,
           "machine": bc.machine_info(), "variants": {}}
    for name in variants:
        figures = {}
        for kind in ("seconds", "cpu_seconds"):
            mine, base = getattr(timers[name], kind)[1:], getattr(timers["plain"], kind)[1:]
            figures[kind] = {"epochs": mine, "median": statistics.median(mine),
                             "ratio": statistics.median(a / b for a, b in zip(mine, base))}
        state = results[name]
        wall, cpu = figures["seconds"], figures["cpu_seconds"]
        print(f"{name:<10} {wall['median']:>8.2f} {wall['ratio']:>6.3f} {cpu['median']:>8.2f} "
              f"{cpu['ratio']:>6.3f}  "
              f"{'' if state is None else ', '.join(f'{k} {v:.3f}' for k, v in state.items())}")
        row["variants"][name] = dict(figures, achieved=state)
    print(f"results appended to {bc.append_result('overhead', row, args.results_dir)}")
    return row


if __name__ == "__main__":
    main()
