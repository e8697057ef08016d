"""Speed and memory of `tfprune.curvature` against one gradient, on ResNet-8 and ResNet-20.

For each model (batch 128, CIFAR-10 test images, or random pixels without the shared data) it
times, side by side with interleaved repeats (medians; wall clock and process CPU time):

- one gradient of the mean loss (compiled `tf.function`, BatchNorm in inference mode): the
  reference every ratio is taken against;
- plain double-tape code (two nested `GradientTape`s on `model(x)`), the naive HVP;
- one Hessian-vector product, forward-over-reverse and reverse-over-reverse, and one
  Gauss-Newton-vector product, as `tfprune.curvature` computes them;
- per vector, 8 products in one pass (what `hutchinson` does), and per block, the one pass of
  `block_power_iteration` that gives every layer's product;
- with `--xla`, the same with `jit_compile=True`.

It also reports the first call of each (tracing and graph optimisation included), the peak
memory of the tensors a call allocates (TensorFlow's allocator statistics,
`tf.config.experimental.get_memory_info`), and the wall time of 20 power iterations over 512
samples. The machine is shared: compare ratios from one run, and
prefer the CPU-time ratios when the load average is high.

Usage:

```
python tools/bench_curvature.py [--models resnet8 resnet20] [--repeats 7] [--xla] [--json out.json]
```
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from tfprune import curvature, zoo  # noqa: E402
from tfprune.curvature.blocks import layer_blocks  # noqa: E402
from tfprune.curvature.data import CalibrationData  # noqa: E402
from tfprune.curvature.operator import CurvatureOperator  # noqa: E402
from tfprune.errors import DataError  # noqa: E402

BATCH = 128
MODELS = {
    "resnet8": lambda: zoo.resnet8(),               # ends in a softmax (MLPerf Tiny)
    "resnet20": lambda: zoo.cifar_resnet(20),       # ends in logits
}
DEVICE = "CPU:0"


def multiply_add_model(model, vectors: int = 8) -> dict:
    """The convolution and dense multiply-adds of each computation, over a gradient's.

    A gradient runs each layer forward (`M_l` multiply-adds), then its input adjoint
    (`W^T g`, skipped for layers fed by the model's input) and its weight gradient (`g x`):
    `3 M - M_1`, `M_1` the layers fed by the input. An exact Hessian-vector product needs, on
    top of the primal forward pass and primal input adjoints, the tangent forward `V x + W dx`,
    the tangent input adjoint `V^T g + W^T dg` and the tangent weight gradient
    `dg x + g dx` (`dx = 0` at the input), and not the primal weight gradient:
    `8 M - 5 M_1`. With `k` vectors in one pass the primal passes are shared:
    `2 M - M_1 + k (6 M - 4 M_1)`. The Gauss-Newton product is a forward tangent pass and
    one reverse pass from the output: `5 M - 2 M_1`. Elementwise layers (BatchNorm in
    inference mode, activations, adds, pooling) are not counted. These are lower bounds of
    any implementation built from the same convolutions; they say what ratio the arithmetic
    alone allows.
    """
    import tfprune
    rows = tfprune.profile(model).layers
    total = sum(r.macs for r in rows)
    # Layers whose inputs depend on no weight (the input, rescaled or not): no input adjoint.
    fed, dependent = set(), set()
    flat = lambda t: list(t) if isinstance(t, (list, tuple)) else [t]  # noqa: E731
    for layer in model.layers:                      # topological order
        inputs = flat(layer.input) if layer._inbound_nodes else []
        upstream = any(id(t) in dependent for t in inputs)
        if layer.trainable_weights and not upstream:
            fed.add(layer.name)
        if upstream or layer.trainable_weights:
            dependent.update(id(t) for t in flat(layer.output))
    first = sum(r.macs for r in rows if r.path in fed)
    gradient = 3 * total - first
    return {"macs": total, "macs_input_layers": first,
            "hvp": (8 * total - 5 * first) / gradient,
            f"hvp_{vectors}_vectors_per_vector":
                (2 * total - first + vectors * (6 * total - 4 * first)) / vectors / gradient,
            "hvp_many_vectors_limit": (6 * total - 4 * first) / gradient,
            "gauss_newton": (5 * total - 2 * first) / gradient}


def peak_tensor_bytes(fn) -> int:
    """Peak bytes of tensors allocated by TensorFlow during `fn()`, above the level before it."""
    tf.config.experimental.reset_memory_stats(DEVICE)
    before = tf.config.experimental.get_memory_info(DEVICE)["current"]
    tf.nest.map_structure(np.asarray, fn())
    return tf.config.experimental.get_memory_info(DEVICE)["peak"] - before


def load_images(n: int, seed: int):
    """`n` CIFAR-10 test images and labels, or random pixels when the data is not here."""
    try:
        _, (x, y) = bc.load_cifar10()
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(x), n, replace=False)
        return x[pick].astype("float32"), y[pick].astype("int64"), "CIFAR-10 test images"
    except DataError:
        rng = np.random.default_rng(seed)
        return (rng.integers(0, 256, (n, 32, 32, 3)).astype("float32"),
                rng.integers(0, 10, n), "random pixels (no shared data)")


def keras_loss(model):
    """The loss a user would compile: cross-entropy on the model's outputs."""
    softmax = model.layers[-1].activation is keras.activations.softmax
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax), softmax


