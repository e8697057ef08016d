"""`tfprune.profile`: hand counts on small models, totals, table, dict, errors."""

import json
import math

import keras
import numpy as np
import pytest
from keras import layers

import tfprune
from tfprune.errors import ProfileError, UnsupportedModelError


def _only(model, **kw):
    """The profile and the row of the one layer that does MACs."""
    p = tfprune.profile(model, **kw)
    rows = [r for r in p.layers if r.macs]
    assert len(rows) == 1, [r.path for r in rows]
    return p, rows[0]


def test_conv2d_strides_and_padding():
    for padding, stride in [("valid", 2), ("same", 2), ("valid", 1), ("same", 3)]:
        model = keras.Sequential([keras.Input((9, 11, 3)),
                                  layers.Conv2D(4, (3, 2), strides=stride, padding=padding)])
        if padding == "valid":
            oh, ow = (9 - 3) // stride + 1, (11 - 2) // stride + 1
        else:
            oh, ow = math.ceil(9 / stride), math.ceil(11 / stride)
        p, row = _only(model)
        assert row.macs == oh * ow * (3 * 2 * 3) * 4
        assert row.output_shape == (1, oh, ow, 4)
        assert p.flops == 2 * p.macs == 2 * row.macs
        assert p.params == 3 * 2 * 3 * 4 + 4 == model.count_params()


def test_conv1d_conv3d_and_channels_first():
    m1 = keras.Sequential([keras.Input((20, 3)), layers.Conv1D(5, 4, strides=2, dilation_rate=1)])
    assert tfprune.profile(m1).macs == ((20 - 4) // 2 + 1) * 4 * 3 * 5
    m3 = keras.Sequential([keras.Input((6, 7, 8, 2)), layers.Conv3D(3, 3, padding="same")])
    assert tfprune.profile(m3).macs == 6 * 7 * 8 * 27 * 2 * 3
    mcf = keras.Sequential([keras.Input((3, 10, 12)),
                            layers.Conv2D(4, 3, data_format="channels_first")])
    assert tfprune.profile(mcf).macs == 8 * 10 * 9 * 3 * 4


def test_dense_on_rank_3_counts_every_leading_position():
    model = keras.Sequential([keras.Input((5, 7)), layers.Dense(3)])
    p, row = _only(model)
    assert row.macs == 5 * 7 * 3
    assert row.output_shape == (1, 5, 3)
    assert p.params == 7 * 3 + 3


def test_depthwise_with_multiplier():
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")])
    _, row = _only(model)
    assert row.macs == 8 * 8 * 9 * 3 * 2
    m1 = keras.Sequential([keras.Input((16, 4)), layers.DepthwiseConv1D(5, depth_multiplier=3)])
    assert tfprune.profile(m1).macs == 12 * 5 * 4 * 3


def test_separable_counts_depthwise_and_pointwise():
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              layers.SeparableConv2D(5, 3, strides=2, padding="same",
                                                     depth_multiplier=2)])
    _, row = _only(model)
    assert row.macs == 4 * 4 * (9 * 3 * 2 + 3 * 2 * 5)
    m1 = keras.Sequential([keras.Input((10, 4)), layers.SeparableConv1D(6, 3)])
    assert tfprune.profile(m1).macs == 8 * (3 * 4 + 4 * 6)


def test_grouped_convolution():
    model = keras.Sequential([keras.Input((6, 6, 4)), layers.Conv2D(8, 3, groups=2)])
    p, row = _only(model)
    assert row.macs == 4 * 4 * 9 * (4 // 2) * 8
    assert p.params == 9 * 2 * 8 + 8


def test_transposed_convolution_counts_input_positions():
    model = keras.Sequential([keras.Input((5, 6, 3)),
                              layers.Conv2DTranspose(4, 3, strides=2, padding="same")])
    _, row = _only(model)
    assert row.output_shape == (1, 10, 12, 4)
    assert row.macs == 5 * 6 * 9 * 3 * 4
    m1 = keras.Sequential([keras.Input((7, 2)), layers.Conv1DTranspose(3, 4, strides=3)])
    assert tfprune.profile(m1).macs == 7 * 4 * 2 * 3


def test_einsum_dense():
    model = keras.Sequential([keras.Input((5, 6)),
                              layers.EinsumDense("abc,cd->abd", output_shape=(5, 4))])
    assert tfprune.profile(model).macs == 5 * 6 * 4
    model = keras.Sequential([keras.Input((5, 6)),
                              layers.EinsumDense("...c,cde->...de", output_shape=(3, 2))])
    assert tfprune.profile(model).macs == 5 * 6 * 3 * 2


def test_nested_models_are_counted_per_call_with_paths():
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, layers.Conv2D(4, 3, padding="same", name="conv")(inner_in),
                        name="block")
    seq = keras.Sequential([keras.Input((8, 8, 4)), layers.Dense(2, name="head")], name="seq")
    x = keras.Input((8, 8, 3))
    y = layers.Conv2D(4, 1, name="stem")(x)
    y = inner(inner(y))                      # the nested model runs twice
    out = seq(y)
    model = keras.Model(x, out)
    p = tfprune.profile(model)
    paths = [r.path for r in p.layers]
    assert paths == ["stem", "block/conv", "seq/head"]
    conv = p.layer("block/conv")
    assert conv.calls == 2
    assert conv.macs == 2 * 64 * 9 * 4 * 4
    assert p.layer("seq/head").macs == 64 * 4 * 2
    assert p.macs == 64 * 3 * 4 + conv.macs + 64 * 4 * 2
    assert p.params == model.count_params()


