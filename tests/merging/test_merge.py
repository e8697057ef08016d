"""Folding removed channels / weights never reconstructs a consumer worse than plain removal."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune.errors import InvalidPruningArgumentError
from tfprune.merging import (consumers_to_fold, cyclic_partners, merge_channels,
                             merge_weights, unsupported_reason)

L = keras.layers


def _consumer_model(kind, bias, seed):
    """A producer whose channels reach a consumer named "cons" through BN and ReLU."""
    keras.utils.set_random_seed(seed)
    if kind == "conv1d":
        inputs = keras.Input((12, 3))
        x = L.Conv1D(6, 3, padding="same", name="prod")(inputs)
    else:
        inputs = keras.Input((8, 8, 3))
        x = L.Conv2D(6, 3, padding="same", name="prod")(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    consumer = {
        "conv3x3_strided": lambda t: L.Conv2D(5, 3, strides=2, padding="same", use_bias=bias,
                                              name="cons")(t),
        "conv1x1": lambda t: L.Conv2D(5, 1, use_bias=bias, name="cons")(t),
        "conv_dilated": lambda t: L.Conv2D(5, 3, dilation_rate=2, padding="valid",
                                           use_bias=bias, name="cons")(t),
        "conv1d": lambda t: L.Conv1D(5, 3, strides=2, use_bias=bias, name="cons")(t),
        "dense_flatten": lambda t: L.Dense(5, use_bias=bias, name="cons")(L.Flatten()(t)),
        "dense_pool": lambda t: L.Dense(5, use_bias=bias, name="cons")(
            L.GlobalAveragePooling2D()(t)),
    }[kind](x)
    model = keras.Model(inputs, consumer)
    rng = np.random.default_rng(seed)
    bn = model.layers[2]
    bn.moving_mean.assign(rng.normal(size=6) * 0.3)
    bn.beta.assign(rng.normal(size=6) * 0.3)
    if bias:
        model.get_layer("cons").bias.assign(rng.normal(size=5))
    x = rng.normal(size=(48,) + tuple(model.input_shape[1:])).astype("float32")
    return model, x


def _producer_group(model):
    return next(g for g in tfprune.channel_groups(model)
                if g.prunable and any(m.layer == "prod" for m in g.producers))


def _inputs(model, path, x):
    return np.asarray(keras.Model(model.input, model.get_layer(path).input)(x))


def _zero_rows(kernel, param_slice, channels):
    out = kernel.copy()
    index = [slice(None)] * out.ndim
    index[param_slice.axis] = param_slice.indices(channels)
    out[tuple(index)] = 0.0
    return out


def _errors(model, group, removed, partners, x, rule="least_squares"):
    """Squared output error of the consumer vs its original output: removal, then folding."""
    cons = model.get_layer("cons")
    a = _inputs(model, "cons", x)
    reference = np.asarray(cons(a))
    kernel_slice = next(p for p in group.params if p.layer == "cons" and p.weight == "kernel")
    kernel = cons.kernel.numpy()
    gone = np.flatnonzero(removed)
    cons.kernel.assign(_zero_rows(kernel, kernel_slice, gone))
    removal = float(np.sum((np.asarray(cons(a)) - reference) ** 2))
    cons.kernel.assign(kernel)
    report = merge_channels(model, [group], {group.id: partners}, {"cons": a}, rule)
    cons.kernel.assign(_zero_rows(cons.kernel.numpy(), kernel_slice, gone))
    merged = float(np.sum((np.asarray(cons(a)) - reference) ** 2))
    return removal, merged, report


KINDS = ["conv3x3_strided", "conv1x1", "conv_dilated", "conv1d", "dense_flatten", "dense_pool"]


def _check_never_worse(kind, bias, seeds, rule="least_squares"):
    for seed in seeds:
        model, x = _consumer_model(kind, bias, seed)
        group = _producer_group(model)
        rng = np.random.default_rng(seed)
        scores = rng.random(group.size)
        removed = scores < np.sort(scores)[int(rng.integers(1, group.size))]
        partners = cyclic_partners(scores, removed, ~removed)
        removal, merged, report = _errors(model, group, removed, partners, x, rule)
        assert merged <= removal * (1 + 1e-5) + 1e-9, (kind, bias, seed, merged, removal)
        fold = report.folds[0]
        assert fold.channels == removed.sum()
        # The report's errors are the ones measured through the layer itself.
        np.testing.assert_allclose([fold.error_removal, fold.error_merged], [removal, merged],
                                   rtol=1e-3, atol=1e-4 * removal)


@pytest.mark.parametrize("rule", ["least_squares", "regression"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_channel_fold_never_worse_than_removal(kind, bias, rule):
    _check_never_worse(kind, bias, seeds=range(3), rule=rule)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["least_squares", "regression"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_channel_fold_never_worse_than_removal_many_seeds(kind, bias, rule):
    _check_never_worse(kind, bias, seeds=range(3, 53), rule=rule)


@pytest.mark.parametrize("kind", ["conv1x1", "dense_pool", "dense_flatten"])
def test_regression_is_the_least_squares_reconstruction_from_the_kept_channels(kind):
    """On a pointwise consumer the fold equals the output's regression on the kept inputs."""
    model, x = _consumer_model(kind, True, 7)
    group = _producer_group(model)
    cons = model.get_layer("cons")
    a = _inputs(model, "cons", x)
    reference = np.asarray(cons(a), dtype=np.float64).reshape(-1, 5)
    removed = np.isin(np.arange(group.size), [0, 3, 4])
    partners = cyclic_partners(np.arange(group.size, dtype=float), removed, ~removed)
    kernel_slice = next(p for p in group.params if p.layer == "cons" and p.weight == "kernel")
    # The best any kernel on the kept inputs (and a bias) can do, by brute-force least squares.
    kept_rows = np.setdiff1d(np.arange(np.prod(cons.kernel.shape[:-1])),
                             kernel_slice.indices(np.flatnonzero(removed)))
    features = a.reshape(len(reference), -1)[:, kept_rows].astype(np.float64)
    features = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    fit = features @ np.linalg.lstsq(features, reference, rcond=None)[0]
    best = float(np.sum((fit - reference) ** 2))
    removal, merged, report = _errors(model, group, removed, partners, x, "regression")
    assert report.folds[0].channels == 3
    assert merged < removal
    if kind == "dense_flatten":  # one map shared by the positions: not the per-row optimum
        assert best <= merged * (1 + 1e-4)
    else:
        np.testing.assert_allclose(merged, best, rtol=2e-3, atol=1e-6 * removal)


