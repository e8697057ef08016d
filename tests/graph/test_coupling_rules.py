"""Coupling rules of `tfprune.channel_groups`, one tiny hand-made model per rule."""

import keras
import numpy as np
import pytest
from keras import layers, ops

import tfprune
from tfprune.graph import CONSUMER, PASSTHROUGH, PRODUCER


def group_of(groups, layer, role=PRODUCER):
    """The group in which `layer` has a member with `role`."""
    found = [g for g in groups for m in g.members if m.layer == layer and m.role == role]
    assert len(found) == 1, f"{layer} is a {role} in {len(found)} groups"
    return found[0]


def member(group, layer, role=None):
    found = [m for m in group.members if m.layer == layer and (role is None or m.role == role)]
    assert len(found) == 1, f"{layer} has {len(found)} members in group {group.id}"
    return found[0]


def param(m, weight, axis=None):
    found = [p for p in m.params if p.weight == weight and (axis is None or p.axis == axis)]
    assert len(found) == 1, f"{m.layer}.{weight}: {len(found)} slices"
    return found[0]


def rows(index_map):
    return [list(r) for r in np.asarray(index_map)]


def conv_head(x, filters=4, name="head"):
    """A consumer after the tensor under test, so that its group does not reach the output."""
    return layers.Conv2D(filters, 1, name=name)(x)


def test_conv_bn_relu_conv_chain():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, name="c1")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    outputs = layers.Conv2D(5, 3, name="c2")(x)
    groups = tfprune.channel_groups(keras.Model(inputs, outputs))
    assert [g.size for g in groups] == [3, 6, 5]
    g = group_of(groups, "c1")
    assert g.prunable and g.reason is None and g.granule == 1
    assert [(m.layer, m.role) for m in g.members] == [
        ("c1", PRODUCER), ("bn", PASSTHROUGH), ("relu", PASSTHROUGH), ("c2", CONSUMER)]
    c1 = member(g, "c1")
    assert {(p.weight, p.axis, p.role) for p in c1.params} == {
        ("kernel", 3, PRODUCER), ("bias", 0, PRODUCER)}
    bn = member(g, "bn")
    assert {p.weight for p in bn.params} == {"gamma", "beta", "moving_mean", "moving_variance"}
    assert not param(bn, "moving_mean").trainable and param(bn, "gamma").trainable
    assert (param(member(g, "c2"), "kernel").axis, param(member(g, "c2"), "kernel").role) == \
        (2, CONSUMER)
    assert rows(c1.index_map) == [[c] for c in range(6)]
    # The model input's channels and the output's are not prunable, and say why.
    assert not groups[0].prunable and "model input" in groups[0].reason
    assert not groups[2].prunable and "model output 0" in groups[2].reason
    assert "'c2'" in groups[2].reason


@pytest.mark.parametrize("cls,rank,kernel_in,kernel_out", [
    (layers.Conv1D, 3, 1, 2), (layers.Conv3D, 5, 3, 4),
    (layers.Conv1DTranspose, 3, 2, 1), (layers.Conv2DTranspose, 4, 3, 2),
    (layers.Conv3DTranspose, 5, 4, 3)])
def test_convolutions_of_every_rank(cls, rank, kernel_in, kernel_out):
    inputs = keras.Input((6,) * (rank - 2) + (3,))
    x = cls(4, 3, padding="same", name="a")(inputs)
    outputs = cls(2, 3, padding="same", name="b")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, outputs)), "a")
    assert g.size == 4 and g.prunable
    assert param(member(g, "a"), "kernel").axis == kernel_out
    assert param(member(g, "b", CONSUMER), "kernel").axis == kernel_in
    assert member(g, "a").axis == rank - 1


def test_dense_on_rank_3():
    inputs = keras.Input((5, 3))
    x = layers.Dense(7, name="d1")(inputs)
    outputs = layers.Dense(2, name="d2")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, outputs)), "d1")
    assert g.size == 7 and member(g, "d1").axis == 2
    assert param(member(g, "d2"), "kernel").axis == 0