def test_shared_layer_counts_each_call():
    shared = layers.Conv2D(3, 3, name="shared")
    x = keras.Input((10, 10, 3))
    y = shared(shared(x))                    # 8x8 then 6x6 output positions
    model = keras.Model(x, y)
    p = tfprune.profile(model)
    row = p.layer("shared")
    assert row.calls == 2
    assert row.macs == (64 + 36) * 9 * 3 * 3
    assert row.output_shape == (1, 8, 8, 3)   # first call
    assert p.params == model.count_params() == 9 * 3 * 3 + 3


def test_totals_params_bytes_and_batch():
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        layers.Conv2D(4, 3, dtype="float16", name="conv"),
        layers.BatchNormalization(),
        layers.PReLU(),
        layers.Flatten(),
        layers.Dense(3, name="head"),
    ])
    p = tfprune.profile(model)
    assert p.params == model.count_params()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert p.trainable_params == trainable
    assert p.non_trainable_params == 2 * 4                       # BN moving mean/var
    conv_params = 9 * 2 * 4 + 4
    assert p.weight_bytes == 2 * conv_params + 4 * (p.params - conv_params)
    assert p.layer("conv").weight_bytes == 2 * conv_params
    assert p.macs == 16 * 9 * 2 * 4 + 64 * 3
    p8 = tfprune.profile(model, batch_size=8)
    assert p8.macs == 8 * p.macs and p8.flops == 8 * p.flops
    assert p8.params == p.params and p8.weight_bytes == p.weight_bytes
    assert p8.layer("head").output_shape == (8, 3)
    assert p.uncounted == ()


def test_table_and_dict():
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=16)
    p = tfprune.profile(model)
    text = str(p)
    for row in p.layers:
        assert row.path in text
    assert f"{p.macs:,}" in text and f"{p.flops:,}" in text and f"{p.params:,}" in text
    d = json.loads(json.dumps(p.to_dict()))
    assert d["flops"] == p.flops and d["params"] == p.params == model.count_params()
    assert sum(r["macs"] for r in d["layers"]) == p.macs
    assert [r["path"] for r in d["layers"]] == [r.path for r in p.layers]
    assert d["layers"][-1]["output_shape"] == [1, 10]


def test_layers_outside_the_convention_are_reported():
    model = keras.Sequential([keras.Input((5, 3)), layers.LSTM(4, name="lstm"),
                              layers.Dense(2)])
    p = tfprune.profile(model)
    assert p.uncounted == ("lstm",)
    assert p.layer("lstm").macs == 0 and p.layer("lstm").params > 0
    assert p.params == model.count_params()
    assert "not counted" in str(p) and "lstm" in str(p).splitlines()[-1]


def test_model_is_not_changed():
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=16)
    before = [w.copy() for w in model.get_weights()]
    config = model.get_config()
    tfprune.profile(model)
    assert model.get_config() == config
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_bad_input():
    model = keras.Sequential([keras.Input((None, None, 3)), layers.Conv2D(4, 3, name="conv")])
    with pytest.raises(ProfileError, match=r"conv.*undefined.*fixed input shape"):
        tfprune.profile(model)
    # A layer without MACs may have undefined dimensions.
    ok = keras.Sequential([keras.Input((None, 3)), layers.ReLU()])
    assert tfprune.profile(ok).macs == 0
    small = keras.Sequential([keras.Input((4,)), layers.Dense(2)])
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ProfileError, match="batch_size must be a positive integer"):
            tfprune.profile(small, batch_size=bad)
    assert tfprune.profile(small, batch_size=np.int64(2)).macs == 16
    with pytest.raises(UnsupportedModelError, match="not built"):
        tfprune.profile(keras.Sequential([layers.Dense(2)]))
    with pytest.raises(UnsupportedModelError, match="expected a keras.Model"):
        tfprune.profile(layers.Dense(2))

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(UnsupportedModelError, match="subclassed.*Sequential"):
        tfprune.profile(sub)
