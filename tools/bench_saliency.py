"""How well each channel criterion predicts the loss change of removing a channel.

On the cached dense ResNet-8 (or any saved model, `--model`), every prunable channel is
removed alone (its consumers' input slices zeroed: exactly what stripping it does) and the
change of the mean cross-entropy on held-out training images is measured: the *oracle*. Each
criterion scores the same channels from its own calibration images, as the quality benchmark
gives them (`bench_quality.calibration_set`, disjoint from the held-out images), and is judged
by

- `spearman`: per group, the rank correlation of its scores with the oracle's loss changes
  (1: it orders the channels of the group as removing them does; 0: no better than random);
- `half_removed`: per group, the measured loss change of removing at once the half of the
  group's channels that the criterion scores lowest, over that of the best half by the
  oracle's single-channel changes (a ratio near 1 is good; random choices land far above).

Criteria: L1 magnitude, Taylor `|g w|`, CAMP-HiVe's saliency with a Hutchinson diagonal (8
and 32 samples, two seeds each, to show their spread), and with `diagonal="gates"` (the exact
Gauss-Newton curvature of each channel's removal), the signed second-order estimate of
the removal from the same gates, `-dL/ds + 1/2 G_ss`, and the gates scored jointly
(`joint=True`: greedy on the second-order model of removing a group's channels together, from
the whole Gauss-Newton matrix of its gates). Timings are wall seconds of each criterion's
`prepare` + scores.

```shell
.venv/bin/python tools/bench_saliency.py --json cache/results/saliency.json
.venv/bin/python tools/bench_saliency.py --criteria "L1 magnitude;CAMP-HiVe, gates, joint"
```

(`--criteria`: names, or beginnings of names, separated by semicolons; "CAMP-HiVe, gates"
takes every criterion whose name begins so.)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import keras
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_quality as bq  # noqa: E402  (its calibration draw and sizes)

import tfprune  # noqa: E402
from tfprune.criteria import Magnitude, ScoringContext, Taylor  # noqa: E402
from tfprune.criteria.camp_hive import CACHE_KEY, CampHiVeSaliency  # noqa: E402

#: Calibration images per criterion, as `tools/bench_quality.py` gives them.
CAMP_HIVE_IMAGES = bq.CALIBRATION_IMAGES["camp_hive"]
TAYLOR_IMAGES = bq.CALIBRATION_IMAGES["taylor"]


class GateRemovalEstimate(CampHiVeSaliency):
    """The signed second-order estimate of removing each channel, `-dL/ds + 1/2 G_ss`
    (`GateCurvature.removal_estimate`), where CAMP-HiVe's saliency takes `|dL/ds|`."""

    def __init__(self, loss):
        super().__init__(diagonal="gates", loss=loss)

    def channel_scores(self, group, context):
        first, second = context.cache[CACHE_KEY].gates[group.id]
        return -first + second


def criteria(loss):
    """`{name: (criterion, calibration images, seed)}` compared by the benchmark."""
    return {
        "L1 magnitude": (Magnitude("l1"), 0, 0),
        "Taylor |g w|": (Taylor(), TAYLOR_IMAGES, 0),
        "CAMP-HiVe, Hutchinson 8 (seed 0)": (CampHiVeSaliency(loss=loss), CAMP_HIVE_IMAGES, 0),
        "CAMP-HiVe, Hutchinson 8 (seed 1)": (CampHiVeSaliency(loss=loss), CAMP_HIVE_IMAGES, 1),
        "CAMP-HiVe, Hutchinson 32 (seed 0)": (CampHiVeSaliency(hutchinson_samples=32, loss=loss),
                                              CAMP_HIVE_IMAGES, 0),
        "CAMP-HiVe, Hutchinson 32 (seed 1)": (CampHiVeSaliency(hutchinson_samples=32, loss=loss),
                                              CAMP_HIVE_IMAGES, 1),
        "CAMP-HiVe, gates": (CampHiVeSaliency(diagonal="gates", loss=loss), CAMP_HIVE_IMAGES, 0),
        "CAMP-HiVe, gates, 1,024 images": (CampHiVeSaliency(diagonal="gates", loss=loss),
                                           TAYLOR_IMAGES, 0),
        "gates, signed estimate -dL/ds + G/2": (GateRemovalEstimate(loss), CAMP_HIVE_IMAGES, 0),
        "gates, signed estimate, 1,024 images": (GateRemovalEstimate(loss), TAYLOR_IMAGES, 0),
        "CAMP-HiVe, gates, joint": (CampHiVeSaliency(diagonal="gates", joint=True, loss=loss),
                                    CAMP_HIVE_IMAGES, 0),
        "CAMP-HiVe, gates, joint, 1,024 images": (
            CampHiVeSaliency(diagonal="gates", joint=True, loss=loss), TAYLOR_IMAGES, 0),
    }


