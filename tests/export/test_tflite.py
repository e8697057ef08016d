import numpy as np
import pytest

from tfprune.errors import (CalibrationRequiredError, ExportError, InvalidExportOptionError,
                            MissingCalibrationDataError, UnsupportedModelError)
from tfprune.export import MICRO_OPS, TfliteModel, run_tflite, to_tflite



def test_int8_is_full_integer_with_static_batch_one(resnet8_tflite):
    fb = TfliteModel(resnet8_tflite[1])
    (inp,), (out,) = fb.main.inputs, fb.main.outputs
    assert inp.dtype == "INT8" and out.dtype == "INT8"
    assert inp.shape == (1, 32, 32, 3) and out.shape == (1, 10)
    for t in fb.main.tensors:
        assert not t.dynamic, t
        if t.dtype == "FLOAT32":
            pytest.fail(f"float tensor {t.name} in the int8 model")
    # Raw 0-255 pixels: the calibration range gives scale 1 and zero point -128 (exact).
    assert inp.scales == (1.0,) and inp.zero_points == (-128,)
    assert set(fb.op_names()) <= set(MICRO_OPS)


def test_float_tflite_matches_keras(resnet8, resnet8_tflite, calibration):
    (y,) = run_tflite(resnet8_tflite[0], calibration[:8])
    np.testing.assert_allclose(y, resnet8.predict(calibration[:8], verbose=0), atol=1e-5)


def test_batch_size_is_fixed_in_the_flatbuffer(tiny_tflite):
    model, x = tiny_tflite.model, tiny_tflite.x
    fb_bytes = to_tflite(model, x, batch_size=4)
    fb = TfliteModel(fb_bytes)
    assert fb.main.inputs[0].shape == (4, 8, 8, 1) and fb.main.outputs[0].shape == (4, 3)
    assert not any(t.dynamic for t in fb.main.tensors)
    (y,) = run_tflite(fb_bytes, x[:6])          # 6 samples: one full batch, one padded
    assert y.shape == (6, 3) and y.dtype == np.int8
    (one,) = run_tflite(tiny_tflite.int8, x[:6])
    np.testing.assert_array_equal(y, one)      # the batch changes no result


def test_hybrid_conversion_is_refused_with_the_reason(tiny_tflite):
    model = tiny_tflite.model
    with pytest.raises(CalibrationRequiredError, match="hybrid") as info:
        to_tflite(model)
    assert "TFLite Micro" in str(info.value) and "int8=False" in str(info.value)
    assert isinstance(info.value, MissingCalibrationDataError)
    assert isinstance(info.value, ValueError)


def test_bad_arguments_are_clear_errors(tiny_tflite):
    model, x = tiny_tflite.model, tiny_tflite.x
    with pytest.raises(InvalidExportOptionError, match="batch_size must be a positive integer"):
        to_tflite(model, x, batch_size=0)
    with pytest.raises(InvalidExportOptionError, match="keras.Model"):
        to_tflite("model.keras", x)
    with pytest.raises(CalibrationRequiredError, match="cannot fill one batch of 4"):
        to_tflite(model, x[:2], batch_size=4)
    with pytest.raises(ExportError, match="not a TFLite flatbuffer"):
        TfliteModel(b"0123456789abcdef")


def test_dense_as_conv_computes_the_same_float_function(tiny_tflite):
    model, x = tiny_tflite.model, tiny_tflite.x
    flatbuffer = to_tflite(model, int8=False, dense_as_conv=True)
    assert "FULLY_CONNECTED" not in TfliteModel(flatbuffer).op_counts()
    (y,) = run_tflite(flatbuffer, x)
    np.testing.assert_allclose(y, model.predict(x, verbose=0), atol=1e-6)
    assert [type(l).__name__ for l in model.layers][-1] == "Dense"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), tiny_tflite.weights))


def test_dense_as_conv_rewrites_the_graph_dense_layers_only(tiny_tflite):
    import keras

    class Head(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="relu")(inputs)
    model = keras.Model(inputs, Head()(hidden))
    ops = TfliteModel(to_tflite(model, int8=False, dense_as_conv=True)).op_counts()
    # The graph's Dense becomes CONV_2D; one inside a custom layer's call stays as it is.
    assert ops.get("CONV_2D") == 1 and ops.get("FULLY_CONNECTED") == 1, ops
    with pytest.raises(InvalidExportOptionError, match="dense_as_conv must be True or False"):
        to_tflite(tiny_tflite.model, tiny_tflite.x, dense_as_conv="yes")


def test_conversion_does_not_change_the_model(tiny_tflite):
    assert tiny_tflite.model.get_config() == tiny_tflite.config
    for a, b in zip(tiny_tflite.weights, tiny_tflite.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unknown_input_size_is_refused():
    import keras

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    with pytest.raises(InvalidExportOptionError, match="only the batch axis may be undefined"):
        to_tflite(model, int8=False)


def test_models_without_defined_inputs_are_refused():
    import keras

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 3), np.float32))
    for model in (keras.Sequential([keras.layers.Dense(2)]), subclassed):
        with pytest.raises(UnsupportedModelError, match="has no defined inputs"):
            to_tflite(model, int8=False)


def test_inputs_are_quantized_whatever_their_type(resnet8_tflite, calibration):
    """uint8 pixels and float pixels are real values: both are quantized the same way."""
    from tfprune.export import quantize

    int8 = resnet8_tflite[1]
    pixels = calibration[:4]
    (from_float,) = run_tflite(int8, pixels)
    (from_uint8,) = run_tflite(int8, pixels.astype(np.uint8))
    np.testing.assert_array_equal(from_float, from_uint8)
    tensor = TfliteModel(int8).main.inputs[0]
    q = quantize(pixels.astype(np.uint8), tensor)
    np.testing.assert_array_equal(q.astype(np.int16), pixels.astype(np.int16) - 128)
    np.testing.assert_array_equal(quantize(q, tensor), q)       # already int8: passed through


def test_latency_in_wall_or_cpu_time_for_every_runtime(tiny_tflite):
    from tfprune.export import measure_latency

    for runtime in ("litert", "litert_ref", "micro"):
        for clock in ("wall", "cpu"):
            ms = measure_latency(tiny_tflite.int8, runtime, repeat=3, clock=clock)
            assert 0 < ms < 1000, (runtime, clock, ms)
    with pytest.raises(InvalidExportOptionError, match="clock must be one of"):
        measure_latency(tiny_tflite.int8, "litert", repeat=1, clock="gpu")
    with pytest.raises(InvalidExportOptionError, match="runtime must be one of"):
        measure_latency(tiny_tflite.int8, "tpu", repeat=1)
