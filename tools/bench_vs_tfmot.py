"""tfprune against tfmot on the MLPerf Tiny ResNet-8, measured side by side (docs/BENCHMARKS.md).

From the same dense ResNet-8 weights (`cache/resnet8_dense_seed0.keras`) and the same
fine-tuning budget: 10 epochs of the quality benchmark's best recipe by default (run N of
`tools/bench_quality.py`: pruned before the first step, batch 16, Adam with a cosine decay
from 4e-3 to 0, random flips; `--prune-epochs`, `--batch-size`, `--lr`, `--augment` change it):

- **tfmot**: `prune_low_magnitude` at each `--sparsity`, `ConstantSparsity` from step 0 (or,
  with `--prune-epochs P`, tfmot's `PolynomialDecay` over the first P epochs, every half
  epoch, as the quality benchmark's events), fine-tuned while pruning, `strip_pruning`
  (`tools/tfmot_baseline.py`, run in `.venv-tfmot` as its own process: tfmot needs legacy
  Keras). Its stripped weights are loaded into `tfprune.zoo.resnet8()`.
- **tfprune**: the stripped models of the quality benchmark (`tools/bench_quality.py`, by
  default CampHiVe (run Q's: gates, per unit cost, `min_density=0.375`, the regression fold)
  and SOSPH at 50% and 25% of the FLOPs, seed 0, from `cache/quality/quality_runQ/`,
  `quality_runN50/` and `quality_runO/`), or any `--tfprune LABEL=PATH`.

Every row, the dense one included, then goes through the same deployment path in this one
process: `bench_common.deployment_figures` (`tfprune.export.convert`: full int8, batch 1,
calibrated on the protocol's 200 training images, arena measured in 64-byte steps, TFLite
Micro int8 top-1 on the 200 lossless CIFAR-10 images). Times are measured again afterwards
in CPU time of the invoking thread (a shared machine's waits left out), all rows interleaved
round by round (`--rounds`), so that a busy period hits every row alike; ratios to dense are
medians of the per-round ratios.

Each int8 flatbuffer is also run over the whole 10k test set in LiteRT (its default int8
kernels; TFLite Micro agrees with LiteRT's reference kernels on 197-198 of the 200 lossless
images, `docs/BENCHMARKS.md`, "Export"): 200 images resolve half a point and vary by a few
points from one subset to another, 10,000 resolve 0.01.

It prints a Markdown table, writes the plot (`--plot`, default `docs/img/vs_tfmot.png`: int8
top-1 on the 10k test images against .tflite bytes and against TFLite Micro CPU time) and
appends one row to `cache/results/vs_tfmot.json`.

    python tools/bench_vs_tfmot.py                 # needs the tfmot folders (or --run-tfmot)
    python tools/bench_vs_tfmot.py --report        # table and plot of the last run again
    python tools/bench_vs_tfmot.py --run-tfmot --sparsity 0.5 0.75 \\
        --tfprune "CampHiVe 25% FLOPs=cache/quality/quality_runN/<run name>_s0.keras"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import bench_common as bc

TFMOT_PYTHON = bc.ROOT / ".venv-tfmot" / "bin" / "python"
_RECIPE = "rewind_b16_lr0.004_augflip_s0.keras"
_REGRESSION = "diagonalgates_merge_ruleregression_per_unit_costTrue_cal1024"
DEFAULT_TFPRUNE = (
    ("tfprune CampHiVe 50% FLOPs",
     f"quality/quality_runQ/camp_hive_channel_flops0.5_md0.375_e10_p0_{_REGRESSION}_{_RECIPE}"),
    ("tfprune SOSPH 50% FLOPs",
     f"quality/quality_runN50/sosp_h_channel_flops0.5_e10_p0_{_RECIPE}"),
    ("tfprune CampHiVe 25% FLOPs",
     f"quality/quality_runQ/camp_hive_channel_flops0.25_md0.375_e10_p0_{_REGRESSION}_{_RECIPE}"),
    ("tfprune SOSPH per FLOP 25% FLOPs",
     f"quality/quality_runO/sosp_h_channel_flops0.25_md0.25_e10_p0_per_flopTrue_{_RECIPE}"),
)
#: The fine-tuning recipe of the default rows (the quality benchmark's run N), which the tfmot
#: rows get by default too.
DEFAULT_BATCH, DEFAULT_LR, DEFAULT_AUGMENT = 16, 4e-3, "flip"
DEFAULT_PLOT = bc.ROOT / "docs" / "img" / "vs_tfmot.png"
# Columns of the table: (header, row key, format); `x` columns add the ratio to dense.
COLUMNS = (
    ("float top-1 (10k)", "top1_float", "{:.2f}"),
    ("int8 top-1 (10k, LiteRT)", "top1_int8_10k", "{:.2f}"),
    ("TFLM int8 top-1 (200)", "top1_micro_int8", "{:.1f}"),
    ("params", "params", "{:,}"),
    ("MACs", "macs", "{:,}"),
    (".tflite bytes", "int8_bytes", "{:,}x"),
    ("arena bytes", "arena_bytes", "{:,}x"),
    ("LiteRT REF CPU ms", "litert_ref_cpu_ms", "{:.2f}x"),
    ("TFLM CPU ms", "micro_cpu_ms", "{:.2f}x"),
)


@dataclasses.dataclass
class Row:
    """One model of the comparison.

    Attributes:
        label: what the table calls it.
        kind: `"dense"`, `"tfmot"` or `"tfprune"`.
        source: where the model came from (a `.keras` file or a tfmot output folder).
        figures: the measured columns (`COLUMNS` keys and the export's own).
    """

    label: str
    kind: str
    source: str
    figures: Dict[str, object] = dataclasses.field(default_factory=dict)


def tfmot_folder(sparsity: float, epochs: int, seed: int, prune_epochs: int = 0,
                 batch_size: int = bc.PROTOCOL_BATCH, lr: float = bc.FINE_TUNE_LR,
                 augment: str = "protocol") -> pathlib.Path:
    """The output folder of `tfmot_baseline.py` for one run (as `make bench-tfmot` names it);
    a batch, peak rate or augmentation other than the protocol's is part of the name, as in
    `tools/bench_quality.py`'s run names."""
    pace = f"_p{prune_epochs}" if prune_epochs else ""
    recipe = bc.recipe_suffix(batch_size, lr, augment)
    return bc.CACHE_DIR / "tfmot" / f"sparsity{sparsity:g}_e{epochs}{pace}{recipe}_seed{seed}"


def run_tfmot(sparsity: float, epochs: int, seed: int, prune_epochs: int = 0,
              batch_size: int = bc.PROTOCOL_BATCH, lr: float = bc.FINE_TUNE_LR,
              augment: str = "protocol", python=TFMOT_PYTHON) -> pathlib.Path:
    """Runs `tfmot_baseline.py` in the tfmot environment (its own process) unless cached."""
    folder = tfmot_folder(sparsity, epochs, seed, prune_epochs, batch_size, lr, augment)
    if (folder / "result.json").is_file():
        return folder
    weights = bc.CACHE_DIR / f"resnet8_dense_seed{seed}_weights.npz"
    command = [str(python), str(bc.ROOT / "tools" / "tfmot_baseline.py"), "--weights",
               str(weights), "--sparsity", str(sparsity), "--epochs", str(epochs),
               "--prune-epochs", str(prune_epochs), "--batch-size", str(batch_size),
               "--lr", str(lr), "--augment", augment, "--seed", str(seed), "--out", str(folder)]
    print("running", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=bc.ROOT)
    return folder


def load_tfmot_model(folder: pathlib.Path):
    """`tfprune.zoo.resnet8()` holding the stripped weights of a `tfmot_baseline.py` run."""
    with np.load(folder / "weights.npz") as d:
        weights = [d[k] for k in sorted(k for k in d.files if k[0] == "w" and k[1:].isdigit())]
    model = bc.zoo.resnet8()
    model.set_weights(weights)
    return model


def _parse_tfprune(text: str):
    label, sep, path = text.rpartition("=")
    if not sep or not label.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH (a .keras file); got {text!r}")
    return label.strip(), pathlib.Path(path.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75],
                   help="tfmot target sparsities (default 0.5 0.75)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs of every pruned row")
    p.add_argument("--prune-epochs", type=int, default=0,
                   help="tfmot ramps its sparsity over these first epochs (default 0: "
                        "ConstantSparsity from step 0, as the default tfprune rows pruned once)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help="tfmot's fine-tuning batch (default %(default)s); match the tfprune "
                        "rows' recipe (tools/bench_quality.py --batch-size)")
    p.add_argument("--lr", type=float, default=DEFAULT_LR,
                   help="tfmot's peak learning rate, cosine-decayed to 0 (default %(default)g)")
    p.add_argument("--augment", choices=bc.AUGMENTATIONS, default=DEFAULT_AUGMENT,
                   help="tfmot's fine-tuning augmentation (default %(default)s; the "
                        "protocol's: 'protocol')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-tfmot", action="store_true",
                   help="run tfmot_baseline.py in .venv-tfmot for a sparsity with no cached folder")
    p.add_argument("--tfprune", type=_parse_tfprune, action="append", metavar="LABEL=PATH",
                   help="a stripped tfprune model (repeatable; default: the quality benchmark's "
                        "CampHiVe models at 50%% and 25%% FLOPs in cache/quality/)")
    p.add_argument("--rounds", type=int, default=7,
                   help="interleaved timing rounds over all rows (default 7)")
    p.add_argument("--runs", type=int, default=20,
                   help="timed invokes per row and round (default 20)")
    p.add_argument("--plot", type=pathlib.Path, default=DEFAULT_PLOT, help="PNG to write")
    p.add_argument("--report", action="store_true",
                   help="print the table and redraw the plot of the last recorded run only")
    p.add_argument("--results", default="vs_tfmot",
                   help="results file stem in cache/results/ (default vs_tfmot)")
    p.add_argument("--export-dir", type=pathlib.Path, default=bc.CACHE_DIR / "export" / "vs_tfmot",
                   help="where each row's tfprune.export folder goes")
    bc.add_data_dir_argument(p)
    return p