def chosen_criteria(spec, loss) -> list:
    """The names of `criteria` that `spec` picks ("a;b": names, or beginnings of names, split
    by semicolons since names hold commas), in the table's order; None: all.

    Raises:
        ValueError: a part of `spec` that begins no name.
    """
    names = list(criteria(loss))
    if spec is None:
        return names
    wanted = [w.strip() for w in spec.split(";") if w.strip()]
    unknown = [w for w in wanted if not any(n.startswith(w) for n in names)]
    if unknown or not wanted:
        raise ValueError(f"--criteria {spec!r}: {unknown or 'nothing'} begins no criterion's "
                         f"name; accepted are {names}")
    return [n for n in names if any(n.startswith(w) for w in wanted)]


def _ranks(values) -> np.ndarray:
    """Ranks from 0, tied values sharing their mean rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b) -> float:
    """Rank correlation, tied values sharing their mean rank (0 when either is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


class Remover:
    """Mean loss of the model on fixed images with chosen channels of groups removed."""

    def __init__(self, model, groups, x, y, batch_size=256):
        self.model, self.groups = model, groups
        self.x, self.y, self.batch_size = x, y, batch_size
        self.loss = keras.losses.SparseCategoricalCrossentropy()
        self.original = [np.array(v.numpy()) for v in model.weights]
        self.index = {v.path: i for i, v in enumerate(model.weights)}

    def mean_loss(self) -> float:
        total = 0.0
        for start in range(0, len(self.x), self.batch_size):
            xb, yb = self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
            out = self.model(xb, training=False)
            total += float(self.loss(yb, out)) * len(xb)
        return total / len(self.x)

    def loss_without(self, removal) -> float:
        """`removal`: `{group index: channel indices}`; consumers' input slices are zeroed."""
        touched = []
        try:
            for gi, channels in removal.items():
                for member in self.groups[gi].consumers:
                    for p in member.params:
                        variable = tfprune.graph.find_variable(self.model, p.layer, p.weight)
                        value = np.array(variable.numpy())
                        index = [slice(None)] * value.ndim
                        index[p.axis] = p.indices(channels)
                        value[tuple(index)] = 0.0
                        variable.assign(value)
                        touched.append(variable)
            return self.mean_loss()
        finally:
            for variable in touched:
                variable.assign(self.original[self.index[variable.path]])


def oracle(remover: Remover, verbose: bool = True):
    base = remover.mean_loss()
    changes = []
    for gi, group in enumerate(remover.groups):
        start = time.perf_counter()
        changes.append(np.array([remover.loss_without({gi: [c]}) - base
                                 for c in range(group.size)]))
        if verbose:
            print(f"  oracle: {group.describe()}: {time.perf_counter() - start:.1f} s",
                  flush=True)
    return base, changes


def measure(model, x_train, y_train, held_out: int, seed: int, verbose: bool = True,
            calibration_images: int = TAYLOR_IMAGES, names=None) -> dict:
    """The oracle and each criterion's agreement with it (see the module docstring).

    The calibration draw is `bench_quality.calibration_set(..., calibration_images)`; the
    held-out images are the next `held_out` of the same seeded permutation (disjoint).
    `names`: the criteria to compare (keys of `criteria`; None: all).
    """
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    order = np.random.default_rng(seed + 1000).permutation(len(x_train))
    calibration = bq.calibration_set(x_train, y_train, seed, calibration_images)
    rest = np.sort(order[calibration_images:calibration_images + held_out])
    if len(rest) == 0:
        raise ValueError(f"no held-out images: {len(x_train)} training images, "
                         f"{calibration_images} of them for calibration")
    remover = Remover(model, groups, x_train[rest].astype("float32"), y_train[rest])
    base, changes = oracle(remover, verbose)
    loss = keras.losses.SparseCategoricalCrossentropy()
    rows = {}
    for name, (criterion, images, cseed) in criteria(loss).items():
        if names is not None and name not in names:
            continue
        data = (calibration[0][:images], calibration[1][:images]) if images else None
        start = time.perf_counter()
        context = ScoringContext(model, step=cseed, seed=cseed, calibration_data=data,
                                 groups=groups)
        criterion.prepare(context)
        scores = [np.asarray(criterion(g, context), dtype=np.float64) for g in groups]
        seconds = time.perf_counter() - start
        rho = [spearman(s, d) for s, d in zip(scores, changes)]
        ratios = []
        for gi, (s, d) in enumerate(zip(scores, changes)):
            half = len(s) // 2
            chosen = remover.loss_without({gi: np.argsort(s, kind="stable")[:half]}) - base
            best = remover.loss_without({gi: np.argsort(d, kind="stable")[:half]}) - base
            ratios.append(chosen / best if best > 0 else float("nan"))
        rows[name] = {"spearman": [round(r, 3) for r in rho],
                      "spearman_mean": round(float(np.mean(rho)), 3),
                      "half_removed_over_oracle": [round(r, 2) for r in ratios],
                      "seconds": round(seconds, 1), "calibration_images": images}
        if verbose:
            print(f"{name}: {json.dumps(rows[name])}", flush=True)
    return {"groups": [g.describe() for g in groups], "held_out_images": held_out,
            "base_loss": base, "oracle_changes": [c.round(5).tolist() for c in changes],
            "criteria": rows}


def print_table(result: dict) -> None:
    print(f"\nheld-out images: {result['held_out_images']}; base loss "
          f"{result['base_loss']:.4f}; groups: {len(result['groups'])}")
    print("| criterion | calibration images | Spearman with the oracle, per group | mean | "
          "loss change of removing its half / the oracle's best half, per group | s |")
    print("|---|---:|---|---:|---|---:|")
    for name, row in result["criteria"].items():
        print(f"| {name} | {row['calibration_images']} | "
              f"{', '.join(f'{r:.2f}' for r in row['spearman'])} | {row['spearman_mean']:.2f} | "
              f"{', '.join(f'{r:.2f}' for r in row['half_removed_over_oracle'])} | "
              f"{row['seconds']:.1f} |")


def main(argv=None):
    parser = bc.add_data_dir_argument(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--model", type=pathlib.Path, default=None,
                        help="a saved .keras classifier ending in a softmax (default: the cached "
                             "dense ResNet-8, trained if absent)")
    parser.add_argument("--held-out", type=int, default=1024,
                        help="training images, disjoint from the calibration draw, on which "
                             "the oracle measures each removal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--criteria", default=None,
                        help="the criteria to compare: names or beginnings of names, separated "
                             "by ';' (default: all)")
    args = parser.parse_args(argv)
    names = chosen_criteria(args.criteria, None)
    (x_train, y_train), _ = bc.load_cifar10(args.data_dir)
    model = (keras.saving.load_model(args.model) if args.model
             else bc.dense_resnet8(args.data_dir, seed=args.seed))
    result = measure(model, x_train, y_train, args.held_out, args.seed, names=names)
    result["model"] = str(args.model or bc.dense_resnet8_path(args.seed))
    result["machine"] = bc.machine_info()
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
