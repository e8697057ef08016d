"""`shrink`, `mask_channels` and `zeroed_channels` on hand-made models."""

import keras
import numpy as np
import pytest
from keras import layers, ops

import tfprune
from tfprune.graph import find_layer
from equivalence import check_equivalence, random_inputs, randomize_statistics, relative_error


def group_with_producer(model, layer):
    return next(g for g in tfprune.channel_groups(model) for m in g.producers if m.layer == layer)


def small_convnet():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Conv2D(5, 3, name="c2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, layers.Dense(3, name="d")(x))
    randomize_statistics(model)
    return model


def test_shrink_equals_a_narrower_model_built_by_hand():
    model = small_convnet()
    removed = [1, 4]
    keep = np.setdiff1d(np.arange(6), removed)
    g = group_with_producer(model, "c1")
    small = tfprune.shrink(model, {g.id: removed})

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(5, 3)(x)
    x = layers.GlobalAveragePooling2D()(x)
    by_hand = keras.Model(inputs, layers.Dense(3)(x))
    k1, b1 = model.get_layer("c1").get_weights()
    bn = model.get_layer("bn").get_weights()
    k2, b2 = model.get_layer("c2").get_weights()
    by_hand.set_weights([k1[..., keep], b1[keep]] + [w[keep] for w in bn] +
                        [k2[:, :, keep, :], b2] + model.get_layer("d").get_weights())

    x = random_inputs(model)[0]
    assert small.get_layer("c1").filters == 4
    np.testing.assert_allclose(small(x), by_hand(x), rtol=1e-5, atol=1e-6)


def test_mask_equals_zeroing_only_the_consumer_inputs():
    """Removal means: every consumer ignores the channel. Zeroing the consumer's input
    weights alone must already give the masked (and shrunk) outputs."""
    model = small_convnet()
    g = group_with_producer(model, "c1")
    masked = tfprune.mask_channels(model, {g.id: [0, 5]})
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    kernel = reference.get_layer("c2").kernel
    kernel.assign(kernel.numpy() * np.array([0, 1, 1, 1, 1, 0], "float32")[:, None])
    x = random_inputs(model)[0]
    np.testing.assert_allclose(masked(x), reference(x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(model(x), masked(x))
    assert np.all(masked.get_layer("c1").kernel.numpy()[..., [0, 5]] == 0)
    assert np.all(masked.get_layer("bn").moving_mean.numpy()[[0, 5]] == 0)
    assert masked.get_layer("c1").filters == 6       # same architecture


def test_removing_nothing_copies_the_model():
    model = small_convnet()
    x = random_inputs(model)[0]
    copy = tfprune.shrink(model, {})
    np.testing.assert_array_equal(copy(x), model(x))
    assert copy is not model and copy.get_layer("c1") is not model.get_layer("c1")


def rich_model():
    """One model with every layer whose config or weights change when channels go."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="c")(inputs)
    x = layers.Rescaling(list(np.linspace(0.5, 2.0, 8)), offset=list(np.linspace(-1, 1, 8)),
                         name="rs")(x)
    x = layers.Normalization(mean=list(np.linspace(-1, 1, 8)), variance=list(np.linspace(1, 2, 8)),
                             name="norm")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = layers.GroupNormalization(groups=4, name="gn")(x)
    x = layers.SeparableConv2D(6, 3, depth_multiplier=2, padding="same", name="sep")(x)
    x = layers.Conv2DTranspose(6, 3, strides=2, name="tconv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(12, name="d")(x)
    x = layers.Reshape((2, 2, 3), name="r")(x)
    x = layers.Conv2D(4, 1, name="c2")(x)
    x = layers.Flatten(name="f")(x)
    model = keras.Model(inputs, layers.Dense(3, name="out")(x))
    randomize_statistics(model)
    model.get_layer("prelu").alpha.assign(np.random.default_rng(1).uniform(0, 0.3, (1, 1, 8)))
    return model


def test_config_edits_of_every_layer_kind():
    model = rich_model()
    small, masked, removed, error = check_equivalence(model, fraction=0.5)
    c = group_with_producer(model, "c")
    assert c.granule == 2          # GroupNormalization: 16 channels in 4 groups, multiplier 2
    kept = c.size - len(removed[c.id])
    assert len(small.get_layer("rs").get_config()["scale"]) == kept
    assert len(small.get_layer("norm").get_config()["mean"]) == kept
    assert small.get_layer("prelu").alpha.shape == (1, 1, kept)
    assert small.get_layer("gn").groups == kept * 2 // 4
    assert small.get_layer("sep").filters == 6 - len(removed[group_with_producer(model, "sep").id])
    r = group_with_producer(model, "d")
    assert small.get_layer("r").get_config()["target_shape"][-1] == 3 - len(removed[r.id])
    assert small.get_layer("d").units == 4 * (3 - len(removed[r.id]))
    assert small.count_params() < model.count_params()


def test_sequential_and_nested_models_keep_their_structure():
    inner = keras.Sequential([keras.Input((8, 8, 6)), layers.Conv2D(6, 3, padding="same", name="ic"),
                              layers.BatchNormalization(name="ibn")], name="inner")
    block_in = keras.Input((8, 8, 6))
    block = keras.Model(block_in, layers.Add(name="add")([block_in, inner(block_in)]),
                        name="block")
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(6, 1, name="stem"), block,
                              layers.GlobalAveragePooling2D(name="gap"),
                              layers.Dense(4, name="head")], name="net")
    randomize_statistics(model)
    model.compile(optimizer="adam", loss="mse")
    small, *_ = check_equivalence(model, fraction=0.5)
    assert isinstance(small, keras.Sequential) and small.name == "net"
    assert [l.name for l in small.layers] == [l.name for l in model.layers]
    nested = small.get_layer("block")
    assert isinstance(nested, keras.Model) and not isinstance(nested, keras.Sequential)
    assert isinstance(nested.get_layer("inner"), keras.Sequential)
    assert find_layer(small, "block/inner/ic").filters < 6
    assert not small.compiled          # a new optimizer is needed for the new shapes


def test_shared_layers_and_keras_ops():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 1, name="a")(inputs)
    b = layers.Conv2D(6, 3, padding="same", name="b")(inputs)
    shared = layers.Conv2D(5, 1, name="shared")
    x = layers.Concatenate()([shared(a), shared(ops.relu(b) * 2.0)])
    x = ops.add(x, 1.0)
    x = layers.GlobalMaxPooling2D()(x)
    model = keras.Model(inputs, layers.Dense(3)(x))
    randomize_statistics(model)
    small, _, removed, _ = check_equivalence(model, fraction=0.5)
    assert small.get_layer("shared").filters == 5 - len(removed[group_with_producer(model, "shared").id])


def test_several_inputs_and_outputs():
    image, vector = keras.Input((8, 8, 3), name="image"), keras.Input((5,), name="vector")
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(6, 3, name="c")(image))
    y = layers.Dense(6, name="dv")(vector)
    z = layers.Dense(8, activation="relu", name="joint")(layers.Concatenate()([x, y]))
    model = keras.Model([image, vector], [layers.Dense(2, name="o1")(z),
                                          layers.Dense(3, name="o2")(z)])
    randomize_statistics(model)
    small, *_ = check_equivalence(model, fraction=0.5)
    assert small.get_layer("joint").units == 4


def test_saves_loads_and_converts(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from ai_edge_litert.interpreter import Interpreter

    model = rich_model()
    small, *_ = check_equivalence(model, fraction=0.3)
    x = random_inputs(model, batch=1)[0]
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.saving.load_model(path)     # no custom objects needed
    np.testing.assert_allclose(loaded(x), small(x), rtol=1e-6, atol=1e-6)

    flat = tf.lite.TFLiteConverter.from_keras_model(small).convert()
    interpreter = Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert relative_error(out, small(x)) < 1e-4


def test_zeroed_channels_finds_unread_channels():
    model = small_convnet()
    g = group_with_producer(model, "c1")
    assert tfprune.shrink.zeroed_channels(model) == {}
    kernel = model.get_layer("c2").kernel
    kernel.assign(kernel.numpy() * np.array([1, 0, 1, 0, 1, 1], "float32")[:, None])
    found = tfprune.shrink.zeroed_channels(model)
    assert list(found) == [g.id] and found[g.id].tolist() == [1, 3]
    # Removing them changes nothing, compared with the model itself.
    small = tfprune.shrink(model, found)
    x = random_inputs(model)[0]
    assert small.get_layer("c1").filters == 4
    assert relative_error(small(x), model(x)) < 1e-5
    # The producer's weights do not matter: only the consumers' inputs do.
    model.get_layer("c1").kernel.assign(np.zeros((3, 3, 3, 6), "float32"))
    assert tfprune.shrink.zeroed_channels(model)[g.id].tolist() == [1, 3]


def test_zeroed_channels_keeps_one_block_and_respects_granules():
    from tfprune.shrink import zeroed_channels

    inputs = keras.Input((4, 4, 3))
    x = layers.Conv2D(8, 1, name="c")(inputs)
    x = layers.GroupNormalization(groups=4, name="gn")(x)
    model = keras.Model(inputs, layers.Conv2D(2, 1, name="head")(x))
    groups = tfprune.channel_groups(model)
    g = next(g for g in groups if g.granule == 2)
    kernel = model.get_layer("head").kernel
    kernel.assign(kernel.numpy() * np.array([1, 1, 0, 0, 0, 1, 1, 1], "float32")[:, None])
    assert zeroed_channels(model, groups)[g.id].tolist() == [2, 3]     # 4 is half a block
    kernel.assign(np.zeros_like(kernel.numpy()))
    assert zeroed_channels(model, groups)[g.id].tolist() == [2, 3, 4, 5, 6, 7]
    tfprune.shrink(model, zeroed_channels(model, groups))               # a valid removal


def test_the_input_model_is_not_modified_by_any_function():
    model = small_convnet()
    model.compile(optimizer="sgd", loss="mse")
    before = [w.copy() for w in model.get_weights()], model.get_config()
    g = group_with_producer(model, "c1")
    tfprune.channel_groups(model)
    tfprune.shrink(model, {g.id: [0]})
    tfprune.mask_channels(model, {g.id: [0]})
    tfprune.shrink.zeroed_channels(model)
    assert model.get_config() == before[1] and model.compiled
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before[0]))
    assert model.get_layer("c1").filters == 6


@pytest.mark.parametrize("build", [rich_model, lambda: tfprune.zoo.ds_cnn()],
                         ids=["rich_model", "ds_cnn"])
def test_zeroing_the_param_slices_is_removal(build):
    """The contract downstream code relies on: zeroing `p.indices(channels)` along `p.axis`
    of every `ParamSlice` of the groups gives the outputs of the shrunk model."""
    from equivalence import random_removal

    model = build()
    randomize_statistics(model)
    groups = tfprune.channel_groups(model)
    removed = random_removal(groups, 0.5, seed=3)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for gid, channels in removed.items():
        for p in groups[gid].params:
            variable = tfprune.graph.find_variable(copy, p.layer, p.weight)
            value = variable.numpy()
            index = [slice(None)] * value.ndim
            index[p.axis] = p.indices(channels)
            value[tuple(index)] = 0
            variable.assign(value)
    x = random_inputs(model)[0]
    masked = tfprune.mask_channels(model, removed)
    np.testing.assert_array_equal(np.asarray(copy(x)), np.asarray(masked(x)))
    assert relative_error(tfprune.shrink(model, removed)(x), copy(x)) < 1e-5