def check_args(args) -> None:
    """Raises SystemExit naming a bad argument and what is accepted."""
    for s in args.sparsity:
        if not 0 < s < 1:
            raise SystemExit(f"--sparsity values must be in (0, 1); got {s}")
    for name in ("epochs", "rounds", "runs", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1; "
                             f"got {getattr(args, name)}")
    if not args.lr > 0:
        raise SystemExit(f"--lr must be positive; got {args.lr}")
    if not 0 <= args.prune_epochs <= args.epochs:
        raise SystemExit(f"--prune-epochs must be in [0, --epochs]; got {args.prune_epochs}")
    if args.tfprune is None:
        args.tfprune = [(label, bc.CACHE_DIR / path) for label, path in DEFAULT_TFPRUNE]
    missing = [str(path) for _, path in args.tfprune if not path.is_file()]
    if missing:
        raise SystemExit(f"tfprune model(s) not found: {', '.join(missing)}; write them with "
                         "tools/bench_quality.py, or pass --tfprune LABEL=PATH")
    for s in args.sparsity:
        folder = tfmot_folder(s, args.epochs, args.seed, args.prune_epochs, args.batch_size,
                              args.lr, args.augment)
        if not args.run_tfmot and not (folder / "result.json").is_file():
            raise SystemExit(f"{folder} does not exist: pass --run-tfmot, or run "
                             f".venv-tfmot/bin/python tools/tfmot_baseline.py --weights "
                             f"cache/resnet8_dense_seed{args.seed}_weights.npz --sparsity {s} "
                             f"--epochs {args.epochs} --prune-epochs {args.prune_epochs} "
                             f"--batch-size {args.batch_size} --lr {args.lr:g} "
                             f"--augment {args.augment} --seed {args.seed} --out {folder}")


