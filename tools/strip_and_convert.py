"""Strip a pruned Keras model and convert it for microcontrollers: `tfprune convert`.

```
python tools/strip_and_convert.py MODEL.keras --calibration DATA --out DIR [--eval DATA]
    [--name N] [--no-int8] [--batch-size 1] [--baseline DENSE.keras] [--max-arena BYTES]
    [--max-flash BYTES] [--samples N] [--dense-as-conv] [--latency-clock {wall,cpu}]
```

Writes the stripped `model.keras`, `model_float.tflite`, `model_int8.tflite`, TFLite Micro
sources (`<name>_model_data.cc/.h`, `<name>_op_resolver.h`) and a measured `report.json` /
`report.md` into DIR. See docs/deployment.md, or `--help` for every option.
"""

import sys

from tfprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