@pytest.mark.parametrize("cls,rank", [(layers.DepthwiseConv2D, 4), (layers.DepthwiseConv1D, 3)])
def test_depthwise_multiplier(cls, rank):
    inputs = keras.Input((6,) * (rank - 2) + (3,))
    x = layers.Conv2D(4, 1, name="c")(inputs) if rank == 4 else layers.Conv1D(4, 1, name="c")(inputs)
    x = cls(3, depth_multiplier=2, padding="same", name="dw")(x)
    outputs = layers.Dense(2, name="head")(x)
    groups = tfprune.channel_groups(keras.Model(inputs, outputs))
    g = group_of(groups, "c")
    assert g.size == 4 and g.prunable
    dw = member(g, "dw")
    assert dw.role == PASSTHROUGH
    assert rows(dw.index_map) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert param(dw, "kernel").role == PRODUCER and param(dw, "kernel").axis == rank - 2
    assert rows(param(dw, "kernel").index_map) == [[0], [1], [2], [3]]
    assert rows(param(dw, "bias").index_map) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert rows(param(member(g, "head"), "kernel").index_map) == [[0, 1], [2, 3], [4, 5], [6, 7]]


@pytest.mark.parametrize("cls,rank", [(layers.SeparableConv2D, 4), (layers.SeparableConv1D, 3)])
def test_separable_convolution(cls, rank):
    inputs = keras.Input((6,) * (rank - 2) + (3,))
    conv = layers.Conv2D if rank == 4 else layers.Conv1D
    x = conv(4, 1, name="c")(inputs)
    x = cls(5, 3, depth_multiplier=2, padding="same", name="sep")(x)
    outputs = conv(2, 1, name="head")(x)
    groups = tfprune.channel_groups(keras.Model(inputs, outputs))
    consumer = member(group_of(groups, "c"), "sep", CONSUMER)
    assert rows(param(consumer, "depthwise_kernel").index_map) == [[0], [1], [2], [3]]
    assert rows(param(consumer, "pointwise_kernel").index_map) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert param(consumer, "pointwise_kernel").axis == rank - 2
    out = group_of(groups, "sep")
    assert out.size == 5 and param(member(out, "sep"), "pointwise_kernel").axis == rank - 1


def test_layer_normalization_over_channels_is_not_prunable():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="c")(inputs)
    x = layers.LayerNormalization(name="ln")(x)
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    g = group_of(groups, "c")
    assert not g.prunable
    assert "'ln'" in g.reason and "LayerNormalization" in g.reason and "normalizes" in g.reason
    # The channels stay one group (blocked) with the normalization's weights in it.
    assert {p.weight for p in member(g, "ln").params} == {"gamma", "beta"}
    assert member(g, "head").role == CONSUMER


def test_layer_normalization_over_time_is_per_channel():
    inputs = keras.Input((5, 3))
    x = layers.Dense(6, name="d")(inputs)
    x = layers.LayerNormalization(axis=1, name="ln")(x)
    groups = tfprune.channel_groups(keras.Model(inputs, layers.Dense(2)(x)))
    g = group_of(groups, "d")
    assert g.prunable and member(g, "ln").role == PASSTHROUGH


def test_group_normalization_granule():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(12, 1, name="c")(inputs)
    x = layers.GroupNormalization(groups=4, name="gn")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, conv_head(x))), "c")
    assert g.prunable and g.granule == 3
    assert {p.weight for p in member(g, "gn").params} == {"gamma", "beta"}


def test_group_normalization_with_one_group_is_not_prunable():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="c")(inputs)
    x = layers.GroupNormalization(groups=1, name="gn")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, conv_head(x))), "c")
    assert not g.prunable and "'gn'" in g.reason and "all 6 channels" in g.reason


def test_group_normalization_across_concatenated_groups_is_not_prunable():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(2, 1, name="a")(inputs)
    b = layers.Conv2D(6, 1, name="b")(inputs)
    x = layers.GroupNormalization(groups=2, name="gn")(layers.Concatenate()([a, b]))
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    g = group_of(groups, "a")
    assert not g.prunable and "GroupNormalization" in g.reason and "line up" in g.reason