def _ratio(value, dense) -> Optional[float]:
    return None if value is None or not dense else float(value) / float(dense)


def table(rows: Sequence[Row]) -> str:
    """The Markdown table; columns marked `x` show the ratio to the dense row beside the value.

    Time ratios are the `<key>_ratio` figures when present (medians of per-round ratios), else
    the plain quotient.
    """
    dense = next((r for r in rows if r.kind == "dense"), None)
    if dense is None:
        raise ValueError("the rows need a dense row to compare with")
    head = ["model"] + [h for h, _, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(COLUMNS) + "|"]
    for r in rows:
        cells = [r.label]
        for _, key, fmt in COLUMNS:
            value = r.figures.get(key)
            if value is None:
                cells.append("-")
                continue
            text = fmt.rstrip("x").format(value)
            if fmt.endswith("x") and r is not dense:
                ratio = r.figures.get(f"{key}_ratio", _ratio(value, dense.figures.get(key)))
                text += f" ({ratio:.2f}x)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interleaved_times(flatbuffers: Dict[str, bytes], arenas: Dict[str, int], rounds: int,
                      runs: int) -> Dict[str, Dict[str, List[float]]]:
    """Per-round median CPU times (ms) of every flatbuffer, rows taking turns in each round."""
    from tfprune import export

    times = {label: {"litert_ref_cpu_ms": [], "micro_cpu_ms": []} for label in flatbuffers}
    for _ in range(rounds):
        for label, fb in flatbuffers.items():
            times[label]["litert_ref_cpu_ms"].append(
                export.measure_latency(fb, "litert_ref", repeat=runs, clock="cpu"))
            times[label]["micro_cpu_ms"].append(export.measure_latency(
                fb, "micro", repeat=runs, arena_size=arenas[label], clock="cpu"))
    return times


