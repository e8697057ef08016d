"""Keras model -> TFLite flatbuffer (float, or full-integer int8 for microcontrollers).

The model is exported with `keras.export.ExportArchive` (inference mode, batch fixed to
`batch_size`, so every shape is static) and converted with `tf.lite.TFLiteConverter`. Full
int8 sets everything TFLite Micro and the Edge TPU need: `optimizations=[DEFAULT]`, a
representative dataset, `supported_ops=[TFLITE_BUILTINS_INT8]` and int8 input and output.
Without a representative dataset the converter silently makes a *hybrid* model (int8
weights, float activations) that neither can run, so `to_tflite` refuses to.

`dense_as_conv=True` converts every `Dense` layer applied to a `(batch, features)` tensor as
the equivalent 1x1 convolution on a 1x1 image (`CONV_2D` between two reshapes) instead of
`FULLY_CONNECTED`. The float function is the same; what changes is the int8 arithmetic of
LiteRT's reference kernels. LiteRT's reference `FULLY_CONNECTED` requantizes its int32
accumulators in double precision (`round(acc * s_in * s_w / s_out)`), while TFLite Micro's,
and both runtimes' `CONV_2D`, use the fixed-point multiplier with two roundings
(`MultiplyByQuantizedMultiplier`). With `dense_as_conv` the int8 model is therefore bit
exact between TFLite Micro and LiteRT's reference kernels end to end, and computes what
TFLite Micro computes for the `FULLY_CONNECTED` model, at the cost of one `RESHAPE` op
(docs/deployment.md gives the measured bytes, arena and time).

Example:

```python
import numpy as np, tfprune
from tfprune.export import to_tflite
model = tfprune.zoo.resnet8()
x = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3)).astype("float32")
int8 = to_tflite(model, calibration=x)        # bytes of a full-integer flatbuffer
float_model = to_tflite(model, int8=False)
```
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import sys
import tempfile
import warnings
from typing import Iterator, List

import numpy as np

from tfprune.errors import (CalibrationRequiredError, ExportError, InvalidExportOptionError,
                            UnsupportedModelError, UnsupportedOpError)

_FLEX_OP = re.compile(r"'(tf\.[A-Za-z0-9_]+)' op is neither a custom op nor a flex op")


@contextlib.contextmanager
def native_output_captured() -> Iterator[io.StringIO]:
    """Captures what TensorFlow and the interpreters print, also from C code (fds 1 and 2).

    Yields a buffer that holds the captured text once the block exits, so that a failure can
    quote it and a success keeps the user's terminal clean.
    """
    captured = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
        except OSError:  # no real file descriptors (embedded interpreters): capture Python only
            pass
        try:
            with contextlib.redirect_stdout(captured), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
                yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.write(sink.read().decode(errors="replace"))


def _input_specs(model, batch_size: int):
    import tensorflow as tf

    specs = []
    for x in model.inputs:
        if any(d is None for d in x.shape[1:]):
            raise InvalidExportOptionError(
                f"input {x.name!r} of model {model.name!r} has shape {tuple(x.shape)}: only the "
                "batch axis may be undefined for a static-shape export; build the model with "
                "a fixed input size (keras.Input(shape=(h, w, c)))")
        specs.append(tf.TensorSpec((batch_size, *x.shape[1:]), x.dtype, name=x.name))
    return specs


def _dense_as_conv_layer():
    import keras

    class DenseAsConv2D(keras.layers.Layer):
        """Computes a `Dense` layer on 2-D inputs as a 1x1 convolution of a 1x1 image.

        It shares the Dense layer's variables; inputs of another rank go to the Dense layer.
        """

        def __init__(self, dense, **kwargs):
            super().__init__(name=dense.name, dtype=dense.dtype_policy, **kwargs)
            self.dense = dense

        def call(self, x):
            dense = self.dense
            if len(x.shape) != 2:
                return dense(x)
            ops = keras.ops
            kernel = ops.reshape(dense.kernel, (1, 1, *dense.kernel.shape))
            y = ops.conv(ops.reshape(x, (-1, 1, 1, x.shape[-1])), kernel, padding="valid")
            if dense.use_bias:
                y = y + dense.bias
            return dense.activation(ops.reshape(y, (-1, dense.units)))

        def compute_output_shape(self, input_shape):
            return self.dense.compute_output_shape(input_shape)

    return DenseAsConv2D


def _with_dense_as_conv(model):
    """A clone of `model` whose plain `Dense` layers compute as 1x1 convolutions (shared
    variables: the user's model is neither copied nor changed)."""
    import keras

    layer_type = _dense_as_conv_layer()

    def clone(layer):
        # Subclasses of Dense may compute something else; they are left as they are.
        return layer_type(layer) if type(layer) is keras.layers.Dense else layer

    try:
        return keras.models.clone_model(model, clone_function=clone, recursive=True)
    except Exception as e:  # clone_model raises ValueError/TypeError for subclassed models
        raise InvalidExportOptionError(
            f"dense_as_conv rebuilds the model's graph, which needs a functional or "
            f"Sequential model; {model.name!r} ({type(model).__name__}) could not be "
            f"rebuilt ({type(e).__name__}: {e}). Convert with dense_as_conv=False") from e


@contextlib.contextmanager
def _exported(model, batch_size: int, dense_as_conv: bool = False) -> Iterator[str]:
    """A SavedModel of `model.__call__(training=False)` with the batch fixed, in a temp dir."""
    import keras

    specs = _input_specs(model, batch_size)
    if dense_as_conv:
        model = _with_dense_as_conv(model)
    with tempfile.TemporaryDirectory(prefix="tfprune-export-") as tmp:
        with native_output_captured() as log:
            try:
                archive = keras.export.ExportArchive()
                archive.track(model)
                # A functional model with several inputs takes them as one list argument.
                signature = [specs] if len(specs) > 1 else specs
                archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                                     signature)
                archive.write_out(tmp)
                error = None
            except Exception as e:  # Keras/TF raise many types while tracing
                error = e
        if error is not None:
            _raise_conversion_error(error, log.getvalue(), model)
        yield tmp


