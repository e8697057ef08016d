import pytest
from export_models import random_images, tiny_cnn

from tfprune.export import EDGETPU_OPS, TfliteModel, edgetpu_check, to_tflite


def test_int8_resnet8_is_edgetpu_ready(resnet8_tflite, resnet8):
    report = edgetpu_check(resnet8_tflite[1], resnet8)
    assert report.ready and report.issues == [] and report.first_unsupported is None
    assert report.mapped_ops == report.total_ops == len(TfliteModel(resnet8_tflite[1]).main.ops)
    assert all(op["mapped"] for op in report.ops)


def test_float_model_is_not_ready_and_says_why(resnet8_tflite):
    report = edgetpu_check(resnet8_tflite[0])
    assert not report.ready and report.mapped_ops == 0
    assert report.first_unsupported["index"] == 0
    reason = report.first_unsupported["reason"]
    assert "FLOAT32" in reason and "not int8" in reason


def test_mapping_stops_at_the_first_unsupported_op_and_names_its_layer():
    import keras

    model = tiny_cnn(head=keras.layers.Activation("gelu", name="act_gelu"), name="gelu_model")
    fb = to_tflite(model, random_images(8, (8, 8, 1)))
    report = edgetpu_check(fb, model)
    first = report.first_unsupported
    assert first["op"] == "GELU" and first["layers"] == ["act_gelu"]
    assert "not supported by the Edge TPU" in first["reason"]
    ops = TfliteModel(fb).main.ops
    assert report.mapped_ops == first["index"] == [op.name for op in ops].index("GELU")
    assert not any(op["mapped"] for op in report.ops[first["index"]:])
    assert "GELU" not in EDGETPU_OPS


def test_batch_above_one_breaks_the_three_innermost_dimensions_rule(tiny_tflite):
    fb = to_tflite(tiny_tflite.model, tiny_tflite.x, batch_size=2)
    report = edgetpu_check(fb)
    assert not report.ready
    assert any("more than 3 dimensions larger than 1" in issue for issue in report.issues)


@pytest.mark.parametrize("op", ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD",
                                "AVERAGE_POOL_2D", "SOFTMAX", "RESHAPE", "MEAN", "QUANTIZE"])
def test_documented_ops_are_in_the_table(op):
    assert op in EDGETPU_OPS