PER_CHANNEL = {
    "ReLU": lambda: layers.ReLU(), "LeakyReLU": lambda: layers.LeakyReLU(),
    "ELU": lambda: layers.ELU(), "swish": lambda: layers.Activation("swish"),
    "hard_sigmoid": lambda: layers.Activation("hard_sigmoid"),
    "Dropout": lambda: layers.Dropout(0.5), "SpatialDropout2D": lambda: layers.SpatialDropout2D(0.5),
    "GaussianNoise": lambda: layers.GaussianNoise(0.1), "Identity": lambda: layers.Identity(),
    "MaxPooling2D": lambda: layers.MaxPooling2D(), "AveragePooling2D": lambda: layers.AveragePooling2D(2),
    "ZeroPadding2D": lambda: layers.ZeroPadding2D(),
    "Cropping2D": lambda: layers.Cropping2D(((1, 0), (0, 1))),
    "UpSampling2D": lambda: layers.UpSampling2D(),
    "GlobalAveragePooling2D": lambda: layers.GlobalAveragePooling2D(keepdims=True),
    "GlobalMaxPooling2D": lambda: layers.GlobalMaxPooling2D(keepdims=True),
    "Softmax over rows": lambda: layers.Softmax(axis=1)}


@pytest.mark.parametrize("make", PER_CHANNEL.values(), ids=PER_CHANNEL.keys())
def test_per_channel_layers_pass_the_group_through(make):
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="c")(inputs)
    y = make()(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, conv_head(y))), "c")
    assert g.prunable and g.size == 6
    through = [m for m in g.members if m.role == PASSTHROUGH]
    assert [m.class_name for m in through] == [type(make()).__name__]
    assert rows(through[0].index_map) == [[c] for c in range(6)]


def test_global_pooling_moves_the_channel_axis():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="c")(inputs)
    x = layers.GlobalMaxPooling2D(name="gp")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, layers.Dense(2, name="d")(x))), "c")
    assert member(g, "gp").axis == 1 and param(member(g, "d"), "kernel").axis == 0


@pytest.mark.parametrize("make,name", [(lambda: layers.Activation("softmax"), "softmax"),
                                       (lambda: layers.Softmax(), "softmax"),
                                       (lambda: layers.Activation("log_softmax"), "log_softmax")])
def test_softmax_over_channels_is_not_per_channel(make, name):
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="c")(inputs)
    x = make()(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, conv_head(x))), "c")
    assert not g.prunable and "softmax" in g.reason


def test_softmax_activation_of_a_producer_blocks_its_output():
    inputs = keras.Input((8,))
    x = layers.Dense(6, activation="softmax", name="d")(inputs)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, layers.Dense(2)(x))), "d")
    assert not g.prunable and "'d'" in g.reason and "softmax" in g.reason


@pytest.mark.parametrize("shared_axes,alpha_shape", [([1, 2], (1, 1, 6)), (None, (8, 8, 6))])
def test_prelu_alpha(shared_axes, alpha_shape):
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, padding="same", name="c")(inputs)
    x = layers.PReLU(shared_axes=shared_axes, name="p")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, conv_head(x))), "c")
    alpha = param(member(g, "p"), "alpha")
    assert alpha.axis == 2 and alpha.role == PRODUCER and rows(alpha.index_map)[5] == [5]
    assert tuple(tfprune.graph.find_variable(
        keras.Model(inputs, x), "p", "alpha").shape) == alpha_shape


@pytest.mark.parametrize("cls", [layers.Add, layers.Subtract, layers.Multiply, layers.Average,
                                 layers.Maximum, layers.Minimum])
def test_elementwise_merges_couple_their_inputs(cls):
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 1, name="a")(inputs)
    b = layers.Conv2D(6, 3, padding="same", name="b")(inputs)
    x = cls(name="merge")([a, b])
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    g = group_of(groups, "a")
    assert g is group_of(groups, "b")
    assert [m.layer for m in g.producers] == ["a", "b"]
    assert member(g, "merge").role == PASSTHROUGH and g.size == 6


