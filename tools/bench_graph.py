"""Times `tfprune.channel_groups` and `tfprune.shrink` on Keras Applications models.

Prints, for `keras.applications.ResNet50(weights=None)` at 224x224 with a seeded random 30% of
every prunable group removed, the time of `shrink` (goal: under 10 s on a 2-core machine), and
the time of `channel_groups` on EfficientNetB0 (goal: under 2 s). Each time is the median of
`--repeats` runs; building the models is not timed.

Usage:

```
python tools/bench_graph.py [--repeats 3] [--fraction 0.3] [--seed 0] [--size 224]
```
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfprune  # noqa: E402


def random_removal(groups, fraction, seed):
    """A seeded random `fraction` of every prunable group (whole granule blocks, never all)."""
    rng = np.random.default_rng(seed)
    removed = {}
    for g in groups:
        blocks = g.size // g.granule
        n = min(int(round(fraction * blocks)), blocks - 1)
        if g.prunable and n > 0:
            chosen = np.sort(rng.choice(blocks, n, replace=False))
            removed[g.id] = (chosen[:, None] * g.granule + np.arange(g.granule)).reshape(-1)
    return removed


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224, help="input size of both models")
    args = parser.parse_args(argv)
    shape = (args.size, args.size, 3)

    resnet = keras.applications.ResNet50(weights=None, input_shape=shape)
    t_groups, groups = timed(lambda: tfprune.channel_groups(resnet), args.repeats)
    removed = random_removal(groups, args.fraction, args.seed)
    t_shrink, small = timed(lambda: tfprune.shrink(resnet, removed), args.repeats)
    print(f"ResNet50 {shape}: {len(groups)} groups ({sum(g.prunable for g in groups)} "
          f"prunable), channel_groups {t_groups:.2f} s")
    print(f"ResNet50 shrink ({args.fraction:.0%} of every prunable group, seed {args.seed}): "
          f"{t_shrink:.2f} s; params {resnet.count_params():,} -> {small.count_params():,}")

    effnet = keras.applications.EfficientNetB0(weights=None, input_shape=shape)
    t_eff, groups = timed(lambda: tfprune.channel_groups(effnet), args.repeats)
    print(f"EfficientNetB0 {shape}: channel_groups {t_eff:.2f} s ({len(groups)} groups)")
    print(f"median of {args.repeats} runs; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
