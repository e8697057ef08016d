"""What CAMP-HiVe adds to the time of `fit`: ResNet-8 on a CIFAR-10 subset, with and without it.

Trains the same ResNet-8 (the cached dense model of `bench_common.dense_resnet8` when it
exists, else a seeded fresh one: the cost does not depend on the weights) for the same steps,
on the same data stream (the protocol's: batch 128, flip + translation), four times, in one
process, interleaved so that the load of the machine hits all runs alike:

1. `plain`: `fit` without pruning;
2. `camp_hive_cold`: `fit` with `tfprune.CampHiVe` (the settings below), the first run on the
   model: its curvature programs are traced (compiled) at its first event;
3. `camp_hive`: the same again on the same model object (weights reset): compiled programs
   are reused, which is what every event after the first of a long run costs;
4. `plain_again`: plain `fit` again (the train step is retraced after each pruning run, as in 1).

The pruning schedule is the one `docs/methods/camp_hive.md` gives for the quality benchmark
(`EVENT_EVERY` steps between events, the FLOPs target ramped from the first step), applied
over the *whole* measured run, so every measured step is in the pruning phase: the ratio is
an upper bound for a protocol run, whose last epochs only fine-tune. The script prints a
table and appends a row to `cache/results/camp_hive_cost.json`.

With `--curvature`, the script instead measures one event's curvature on the model twice (two
seeds) for the exact Hessian and for the Gauss-Newton matrix: the time of each phase, the
fraction of negative diagonal estimates, each group's block eigenvalue, how stable the channel
saliencies are from one seed to the other (Spearman correlation), and the channels each group
keeps at the FLOPs target for several `beta`; it appends a row to
`cache/results/camp_hive_curvature.json`.

Usage:

    python tools/bench_camp_hive_cost.py                      # defaults below
    python tools/bench_camp_hive_cost.py --images 12800 --epochs 4 --every 100
    python tools/bench_camp_hive_cost.py --curvature
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import bench_common as bc  # noqa: E402
import tfprune  # noqa: E402
from tfprune.keras.camp_hive import CampHiVe  # noqa: E402

# The quality benchmark's settings for CAMP-HiVe (docs/methods/camp_hive.md).
EVENT_EVERY = 195            # optimizer steps between pruning events (half a CIFAR-10 epoch)
CALIBRATION_IMAGES = 128     # training images, no augmentation: one batch of the curvature
FLOPS_TARGET = 0.25


def _steps_time(model, data, steps_per_epoch, epochs, callbacks, seed):
    """Wall seconds of one `fit` of `epochs` x `steps_per_epoch` steps (optimizer reset)."""
    x, y = data
    ds = bc.train_dataset(x, y, epochs, seed)
    model.optimizer.iterations.assign(0)
    start = time.perf_counter()
    model.fit(ds, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
              verbose=0, shuffle=False)
    return time.perf_counter() - start


def _ranks(values):
    return np.argsort(np.argsort(values))


def curvature_report(model, calibration, seed):
    """One event's curvature, twice per Hessian kind: cost, sign, stability, allocation."""
    from tfprune.allocation.adaptive import AdaptiveThresholds
    from tfprune.criteria import ScoringContext
    from tfprune.criteria.camp_hive import CACHE_KEY, CampHiVeSaliency
    from tfprune.criteria.context import loss_and_gradients

    probe = CampHiVe(tfprune.Target(flops=FLOPS_TARGET), calibration_data=calibration,
                     verbose=0)
    probe.set_model(model)
    probe.set_params({"epochs": 1, "steps": 1})
    probe.on_train_begin()
    probe.on_train_end()
    groups = probe.groups
    gradients = loss_and_gradients(model)
    runs = {"exact": [], "gauss_newton": []}
    for step in (seed, seed + 1):   # the event's step seeds its random vectors
        for hessian, found in runs.items():   # interleaved: the machine's load hits both alike
            context = ScoringContext(model, step=step, calibration_data=calibration,
                                     groups=groups, gradient_fn=gradients)
            criterion = CampHiVeSaliency(hessian=hessian)
            criterion.prepare(context)
            found.append((context.cache[CACHE_KEY], [criterion(g, context) for g in groups]))
    out = {}
    for hessian, ((first, scores), (second, again)) in runs.items():
        lam = [first.block_eigenvalues[g.id] for g in groups]
        diagonal = np.concatenate([d.reshape(-1) for d in first.diagonal.values()])
        problem = probe._problem(scores, {"flops": FLOPS_TARGET})
        out[hessian] = {
            "seconds": {k: round(v, 2) for k, v in second.seconds.items()},
            "negative_diagonal": round(float(np.mean(diagonal < 0)), 4),
            "block_eigenvalues": [round(v, 4) for v in lam],
            "saliency_seed_spearman": [
                round(float(np.corrcoef(_ranks(a), _ranks(b))[0, 1]), 3)
                for a, b in zip(scores, again)],
            "kept_at_target": {beta: [int((~r).sum()) for r in
                                      AdaptiveThresholds(beta, lam)(problem)]
                               for beta in (0.0, 0.25, 0.5, 1.0)},
        }
        print(hessian, json.dumps(out[hessian]), flush=True)
    out["groups"] = [g.describe() for g in groups]
    return out


