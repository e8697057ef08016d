"""tfprune demo: train, prune half of every channel group, shrink, fine-tune, compare.

Offline and quick on a laptop CPU: a small CNN on scikit-learn's bundled 8x8 handwritten digits.
The half of each prunable channel group with the lowest L1 norm of its producer kernels is
physically removed with `tfprune.shrink`, the smaller model is fine-tuned, and both models are
compared on the held-out digits: accuracy, params, FLOPs, float `.tflite` bytes.

    python examples/demo.py                         # `make demo`
    python examples/demo.py --epochs 1 --out /tmp/demo

Outputs in `--out` (default `build/demo`): `dense.tflite`, `pruned.tflite`, `pruned.keras`,
`results.json` (the table's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfprune  # noqa: E402
from tfprune.export import to_tflite  # noqa: E402

BATCH = 32
LEARNING_RATE = 3e-3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="fine-tuning epochs after pruning (default: half of --epochs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data split, init, training")
    parser.add_argument("--out", default="build/demo", help="output folder (default build/demo)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1; got {args.epochs}")
    if args.finetune_epochs is None:
        args.finetune_epochs = max(1, args.epochs // 2)
    if args.finetune_epochs < 0:
        parser.error(f"--finetune-epochs must be >= 0; got {args.finetune_epochs}")
    return args


def build_model():
    """A small Conv-BN-ReLU CNN for 8x8 inputs in [0, 16]."""
    return tfprune.zoo.small_cnn(input_shape=(8, 8, 1), num_classes=10, widths=(16, 32),
                                 dense=64, scale=1.0 / 16, name="digits_cnn")


def fit(model, data, epochs, seed):
    """Compiles a fresh optimizer (shrink returns an uncompiled model) and trains."""
    (x, y), _ = data
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    if epochs:
        keras.utils.set_random_seed(seed)
        model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0)
    return model


def lowest_l1_half(model, groups):
    """`{group id: channels}`: the half of each prunable group with the smallest L1 norm.

    A channel's norm is the sum of |w| over the producer kernel entries that carry it
    (`tfprune.criteria.Magnitude("l1")`); channels go in whole blocks when `granule > 1`.
    """
    l1 = tfprune.criteria.Magnitude("l1")
    context = tfprune.criteria.ScoringContext(model, groups=groups)
    removed = {}
    for g in groups:
        blocks = g.size // g.granule
        if g.prunable and blocks >= 2:
            norms = l1(g, context).reshape(blocks, g.granule).sum(axis=1)
            lowest = np.argsort(norms, kind="stable")[: blocks // 2]
            channels = lowest[:, None] * g.granule + np.arange(g.granule)
            removed[g.id] = np.sort(channels.reshape(-1)).tolist()
    return removed


def tflite_bytes(model, path: pathlib.Path) -> int:
    """Converts to a float `.tflite` file (batch 1), written atomically, and returns its size."""
    data = to_tflite(model, int8=False)
    _atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return len(data)


def _atomic_write(path: pathlib.Path, write):
    """`write(temporary path)`, then renames it to `path`: readers never see half a file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # .keras needs suffix
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def measure(model, data, tflite_path):
    """The table's figures for one model."""
    _, (x_test, y_test) = data
    logits = model.predict(x_test, batch_size=256, verbose=0)
    p = tfprune.profile(model)
    return {"accuracy": float(np.mean(np.argmax(logits, axis=1) == y_test)),
            "params": p.params, "flops": p.flops, "tflite_bytes": tflite_bytes(model, tflite_path)}


def format_table(dense, pruned) -> str:
    rows = [("", "dense", "pruned", "change")]
    rows.append(("test accuracy", f"{dense['accuracy']:.2%}", f"{pruned['accuracy']:.2%}",
                 f"{100 * (pruned['accuracy'] - dense['accuracy']):+.2f} pts"))
    for key, label in (("params", "params"), ("flops", "FLOPs"),
                       ("tflite_bytes", ".tflite bytes (float)")):
        rows.append((label, f"{dense[key]:,}", f"{pruned[key]:,}",
                     f"x{pruned[key] / dense[key]:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                          zip(r[1:], widths[1:])])
                     for r in rows)


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    data = tfprune.datasets.load_digits(seed=args.seed)
    print(f"8x8 digits: {len(data[0][1])} train, {len(data[1][1])} test images")

    model = fit(build_model(), data, args.epochs, args.seed)
    dense = measure(model, data, out / "dense.tflite")

    groups = tfprune.channel_groups(model)
    removed = lowest_l1_half(model, groups)
    for g in groups:
        if g.id in removed:
            print(f"  {g.describe()}: keeps {g.size - len(removed[g.id])}")
    small = fit(tfprune.shrink(model, removed), data, args.finetune_epochs, args.seed)
    pruned = measure(small, data, out / "pruned.tflite")
    _atomic_write(out / "pruned.keras", small.save)

    table = format_table(dense, pruned)
    print(f"\nLowest-L1 half of every prunable channel group removed, fine-tuned "
          f"{args.finetune_epochs} epochs (seed {args.seed}):\n{table}")
    results = {"dense": dense, "pruned": pruned, "removed": {str(k): v for k, v in
                                                             removed.items()},
               "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "seed": args.seed}
    _atomic_write(out / "results.json",
                  lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    print(f"written: {out}/dense.tflite, pruned.tflite, pruned.keras, results.json")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