def test_squeeze_excitation_couples_the_gate_with_the_features():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 1, name="c")(inputs)
    s = layers.GlobalAveragePooling2D(name="gap")(x)
    s = layers.Reshape((1, 1, 8), name="r")(s)
    s = layers.Conv2D(2, 1, activation="relu", name="squeeze")(s)
    s = layers.Conv2D(8, 1, activation="sigmoid", name="excite")(s)
    y = layers.Multiply(name="scale")([x, s])
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(y)))
    g = group_of(groups, "c")
    assert g is group_of(groups, "excite") and g.prunable
    assert {m.layer for m in g.consumers} == {"squeeze", "head"}
    assert group_of(groups, "squeeze").size == 2


def test_broadcast_along_channels_does_not_couple():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 1, name="c")(inputs)
    attention = layers.Conv2D(1, 1, activation="sigmoid", name="att")(x)
    y = layers.Multiply()([x, attention])
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(y)))
    assert group_of(groups, "c") is not group_of(groups, "att")
    assert group_of(groups, "c").size == 8 and group_of(groups, "att").size == 1


def test_concatenate_on_the_channel_axis_offsets_indices():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 1, name="a")(inputs)
    b = layers.Conv2D(6, 1, name="b")(inputs)
    x = layers.Concatenate(name="cat")([a, b])
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    ga, gb = group_of(groups, "a"), group_of(groups, "b")
    assert ga is not gb and ga.prunable and gb.prunable
    assert rows(param(member(ga, "head"), "kernel").index_map) == [[0], [1], [2], [3]]
    assert rows(param(member(gb, "head"), "kernel").index_map) == [[c] for c in range(4, 10)]
    assert rows(member(gb, "cat").index_map) == [[c] for c in range(4, 10)]


def test_concatenate_on_a_spatial_axis_merges_the_groups():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 1, name="a")(inputs)
    b = layers.Conv2D(4, 1, name="b")(inputs)
    x = layers.Concatenate(axis=1, name="cat")([a, b])
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    assert group_of(groups, "a") is group_of(groups, "b")
    assert group_of(groups, "a").size == 4


def test_flatten_spreads_channels_over_positions():
    inputs = keras.Input((2, 2, 3))
    x = layers.Conv2D(3, 1, name="c")(inputs)
    x = layers.Flatten(name="f")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, layers.Dense(2, name="d")(x))), "c")
    kernel = param(member(g, "d"), "kernel")
    assert rows(kernel.index_map) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert member(g, "f").axis == 1


def test_reshape_to_a_vector_is_a_flatten():
    inputs = keras.Input((2, 2, 3))
    x = layers.Conv2D(3, 1, name="c")(inputs)
    x = layers.Reshape((-1,), name="r")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, layers.Dense(2, name="d")(x))), "c")
    assert rows(param(member(g, "d"), "kernel").index_map) == [[0, 3, 6, 9], [1, 4, 7, 10],
                                                               [2, 5, 8, 11]]


def test_reshape_of_a_vector_into_an_image():
    inputs = keras.Input((5,))
    x = layers.Dense(12, name="d")(inputs)
    x = layers.Reshape((2, 2, 3), name="r")(x)
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    g = group_of(groups, "d")
    assert g.size == 3 and g.prunable          # output channel c = units c, c+3, c+6, c+9
    assert rows(param(member(g, "d"), "kernel", 1).index_map) == [[0, 3, 6, 9], [1, 4, 7, 10],
                                                                  [2, 5, 8, 11]]


def test_reshape_that_mixes_channels_is_not_prunable():
    inputs = keras.Input((4, 6))
    x = layers.Dense(6, name="d")(inputs)
    x = layers.Reshape((6, 4), name="r")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, layers.Dense(2)(x))), "d")
    assert not g.prunable and "'r'" in g.reason and "Reshape" in g.reason