def baselines(model, loss, softmax, jit):
    weights = model.trainable_weights

    @tf.function(jit_compile=jit)
    def gradient(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False))
        return tape.gradient(value, weights)

    @tf.function(jit_compile=jit)
    def double_tape(x, y, v):
        # Keras' fused cross-entropy on logits has no second derivative: go through softmax.
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                out = model(x, training=False)
                probs = out if softmax else tf.nn.softmax(out)
                value = keras.losses.sparse_categorical_crossentropy(y, probs)
                value = tf.reduce_mean(value)
            grads = inner.gradient(value, weights)
            dot = tf.add_n([tf.reduce_sum(g * a) for g, a in zip(grads, v)])
        return outer.gradient(dot, weights)

    return gradient, double_tape


def measure(model_name, repeats, jit_modes, seed):
    keras.utils.set_random_seed(seed)
    model = MODELS[model_name]()
    loss, softmax = keras_loss(model)
    x, y, source = load_images(512, seed)
    xb, yb = tf.constant(x[:BATCH]), tf.constant(y[:BATCH])
    batch = CalibrationData((x[:BATCH], y[:BATCH]), BATCH)
    rng = np.random.default_rng(seed)
    v = [tf.constant(rng.standard_normal(w.shape).astype("float32"))
         for w in model.trainable_weights]
    blocks = tuple(b.indices for b in
                   layer_blocks(CurvatureOperator(model, loss).view.layer_paths))
    calls, per_call = {}, {}
    for jit in jit_modes:
        tag = " (XLA)" if jit else ""
        gradient, double_tape = baselines(model, loss, softmax, jit)
        calls["gradient" + tag] = lambda g=gradient: g(xb, yb)
        calls["double tape" + tag] = lambda d=double_tape: d(xb, yb, v)
        ops = {
            "HVP forward-over-reverse": CurvatureOperator(model, loss, "exact",
                                                          "forward_over_reverse", jit_compile=jit),
            "HVP reverse-over-reverse": CurvatureOperator(model, loss, "exact",
                                                          "reverse_over_reverse", jit_compile=jit),
            "Gauss-Newton product": CurvatureOperator(model, loss, "gauss_newton",
                                                      jit_compile=jit),
        }
        for name, op in ops.items():
            calls[name + tag] = lambda op=op: op.products(batch, [v])
        if not jit:
            for name in ("HVP forward-over-reverse", "HVP reverse-over-reverse"):
                op = ops[name]
                calls[name + ", 8 vectors per pass"] = lambda op=op: op.products(batch, [v] * 8)
                per_call[name + ", 8 vectors per pass"] = 8
                key = name + f", {len(blocks)} layer blocks per pass"
                calls[key] = lambda op=op: op.products(
                    batch, [[v[i] for i in b] for b in blocks], blocks=blocks)
                per_call[key] = len(blocks)
    rows = {name: {"wall": [], "cpu": []} for name in calls}
    for name, fn in calls.items():  # first calls: tracing + graph optimisation
        start, cpu = time.perf_counter(), time.process_time()
        tf.nest.map_structure(np.asarray, fn())
        rows[name]["first_s"] = time.perf_counter() - start
        rows[name]["first_cpu_s"] = time.process_time() - cpu
        print(f"  {model_name}: {name}: first call {rows[name]['first_s']:.1f} s", flush=True)
    for name, fn in calls.items():
        rows[name]["peak_mb"] = peak_tensor_bytes(fn) / 2**20
    for _ in range(repeats):
        for name, fn in calls.items():
            start, cpu = time.perf_counter(), time.process_time()
            tf.nest.map_structure(np.asarray, fn())
            rows[name]["wall"].append(time.perf_counter() - start)
            rows[name]["cpu"].append(time.process_time() - cpu)
    result = {"model": model_name, "params": int(model.count_params()), "batch": BATCH,
              "data": source, "repeats": repeats, "rows": {}}
    for jit in jit_modes:
        tag = " (XLA)" if jit else ""
        base_wall = statistics.median(rows["gradient" + tag]["wall"])
        base_cpu = statistics.median(rows["gradient" + tag]["cpu"])
        for name in calls:
            if name.endswith(" (XLA)") != jit:
                continue
            r = rows[name]
            wall, cpu = statistics.median(r["wall"]), statistics.median(r["cpu"])
            result["rows"][name] = {
                "wall_ms": 1e3 * wall, "cpu_ms": 1e3 * cpu, "per": per_call.get(name, 1),
                "ratio_wall": wall / per_call.get(name, 1) / base_wall,
                "ratio_cpu": cpu / per_call.get(name, 1) / base_cpu,
                "first_call_s": r["first_s"], "first_call_cpu_s": r["first_cpu_s"],
                "peak_added_mb": r["peak_mb"]}
    result["multiply_adds"] = multiply_add_model(model)
    result["power_iteration_20x512"] = power_timings(model, loss, x, y, seed)
    return result


