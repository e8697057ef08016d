"""`verify_micro`: TFLite Micro against LiteRT's reference kernels, sample by sample.

TFLite Micro's kernels and LiteRT's reference kernels (`OpResolverType.BUILTIN_REF`) share
their integer arithmetic, so a full-integer model should give the same outputs in both, and a
difference points at a kernel or conversion problem rather than at quantization. (LiteRT's
default kernels, XNNPACK, and its optimized builtin kernels round differently and are not
expected to match: 649 and 473 of 1,000 test images differ on the trained ResNet-8.)

Measured with the pinned versions (ai-edge-litert 2.3, tflite-micro 0.dev20261023): every
op agrees bit for bit except FULLY_CONNECTED. LiteRT's reference FULLY_CONNECTED requantizes
its int32 accumulator in double precision, `round(acc * s_in * s_w / s_out)`, while TFLite
Micro's (and both runtimes' CONV_2D) use the 31-bit fixed-point multiplier with two roundings
(`MultiplyByQuantizedMultiplier`), so an accumulator that lands near a half step can come out
one int8 step apart (28 of 1,000 CIFAR-10 test images on the trained ResNet-8, 9 of them
visible after its softmax, which can turn that step into several). Converting with
`dense_as_conv=True` (`to_tflite`) computes Dense layers as CONV_2D and makes the two runtimes
bit exact end to end. `first_divergence` locates the op where a mismatching sample first
differs, so that this known case is told apart from a real problem.

Example:

```python
from tfprune.export import verify_micro
check = verify_micro(int8_tflite, x_calibration)
assert check.bit_exact, check.to_dict()
```
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import numpy as np

from tfprune.export.flatbuffer import TfliteModel, quantize
from tfprune.export.micro import trace_micro
from tfprune.export.runtime import run_tflite_timed
from tfprune.export.tflite import native_output_captured


@dataclasses.dataclass(frozen=True)
class MicroVerification:
    """Result of `verify_micro`.

    Attributes:
        samples: samples compared.
        bit_exact: every output of every sample identical.
        mismatched_samples: samples with at least one differing output value.
        max_abs_diff: largest difference, in output units (int8 steps for int8 outputs).
        arena_bytes: the arena TFLite Micro ran with (None: the default 16 MiB).
        micro_ms: median TFLite Micro invoke time in ms (None when `repeat` was 0).
        first_divergence: for the first mismatching sample, the first op (execution order)
            whose output differs: `sample`, `op_index`, `op`, `max_abs_diff`, `elements`
            (how many values differ); None when bit exact.
        micro_outputs, reference_outputs: the raw outputs (one array per model output).
    """

    samples: int
    bit_exact: bool
    mismatched_samples: int
    max_abs_diff: float
    arena_bytes: Optional[int]
    micro_ms: Optional[float]
    first_divergence: Optional[dict]
    micro_outputs: List[np.ndarray] = dataclasses.field(repr=False)
    reference_outputs: List[np.ndarray] = dataclasses.field(repr=False)

    def to_dict(self) -> dict:
        return {"samples": self.samples, "bit_exact": self.bit_exact,
                "mismatched_samples": self.mismatched_samples, "max_abs_diff": self.max_abs_diff,
                "arena_bytes": self.arena_bytes, "micro_ms": self.micro_ms,
                "first_divergence": self.first_divergence}


def verify_micro(tflite_bytes, inputs, arena_size: Optional[int] = None,
                 repeat: int = 0) -> MicroVerification:
    """Runs samples through TFLite Micro and LiteRT's reference kernels and compares them.

    Args:
        tflite_bytes: the flatbuffer (full-integer for a bit-exact comparison).
        inputs: samples as the model takes them (see `run_tflite`).
        arena_size: TFLite Micro arena bytes, e.g. `measure_arena(...).bytes` to also check
            that the measured arena suffices for real data (default 16 MiB).
        repeat: also time this many TFLite Micro invokes (`micro_ms`).

    Returns:
        A `MicroVerification`.

    Example:

    ```python
    check = verify_micro(int8_tflite, x[:200], arena_size=measure_arena(int8_tflite).bytes)
    check.bit_exact, check.mismatched_samples
    ```
    """
    micro, ms = run_tflite_timed(tflite_bytes, inputs, "micro", repeat=repeat,
                                 arena_size=arena_size)
    reference, _ = run_tflite_timed(tflite_bytes, inputs, "litert_ref")
    n = len(micro[0])
    diffs = [np.abs(m.astype(np.float64) - r.astype(np.float64)).reshape(n, -1)
             for m, r in zip(micro, reference)]
    mismatched = np.zeros(n, bool)
    for d in diffs:
        mismatched |= d.max(axis=1) > 0
    divergence = None
    if mismatched.any():
        divergence = first_divergence(tflite_bytes, inputs, int(np.argmax(mismatched)))
    return MicroVerification(
        samples=n, bit_exact=not mismatched.any(), mismatched_samples=int(mismatched.sum()),
        max_abs_diff=float(max(d.max() for d in diffs)), arena_bytes=arena_size,
        micro_ms=ms if repeat else None, first_divergence=divergence, micro_outputs=micro,
        reference_outputs=reference)


def first_divergence(tflite_bytes, inputs, sample: int = 0) -> Optional[dict]:
    """The first op (execution order) whose output differs between TFLite Micro and LiteRT's
    reference kernels on one sample, or None when every op output is identical.

    Args:
        tflite_bytes: the flatbuffer.
        inputs: samples as for `verify_micro`.
        sample: which sample to trace.

    Returns:
        `{"sample", "op_index", "op", "max_abs_diff", "elements"}` or None.

    Example:

    ```python
    first_divergence(int8_tflite, x, sample=83)
    # {'sample': 83, 'op_index': 13, 'op': 'FULLY_CONNECTED', 'max_abs_diff': 1.0, ...}
    ```
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    fb = TfliteModel(tflite_bytes)
    arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    batch = fb.main.inputs[0].shape[0] if fb.main.inputs[0].shape else 1
    start = sample // batch * batch
    one = [np.asarray(a)[start:start + batch] for a in arrays]
    one = [np.concatenate([a, np.repeat(a[-1:], batch - len(a), axis=0)]) for a in one]
    micro = trace_micro(tflite_bytes, one)
    with native_output_captured():
        interpreter = Interpreter(model_content=bytes(tflite_bytes), num_threads=1,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                                  experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
    for t, a in zip(fb.main.inputs, one):
        interpreter.set_tensor(t.index, quantize(a, t))
    interpreter.invoke()
    for op in fb.main.ops:
        for t in op.outputs:
            diff = np.abs(interpreter.get_tensor(t.index).astype(np.float64)
                          - micro[t.index].astype(np.float64))
            if diff.max() > 0:
                return {"sample": int(sample), "op_index": op.index, "op": op.name,
                        "max_abs_diff": float(diff.max()), "elements": int((diff > 0).sum())}
    return None
