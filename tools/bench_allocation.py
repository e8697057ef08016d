"""Where the channels go: allocations and criteria on the trained ResNet-8, pruned in one shot.

Two measurements on the cached dense ResNet-8 (`bench_common.dense_resnet8`), CIFAR-10:

1. `--additivity`: for every prunable channel group, the loss increase (softmax
   cross-entropy on 1,024 training images, BatchNorm in inference mode) of removing each
   channel alone (`tfprune.mask_channels`), and of removing together the half of the group
   whose single removals cost least, against the sum of those single costs. A global ranking
   of single-channel scores assumes the sum; the ratio says how wrong that is per group.
2. `--configs`: each configuration prunes the dense model once to `--flops` of its FLOPs
   (`tfprune.prune`, `OneShot(0)`), then the stripped model fine-tunes for `--epochs` epochs
   with the protocol's fine-tuning recipe (`bench_common.fine_tune`: Adam, cosine decay from
   `--lr`); printed: top-1 right after pruning and after fine-tuning (10k test images), the
   FLOPs fraction, params and the channels each group keeps. A configuration is
   `method[,arg=value...]`: method `l1`, `taylor`, `random` (`MagnitudePruning`), `camp_hive`,
   `sosp_h` or `rd`, then keyword arguments of the method (JSON values, or strings), e.g.
   `l1,allocation=global` or `camp_hive,normalize=null,beta=1`.

A short proxy of the quality benchmark (`tools/bench_quality.py`), cheap enough to compare
many allocations; it says which allocations empty a group, not which method ends best after
a full fine-tuning. Rows are appended to `cache/results/allocation.json`.

Runtime on 2 cores: about 2 minutes for `--additivity`, 1-2 minutes per configuration.

Usage:

    python tools/bench_allocation.py --additivity
    python tools/bench_allocation.py --configs l1,allocation=global l1 l1,allocation=uniform
    python tools/bench_allocation.py --configs camp_hive,normalize=null,beta=1 camp_hive
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
import bench_quality as bq  # noqa: E402
import tfprune  # noqa: E402
from tfprune.errors import InvalidPruningArgumentError  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy()
#: Calibration images per method (as in the quality benchmark).
CALIBRATION = {"camp_hive": 128}


def parse_config(text: str):
    """`("method", {kwargs})` of `method[,arg=value...]` (values as JSON, else strings)."""
    method, *pairs = text.split(",")
    kwargs = {}
    for pair in pairs:
        if "=" not in pair:
            raise InvalidPruningArgumentError(f"{text!r}: {pair!r} is not arg=value")
        key, value = pair.split("=", 1)
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    if method not in ("l1", "taylor", "random", "camp_hive", "sosp_h", "rd"):
        raise InvalidPruningArgumentError(
            f"{text!r}: method {method!r}; accepted: l1, taylor, random, camp_hive, sosp_h, rd")
    return method, kwargs


def callback(method: str, kwargs: dict, target, calibration):
    """The one-shot pruning callback of a configuration."""
    count = CALIBRATION.get(method, len(calibration[0]))
    data = (calibration[0][:count], calibration[1][:count])
    if method in ("l1", "taylor", "random"):
        return tfprune.MagnitudePruning(target, tfprune.OneShot(0), method, verbose=0,
                                        calibration_data=data if method == "taylor" else None,
                                        **kwargs)
    if method == "camp_hive":
        return tfprune.CampHiVe(target, tfprune.OneShot(0), calibration_data=data, verbose=0,
                                **kwargs)
    if method == "sosp_h":
        return tfprune.SOSPH(target, data, verbose=0, **kwargs)
    return tfprune.RDPrune(target, data, verbose=0, **kwargs)


def group_name(group) -> str:
    return "+".join(m.layer for m in group.producers)


def additivity(dense, calibration) -> dict:
    """Per group: single-channel loss increases, and the cheapest half removed together."""
    x, y = calibration

    def loss(model):
        return float(LOSS(y, model.predict(x, batch_size=512, verbose=0)))

    base = loss(dense)
    out = {"base_loss": round(base, 5), "groups": {}}
    for g in (g for g in tfprune.channel_groups(dense) if g.prunable):
        single = np.array([loss(tfprune.mask_channels(dense, {g.id: [c]})) - base
                           for c in range(g.size)])
        half = np.argsort(single, kind="stable")[:g.size // 2]
        joint = loss(tfprune.mask_channels(dense, {g.id: half.tolist()})) - base
        row = {"channels": g.size, "mean_single": round(float(single.mean()), 4),
               "sum_cheapest_half": round(float(single[half].sum()), 4),
               "joint_cheapest_half": round(joint, 4)}
        out["groups"][group_name(g)] = row
        print(f"{group_name(g):22s} {json.dumps(row)}", flush=True)
    return out


def proxy(dense_path, text, data, calibration, flops, epochs, lr) -> dict:
    """One configuration: prune once, strip, fine-tune `epochs`, evaluate."""
    (x_train, y_train), (x_test, y_test) = data
    method, kwargs = parse_config(text)
    dense = keras.models.load_model(dense_path)
    start = time.perf_counter()
    small = tfprune.prune(dense, callback(method, kwargs, tfprune.Target(flops=flops),
                                          calibration), loss=LOSS)
    seconds = time.perf_counter() - start
    after_pruning = bc.evaluate(small, x_test, y_test)
    if epochs:
        bc.fine_tune(small, data, epochs=bc.PROTOCOL_DENSE_EPOCHS + epochs,
                     initial_epoch=bc.PROTOCOL_DENSE_EPOCHS, seed=0, lr=lr, verbose=0)
    profile = tfprune.profile(small)
    return {"config": text, "flops_target": flops, "epochs": epochs, "lr": lr,
            "top1_pruned": after_pruning, "top1": bc.evaluate(small, x_test, y_test),
            "flops_fraction": round(profile.macs / tfprune.profile(dense).macs, 4),
            "params": profile.params, "kept_channels": bq.kept_channels(small),
            "prune_seconds": round(seconds, 1)}


def main(argv=None):
    parser = bc.add_data_dir_argument(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--additivity", action="store_true",
                        help="single-channel vs joint loss increase per group")
    parser.add_argument("--configs", nargs="*", default=[], help="method[,arg=value...]")
    parser.add_argument("--flops", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=bc.FINE_TUNE_LR)
    args = parser.parse_args(argv)
    for text in args.configs:  # bad input before any work
        parse_config(text)
    if not args.additivity and not args.configs:
        parser.error("nothing to do: give --additivity and/or --configs")
    data = bc.load_cifar10(args.data_dir)
    calibration = bq.calibration_set(*data[0], seed=0)
    dense_path = bc.dense_resnet8_path(0)
    if args.additivity:
        row = additivity(keras.models.load_model(dense_path), calibration)
        bc.append_result("allocation", {"kind": "additivity", **row,
                                        "machine": bc.machine_info()})
    for text in args.configs:
        row = proxy(dense_path, text, data, calibration, args.flops, args.epochs, args.lr)
        print(json.dumps(row), flush=True)
        bc.append_result("allocation", {"kind": "proxy", **row, "machine": bc.machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