def test_regression_recovers_a_linear_combination():
    """A removed channel that is a mix of two kept ones is recovered through both."""
    model, x = _consumer_model("conv1x1", False, 3)
    prod, bn = model.get_layer("prod"), model.layers[2]
    for v in (bn.moving_mean, bn.beta):
        v.assign(np.zeros(6))
    for v in (bn.gamma, bn.moving_variance):
        v.assign(np.ones(6))
    # Keep the producer linear-positive: ReLU of (0.5 c2 + 2 c5) equals 0.5 ReLU(c2) + 2
    # ReLU(c5) when both are non-negative.
    kernel, pbias = np.abs(prod.kernel.numpy()), np.abs(prod.bias.numpy())
    kernel[..., 0] = 0.5 * kernel[..., 2] + 2.0 * kernel[..., 5]
    pbias[0] = 0.5 * pbias[2] + 2.0 * pbias[5]
    prod.kernel.assign(kernel)
    prod.bias.assign(pbias)
    x = np.abs(x)
    group = _producer_group(model)
    removed = np.arange(group.size) == 0
    scores = np.arange(group.size, dtype=float)
    partners = cyclic_partners(scores, removed, ~removed)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    removal, merged, _ = _errors(model, group, removed, partners, x, "regression")
    _, paired, _ = _errors(twin, group, removed, partners, x)
    assert merged < 1e-4 * removal
    assert paired > 100 * merged      # one partner cannot carry a mix of two channels


