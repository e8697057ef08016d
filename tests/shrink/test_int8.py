"""Shrunk reference models convert to full-int8 TFLite and agree with the float model.

Tolerance: the int8 model's dequantized outputs may differ from the float shrunk model's by
at most 8% of the float outputs' range (max over samples), and by 2% on average. Full-integer
post-training quantization of an 8-bit network typically lands within a few output
quantization steps; a wrong slice (a misplaced channel) gives errors of the order of the
range itself. The models end in a softmax, which random weights leave almost uniform: their
last Dense layer is scaled up so that the outputs spread over a good part of [0, 1].
"""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import tfprune
from equivalence import random_removal, randomize_statistics

MODELS = {
    "resnet8": (lambda: tfprune.zoo.resnet8(), (0.0, 255.0)),
    "mobilenet_v2": (lambda: tfprune.zoo.mobilenet_v2(alpha=0.35), (-1.0, 1.0)),
    "ds_cnn": (lambda: tfprune.zoo.ds_cnn(), (-1.0, 1.0)),
}


def to_int8(model, calibration):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def run_int8(flatbuffer, x):
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    results = []
    for sample in x:
        q = np.clip(np.round(sample / s_in + z_in), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        results.append((interpreter.get_tensor(out["index"])[0].astype(np.float32) - z_out) * s_out)
    return np.stack(results)


@pytest.mark.parametrize("name", [
    "resnet8", "ds_cnn",
    pytest.param("mobilenet_v2", marks=pytest.mark.slow)])   # its conversion takes a minute
def test_half_removed_model_converts_to_full_int8(name):
    build, (low, high) = MODELS[name]
    model = build()
    randomize_statistics(model)
    head = model.layers[-1]
    head.set_weights([w * 30.0 for w in head.get_weights()])
    groups = tfprune.channel_groups(model)
    removed = random_removal(groups, 0.5, seed=0)
    assert removed
    small = tfprune.shrink(model, removed)
    assert small.count_params() < 0.6 * model.count_params()

    rng = np.random.default_rng(0)
    shape = tuple(model.inputs[0].shape[1:])
    calibration = rng.uniform(low, high, (64,) + shape).astype("float32")
    x = rng.uniform(low, high, (16,) + shape).astype("float32")
    expected = np.asarray(small(x, training=False))
    got = run_int8(to_int8(small, calibration), x)

    span = expected.max() - expected.min()
    assert span > 0.2
    error = np.abs(got - expected)
    assert error.max() <= 0.08 * span, f"max error {error.max():.3g}, range {span:.3g}"
    assert error.mean() <= 0.02 * span, f"mean error {error.mean():.3g}, range {span:.3g}"
    print(f"{name}: params {model.count_params():,} -> {small.count_params():,}; int8 vs float "
          f"max error {error.max():.3g}, mean {error.mean():.3g}, output range {span:.3g}")
