"""`tfprune.curvature.gates`: gate derivatives against brute-force differentiation of tiny models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import curvature_reference as ref
import tfprune
from tfprune.curvature.gates import gate_curvature
from tfprune.errors import CurvatureError

LOGITS_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def group_gates(model):
    """One gate per channel of every prunable group, naming it at each consumer."""
    groups = [g for g in tfprune.channel_groups(model) if g.prunable and g.consumers]
    gates = [[(m.layer, m.axis, m.index_map[c]) for m in g.consumers]
             for g in groups for c in range(g.size)]
    slices = [[p for m in g.consumers for p in m.params] for g in groups
              for c in range(g.size)]
    channels = [c for g in groups for c in range(g.size)]
    return gates, slices, channels


def brute_force(model, x, y, params, channel, output):
    """`(dL/ds, Gauss-Newton d2L/ds2)` with the consumers' input slices scaled by `1 + s`,
    by differentiating the weights (not the layers' inputs), with an explicit `Lambda`."""
    s = tf.Variable(0.0)
    scaled = {id(tfprune.graph.find_variable(model, p.layer, p.weight)): p for p in params}
    with tf.GradientTape(persistent=True) as tape:
        values = []
        for v in model.trainable_variables:
            value = tf.convert_to_tensor(v)
            p = scaled.get(id(v))
            if p is not None:
                mask = np.zeros(v.shape, "float32")
                index = [slice(None)] * len(v.shape)
                index[p.axis] = p.indices([channel])
                mask[tuple(index)] = 1.0
                value = value * (1.0 + s * mask)
            values.append(value)
        out, _ = model.stateless_call(values, [tf.convert_to_tensor(v) for v in
                                               model.non_trainable_variables], x, training=False)
        if output == "probs":
            per_sample = -tf.math.log(tf.gather(out, y, batch_dims=1))
        elif output == "logits":
            per_sample = keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)
        else:
            per_sample = tf.reduce_mean((out - y) ** 2, axis=-1)
        loss = tf.reduce_mean(per_sample)
    jac = tape.jacobian(out, s).numpy().astype(np.float64)      # (samples, outputs)
    grad = float(tape.gradient(loss, s))
    out = out.numpy().astype(np.float64)
    if output == "logits":
        p = np.exp(out - out.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        gn = np.mean([j @ (np.diag(q) - np.outer(q, q)) @ j for j, q in zip(jac, p)])
    elif output == "probs":   # J_z^T Lambda J_z = sum_k (dp_k/ds)^2 / p_k for softmax outputs
        gn = np.mean(np.sum(jac ** 2 / out, axis=1))
    else:
        gn = np.mean(np.sum(jac ** 2, axis=1) * 2.0 / out.shape[1])
    return grad, gn


@pytest.mark.parametrize("name,loss,output", [
    ("cnn_bn", LOGITS_CE, "logits"),                            # Flatten -> Dense consumer
    ("residual", "sparse_categorical_crossentropy", "probs"),  # ends in a softmax
])
def test_gate_derivatives_equal_brute_force(name, loss, output):
    model, (x, y), _, _ = ref.case(name)
    gates, slices, channels = group_gates(model)
    assert len(gates) >= 3
    result = gate_curvature(model, loss, (x, y), gates, batch_size=10)
    assert result.samples == len(x) and result.passes == ref.CLASSES[name]
    for g, (params, c) in enumerate(zip(slices, channels)):
        grad, gn = brute_force(model, x, y, params, c, output)
        assert result.gradient[g] == pytest.approx(grad, rel=1e-4, abs=1e-7)
        assert result.gauss_newton[g] == pytest.approx(gn, rel=1e-4, abs=1e-9)
    assert np.all(result.gauss_newton >= 0)
    # a gate is not its channel's first-order term alone: the curvature is not zero
    assert np.max(result.gauss_newton) > 1e-4


def test_mean_squared_error_and_a_gate_over_several_channels():
    model = ref.mlp(outputs=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    result = gate_curvature(model, "mse", (x, y), [[("dense_1", 1, [0, 2])], [("dense_1", 1, [1])]])
    kernel = model.get_layer("dense_1").kernel
    param = tfprune.graph.ParamSlice("dense_1", kernel.name, 0, np.array([[0, 2]]), "consumer")
    grad, gn = brute_force(model, x, y, [param], 0, "mse")
    assert result.gradient[0] == pytest.approx(grad, rel=1e-4)
    assert result.gauss_newton[0] == pytest.approx(gn, rel=1e-4)
    assert result.removal_estimate()[0] == pytest.approx(-grad + gn / 2, rel=1e-4)


def test_dataset_equals_arrays_and_model_unchanged():
    model, (x, y), _, _ = ref.case("cnn_bn")
    before = [w.copy() for w in model.get_weights()]
    gates, _, _ = group_gates(model)
    a = gate_curvature(model, LOGITS_CE, (x, y), gates, batch_size=8)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    b = gate_curvature(model, LOGITS_CE, ds, gates)
    np.testing.assert_allclose(a.gradient, b.gradient, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(a.gauss_newton, b.gauss_newton, rtol=1e-5, atol=1e-9)
    assert all(np.array_equal(u, v) for u, v in zip(before, model.get_weights()))


def test_softmax_layer_models_get_logits():
    """A model ending in a separate `Softmax` layer (called with a mask argument) is handled
    like one whose last Dense has a softmax activation, here and in the HVP products."""
    model, (x, y), _, _ = ref.case("cnn_bn")
    with_layer = keras.Model(model.inputs, keras.layers.Softmax()(model.outputs[0]))
    gates, _, _ = group_gates(model)
    a = gate_curvature(model, LOGITS_CE, (x, y), gates)
    b = gate_curvature(with_layer, "sparse_categorical_crossentropy", (x, y), gates)
    np.testing.assert_allclose(a.gauss_newton, b.gauss_newton, rtol=1e-4, atol=1e-9)
    v = [np.ones(w.shape, "float32") for w in model.trainable_weights]
    ha = tfprune.curvature.hessian_vector_product(model, LOGITS_CE, (x, y), v)
    hb = tfprune.curvature.hessian_vector_product(with_layer, "sparse_categorical_crossentropy",
                                                  (x, y), v)
    for s, t in zip(ha, hb):
        np.testing.assert_allclose(s.numpy(), t.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gates,match", [
    ([], "non-empty list of gates"),
    ([[]], "gate 0 must be a non-empty list"),
    ([[("nope", 3, [0])]], "no layer 'nope'"),
    ([[("conv2d_1", 5, [0])]], "axis 5 is not a channel axis"),
    ([[("conv2d_1", 3, [7])]], r"outside 0\.\.2"),
    ([[("conv2d_1", 3)]], r"each entry is \(layer_path, axis, channels\)"),
])
def test_bad_gates_are_refused(gates, match):
    model, (x, y), _, _ = ref.case("cnn_bn")
    with pytest.raises(CurvatureError, match=match):
        gate_curvature(model, LOGITS_CE, (x, y), gates)


def test_losses_without_a_gauss_newton_form_are_refused():
    model, (x, y), _, _ = ref.case("cnn_bn")
    with pytest.raises(CurvatureError, match="Gauss-Newton curvature"):
        gate_curvature(model, lambda t, p: tf.reduce_mean(tf.abs(p)), (x, y),
                       [[("conv2d_1", 3, [0])]])


def test_blocks_are_the_gauss_newton_matrix_between_gates():
    """The off-diagonal entries: a gate over channels a and b at once has the curvature
    `G_aa + G_bb + 2 G_ab` (its own diagonal entry, checked against brute force above)."""
    model, (x, y), _, _ = ref.case("cnn_bn")
    gates, _, _ = group_gates(model)
    pairs = [(0, 1), (1, 2), (0, len(gates) - 1)]
    combined = [list(gates[a]) + list(gates[b]) for a, b in pairs]
    result = gate_curvature(model, LOGITS_CE, (x, y), gates + combined, batch_size=10,
                            blocks=[range(len(gates)), [2, 0]])
    full, swapped = result.blocks
    assert full.shape == (len(gates), len(gates)) and swapped.shape == (2, 2)
    np.testing.assert_allclose(np.diag(full), result.gauss_newton[:len(gates)], rtol=1e-5,
                               atol=1e-10)
    np.testing.assert_array_equal(full, full.T)
    np.testing.assert_allclose(swapped, full[np.ix_([2, 0], [2, 0])], rtol=1e-5, atol=1e-10)
    for k, (a, b) in enumerate(pairs):
        expected = full[a, a] + full[b, b] + 2 * full[a, b]
        assert result.gauss_newton[len(gates) + k] == pytest.approx(expected, rel=1e-4,
                                                                    abs=1e-9)
    assert abs(full[0, 1]) > 1e-6            # channels of one layer do interact
    assert np.linalg.eigvalsh(full).min() > -1e-6 * np.abs(full).max()   # PSD
    assert gate_curvature(model, LOGITS_CE, (x, y), gates).blocks == ()


@pytest.mark.parametrize("blocks,match", [
    ("ab", "list of lists of gate indices"),
    ([[0, 9]], r"within 0\.\.2"),
    ([[0, 0]], "distinct"),
    ([[]], "distinct"),
    ([[0, "x"]], r"blocks\[0\] must be a list of gate indices"),
])
def test_bad_blocks_are_refused(blocks, match):
    model, (x, y), _, _ = ref.case("cnn_bn")
    gates = [[("conv2d_1", 3, [c])] for c in range(3)]
    with pytest.raises(CurvatureError, match=match):
        gate_curvature(model, LOGITS_CE, (x, y), gates, blocks=blocks)


def fold_brute_force(model, x, y, channel, output):
    """`(dL/ds, Gauss-Newton d2L/ds2)` of the MLP's last layer reading `h_c + s r_c` in input
    slot `channel`, `r_c` the residual of a least-squares fit of `h_c` on the other hidden
    units and a constant (the regression fold), by differentiating `s` itself."""
    hidden = model.get_layer("dense")(x).numpy().astype(np.float64)
    others = np.delete(hidden, channel, axis=1)
    design = np.concatenate([others, np.ones((len(x), 1))], axis=1)
    coef = np.linalg.lstsq(design, hidden[:, channel], rcond=None)[0]
    residual = np.zeros_like(hidden)
    residual[:, channel] = hidden[:, channel] - design @ coef
    s = tf.Variable(0.0, dtype=tf.float64)
    last = model.get_layer("dense_1")
    kernel, bias = (np.asarray(v, np.float64) for v in (last.kernel, last.bias))
    with tf.GradientTape(persistent=True) as tape:
        out = (tf.constant(hidden) + s * tf.constant(residual)) @ kernel + bias
        if output == "logits":
            per_sample = keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)
        else:
            per_sample = tf.reduce_mean((out - y) ** 2, axis=-1)
        loss = tf.reduce_mean(per_sample)
    jac = tape.jacobian(out, s).numpy()
    grad = float(tape.gradient(loss, s))
    out = out.numpy()
    if output == "logits":
        p = np.exp(out - out.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        gn = np.mean([j @ (np.diag(q) - np.outer(q, q)) @ j for j, q in zip(jac, p)])
    else:
        gn = np.mean(np.sum(jac ** 2, axis=1) * 2.0 / out.shape[1])
    return grad, gn


@pytest.mark.parametrize("loss,output", [(LOGITS_CE, "logits"), ("mse", "mse")])
def test_residual_gates_equal_brute_force_fold(loss, output):
    """With `residuals`, a gate's derivatives are those of removing its channel with the
    regression fold (the consumer reads the kept units' least-squares prediction of it)."""
    model = ref.mlp(outputs=3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5)).astype("float32")
    y = (rng.integers(0, 3, 40) if output == "logits"
         else rng.normal(size=(40, 3)).astype("float32"))
    gates = [[("dense_1", 1, [c])] for c in range(6)]
    plain = gate_curvature(model, loss, (x, y), gates, batch_size=16)
    folded = gate_curvature(model, loss, (x, y), gates, batch_size=16,
                            residuals=[range(6)])
    for c in range(6):
        grad, gn = fold_brute_force(model, x, y, c, output)
        assert folded.gradient[c] == pytest.approx(grad, rel=1e-3, abs=1e-6)
        assert folded.gauss_newton[c] == pytest.approx(gn, rel=1e-3, abs=1e-8)
    # what the fold recovers is not counted: every channel's curvature is lower
    assert np.all(folded.gauss_newton < plain.gauss_newton)
    # a gate in no list is a plain gate
    half = gate_curvature(model, loss, (x, y), gates, batch_size=16, residuals=[[0, 1, 2]])
    np.testing.assert_allclose(half.gauss_newton[3:], plain.gauss_newton[3:], rtol=1e-5)


def test_residual_gate_of_a_duplicated_channel_is_zero():
    """A channel that another one copies costs nothing to remove with the fold."""
    model = ref.cnn_bn()           # its own model: `ref.case`'s is shared and left unchanged
    x, y = ref.classification_data(model, 24, ref.CLASSES["cnn_bn"])
    conv = model.get_layer("conv2d")
    kernel, bias = conv.kernel.numpy(), conv.bias.numpy()
    kernel[..., 1], bias[1] = kernel[..., 0], bias[0]
    conv.kernel.assign(kernel)
    conv.bias.assign(bias)
    bn = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    for v in bn.weights:
        value = v.numpy()
        value[1] = value[0]
        v.assign(value)
    gates, _, _ = group_gates(model)
    first = [g for g, gate in enumerate(gates) if gate[0][0] == "conv2d_1"]
    assert len(first) == 3
    plain = gate_curvature(model, LOGITS_CE, (x, y), gates)
    folded = gate_curvature(model, LOGITS_CE, (x, y), gates, residuals=[first])
    assert plain.gauss_newton[first[0]] > 1e-4 and plain.gauss_newton[first[1]] > 1e-4
    for g in first[:2]:
        assert abs(folded.gradient[g]) < 1e-3 * abs(plain.gradient[g]) + 1e-9
        assert folded.gauss_newton[g] < 1e-3 * plain.gauss_newton[g]
    assert folded.gauss_newton[first[2]] > 1e-6


@pytest.mark.parametrize("residuals,match", [
    ([[0, 1], [1, 2]], "in several lists"),
    ([[0, 7]], r"residuals\[0\].*within 0\.\.2"),
])
def test_bad_residuals_are_refused(residuals, match):
    model, (x, y), _, _ = ref.case("cnn_bn")
    gates = [[("conv2d_1", 3, [c])] for c in range(3)]
    with pytest.raises(CurvatureError, match=match):
        gate_curvature(model, LOGITS_CE, (x, y), gates, residuals=residuals)