def test_regression_is_refused_for_single_weights():
    dense = keras.layers.Dense(3)
    x = np.random.rand(16, 5).astype("float32")
    dense(x)
    w = np.abs(dense.kernel.numpy())
    with pytest.raises(InvalidPruningArgumentError, match="regression"):
        merge_weights(dense, w < np.median(w), w >= np.median(w), w, x, rule="regression")
    with pytest.raises(InvalidPruningArgumentError, match="granularity"):
        tfprune.CampHiVe(tfprune.Target(sparsity=0.5), granularity="weight",
                         calibration_data=(x, np.zeros(16)), merge_rule="regression")


def test_fold_improves_on_correlated_channels():
    """A removed channel that is (nearly) a copy of its partner is almost fully recovered."""
    model, x = _consumer_model("conv1x1", True, 0)
    prod, bn = model.get_layer("prod"), model.layers[2]
    for v in (prod.kernel, prod.bias, bn.moving_mean):   # channel 1 = 0.7 x channel 4 ...
        value = v.numpy()
        value[..., 1] = 0.7 * value[..., 4]
        v.assign(value)
    for v in (bn.gamma, bn.beta):                         # ... normalised to the same values
        value = v.numpy()
        value[1] = value[4]
        v.assign(value)
    variance = bn.moving_variance.numpy()
    variance[1] = 0.49 * variance[4]
    bn.moving_variance.assign(variance)
    group = _producer_group(model)
    scores = np.arange(group.size, dtype=float) + 1.0
    scores[1], scores[4] = 0.0, 100.0
    removed = np.arange(group.size) == 1
    removal, merged, _ = _errors(model, group, removed, cyclic_partners(scores, removed, ~removed),
                                 x)
    assert merged < 1e-3 * removal


def test_single_pair_matches_the_closed_form():
    """One channel, a 1x1 consumer with bias: alpha = cov(a_p, a_q) / var(a_q), bias absorbs."""
    model, x = _consumer_model("conv1x1", True, 5)
    group = _producer_group(model)
    cons = model.get_layer("cons")
    a = _inputs(model, "cons", x).reshape(-1, group.size).astype(np.float64)
    p, q = 2, 3
    alpha = np.cov(a[:, p], a[:, q], bias=True)[0, 1] / np.var(a[:, q])
    kernel, bias = cons.kernel.numpy().astype(np.float64), cons.bias.numpy().astype(np.float64)
    partners = np.full(group.size, -1)
    partners[p] = q
    merge_channels(model, [group], {group.id: partners}, {"cons": _inputs(model, "cons", x)})
    np.testing.assert_allclose(cons.kernel.numpy()[0, 0, q], kernel[0, 0, q] + alpha
                               * kernel[0, 0, p], rtol=1e-4, atol=1e-6)
    shift = kernel[0, 0, p] * np.mean(a[:, p] - alpha * a[:, q])
    np.testing.assert_allclose(cons.bias.numpy(), bias + shift, rtol=1e-4, atol=1e-6)