def apply_times(rows: Sequence[Row], times: Dict[str, Dict[str, List[float]]]) -> None:
    """Sets each row's times to the median over rounds and its `_ratio` to dense to the
    median of the per-round ratios."""
    dense = next(r for r in rows if r.kind == "dense")
    for r in rows:
        for key, values in times[r.label].items():
            r.figures[key] = statistics.median(values)
            if r is not dense:
                r.figures[f"{key}_ratio"] = statistics.median(
                    v / d for v, d in zip(values, times[dense.label][key]))


def budget_text(epochs: Optional[int], prune_epochs: Optional[int] = None) -> str:
    """The fine-tuning budget as the plot's title states it."""
    if epochs is None:
        return "the same fine-tuning budget each"
    text = f"{epochs} fine-tuning epochs each"
    return text + (f", pruning in the first {prune_epochs}" if prune_epochs else "")


def plot(rows: Sequence[Row], path: pathlib.Path, budget: Optional[str] = None) -> pathlib.Path:
    """int8 top-1 on the 10k test images (TFLite Micro's on the 200 lossless ones for records
    made before that column) against .tflite bytes and against TFLite Micro CPU time relative
    to dense (the median of the per-round ratios; dense at 1); `budget` ends the title
    (`budget_text`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"dense": ("k", "s"), "tfmot": ("tab:orange", "o"), "tfprune": ("tab:blue", "^")}
    key_y = "top1_int8_10k" if all("top1_int8_10k" in r.figures for r in rows) \
        else "top1_micro_int8"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, xlabel in ((axes[0], "int8_bytes", "int8 .tflite bytes (KB)"),
                            (axes[1], "micro_cpu_ms_ratio", "TFLite Micro CPU time, x dense")):
        for r in rows:
            x = 1.0 if r.kind == "dense" and key.endswith("_ratio") else r.figures.get(key)
            y = r.figures.get(key_y)
            if x is None or y is None:
                continue
            x = x / 1000 if key == "int8_bytes" else x
            color, marker = style[r.kind]
            ax.scatter([x], [y], c=color, marker=marker, s=60, label=r.label)
            ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    images = "10k test images" if key_y == "top1_int8_10k" else "200 lossless test images"
    axes[0].set_ylabel("int8 top-1 (%)" if key_y == "top1_int8_10k"
                       else "TFLite Micro int8 top-1 (%)")
    fig.suptitle(f"ResNet-8, CIFAR-10 ({images}): tfprune (channels removed) "
                 f"vs tfmot (weights zeroed), {budget or budget_text(None)}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def measure(row: Row, model, data, calibration, lossless, export_dir: pathlib.Path) -> bytes:
    """Float top-1 and deployment figures of one row; returns its int8 flatbuffer."""
    (x_test, y_test) = data[1]
    row.figures["top1_float"] = round(bc.evaluate(model, x_test, y_test), 2)
    tag = "".join(c if c.isalnum() else "_" for c in row.label.lower())
    figures = bc.deployment_figures(model, export_dir / tag, calibration, eval_data=lossless,
                                    name="resnet8")
    row.figures.update(figures)
    flatbuffer = (export_dir / tag / "model_int8.tflite").read_bytes()
    row.figures["top1_int8_10k"] = int8_top1(flatbuffer, x_test, y_test)
    return flatbuffer


def int8_top1(flatbuffer: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 (percent, 2 decimals) of an int8 flatbuffer in LiteRT over `(x, y)`."""
    from tfprune import export

    (scores,) = export.run_tflite(flatbuffer, x.astype(np.float32), "litert")
    return round(100.0 * float(np.mean(np.argmax(scores, axis=-1) == np.asarray(y))), 2)


