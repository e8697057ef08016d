"""tfprune demo: train, prune with CAMP-HiVe during `fit`, strip, deploy to TFLite Micro, compare.

The whole pipeline, offline, on scikit-learn's bundled 8x8 handwritten digits:

1. train a small Conv-BN-ReLU CNN (dense);
2. keep training it with `tfprune.CampHiVe` in `fit`: channels are removed gradually until the
   model keeps at most a quarter of its FLOPs (`Target(flops=0.25)`), then fine-tuned;
3. `tfprune.strip`: the physically smaller Keras model;
4. `tfprune.export.convert`: int8 TFLite, TFLite Micro C array and op resolver, the measured
   arena, TFLite Micro checked against LiteRT's reference kernels, accuracy and latency,
   for the pruned model and the dense one side by side;
5. one table, dense vs pruned, and a plot.

`--data-dir DIR` runs the same with the MLPerf Tiny ResNet-8 on CIFAR-10: DIR holds
`cifar10/{train,test}/<class>/*.jpg` (e.g. `../shared/data`), or is `tfds:cifar10` when TFDS
can download. `--limit-per-class` and `--epochs` make a CIFAR-10 run shorter.

Runtime: about 30 seconds on 2 CPU cores for the default (digits); `--epochs 1
--prune-epochs 2` about 15 seconds. CIFAR-10 (`--data-dir`) trains on 50,000 images an epoch
(50 epochs with the defaults): use `--limit-per-class` and `--epochs` for a short run.

    python examples/demo.py                                  # `make demo`
    python examples/demo.py --epochs 1 --prune-epochs 2 --out /tmp/demo
    python examples/demo.py --data-dir ../shared/data --limit-per-class 500 --epochs 5

Outputs in `--out` (default `out/demo`), each file written atomically: `bundle/` (the
deployable folder of `tfprune.export.convert`: `model.keras`, `model_int8.tflite`, TFLite Micro
sources, `report.json`/`report.md`), `demo.png` (the plot), `results.json` (the table's
figures and the kept channels per layer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfprune  # noqa: E402

BATCH = 32
LEARNING_RATE = 3e-3
FINE_TUNE_LEARNING_RATE = 1e-3
CALIBRATION_SAMPLES = 256
# Per dataset: (dense epochs, pruning + fine-tuning epochs).
DEFAULT_EPOCHS = {"digits": (20, 20), "cifar10": (30, 20)}
PRUNED_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring for the steps and the outputs.")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="run on CIFAR-10 with ResNet-8: a folder holding cifar10/ (or its "
                             "train/ and test/), or tfds:cifar10 (default: the 8x8 digits)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="dense training epochs (default 20 on digits, 30 on CIFAR-10)")
    parser.add_argument("--prune-epochs", type=int, default=None,
                        help="epochs of fit with CampHiVe: pruning in the first half, "
                             "fine-tuning in the second (default 20)")
    parser.add_argument("--flops", type=float, default=0.25,
                        help="fraction of the dense FLOPs to keep, in (0, 1] (default 0.25)")
    parser.add_argument("--limit-per-class", type=int, default=None,
                        help="CIFAR-10 only: images per class of each split (default: all)")
    parser.add_argument("--latency-runs", type=int, default=50,
                        help="timed invokes per runtime, median reported (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data split, init, training")
    parser.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    args = parser.parse_args(argv)
    args.dataset = "digits" if args.data_dir is None else "cifar10"
    epochs, prune_epochs = DEFAULT_EPOCHS[args.dataset]
    args.epochs = epochs if args.epochs is None else args.epochs
    args.prune_epochs = prune_epochs if args.prune_epochs is None else args.prune_epochs
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1; got {args.epochs}")
    if args.prune_epochs < 1:
        parser.error(f"--prune-epochs must be >= 1; got {args.prune_epochs}")
    if not 0 < args.flops <= 1:
        parser.error(f"--flops must be in (0, 1]; got {args.flops}")
    if args.limit_per_class is not None and args.limit_per_class < 1:
        parser.error(f"--limit-per-class must be >= 1; got {args.limit_per_class}")
    if args.latency_runs < 1:
        parser.error(f"--latency-runs must be >= 1; got {args.latency_runs}")
    return args


# --- data and models -----------------------------------------------------------------------


def load(args):
    """`((x, y), (x, y))` and a description; inputs as the model takes them (raw values)."""
    if args.dataset == "digits":
        data = tfprune.datasets.load_digits(seed=args.seed)
        return data, "scikit-learn 8x8 digits"
    if args.data_dir.startswith("tfds:"):
        name = args.data_dir[len("tfds:"):] or "cifar10"
        limit = None if args.limit_per_class is None else 10 * args.limit_per_class
        data = (tfprune.datasets.load_tfds(name, "train", limit),
                tfprune.datasets.load_tfds(name, "test", limit))
    else:
        data = tfprune.datasets.load_cifar10(args.data_dir, args.limit_per_class)
    (x, y), (x_test, y_test) = data
    return ((x.astype(np.float32), y), (x_test.astype(np.float32), y_test)), "CIFAR-10"


def build_model(dataset: str) -> keras.Model:
    """The dense model: a small CNN for the digits, the MLPerf Tiny ResNet-8 for CIFAR-10."""
    if dataset == "digits":
        return tfprune.zoo.small_cnn(input_shape=(8, 8, 1), num_classes=10, widths=(32, 64),
                                     dense=64, scale=1.0 / 16, name="digits_cnn")
    return tfprune.zoo.resnet8(softmax=False)


def compile_for_training(model, learning_rate):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def copy_model(model) -> keras.Model:
    """An independent copy with the same weights (the dense reference, before pruning)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def prune_during_fit(model, x, y, args):
    """Fits `model` with `CampHiVe`: gradual pruning over the first half, then fine-tuning.

    One pruning event per epoch (`PolynomialDecay`, fast first); each group keeps at least a
    quarter of its channels; CAMP-HiVe's other settings are its defaults.
    """
    steps = math.ceil(len(x) / BATCH)
    end = max(1, steps * args.prune_epochs // 2)
    pruning = tfprune.CampHiVe(
        tfprune.Target(flops=args.flops),
        tfprune.PolynomialDecay(begin_step=0, end_step=end, frequency=steps),
        calibration_data=(x[:CALIBRATION_SAMPLES], y[:CALIBRATION_SAMPLES]),
        min_density=0.25, verbose=0, seed=args.seed)
    # A fresh optimizer: the schedule counts its steps from 0.
    compile_for_training(model, FINE_TUNE_LEARNING_RATE)
    keras.utils.set_random_seed(args.seed)
    model.fit(x, y, batch_size=BATCH, epochs=args.prune_epochs, shuffle=True, verbose=0,
              callbacks=[pruning])
    return pruning


# --- the table, the plot, the files --------------------------------------------------------

# (label, report section, key, format); every figure comes from `convert`'s report.
ROWS = (
    ("accuracy, float (Keras)", "accuracy", "top1_float_keras", "pct"),
    ("accuracy, int8 TFLite Micro", "accuracy", "top1_micro_int8", "pct"),
    ("params", "profile", "params", "int"),
    ("FLOPs", "profile", "flops", "int"),
    (".tflite bytes (int8)", "tflite", "int8_bytes", "int"),
    ("arena bytes (TFLite Micro)", "arena", "bytes", "int"),
    ("latency ms, TFLite Micro", "latency_ms", "micro", "ms"),
    ("latency ms, LiteRT REF int8", "latency_ms", "litert_ref_int8", "ms"),
)


def table_figures(report) -> dict:
    """`{label: (dense, pruned)}` from a `convert` report with a baseline."""
    return {label: (report.baseline.figure(section, key), report.figure(section, key))
            for label, section, key, _ in ROWS}


def _cell(value, kind):
    if value is None:
        return "-"
    return {"pct": f"{100 * value:.2f}%", "int": f"{value:,}", "ms": f"{value:.3f}"}[kind]


def _change(dense, pruned, kind):
    if dense is None or pruned is None:
        return "-"
    if kind == "pct":
        return f"{100 * (pruned - dense):+.2f} pts"
    return f"x{pruned / dense:.3f}"


def format_table(figures) -> str:
    rows = [("", "dense", "pruned", "change")]
    for label, _, _, kind in ROWS:
        dense, pruned = figures[label]
        rows.append((label, _cell(dense, kind), _cell(pruned, kind), _change(dense, pruned, kind)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                          zip(r[1:], widths[1:])])
                     for r in rows)