def test_half_rule_adds_half_of_the_removed_input_weights():
    model, x = _consumer_model("conv3x3_strided", True, 1)
    group = _producer_group(model)
    cons = model.get_layer("cons")
    kernel, bias = cons.kernel.numpy(), cons.bias.numpy()
    scores = np.arange(group.size, dtype=float)
    removed = scores < 2
    partners = cyclic_partners(scores, removed, ~removed, rule="half")   # 0 -> 2, 1 -> 3
    merge_channels(model, [group], {group.id: partners}, {"cons": _inputs(model, "cons", x)},
                   rule="half")
    expected = kernel.copy()
    expected[:, :, 2] += 0.5 * kernel[:, :, 0]
    expected[:, :, 3] += 0.5 * kernel[:, :, 1]
    np.testing.assert_allclose(cons.kernel.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(cons.bias.numpy(), bias)


def test_two_groups_into_one_consumer_are_fitted_together():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((6, 6, 3))
    a = L.ReLU()(L.Conv2D(4, 3, padding="same", name="a")(inputs))
    b = L.ReLU()(L.Conv2D(3, 3, padding="same", name="b")(inputs))
    out = L.Conv2D(5, 3, padding="same", name="cons")(L.Concatenate()([a, b]))
    model = keras.Model(inputs, out)
    x = np.random.default_rng(2).normal(size=(32, 6, 6, 3)).astype("float32")
    groups = [g for g in tfprune.channel_groups(model) if g.prunable
              and any(m.layer in ("a", "b") for m in g.producers)]
    assert len(groups) == 2
    cons = model.get_layer("cons")
    inputs_cons = _inputs(model, "cons", x)
    reference = np.asarray(cons(inputs_cons))
    kernel = cons.kernel.numpy()
    partners, removal_kernel = {}, kernel.copy()
    for g in groups:
        removed = np.arange(g.size) < 2
        partners[g.id] = cyclic_partners(np.arange(g.size, dtype=float), removed, ~removed)
        s = next(p for p in g.params if p.layer == "cons")
        removal_kernel = _zero_rows(removal_kernel, s, np.flatnonzero(removed))
    cons.kernel.assign(removal_kernel)
    removal = float(np.sum((np.asarray(cons(inputs_cons)) - reference) ** 2))
    cons.kernel.assign(kernel)
    report = merge_channels(model, groups, partners, {"cons": inputs_cons})
    assert [f.channels for f in report.folds] == [4]          # one joint fit of 4 channels
    cons.kernel.assign(np.where(removal_kernel == 0, 0.0, cons.kernel.numpy()))
    merged = float(np.sum((np.asarray(cons(inputs_cons)) - reference) ** 2))
    assert merged <= removal * (1 + 1e-5)


def test_depthwise_consumer_is_skipped_with_the_reason():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = L.ReLU()(L.Conv2D(4, 3, padding="same", name="prod")(inputs))
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(5, 1, name="pw")(x)
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    group = _producer_group(model)
    removed = np.arange(group.size) < 1
    paths, skipped = consumers_to_fold(
        model, [group], {group.id: cyclic_partners(np.arange(4.0), removed, ~removed)})
    # The depthwise layer passes the channels through; the pointwise conv reads them.
    assert paths == ["pw"] and skipped == {}
    assert "depthwise" in unsupported_reason(model.get_layer("dw"))
    assert unsupported_reason(model.get_layer("pw")) is None


def test_unknown_rule_is_refused():
    model, x = _consumer_model("conv1x1", True, 0)
    group = _producer_group(model)
    with pytest.raises(InvalidPruningArgumentError, match="merge_rule"):
        merge_channels(model, [group], {group.id: np.full(group.size, -1)}, {}, rule="mean")


def _weight_errors(kind, bias, seed, fraction):
    model, x = _consumer_model(kind, bias, seed)
    cons = model.get_layer("cons")
    a = _inputs(model, "cons", x)
    reference = np.asarray(cons(a))
    kernel = cons.kernel.numpy()
    scores = np.abs(kernel)
    pruned = scores < np.quantile(scores, fraction)

    def per_unit(values):
        return np.sum((values - reference) ** 2, axis=tuple(range(values.ndim - 1)))

    cons.kernel.assign(np.where(pruned, 0.0, kernel))
    removal = per_unit(np.asarray(cons(a)))
    cons.kernel.assign(kernel)
    fold = merge_weights(cons, pruned, ~pruned, scores, a)
    assert np.all(cons.kernel.numpy()[pruned] == 0)
    return removal, per_unit(np.asarray(cons(a))), fold


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["conv3x3_strided", "conv1d", "dense_flatten"])
def test_weight_fold_never_worse_per_output_unit(kind, bias):
    for seed in range(3):
        removal, merged, fold = _weight_errors(kind, bias, seed, fraction=0.6)
        assert np.all(merged <= removal * (1 + 1e-5) + 1e-9), (kind, bias, seed)
        assert fold.weights > 0
        np.testing.assert_allclose(fold.error_merged, merged.sum(), rtol=1e-3)