def main(argv=None):
    parser = bc.add_data_dir_argument(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--images", type=int, default=12800,
                        help="training images of the subset (default: 12,800 = 100 steps/epoch)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--every", type=int, default=EVENT_EVERY,
                        help="optimizer steps between pruning events")
    parser.add_argument("--calibration", type=int, default=CALIBRATION_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true",
                        help="a fresh seeded ResNet-8 even when the cached dense model exists")
    parser.add_argument("--curvature", action="store_true",
                        help="measure one event's curvature (exact vs Gauss-Newton) instead")
    args = parser.parse_args(argv)

    (x_train, y_train), _ = bc.load_cifar10(args.data_dir)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x_train))
    subset = (x_train[order[:args.images]], y_train[order[:args.images]])
    calib = order[args.images:args.images + args.calibration]
    calibration = (x_train[calib].astype("float32"), y_train[calib])
    steps_per_epoch = bc.steps_per_epoch(args.images, bc.PROTOCOL_BATCH)
    steps = steps_per_epoch * args.epochs

    cached = bc.dense_resnet8_path(args.seed)
    keras.utils.set_random_seed(args.seed)
    if cached.is_file() and not args.fresh:
        model, source = keras.models.load_model(cached), str(cached)
    else:
        model, source = tfprune.zoo.resnet8(), "fresh (seeded) ResNet-8"
    model.compile(keras.optimizers.Adam(bc.FINE_TUNE_LR),
                  keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    initial = model.get_weights()
    if args.curvature:
        row = dict(curvature_report(model, calibration, args.seed), model=source,
                   calibration_images=args.calibration, machine=bc.machine_info())
        bc.append_result("camp_hive_curvature", row)
        return row

    def pruning():
        # The ramp ends at the last event within the run: every measured step is in the
        # pruning phase.
        schedule = tfprune.PolynomialDecay(begin_step=0, frequency=args.every,
                                           end_step=max(1, (steps - 1) // args.every * args.every))
        return CampHiVe(tfprune.Target(flops=FLOPS_TARGET), schedule,
                        calibration_data=calibration, verbose=0, seed=args.seed)

    # Trace the plain train step once, outside every measurement.
    _steps_time(model, subset, 2, 1, [], args.seed)
    times, callbacks = {}, {}
    for name in ("plain", "camp_hive_cold", "camp_hive", "plain_again"):
        model.set_weights(initial)
        callback = pruning() if name.startswith("camp") else None
        times[name] = _steps_time(model, subset, steps_per_epoch, args.epochs,
                                  [callback] if callback else [], args.seed)
        callbacks[name] = callback
        print(f"{name}: {times[name]:.1f} s", flush=True)

    plain = 0.5 * (times["plain"] + times["plain_again"])
    warm = callbacks["camp_hive"]
    per_event = [r.seconds["total"] for r in warm.records]
    step_s = plain / steps
    phases = {k: float(np.median([r.seconds.get(k, 0.0) for r in warm.records]))
              for k in ("blocks", "diagonal", "eigenpairs", "merge", "total")}
    row = {
        "model": source, "images": args.images, "epochs": args.epochs, "steps": steps,
        "event_every": args.every, "events": len(warm.records),
        "calibration_images": args.calibration, "target_flops": FLOPS_TARGET,
        "flops_kept": round(warm.achieved()["flops_kept"], 4),
        "config": warm.get_config(),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "ratio_cold": round(times["camp_hive_cold"] / plain, 3),
        "ratio": round(times["camp_hive"] / plain, 3),
        "plain_step_s": round(step_s, 4),
        "event_s_median": round(float(np.median(per_event)), 2),
        "event_in_steps": round(float(np.median(per_event)) / step_s, 1),
        "event_phases_s": {k: round(v, 2) for k, v in phases.items()},
        "machine": bc.machine_info(),
    }
    print(f"\nResNet-8 ({source}), {args.images} images, {steps} steps, "
          f"an event every {args.every} steps ({len(warm.records)} events), "
          f"{args.calibration} calibration images")
    print(f"{'run':<16}{'wall s':>10}{'x plain':>10}")
    for name, t in times.items():
        print(f"{name:<16}{t:>10.1f}{t / plain:>10.3f}")
    print(f"one event: {row['event_s_median']} s = {row['event_in_steps']} plain steps "
          f"(phases {row['event_phases_s']})")
    print(json.dumps({k: row[k] for k in ("ratio", "ratio_cold", "flops_kept")}))
    bc.append_result("camp_hive_cost", row)
    return row


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
