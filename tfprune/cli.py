"""The `tfprune` command.

```
tfprune convert MODEL.keras --calibration DATA --out DIR [--eval DATA] [--name N] [--no-int8]
                [--batch-size 1] [--baseline DENSE.keras] [--max-arena BYTES]
                [--max-flash BYTES] [--samples N] [--eval-samples N] [--no-strip]
                [--latency-runs 50] [--seed 0] [--json]
tfprune profile MODEL.keras [--batch-size 1] [--json]
```

`convert` strips the model, converts it to float and full-integer TFLite, writes TFLite Micro
sources and a measured report into DIR (see docs/deployment.md); `profile` prints
`tfprune.profile(model)`. Bad input exits with status 1 and one line saying what was wrong;
nothing is written to DIR then. `tools/strip_and_convert.py` is `tfprune convert`.

Example:

```
tfprune convert small.keras --calibration ../shared/data/cifar10/train \
    --eval ../shared/data/cifar10-lossless-200 --out build/small --baseline dense.keras
```
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import List, Optional

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2,
          "mib": 1024 ** 2}


def parse_bytes(text: str) -> int:
    """`"65536"`, `"64K"`, `"64KiB"`, `"1M"` -> bytes (K and M are binary, as for RAM sizes)."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a byte count; use e.g. 65536, 64K, 64KiB or 1M")
    value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a budget must be at least 1 byte")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfprune", description="Structured pruning for Keras 3: export and inspect models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = commands.add_parser(
        "convert", help="strip, convert to int8 TFLite and TFLite Micro sources, measure",
        description="Strip MODEL, convert it to float and full-integer TFLite, write TFLite "
                    "Micro sources and a measured report into DIR (docs/deployment.md).")
    c.add_argument("model", metavar="MODEL", help="a .keras file")
    c.add_argument("--calibration", metavar="DATA",
                   help="int8 calibration and verification data: an image folder "
                        "(<class>/<image>), a folder of .bin files with y_labels.csv, an "
                        ".npz/.npy, or tfds:NAME[:SPLIT]; fed to the model as stored (no "
                        "rescaling)")
    c.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (new, empty, or a previous export, which is replaced)")
    c.add_argument("--eval", metavar="DATA", help="labelled data for top-1 accuracy")
    c.add_argument("--name", default="model",
                   help="C identifier for the generated symbols and files (default: model)")
    c.add_argument("--no-int8", action="store_true",
                   help="deploy the float model (no calibration needed)")
    c.add_argument("--batch-size", type=_positive, default=1, help="fixed batch (default 1)")
    c.add_argument("--baseline", metavar="DENSE.keras",
                   help="a dense model measured the same way, reported side by side")
    c.add_argument("--max-arena", type=parse_bytes, metavar="BYTES",
                   help="fail if the TFLite Micro arena is larger (e.g. 64K)")
    c.add_argument("--max-flash", type=parse_bytes, metavar="BYTES",
                   help="fail if the deployed .tflite is larger (e.g. 256K)")
    c.add_argument("--samples", type=_positive, default=200,
                   help="calibration samples, a seeded random subset (default 200)")
    c.add_argument("--eval-samples", type=_positive, help="evaluation samples (default: all)")
    c.add_argument("--no-strip", action="store_true", help="convert the model as it is")
    c.add_argument("--latency-runs", type=_positive, default=50,
                   help="timed invokes per runtime; the median is reported (default 50)")
    c.add_argument("--seed", type=int, default=0, help="seed of the sample subsets")
    c.add_argument("--latency-clock", choices=("wall", "cpu"), default="wall",
                   help="time invokes in elapsed (wall, default) or thread CPU time (cpu: "
                        "steadier on a shared machine)")
    c.add_argument("--dense-as-conv", action="store_true",
                   help="convert Dense layers as 1x1 CONV_2D: TFLite Micro bit exact with "
                        "LiteRT's reference kernels end to end (one RESHAPE more)")
    c.add_argument("--json", action="store_true", help="print report.json instead of a summary")

    p = commands.add_parser("profile", help="FLOPs, MACs, params and bytes per layer",
                            description="Print tfprune.profile(MODEL).")
    p.add_argument("model", metavar="MODEL", help="a .keras file")
    p.add_argument("--batch-size", type=_positive, default=1)
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    return parser


def _convert(args) -> None:
    from tfprune.export import convert

    report = convert(args.model, args.out, calibration=args.calibration, eval_data=args.eval,
                     name=args.name, int8=not args.no_int8, batch_size=args.batch_size,
                     baseline=args.baseline, max_arena=args.max_arena, max_flash=args.max_flash,
                     samples=args.samples, eval_samples=args.eval_samples,
                     strip=not args.no_strip, latency_runs=args.latency_runs, seed=args.seed,
                     dense_as_conv=args.dense_as_conv, latency_clock=args.latency_clock)
    if args.json:
        print(report.to_json(), end="")
    else:
        print(report.summary())
        print(f"wrote {os.path.abspath(args.out)} ({report.timings_s.get('total', 0):.1f} s)")


def _profile(args) -> None:
    import tfprune
    from tfprune.export import load_keras_model

    model, _ = load_keras_model(args.model)
    result = tfprune.profile(model, batch_size=args.batch_size)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line `argv` (default `sys.argv[1:]`); returns the exit status."""
    args = build_parser().parse_args(argv)
    from tfprune.errors import TfpruneError

    try:
        {"convert": _convert, "profile": _profile}[args.command](args)
    except TfpruneError as e:
        print(f"tfprune {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tfprune {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