def last_recorded(results: str) -> Tuple[List[Row], str]:
    """The rows of the last run recorded in `cache/results/<results>.json`, and its budget."""
    path = bc.CACHE_DIR / "results" / f"{results}.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run tools/bench_vs_tfmot.py first")
    record = json.loads(path.read_text())[-1]
    return ([Row(**r) for r in record["rows"]],
            budget_text(record.get("epochs"), record.get("prune_epochs")))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        rows, budget = last_recorded(args.results)
        print(table(rows))
        print(plot(rows, args.plot, budget))
        return 0
    check_args(args)
    started, cpu0 = time.perf_counter(), time.process_time()
    folders = [run_tfmot(s, args.epochs, args.seed, args.prune_epochs, args.batch_size, args.lr,
                         args.augment) for s in args.sparsity]
    data = bc.load_cifar10(args.data_dir)
    calibration = bc.representative_images(data[0][0], seed=args.seed)
    lossless = bc.datasets.load_cifar10_lossless_200(args.data_dir)

    import keras

    rows = [Row("dense", "dense", str(bc.dense_resnet8_path(args.seed)))]
    models = [bc.dense_resnet8(args.data_dir, seed=args.seed)]
    for folder in folders:
        result = json.loads((folder / "result.json").read_text())
        rows.append(Row(f"tfmot {result['sparsity_target']:.0%} sparsity", "tfmot", str(folder),
                        {"sparsity": result["sparsity_achieved"],
                         "own_int8_bytes": result["int8_tflite_bytes"]}))
        models.append(load_tfmot_model(folder))
    for label, path in args.tfprune:
        rows.append(Row(label, "tfprune", str(path)))
        models.append(keras.models.load_model(path, compile=False))

    flatbuffers, arenas = {}, {}
    for row, model in zip(rows, models):
        print(f"measuring {row.label} ({row.source})", flush=True)
        flatbuffers[row.label] = measure(row, model, data, calibration, lossless, args.export_dir)
        arenas[row.label] = row.figures["arena_bytes"]
    apply_times(rows, interleaved_times(flatbuffers, arenas, args.rounds, args.runs))

    text = table(rows)
    print(text)
    print(plot(rows, args.plot, budget_text(args.epochs, args.prune_epochs)))
    bc.append_result(args.results, {
        "rows": [dataclasses.asdict(r) for r in rows], "table": text,
        "rounds": args.rounds, "runs": args.runs, "epochs": args.epochs,
        "prune_epochs": args.prune_epochs, "batch_size": args.batch_size, "lr": args.lr,
        "augment": args.augment, "seed": args.seed,
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(time.process_time() - cpu0, 1), "machine": bc.machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