def power_timings(model, loss, x, y, seed):
    """Wall time of 20 power iterations over 512 samples (traced beforehand)."""
    out = {}
    for hessian, method in (("exact", "forward_over_reverse"), ("exact", "reverse_over_reverse"),
                            ("gauss_newton", "forward_over_reverse")):
        kwargs = dict(hessian=hessian, method=method, seed=seed, batch_size=BATCH)
        curvature.power_iteration(model, loss, (x[:BATCH], y[:BATCH]), max_iter=1, **kwargs)
        start, cpu = time.perf_counter(), time.process_time()
        result = curvature.power_iteration(model, loss, (x, y), max_iter=20, tol=0.0, **kwargs)
        out[f"{hessian}/{method}"] = {"wall_s": time.perf_counter() - start,
                                      "cpu_s": time.process_time() - cpu,
                                      "iterations": result.iterations[0],
                                      "top_eigenvalue": float(result.eigenvalues[0])}
    start, cpu = time.perf_counter(), time.process_time()
    blocks = curvature.block_power_iteration(model, loss, (x, y), max_iter=20, tol=0.0,
                                             seed=seed, batch_size=BATCH)
    out["block, every layer (tracing included)"] = {
        "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
        "blocks": len(blocks.eigenvalues)}
    return out


def print_table(result):
    print(f"\n{result['model']} ({result['params']:,} params), batch {result['batch']}, "
          f"{result['data']}, median of {result['repeats']}")
    print("| computation | wall ms | CPU ms | per product / gradient (wall) | (CPU) | "
          "first call s | peak tensor MB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in result["rows"].items():
        per = f" (/{r['per']})" if r["per"] > 1 else ""
        print(f"| {name}{per} | {r['wall_ms']:.0f} | {r['cpu_ms']:.0f} | {r['ratio_wall']:.2f}x | "
              f"{r['ratio_cpu']:.2f}x | {r['first_call_s']:.1f} | {r['peak_added_mb']:.0f} |")
    m = result.get("multiply_adds")
    if m:
        print(f"multiply-adds over a gradient's (the arithmetic's floor): exact HVP "
              f"{m['hvp']:.2f}x, 8 vectors per pass {m['hvp_8_vectors_per_vector']:.2f}x per "
              f"vector (many: {m['hvp_many_vectors_limit']:.2f}x), Gauss-Newton "
              f"{m['gauss_newton']:.2f}x")
    for name, r in result["power_iteration_20x512"].items():
        print(f"20 power iterations over 512 samples, {name}: {r['wall_s']:.1f} s wall, "
              f"{r['cpu_s']:.1f} s CPU")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--xla", action="store_true", help="also time jit_compile=True")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    report = {"machine": bc.machine_info(), "results": []}
    for name in args.models:
        result = measure(name, args.repeats, (False, True) if args.xla else (False,), args.seed)
        report["results"].append(result)
        print_table(result)
    report["machine"]["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(f"\nmachine: {report['machine']['cpu']}, {report['machine']['cores']} cores, load "
          f"{report['machine']['load_avg']} -> {report['machine']['load_avg_end']}")
    if args.json:
        bc.write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
