"""Running a flatbuffer: LiteRT (optimised or reference kernels) and TFLite Micro.

Three runtimes, named as in reports:
- `"litert"`: LiteRT's default kernels (XNNPACK, optimised for the host CPU);
- `"litert_ref"`: LiteRT's reference kernels (`OpResolverType.BUILTIN_REF`), bit exact with
  TFLite Micro for int8 models but for FULLY_CONNECTED (`verify_micro` says why), and a proxy
  for microcontroller speed;
- `"micro"`: the TFLite Micro interpreter (reference kernels), run in a child process.

Times are the median of `repeat` single invokes on one thread (BENCHMARK_PROTOCOL.md), in
elapsed time, or with `clock="cpu"` in CPU time of the invoking thread: on a machine shared
with other jobs, CPU time leaves out the time the thread waited for a core.

Example:

```python
from tfprune.export import run_tflite, measure_latency
outputs = run_tflite(tflite_bytes, x_test[:100], runtime="micro")   # int8 outputs
ms = measure_latency(tflite_bytes, runtime="litert_ref")
```
"""

from __future__ import annotations

import time
from typing import List, Optional

import numpy as np

from tfprune.errors import InvalidExportOptionError
from tfprune.export.flatbuffer import TfliteModel
from tfprune.export.micro import _feed, run_micro
from tfprune.export.tflite import native_output_captured

RUNTIMES = ("litert", "litert_ref", "micro")
CLOCKS = ("wall", "cpu")
LATENCY_RUNS = 50


def _check_runtime(runtime: str, clock: str = "wall") -> None:
    if runtime not in RUNTIMES:
        raise InvalidExportOptionError(f"runtime must be one of {RUNTIMES}; got {runtime!r}")
    if clock not in CLOCKS:
        raise InvalidExportOptionError(f"clock must be one of {CLOCKS}; got {clock!r}")


def _litert(tflite_bytes, reference: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    with native_output_captured():
        interpreter = Interpreter(model_content=bytes(tflite_bytes), num_threads=1,
                                  experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    return interpreter


def _litert_run(interpreter, fb: TfliteModel, arrays, batch: int, n: int, repeat: int,
                clock: str):
    # LiteRT addresses tensors by their index in the first subgraph, as the flatbuffer does.
    in_index = [t.index for t in fb.main.inputs]
    out_index = [t.index for t in fb.main.outputs]
    outputs = [[] for _ in out_index]
    for start in range(0, len(arrays[0]), batch):
        for i, a in zip(in_index, arrays):
            interpreter.set_tensor(i, a[start:start + batch])
        interpreter.invoke()
        for o, i in zip(outputs, out_index):
            o.append(interpreter.get_tensor(i).copy())
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    times = []
    for _ in range(repeat):
        for i, a in zip(in_index, arrays):
            interpreter.set_tensor(i, a[:batch])
        t0 = timer()
        interpreter.invoke()
        times.append(timer() - t0)
    median = 1e3 * float(np.median(times)) if times else float("nan")
    return [np.concatenate(o)[:n] for o in outputs], median


def run_tflite_timed(tflite_bytes, inputs, runtime: str = "litert", repeat: int = 0,
                     arena_size: Optional[int] = None, clock: str = "wall"):
    """`run_tflite` that also times `repeat` invokes of the first batch.

    Args:
        tflite_bytes, inputs, runtime, arena_size: as for `run_tflite`.
        repeat: timed invokes after the run (0: no timing).
        clock: `"wall"` or `"cpu"` (CPU time of the invoking thread).

    Returns:
        `(outputs, median_ms)`; `median_ms` is NaN when `repeat` is 0.

    Example:

    ```python
    (y,), ms = run_tflite_timed(int8_tflite, x, "litert_ref", repeat=50)
    ```
    """
    _check_runtime(runtime, clock)
    if runtime == "micro":
        return run_micro(tflite_bytes, inputs, arena_size=arena_size, repeat=repeat, clock=clock)
    fb = TfliteModel(tflite_bytes)
    arrays, n, batch = _feed(fb, inputs)
    interpreter = _litert(tflite_bytes, reference=runtime == "litert_ref")
    return _litert_run(interpreter, fb, arrays, batch, n, repeat, clock)


def run_tflite(tflite_bytes, inputs, runtime: str = "litert",
               arena_size: Optional[int] = None) -> List[np.ndarray]:
    """Runs samples through a flatbuffer.

    Args:
        tflite_bytes: the flatbuffer.
        inputs: an array of samples `(n, ...)` for a one-input model, or a list of arrays;
            float data is quantized to an integer input's scale and zero point, and samples
            are fed in batches of the model's fixed batch size.
        runtime: `"litert"`, `"litert_ref"` or `"micro"`.
        arena_size: TFLite Micro arena bytes (`"micro"` only; default 16 MiB).

    Returns:
        One array per model output, stacked over the `n` samples, in the output's type
        (int8 for a full-integer model: see `flatbuffer.dequantize`).

    Example:

    ```python
    (y,) = run_tflite(tflite_bytes, x_test[:10], runtime="litert_ref")
    ```
    """
    return run_tflite_timed(tflite_bytes, inputs, runtime, repeat=0, arena_size=arena_size)[0]


def measure_latency(tflite_bytes, runtime: str = "litert", repeat: int = LATENCY_RUNS,
                    inputs=None, arena_size: Optional[int] = None, clock: str = "wall") -> float:
    """Median time of `repeat` single invokes on one thread, in milliseconds.

    Args:
        tflite_bytes: the flatbuffer.
        runtime: `"litert"`, `"litert_ref"` or `"micro"`.
        repeat: number of timed invokes (50 in the benchmark protocol).
        inputs: one batch to feed (default: zeros, which take as long for these kernels).
        arena_size: TFLite Micro arena bytes (`"micro"` only).
        clock: `"wall"` (elapsed) or `"cpu"` (CPU time of the invoking thread, steadier
            on a shared machine).

    Returns:
        Milliseconds.

    Example:

    ```python
    measure_latency(tflite_bytes, "micro"), measure_latency(tflite_bytes, "litert_ref")
    measure_latency(tflite_bytes, "litert_ref", clock="cpu")
    ```
    """
    if not isinstance(repeat, int) or repeat < 1:
        raise InvalidExportOptionError(f"repeat must be a positive integer; got {repeat!r}")
    if inputs is None:
        fb = TfliteModel(tflite_bytes)
        inputs = [np.zeros(t.shape, np.float32) for t in fb.main.inputs]
    return run_tflite_timed(tflite_bytes, inputs, runtime, repeat=repeat, arena_size=arena_size,
                            clock=clock)[1]