def test_permute_moves_the_channel_axis():
    inputs = keras.Input((5, 3))
    x = layers.Dense(6, name="d")(inputs)
    x = layers.Permute((2, 1), name="p")(x)
    x = layers.Permute((2, 1), name="q")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, layers.Dense(2, name="o")(x))), "d")
    assert g.prunable and member(g, "p").axis == 1 and member(g, "q").axis == 2


def test_rescaling_and_normalization_pass_through():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 1, name="c")(inputs)
    x = layers.Rescaling([1.0, 2.0, 3.0, 4.0], offset=0.5, name="rs")(x)
    x = layers.Normalization(mean=[0.0, 1.0, 2.0, 3.0], variance=[1.0, 2.0, 3.0, 4.0],
                             name="norm")(x)
    x = layers.Normalization(name="adapted")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, conv_head(x))), "c")
    assert g.prunable
    assert [m.layer for m in g.passthrough] == ["rs", "norm", "adapted"]
    assert {p.weight for p in member(g, "adapted").params} == {"mean", "variance"}
    assert member(g, "rs").params == () and member(g, "norm").params == ()


@pytest.mark.parametrize("make,words", [
    (lambda: layers.Lambda(lambda t: t * 2, name="lam"), ["'lam'", "Lambda"]),
    (lambda: layers.Masking(name="mask"), ["'mask'", "Masking"]),
    (lambda: layers.Conv2D(6, 1, groups=2, name="grouped"), ["'grouped'", "groups=2"])])
def test_layers_tfprune_cannot_see_through(make, words):
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="c")(inputs)
    x = make()(x)
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    g = group_of(groups, "c")
    assert not g.prunable
    assert all(w in g.reason for w in words), g.reason


def test_unknown_custom_layer_is_named_in_the_reason():
    class Doubler(layers.Layer):
        def call(self, t):
            return t * 2

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="c")(inputs)
    x = layers.Conv2D(6, 1, name="d")(Doubler(name="dbl")(x))
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    assert "'dbl'" in group_of(groups, "c").reason and "Doubler" in group_of(groups, "c").reason
    assert group_of(groups, "d").prunable       # the rest of the model is unaffected


def test_keras_ops_used_directly():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 1, name="a")(inputs)
    b = layers.Conv2D(6, 1, name="b")(inputs)
    x = ops.relu(ops.add(a, b)) * 2.0 + 1.0
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    g = group_of(groups, "a")
    assert g is group_of(groups, "b") and g.prunable
    assert {m.class_name for m in g.passthrough} >= {"Add", "Relu", "Multiply"}


@pytest.mark.parametrize("op,words", [
    (lambda t: ops.reshape(t, (-1, 8, 48)), ["Keras operation", "Reshape", "use the equivalent"]),
    (lambda t: t / (t + 1.0), ["divides by a tensor"]),
    (lambda t: t * np.arange(6, dtype="float32"), ["constant array"])])
def test_keras_ops_tfprune_cannot_see_through(op, words):
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="c")(inputs)
    y = op(x)
    groups = tfprune.channel_groups(keras.Model(inputs, layers.Dense(2)(y)))
    g = group_of(groups, "c")
    assert not g.prunable and all(w in g.reason for w in words), g.reason


def test_nested_models_use_outer_inner_paths():
    block_in = keras.Input((8, 8, 6))
    y = layers.Conv2D(6, 3, padding="same", name="conv")(block_in)
    block = keras.Model(block_in, layers.Add(name="add")([block_in, y]), name="block")
    seq = keras.Sequential([keras.Input((8, 8, 6)), layers.Conv2D(5, 1, name="inner")],
                           name="seq")
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="stem")(inputs)
    x = seq(block(x))
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    g = group_of(groups, "stem")
    assert g is group_of(groups, "block/conv")
    assert {m.layer for m in g.consumers} == {"block/conv", "seq/inner"}
    assert group_of(groups, "seq/inner").prunable


def test_sequential_model():
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="c"),
                              layers.BatchNormalization(name="bn"), layers.Flatten(name="f"),
                              layers.Dense(3, name="d")])
    g = group_of(tfprune.channel_groups(model), "c")
    assert g.prunable and [m.layer for m in g.members] == ["c", "bn", "f", "d"]
    assert param(member(g, "d"), "kernel").index_map.shape == (4, 36)