def _calibration_batches(calibration, num_inputs: int, batch_size: int):
    arrays = list(calibration) if isinstance(calibration, (list, tuple)) else [calibration]
    if len(arrays) != num_inputs:
        raise InvalidExportOptionError(
            f"the model has {num_inputs} inputs; calibration must be a list of {num_inputs} "
            f"arrays (one per input), got {len(arrays)}")
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    n = len(arrays[0])
    if n < batch_size:
        raise CalibrationRequiredError(
            f"{n} calibration sample(s) cannot fill one batch of {batch_size}; give at least "
            f"{batch_size} (a few hundred is typical)")

    def batches():
        for start in range(0, n - batch_size + 1, batch_size):
            yield [a[start:start + batch_size] for a in arrays]

    return batches


def require_inputs(model) -> None:
    """Raises `UnsupportedModelError` unless the model has defined inputs to export."""
    try:
        defined = bool(model.inputs)
    except AttributeError:  # Sequential without an input shape, subclassed models
        defined = False
    if not defined:
        raise UnsupportedModelError(
            f"model {model.name!r} ({type(model).__name__}) has no defined inputs: tfprune "
            "exports functional models and Sequential models built with an input shape "
            "(keras.Input(shape=...)); a subclassed model can be wrapped as "
            "keras.Model(inputs, model(inputs))")


def _check_request(model, calibration, int8: bool, batch_size: int,
                   dense_as_conv: bool = False) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise InvalidExportOptionError(f"model must be a keras.Model; got {type(model).__name__}")
    require_inputs(model)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidExportOptionError(f"batch_size must be a positive integer; got {batch_size!r}")
    if not isinstance(dense_as_conv, bool):
        raise InvalidExportOptionError(f"dense_as_conv must be True or False; got {dense_as_conv!r}")
    if int8 and calibration is None:
        raise CalibrationRequiredError(
            "full-integer (int8) conversion needs calibration data: without a representative "
            "dataset the converter cannot choose activation ranges and produces a hybrid model "
            "(int8 weights, float activations) that TFLite Micro and the Edge TPU cannot run. "
            "Pass calibration samples (e.g. 200 training inputs), or int8=False for a float model")


