"""Trains (or loads from `cache/`) the reference models of the benchmark protocol, and measures them.

The dense ResNet-8 and the narrow-from-scratch baselines are trained once, with the protocol's
recipe (`bench_common.train`), and cached with a JSON of their test top-1, training wall and CPU
time and per-epoch log. A cached model is not trained again. With `--deploy`, the model's
deployment figures are measured with `tfprune.export` (int8 bytes, arena, TFLite Micro and
LiteRT reference times, TFLite Micro int8 top-1 on the 200 lossless images) and a row is
appended to `cache/results/reference_models.json`. `--tfmot DIR` does the same for the output
folder of `tfmot_baseline.py`: its pruned weights go through the same conversion as every other
row, and its own flatbuffer is measured as well (row in `cache/results/tfmot.json`).

Examples:

```
python tools/train_dense.py --model resnet8 --epochs 30 --seed 0            # dense, protocol
python tools/train_dense.py --model resnet8 --flops 0.25 --epochs 40       # narrow, 25% FLOPs
python tools/train_dense.py --model resnet8 --width-mult 0.5 --epochs 30   # protocol half width
python tools/train_dense.py --model resnet8 --export-npz cache/w.npz       # weights for tfmot
python tools/train_dense.py --model resnet8 --deploy                       # + deployment figures
python tools/train_dense.py --tfmot cache/tfmot/sparsity0.75_e5_seed0      # measure tfmot's run
```
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

import bench_common as bc

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["resnet8"], default="resnet8")
    parser.add_argument("--epochs", type=int, default=bc.PROTOCOL_DENSE_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    width = parser.add_mutually_exclusive_group()
    width.add_argument("--width-mult", type=float, default=None,
                       help="train a narrow model: every width scaled by this factor, in (0, 1]")
    width.add_argument("--flops", type=float, default=None,
                       help="train a narrow model with about this fraction of the dense MACs")
    width.add_argument("--tfmot", type=pathlib.Path, default=None,
                       help="measure the output folder of tfmot_baseline.py instead of training")
    parser.add_argument("--export-npz", default=None,
                        help="also write the model's get_weights() to this .npz (tfmot baseline)")
    parser.add_argument("--deploy", action="store_true",
                        help="measure int8 bytes, arena, latency and int8 top-1 with tfprune.export")
    bc.add_data_dir_argument(parser)
    return parser


def _deploy(model, tag: str, data, data_dir, seed: int):
    calibration = bc.representative_images(data[0][0], seed=seed)
    return bc.deployment_figures(model, bc.CACHE_DIR / "export" / tag, calibration,
                                 eval_data=bc.datasets.load_cifar10_lossless_200(data_dir), name="resnet8")


def measure_tfmot(folder: pathlib.Path, data_dir, seed: int):
    """Float top-1 and deployment figures of a `tfmot_baseline.py` output folder."""
    result = json.loads((folder / "result.json").read_text())
    with np.load(folder / "weights.npz") as d:
        weights = [d[k] for k in sorted(k for k in d.files if k[0] == "w" and k[1:].isdigit())]
    model = bc.zoo.resnet8()
    model.set_weights(weights)
    data = bc.load_cifar10(data_dir)
    row = {key: result[key] for key in ("method", "sparsity_target", "sparsity_achieved", "epochs",
                                        "lr", "seed", "dense_top1", "top1", "train_cpu_s",
                                        "train_wall_s")}
    row["top1_keras3"] = round(bc.evaluate(model, *data[1]), 2)
    lossless = bc.datasets.load_cifar10_lossless_200(data_dir)
    row["own_tflite"] = bc.tflite_figures((folder / "model_int8.tflite").read_bytes(), lossless)
    row["tfprune_export"] = _deploy(model, f"tfmot_{folder.name}", data, data_dir, seed)
    row["folder"] = str(folder)
    return row


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be at least 1; got {args.epochs}")
    if args.tfmot is not None:
        if not (args.tfmot / "result.json").is_file():
            raise SystemExit(f"{args.tfmot} is not an output folder of tfmot_baseline.py "
                             "(no result.json)")
        row = measure_tfmot(args.tfmot, args.data_dir, args.seed)
        bc.append_result("tfmot", dict(row, machine=bc.machine_info()))
        print(json.dumps(row))
        return 0
    mult = args.width_mult
    if args.flops is not None:
        mult = bc.width_mult_for_flops(args.flops)
    if mult is None or mult == 1:
        model = bc.dense_resnet8(args.data_dir, seed=args.seed, epochs=args.epochs)
        path = bc.dense_resnet8_path(args.seed, args.epochs)
    else:
        model = bc.narrow_resnet8(mult, args.epochs, seed=args.seed, data_dir=args.data_dir)
        path = bc.narrow_resnet8_path(mult, args.epochs, args.seed)
    info = bc.model_info(path)
    summary = {k: info[k] for k in ("model", "widths", "epochs", "seed", "top1", "params", "macs",
                                    "train_wall_s", "train_cpu_s") if k in info}
    summary["path"] = str(path)
    if args.export_npz:
        # 64 test images with this model's outputs let the reader check its rebuilt model.
        x_check = bc.load_cifar10(args.data_dir)[1][0][:64]
        summary["npz"] = str(bc.export_weights_npz(model, args.export_npz, x_check))
    if args.deploy:
        summary["deploy"] = _deploy(model, path.stem, bc.load_cifar10(args.data_dir), args.data_dir,
                                    args.seed)
        bc.append_result("reference_models", dict(summary, machine=bc.machine_info()))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