def test_shared_layer_couples_its_calls():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 1, name="a")(inputs)
    b = layers.Conv2D(6, 1, name="b")(inputs)
    shared = layers.Conv2D(4, 1, name="shared")
    x = layers.Concatenate()([shared(a), shared(b)])
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(x)))
    # Both calls use the same input weights: the channels of a and b go together.
    assert group_of(groups, "a") is group_of(groups, "b")
    # Both calls write the same channels: one group, one producer member per call, the
    # weights listed once; the concatenation holds each channel twice.
    calls = [m for m in group_of(groups, "head", CONSUMER).members if m.layer == "shared"]
    assert len(calls) == 2 and [len(m.params) for m in calls] == [2, 0]
    head = member(group_of(groups, "head", CONSUMER), "head")
    assert rows(head.index_map) == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_channels_first_convolutions():
    inputs = keras.Input((3, 8, 8))
    x = layers.Conv2D(6, 1, data_format="channels_first", name="c")(inputs)
    x = layers.BatchNormalization(axis=1, name="bn")(x)
    x = layers.MaxPooling2D(data_format="channels_first", name="pool")(x)
    x = layers.Conv2D(2, 1, data_format="channels_first", name="d")(x)
    g = group_of(tfprune.channel_groups(keras.Model(inputs, x)), "c")
    assert g.prunable and member(g, "c").axis == 1 and member(g, "pool").axis == 1
    assert {p.weight for p in member(g, "bn").params} == {"gamma", "beta", "moving_mean",
                                                        "moving_variance"}


def test_group_ids_are_deterministic():
    model = tfprune.zoo.resnet8()
    first = [(g.id, g.size, g.prunable, g.layers) for g in tfprune.channel_groups(model)]
    second = [(g.id, g.size, g.prunable, g.layers) for g in tfprune.channel_groups(model)]
    assert first == second and [i for i, *_ in first] == list(range(len(first)))
    # Topological order: the stem's group comes before the groups of later stages.
    assert first[1][3][0] == "conv2d"


@pytest.mark.parametrize("build", [tfprune.zoo.resnet8, tfprune.zoo.ds_cnn,
                                   lambda: tfprune.zoo.mobilenet_v2(input_shape=(32, 32, 3))],
                         ids=["resnet8", "ds_cnn", "mobilenet_v2"])
def test_every_channel_entry_is_in_exactly_one_slice(build):
    """Every kernel/bias/BN/depthwise entry along a channel axis belongs to one group."""
    model = build()
    covered = {}
    for g in tfprune.channel_groups(model):
        for p in g.params:
            covered.setdefault((p.layer, p.weight, p.axis), []).append(p.index_map.reshape(-1))
    for (layer, weight, axis), maps in covered.items():
        entries = np.sort(np.concatenate(maps))
        dim = tfprune.graph.find_variable(model, layer, weight).shape[axis]
        assert np.array_equal(entries, np.arange(dim)), (layer, weight, axis)
    expected = set()
    for path, layer in tfprune.graph.iter_layers(model):
        for v in layer.weights:
            if isinstance(layer, (layers.Conv2D, layers.Dense)) and v.name == "kernel":
                expected |= {(path, "kernel", v.ndim - 2), (path, "kernel", v.ndim - 1)}
            if v.name in ("bias", "gamma", "beta", "moving_mean", "moving_variance"):
                expected.add((path, v.name, 0))
            if isinstance(layer, layers.DepthwiseConv2D) and v.name == "kernel":
                expected.add((path, "kernel", 2))
    assert expected <= set(covered)


def test_inception_resnet_scaled_residual_merge():
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="x")(inputs)
    r = layers.Conv2D(6, 3, padding="same", name="r")(x)
    y = CustomScaleLayer(0.2, name="scale")([x, r])
    groups = tfprune.channel_groups(keras.Model(inputs, conv_head(y)))
    assert group_of(groups, "x") is group_of(groups, "r") and group_of(groups, "x").prunable
