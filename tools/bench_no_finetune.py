"""Accuracy right after pruning, before any fine-tuning: each method pruning the dense model once.

For users who prune a trained model and cannot fine-tune it (`tfprune.prune(model, method,
...)`), and to see how much of each method's quality survives the fine-tuning of
`tools/bench_quality.py`. Every configuration prunes the cached dense ResNet-8 once
(`OneShot(0)`; RDPrune with its one round), with the callback and calibration draw that
`bench_quality.make_pruning` builds for its runs (CAMP-HiVe's merge included), through
`tfprune.prune`; the stripped model is then evaluated on the 10k CIFAR-10 test images as
pruned (the dense model's BatchNorm statistics) and after `tfprune.recalibrate_batchnorm` on
10,000 clean training images (bench_quality's last step, no weight changes). No optimizer
step is taken.

Configurations are bench_quality's method names with their options, `name[:k=v,...]`, e.g.
`camp_hive:diagonal=gates,merge=False`; `--calibration` sets the calibration images of the
methods that take them (their bench_quality defaults otherwise).

```shell
.venv/bin/python tools/bench_no_finetune.py --flops 0.25 0.5 --json cache/results/no_ft.json
.venv/bin/python tools/bench_no_finetune.py --configs "l1_uniform;camp_hive:diagonal=gates"
.venv/bin/python tools/bench_no_finetune.py --sparsity 0.5 0.7 0.9 \
    --configs "magnitude;rd_prune;rd_prune:distortion=mean"
```

`--events 8` prunes in 8 events instead of once (bench_quality's `--prune-events` schedule),
each re-measured on the model the previous one left, still without any training.

`--sparsity` measures weight granularity instead (bench_quality's weight methods: `rd_prune`
and `magnitude`, the global magnitude ranking): single weights zeroed, so the rows say how
well each allocation of the layers' sparsities keeps the network's function.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
import warnings
from typing import Dict, List, Sequence

import keras

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_quality as bq  # noqa: E402  (its runs' callbacks, calibration and BN draw)

import tfprune  # noqa: E402
from tfprune.errors import InvalidPruningArgumentError  # noqa: E402
from tfprune.keras.stripping import kernel_zeros  # noqa: E402

#: The configurations measured by default: the channel methods of bench_quality, CAMP-HiVe
#: with its benchmark setting (gates, 1,024 images) with and without the merge.
DEFAULT_CONFIGS = ("l1_uniform", "l1_normalized", "l1", "random", "taylor", "camp_hive",
                   "camp_hive:diagonal=gates", "camp_hive:diagonal=gates,merge=False",
                   "gates_uniform", "sosp_h", "rd_prune")


def parse_config(text: str, target: float, seed: int, calibration=None,
                 granularity: str = "channel", events: int = 1) -> bq.RunSpec:
    """`"method[:k=v,...]"` as the `bench_quality.RunSpec` of a one-shot run at `target`
    (a FLOPs fraction kept at channel granularity, a sparsity at `granularity="weight"`).

    `calibration` applies to the methods that take calibration images (ignored otherwise; the
    L1 methods take them with a `merge_rule`); a `min_density=F` option becomes the run's
    floor, as `bench_quality --min-density`; `events > 1` prunes in that many events of a
    `PolynomialDecay` (bench_quality's `--prune-events`), each re-measured on the model the
    previous one left, with no training between them.
    """
    if isinstance(events, bool) or not isinstance(events, int) or events < 1:
        raise InvalidPruningArgumentError(f"events={events!r}: a whole number of pruning "
                                          "events >= 1")
    method, _, options = text.strip().partition(":")
    accepted = bq.WEIGHT_METHODS if granularity == "weight" else bq.CHANNEL_METHODS
    if method not in accepted:
        raise InvalidPruningArgumentError(
            f"configuration {text!r}: at {granularity} granularity the method must be one of "
            f"{', '.join(accepted)}")
    # The L1 methods take calibration images only to fold (`merge_rule=...`).
    takes = bq.CALIBRATION_IMAGES.get(method, 0) or "merge_rule" in options
    images = calibration if method in bq.CALIBRATION_IMAGES and takes else None
    pairs = [p for p in options.split(",") if p.strip()]
    floors = [p for p in pairs if p.partition("=")[0].strip() == "min_density"]
    try:
        floor = float(floors[-1].partition("=")[2]) if floors else 0.0
    except ValueError:
        raise InvalidPruningArgumentError(
            f"configuration {text!r}: min_density must be a number in [0, 1)") from None
    options = ",".join(p for p in pairs if p not in floors)
    return bq.RunSpec(method, granularity, target, epochs=1, seed=seed, prune_epochs=0,
                      options=options, calibration=images, min_density=floor,
                      prune_events=events if events > 1 else 0)


def measure(spec: bq.RunSpec, dense, data, recalibrate: int = bq.RECALIBRATION_IMAGES) -> dict:
    """Prunes `dense` once as `spec` says (a copy; `dense` is unchanged) and evaluates it.

    Returns:
        A row: the configuration, FLOPs kept, channels kept per group, top-1 on the test
        images as pruned and after BatchNorm re-estimation, and the pruning's wall seconds.
    """
    (x_train, y_train), (x_test, y_test) = data
    steps = bc.steps_per_epoch(len(x_train), bc.PROTOCOL_BATCH)
    calibration = bq.calibration_set(x_train, y_train, spec.seed,
                                     max(1024, spec.calibration_images))
    callback = bq.make_pruning(spec, steps, calibration)
    start = time.perf_counter()
    with warnings.catch_warnings():  # strip's warning that zeroed weights stay in the model
        if spec.granularity == "weight":
            warnings.filterwarnings("ignore", "strip: .* are zero but stay in the model")
        small = tfprune.prune(dense, callback)
    seconds = time.perf_counter() - start
    achieved = callback.achieved()
    as_pruned = bc.evaluate(small, x_test, y_test)
    # Labelled as bench_quality labels the method, its options and calibration images.
    # (the events are a column of their own: no training runs between them here)
    named = {**dataclasses.asdict(spec), "prune_epochs": bq.PRUNE_EPOCHS, "prune_events": 0,
             "run": spec.name}
    row = {"config": bq.label(named), "method": spec.method,
           "options": spec.options, "calibration_images": spec.calibration_images,
           "granularity": spec.granularity, "target": spec.target, "seed": spec.seed,
           "events": max(1, spec.prune_events), "events_run": len(callback.events),
           "sparsity": round(achieved["sparsity"], 4),
           "flops_fraction": round(tfprune.profile(small).macs / tfprune.profile(dense).macs, 4),
           "kept_channels": bq.kept_channels(small), "top1_as_pruned": round(as_pruned, 2),
           "prune_wall_s": round(seconds, 1)}
    if spec.granularity == "weight":
        row["density"] = kernel_density(small)
    if recalibrate:
        tfprune.recalibrate_batchnorm(small, bq.recalibration_images(x_train, spec.seed,
                                                                     recalibrate),
                                      batch_size=bq.RECALIBRATION_BATCH, verbose=0)
        row["top1"] = round(bc.evaluate(small, x_test, y_test), 2)
    return row


def kernel_density(model) -> Dict[str, float]:
    """The fraction of nonzero weights in each layer's kernel (weight granularity's
    allocation), keyed by layer name."""
    return {name: round(1.0 - zeros / total, 4)
            for name, (zeros, total) in kernel_zeros(model).items()}


def table(rows: Sequence[dict]) -> str:
    """Markdown table of `rows`, one line per configuration and target."""
    lines = ["| configuration | target | events | FLOPs kept | sparsity | seed | top-1 as pruned | "
             "top-1, BN re-estimated | channels kept per group | pruning wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        kept = ", ".join(str(v) for v in r["kept_channels"].values())
        what = "sparsity" if r.get("granularity") == "weight" else "FLOPs"
        lines.append(f"| {r['config']} | {what} {r['target']:g} | {r.get('events', 1)} | "
                     f"{r['flops_fraction']:.3f} | "
                     f"{r.get('sparsity', float('nan')):.3f} | "
                     f"{r['seed']} | {r['top1_as_pruned']:.2f} | "
                     f"{r.get('top1', float('nan')):.2f} | {kept} | {r['prune_wall_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> List[dict]:
    parser = bc.add_data_dir_argument(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--configs", default=";".join(DEFAULT_CONFIGS),
                        help="semicolon-separated method[:k=v,...] (default: %(default)s)")
    parser.add_argument("--flops", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--sparsity", type=float, nargs="+", default=None,
                        help="weight granularity at these sparsities instead of --flops "
                             f"(methods: {', '.join(bq.WEIGHT_METHODS)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", type=int, default=None, metavar="IMAGES",
                        help="calibration images of the methods that take them")
    parser.add_argument("--events", type=int, default=1,
                        help="pruning events, re-measured one after another with no training "
                             "between them (default: 1, once)")
    parser.add_argument("--recalibrate", type=int, default=bq.RECALIBRATION_IMAGES,
                        help="clean training images of the BatchNorm re-estimation (0: none)")
    parser.add_argument("--json", default=None, help="write the rows to this file (atomic)")
    args = parser.parse_args(argv)
    granularity = "weight" if args.sparsity else "channel"
    configs = args.configs
    if args.sparsity and configs == parser.get_default("configs"):
        configs = ";".join(bq.WEIGHT_METHODS)
    specs = [parse_config(c, t, args.seed, args.calibration, granularity, args.events)
             for t in (args.sparsity or args.flops) for c in configs.split(";") if c.strip()]
    data = bc.load_cifar10(args.data_dir)
    dense = keras.models.load_model(bc.dense_resnet8_path())
    dense_top1 = round(bc.evaluate(dense, data[1][0], data[1][1]), 2)
    print(f"dense model: {dense_top1:.2f}% on the 10k test images", flush=True)
    rows = []
    for spec in specs:
        rows.append(measure(spec, dense, data, args.recalibrate))
        print(json.dumps({k: rows[-1].get(k) for k in (
            "config", "target", "flops_fraction", "sparsity", "top1_as_pruned", "top1")}),
            flush=True)
        if args.json:
            bc.write_json(args.json, {"dense_top1": dense_top1, "machine": bc.machine_info(),
                                      "rows": rows})
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