def _convert(saved_model: str, model, calibration, int8: bool, batch_size: int) -> bytes:
    import tensorflow as tf

    batches = (_calibration_batches(calibration, len(model.inputs), batch_size)
               if int8 else None)
    with native_output_captured() as log:
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if int8:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = batches
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
            result, error = converter.convert(), None
        except Exception as e:  # the converter raises many types; say what it said
            result, error = None, e
    if error is not None:
        _raise_conversion_error(error, log.getvalue(), model)
    return bytes(result)


def tflite_variants(model, calibration=None, int8: bool = True, batch_size: int = 1,
                    dense_as_conv: bool = False):
    """The float and the int8 flatbuffer from a single export of the model.

    Args:
        model, calibration, int8, batch_size, dense_as_conv: as for `to_tflite`.

    Returns:
        `(float_bytes, int8_bytes)`, each what `to_tflite` gives; `int8_bytes` is None when
        `int8` is False.

    Example:

    ```python
    float_tflite, int8_tflite = tflite_variants(model, calibration=x[:200])
    ```
    """
    _check_request(model, calibration, int8, batch_size, dense_as_conv)
    with _exported(model, batch_size, dense_as_conv) as saved_model:
        float_bytes = _convert(saved_model, model, None, False, batch_size)
        int8_bytes = _convert(saved_model, model, calibration, True, batch_size) if int8 else None
    return float_bytes, int8_bytes


def to_tflite(model, calibration=None, int8: bool = True, batch_size: int = 1,
              dense_as_conv: bool = False) -> bytes:
    """Converts a Keras model to a TFLite flatbuffer with static shapes.

    Args:
        model: a built `keras.Model` (not modified).
        calibration: representative inputs for int8 calibration, fed exactly as the model
            takes them (no scaling): an array `(n, *input_shape)`, or a list of arrays for a
            model with several inputs. A few hundred samples is typical.
        int8: full-integer quantization (int8 weights and activations, int8 input and output).
            False gives a float32 model.
        batch_size: the fixed batch dimension (1 for microcontrollers and the Edge TPU).
        dense_as_conv: convert `Dense` layers on 2-D inputs as 1x1 `CONV_2D` (see the module
            docstring): bit exact between TFLite Micro and LiteRT's reference kernels, one
            `RESHAPE` more per such layer. Functional and Sequential models only.

    Returns:
        The flatbuffer bytes.

    Raises:
        CalibrationRequiredError: `int8` without `calibration` (that would be a hybrid model).
        UnsupportedOpError: a TF op has no TFLite builtin (names the op).
        ExportError: the converter failed (quotes its message).

    Example:

    ```python
    int8 = to_tflite(model, calibration=x_train[:200])
    exact = to_tflite(model, calibration=x_train[:200], dense_as_conv=True)
    ```
    """
    _check_request(model, calibration, int8, batch_size, dense_as_conv)
    with _exported(model, batch_size, dense_as_conv) as saved_model:
        return _convert(saved_model, model, calibration, int8, batch_size)


def _raise_conversion_error(error: Exception, log: str, model) -> None:
    text = f"{error}\n{log}"
    missing = list(dict.fromkeys(_FLEX_OP.findall(text)))
    if missing:
        raise UnsupportedOpError(
            f"model {model.name!r} uses TensorFlow op(s) with no TFLite builtin: "
            f"{', '.join(missing)}. tfprune converts with builtin ops only (Flex/select TF ops "
            "cannot run on microcontrollers); replace the layers that produce them") from error
    tail: List[str] = [line for line in str(error).strip().splitlines() if line.strip()][-12:]
    raise ExportError(f"TFLite conversion of model {model.name!r} failed: "
                      f"{type(error).__name__}: " + "\n".join(tail)) from error