def kept_channels(dense, pruned) -> dict:
    """`{layer path: [dense channels, pruned channels]}` of the convolutions and dense layers."""
    after = {l.path: l for l in tfprune.profile(pruned).layers}
    kept = {}
    for layer in tfprune.profile(dense).layers:
        if layer.class_name in PRUNED_LAYERS and layer.path in after:
            kept[layer.path] = [int(layer.output_shape[-1]),
                                int(after[layer.path].output_shape[-1])]
    return kept


def plot(figures, kept, path: pathlib.Path, title: str):
    """Bars: the pruned model's figures relative to the dense one, and kept channels per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [label for label, _, _, kind in ROWS if kind != "pct"
              and None not in figures[label]]
    ratios = [figures[label][1] / figures[label][0] for label in labels]
    bars = left.barh(labels, ratios, color="tab:green")
    left.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    left.bar_label(bars, labels=[f"{r:.2f}" for r in ratios], padding=3)
    accuracy = [(label.split(", ")[1], figures[label]) for label, _, _, kind in ROWS
                if kind == "pct" and None not in figures[label]]
    left.set_title("pruned / dense (dense = 1)\naccuracy " + ", ".join(
        f"{name} {100 * d:.1f}% -> {100 * p:.1f}%" for name, (d, p) in accuracy))
    left.invert_yaxis()
    left.set_xlim(0, 1.25)

    names = list(kept)
    y = np.arange(len(names))
    right.barh(y, [kept[n][0] for n in names], color="lightgrey", label="dense")
    right.barh(y, [kept[n][1] for n in names], color="tab:blue", label="kept")
    right.set_yticks(y, names)
    right.invert_yaxis()
    right.set_xlabel("output channels")
    right.set_title("channels per layer")
    right.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _atomic_write(path: pathlib.Path, write):
    """`write(temporary path)`, then renames it to `path`: readers never see half a file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, description = load(args)
    (x, y), (x_test, y_test) = data
    print(f"{description}: {len(y):,} train, {len(y_test):,} test images")

    keras.utils.set_random_seed(args.seed)
    model = build_model(args.dataset)
    compile_for_training(model, LEARNING_RATE)
    print(f"training the dense {model.name} for {args.epochs} epochs ...")
    model.fit(x, y, batch_size=BATCH, epochs=args.epochs, shuffle=True, verbose=0)
    dense = copy_model(model)

    print(f"fit with tfprune.CampHiVe(Target(flops={args.flops})) for {args.prune_epochs} "
          "epochs (pruning, then fine-tuning) ...")
    pruning = prune_during_fit(model, x, y, args)
    small = tfprune.strip(model)

    print("tfprune.export.convert: int8 TFLite, TFLite Micro, both models measured ...")
    report = tfprune.export.convert(
        small, out / "bundle", calibration=x, eval_data=data[1], baseline=dense,
        name=model.name, latency_runs=args.latency_runs, seed=args.seed)
    figures = table_figures(report)
    kept = kept_channels(dense, small)
    check = (report.verification or {}).get("micro_vs_litert_reference")

    print(f"\n{model.name}, {len(y_test):,} test images; pruned with CAMP-HiVe during fit "
          f"to Target(flops={args.flops}) (seed {args.seed}):\n{format_table(figures)}")
    if check is not None:
        print(f"TFLite Micro vs LiteRT reference kernels (int8 outputs), {check['samples']} "
              f"samples: {check['samples'] - check['mismatched_samples']} bit exact, the others "
              f"differ by at most {check['max_abs_diff']:g} int8 step(s)")
    print("kept channels: " + ", ".join(f"{n} {d}->{p}" for n, (d, p) in kept.items()))

    plot(figures, kept, out / "demo.png",
         f"{model.name}: dense vs CAMP-HiVe, Target(flops={args.flops})")
    results = {"dataset": args.dataset, "model": model.name, "seed": args.seed,
               "epochs": args.epochs, "prune_epochs": args.prune_epochs, "flops_target": args.flops,
               "table": {label: {"dense": d, "pruned": p} for label, (d, p) in figures.items()},
               "kept_channels": kept, "events": [e.step for e in pruning.events],
               "micro_bit_exact": None if check is None else check["bit_exact"],
               "wall_s": round(time.perf_counter() - started, 1)}
    _atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    print(f"written: {out}/bundle/ (deployable), {out}/demo.png, {out}/results.json "
          f"({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
