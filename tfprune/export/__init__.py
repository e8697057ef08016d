"""Deployment: int8 TFLite, TFLite Micro sources, arena size, verification, Edge TPU checks.

`convert` does the whole job (what `tfprune convert` and `tools/strip_and_convert.py` run);
the pieces are usable on their own.

Example:

```python
import tfprune
from tfprune import export
model = tfprune.zoo.resnet8()
x, _ = export.load_data("../shared/data/cifar10-lossless-200", input_shape=(32, 32, 3))
int8 = export.to_tflite(model, calibration=x)
arena = export.measure_arena(int8)                  # bytes TFLite Micro needs
source, header = export.to_c_array(int8, "resnet8", arena=arena)
resolver = export.op_resolver_header(int8, "resnet8")
check = export.verify_micro(int8, x)                # TFLite Micro == LiteRT reference kernels
export.edgetpu_check(int8).ready
report = export.convert(model, "build/resnet8", calibration=x)
```
"""

from tfprune.export.flatbuffer import TfliteModel, dequantize, quantize, source_layers
from tfprune.export.micro import (MICRO_CUSTOM_OPS, MICRO_OPS, REPLACEMENTS, ArenaSize,
                                  arena_runs, check_micro_ops, measure_arena, micro_available,
                                  micro_unsupported_ops, op_resolver_header, to_c_array,
                                  trace_micro)
from tfprune.export.tflite import tflite_variants, to_tflite
from tfprune.export.runtime import RUNTIMES, measure_latency, run_tflite
from tfprune.export.verify import MicroVerification, first_divergence, verify_micro
from tfprune.export.edgetpu import EDGETPU_OPS, EdgeTpuReport, edgetpu_check
from tfprune.export.data import load_data
from tfprune.export.report import Report
from tfprune.export.convert import convert, load_keras_model

__all__ = [
    "ArenaSize", "EDGETPU_OPS", "EdgeTpuReport", "MICRO_CUSTOM_OPS", "MICRO_OPS",
    "MicroVerification", "REPLACEMENTS", "RUNTIMES", "Report", "TfliteModel", "arena_runs",
    "check_micro_ops", "convert", "dequantize", "edgetpu_check", "first_divergence",
    "load_data", "load_keras_model", "measure_arena", "measure_latency", "micro_available",
    "micro_unsupported_ops", "op_resolver_header", "quantize", "run_tflite", "source_layers",
    "tflite_variants", "to_c_array", "to_tflite", "trace_micro", "verify_micro",
]
