"""CAMP-HiVe: saliency against the exact Hessian, the diagonal estimators, adaptive thresholds
meeting targets exactly, the callback inside fit, resume, config, bad input."""

import contextlib
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tfprune.allocation import GlobalRanking
from tfprune.allocation.adaptive import AdaptiveThresholds
from tfprune.allocation.ranking import normalized
from tfprune.criteria import ScoringContext
from tfprune.criteria.camp_hive import (CACHE_KEY, CampHiVeSaliency, CurvatureEstimate,
                                        joint_order, joint_scores)
from tfprune.errors import (InvalidCriterionError, InvalidPruningArgumentError,
                            InvalidTargetError, MissingCalibrationDataError, MissingLossError)
from tfprune.keras.camp_hive import CampHiVe

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
L = keras.layers


# --- saliency against the exact Hessian -----------------------------------------------------


def _mlp():
    """3 -> Dense(4, tanh) -> Dense(3, tanh) -> Dense(2) logits, float64."""
    inputs = keras.Input((3,), dtype="float64")
    h = L.Dense(4, activation="tanh", name="d1", dtype="float64")(inputs)
    h = L.Dense(3, activation="tanh", name="d2", dtype="float64")(h)
    return keras.Model(inputs, L.Dense(2, name="d3", dtype="float64")(h))


def _residual():
    """Conv-BN-tanh, a conv that reads and writes the same residual group, GAP, Dense."""
    inputs = keras.Input((4, 4, 2), dtype="float64")
    x = L.Conv2D(3, 3, padding="same", name="c1", dtype="float64")(inputs)
    x = L.BatchNormalization(name="bn", dtype="float64")(x)
    x = L.Activation("tanh", dtype="float64")(x)
    y = L.Conv2D(3, 3, padding="same", name="c2", dtype="float64")(x)
    x = L.Add(dtype="float64")([x, y])
    x = L.GlobalAveragePooling2D(dtype="float64")(x)
    model = keras.Model(inputs, L.Dense(2, name="head", dtype="float64")(x))
    bn = model.get_layer("bn")
    rng = np.random.default_rng(1)
    bn.moving_mean.assign(rng.normal(size=3) * 0.1)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=3))
    return model


# Entries that carry channel c of each prunable group, written out by hand.
_STRUCTURES = {
    "mlp": {"d1": lambda c: [("d1", "kernel", np.s_[:, c]), ("d1", "bias", np.s_[c]),
                             ("d2", "kernel", np.s_[c, :])],
            "d2": lambda c: [("d2", "kernel", np.s_[:, c]), ("d2", "bias", np.s_[c]),
                             ("d3", "kernel", np.s_[c, :])]},
    "residual": {"c1": lambda c: [("c1", "kernel", np.s_[..., c]), ("c1", "bias", np.s_[c]),
                                  ("bn", "gamma", np.s_[c]), ("bn", "beta", np.s_[c]),
                                  ("c2", "kernel", np.s_[:, :, c, :]),
                                  ("c2", "kernel", np.s_[..., c]), ("c2", "bias", np.s_[c]),
                                  ("head", "kernel", np.s_[c, :])]},
}


def _exact(model, x, y):
    """Gradient and exact Hessian of the mean loss, per variable: `{(layer, name): ...}`."""
    weights = model.trainable_weights
    shapes = [tuple(w.shape) for w in weights]
    sizes = [int(np.prod(s)) for s in shapes]
    flat0 = tf.constant(np.concatenate([w.numpy().reshape(-1) for w in weights]))
    non_trainable = [v.value for v in model.non_trainable_variables]

    def mean_loss(flat):
        values = [tf.reshape(p, s) for p, s in zip(tf.split(flat, sizes), shapes)]
        out, _ = model.stateless_call(values, non_trainable, tf.constant(x), training=False)
        return tf.reduce_mean(LOSS.call(tf.constant(y), out))

    with tf.GradientTape() as outer:
        outer.watch(flat0)
        with tf.GradientTape() as inner:
            inner.watch(flat0)
            loss = mean_loss(flat0)
        g = inner.gradient(loss, flat0)
    h = outer.jacobian(g, flat0).numpy()
    return g.numpy(), h, weights, sizes


def _per_variable(flat, weights, sizes):
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return {id(w): p.reshape(w.shape) for w, p in zip(weights, parts)}


def _data(model, n=12, seed=2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + tuple(model.input_shape[1:])), rng.integers(0, 2, size=n)


@pytest.mark.parametrize("name, build", [("mlp", _mlp), ("residual", _residual)])
def test_saliency_is_the_formula_with_the_exact_diagonal(name, build):
    keras.utils.set_random_seed(0)
    model = build()
    model.compile("sgd", LOSS)
    x, y = _data(model)
    g, h, weights, sizes = _exact(model, x, y)
    diagonal = np.diag(h)
    assert np.any(diagonal < 0)          # summed before clipping: per-entry clipping differs
    grads = _per_variable(g, weights, sizes)
    diag = _per_variable(diagonal, weights, sizes)
    groups = [gr for gr in tfprune.channel_groups(model) if gr.prunable]
    context = ScoringContext(model, calibration_data=(x, y), groups=groups)
    context.cache[CACHE_KEY] = CurvatureEstimate(diag)
    criterion = CampHiVeSaliency()
    for group in groups:
        make = _STRUCTURES[name][group.producers[0].layer]
        expected = []
        for c in range(group.size):
            first = second = 0.0
            masks = {}
            for layer, weight, index in make(c):
                v = tfprune.graph.find_variable(model, layer, weight)
                masks.setdefault(id(v), (v, np.zeros(v.shape, bool)))[1][index] = True
            for v, mask in masks.values():      # an entry two slices share counts once
                w, gv, hv = v.numpy()[mask], grads[id(v)][mask], diag[id(v)][mask]
                first += np.sum(np.abs(gv * w))
                second += np.sum(0.5 * hv * w * w)
            expected.append(first + max(second, 0.0))
        np.testing.assert_allclose(criterion(group, context), expected, rtol=1e-6)
    kernel = model.trainable_weights[0]
    w = kernel.numpy()
    np.testing.assert_allclose(
        criterion.weight_scores(kernel, context),
        np.abs(grads[id(kernel)] * w) + np.maximum(0.5 * diag[id(kernel)] * w * w, 0),
        rtol=1e-6)


def _prepared(diagonal="hutchinson", samples=8, power_iters=3):
    keras.utils.set_random_seed(0)
    model = _mlp()
    model.compile("sgd", LOSS)
    x, y = _data(model)
    groups = [gr for gr in tfprune.channel_groups(model) if gr.prunable]
    context = ScoringContext(model, calibration_data=(x, y), groups=groups, step=7)
    CampHiVeSaliency(diagonal, hutchinson_samples=samples, power_iters=power_iters).prepare(
        context)
    return model, (x, y), groups, context


def test_prepare_measures_with_the_curvature_engine():
    model, data, groups, context = _prepared()
    estimate = context.cache[CACHE_KEY]
    seed = int(context.rng("camp_hive").integers(2**31 - 1))    # drawn from (seed, step)
    blocks = tfprune.curvature.block_power_iteration(model, LOSS, data, blocks=groups,
                                                     max_iter=3, tol=1e-3, seed=seed + 1)
    assert estimate.block_eigenvalues == pytest.approx(blocks.eigenvalues, rel=1e-6)
    hutchinson = tfprune.curvature.hutchinson(model, LOSS, data, samples=8, seed=seed + 2,
                                              vectors_per_pass=1)
    for w, d in zip(model.trainable_weights, hutchinson.diagonal):
        np.testing.assert_allclose(estimate.diagonal[id(w)], d, rtol=1e-5, atol=1e-9)
    assert estimate.trace == pytest.approx(hutchinson.trace, rel=1e-5)
    assert set(estimate.seconds) == {"blocks", "diagonal"}


@pytest.mark.slow
def test_hutchinson_diagonal_converges_to_the_exact_one():
    model, data, _, context = _prepared(samples=400)
    _, h, weights, _ = _exact(model, *data)
    estimate = context.cache[CACHE_KEY]
    got = np.concatenate([estimate.diagonal[id(w)].reshape(-1) for w in weights])
    assert np.corrcoef(got, np.diag(h))[0, 1] >= 0.9
    assert estimate.trace == pytest.approx(np.trace(h), rel=0.1)


def _linear():
    """y = w.x + b with mean squared error: the Hessian is 2/n X^T X, eigenvalues apart."""
    inputs = keras.Input((2,), dtype="float64")
    model = keras.Model(inputs, L.Dense(1, name="lin", dtype="float64")(inputs))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)) * np.array([10.0, 3.0])
    return model, x, rng.normal(size=(64, 1))


@pytest.mark.parametrize("diagonal", ["lowrank", "both"])
def test_low_rank_diagonal_with_every_eigenpair_is_exact(diagonal):
    model, x, y = _linear()
    features = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    exact = np.diag(2.0 / len(x) * features.T @ features)
    context = ScoringContext(model, calibration_data=(x, y), groups=())
    CampHiVeSaliency(diagonal, top_k=3, power_iters=300, hutchinson_samples=2,
                     block_curvature=False).prepare(context)
    estimate = context.cache[CACHE_KEY]
    kernel, bias = model.get_layer("lin").kernel, model.get_layer("lin").bias
    got = np.concatenate([estimate.diagonal[id(kernel)].reshape(-1),
                          estimate.diagonal[id(bias)]])
    # "both" adds Hutchinson's estimate of what the eigenpairs leave: nothing here.
    np.testing.assert_allclose(got, exact, rtol=1e-3)
    assert len(estimate.eigenvalues) == 3


def test_low_rank_diagonal_with_top_k_is_its_formula():
    keras.utils.set_random_seed(0)
    model = _mlp()
    model.compile("sgd", LOSS)
    x, y = _data(model)
    context = ScoringContext(model, calibration_data=(x, y), groups=())
    CampHiVeSaliency("lowrank", top_k=2, power_iters=50, block_curvature=False).prepare(context)
    estimate = context.cache[CACHE_KEY]
    top = tfprune.curvature.power_iteration(model, LOSS, (x, y), k=2, max_iter=50, tol=1e-3,
                                            seed=int(context.rng("camp_hive").integers(2**31 - 1)))
    np.testing.assert_allclose(estimate.eigenvalues, top.eigenvalues, rtol=1e-6)
    for i, w in enumerate(model.trainable_weights):
        expected = sum(lam * v[i] ** 2 for lam, v in zip(top.eigenvalues, top.eigenvectors))
        np.testing.assert_allclose(estimate.diagonal[id(w)], expected, rtol=1e-6, atol=1e-12)


# --- thresholds meet targets exactly -------------------------------------------------------


def _drive(callback, model, steps=1):
    """on_train_begin and one batch-begin hook (the event at the optimizer's step), no fit."""
    callback.set_model(model)
    callback.set_params({"epochs": 1, "steps": steps, "verbose": 0})
    callback.on_train_begin()
    callback.on_train_batch_begin(0)
    callback.on_train_end()
    return callback


@pytest.fixture(scope="module")
def resnet():
    """A ResNet-8 (quarter width) and a CAMP-HiVe callback set up on it, without curvature."""
    keras.utils.set_random_seed(0)
    model = tfprune.zoo.resnet8(widths=(8, 12, 16))
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    data = (rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32"), rng.integers(0, 10, 8))
    callback = CampHiVe(tfprune.Target(flops=0.5), calibration_data=data, verbose=0)
    callback.set_model(model)
    callback.set_params({"epochs": 1, "steps": 1})
    callback.on_train_begin()
    callback.on_train_end()
    return model, callback


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("keep", [{"flops": 0.5}, {"params": 0.35}, {"sparsity": 0.6},
                                  {"flops": 0.7, "params": 0.4}])
def test_thresholds_meet_the_target_exactly(resnet, keep, beta):
    _, callback = resnet
    rng = np.random.default_rng(int(beta * 10))
    scores = [rng.random(g.size) * rng.uniform(0.1, 10) for g in callback.groups]
    curvature = rng.uniform(0.5, 50, len(scores))
    problem = callback._problem(scores, keep)
    thresholds = AdaptiveThresholds(beta, curvature)
    removed = thresholds(problem)
    counts = np.array([r.sum() for r in removed])
    assert problem.meets(counts)
    # Minimal: the unit with the highest scaled saliency removed, put back, misses the target.
    scale = thresholds.multipliers(len(scores))
    top = max(((i, s) for i, (r, sc) in enumerate(zip(removed, scores)) for s in sc[r] * scale[i]),
              key=lambda t: t[1])[0]
    fewer = counts.copy()
    fewer[top] -= 1
    assert not problem.meets(fewer)
    # Thresholds: below tau_l removed, above kept, in every pool still above its minimum.
    for pool, r, s, tau in zip(problem.pools, removed, scores, thresholds.thresholds):
        assert np.all(s[r] <= tau)
        if r.sum() < pool.max_removed:
            assert np.all(s[~r] >= tau)
    if beta == 0:
        for a, b in zip(removed, GlobalRanking()(problem)):
            np.testing.assert_array_equal(a, b)


def test_normalized_thresholds_meet_the_target_on_scores_over_their_group_mean(resnet):
    _, callback = resnet
    rng = np.random.default_rng(7)
    scores = [rng.random(g.size) * 10.0 ** rng.uniform(-3, 1) for g in callback.groups]
    curvature = rng.uniform(0.5, 50, len(scores))
    problem = callback._problem(scores, {"flops": 0.4})
    thresholds = AdaptiveThresholds(1.0, curvature, normalize="mean")
    removed = thresholds(problem)
    assert problem.meets(np.array([r.sum() for r in removed]))
    same = AdaptiveThresholds(1.0, curvature)(normalized(problem, "mean"))
    for a, b in zip(removed, same):
        np.testing.assert_array_equal(a, b)
    # Without curvature scaling: groups whose scores are a thousand times smaller are
    # emptied by the plain threshold, not by the normalised one.
    def emptied(removed):
        return sum(int(r.sum()) == p.max_removed for r, p in zip(removed, problem.pools))

    assert emptied(AdaptiveThresholds(0.0)(problem)) > 0
    assert emptied(AdaptiveThresholds(0.0, normalize="mean")(problem)) == 0


def test_more_curved_groups_keep_more(resnet):
    _, callback = resnet
    scores = [np.linspace(1.0, 2.0, g.size) for g in callback.groups]
    curvature = np.ones(len(scores))
    curvature[0] = 3.0
    problem = callback._problem(scores, {"flops": 0.5})
    kept = [1 - AdaptiveThresholds(beta, curvature)(problem)[0].mean() for beta in (0, 0.5, 1)]
    assert kept[0] < kept[1] <= kept[2]


def test_adaptive_thresholds_bad_input():
    with pytest.raises(InvalidPruningArgumentError, match="beta"):
        AdaptiveThresholds(-1.0)
    with pytest.raises(InvalidPruningArgumentError, match="curvature"):
        AdaptiveThresholds(1.0, curvature=["a"])
    problem = tfprune.allocation.AllocationProblem(
        [tfprune.allocation.Pool("a", np.ones(3), np.zeros(3, bool), 2)], lambda c: True)
    with pytest.raises(InvalidPruningArgumentError, match="one per pool"):
        AdaptiveThresholds(1.0, curvature=[1.0, 2.0])(problem)


# --- the callback --------------------------------------------------------------------------


def _digits():
    """scikit-learn's 8x8 digits: 1,347 training images first, then the 450 test images."""
    (x, y), (x_test, y_test) = tfprune.datasets.load_digits()
    return np.concatenate([x, x_test]), np.concatenate([y, y_test])


def _digits_cnn(seed=0, loss=LOSS):
    """Conv-BN-ReLU, pooling, Conv-BN-ReLU, Flatten, Dense: a small CNN for 8x8 digits.

    BatchNormalization momentum 0.9: its moving statistics settle within the few hundred steps
    of a test.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = L.Rescaling(1 / 16)(inputs)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(L.Conv2D(8, 3, padding="same")(x)))
    x = L.MaxPooling2D(2)(x)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(L.Conv2D(16, 3, padding="same")(x)))
    x = L.Dense(16, activation="relu")(L.Flatten()(x))
    model = keras.Model(inputs, L.Dense(10)(x))
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"] if loss else None)
    return model


def test_prunes_a_small_cnn_inside_fit_and_meets_the_target(tmp_path):
    x, y = _digits()
    model = _digits_cnn()
    model.fit(x[:1024], y[:1024], batch_size=32, epochs=5, verbose=0)
    before = model.evaluate(x[1024:], y[1024:], verbose=0)[1]
    pruning = CampHiVe(tfprune.Target(flops=0.4),
                       tfprune.PolynomialDecay(160, 192, frequency=16, power=1),
                       calibration_data=(x[:64], y[:64]), beta=0.5, min_density=0.25,
                       hutchinson_samples=2, verbose=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.fit(x[:1024], y[:1024], batch_size=32, epochs=8, initial_epoch=5, verbose=0,
                  callbacks=[pruning, tfprune.PruningSummaries(str(tmp_path))])
    assert out.getvalue() == ""                                  # verbose=0 is silent
    assert [e.step for e in pruning.events] == [160, 176, 192]
    assert pruning.achieved()["flops_kept"] <= 0.4
    assert [r.step for r in pruning.records] == [176, 192]        # step 160 keeps everything
    last = pruning.records[-1]
    assert set(last.curvature) == {g.id for g in pruning.groups}
    assert last.folded > 0 and last.error_merged <= last.error_removal
    small = tfprune.strip(model)
    assert tfprune.profile(small).flops <= 0.4 * tfprune.profile(model).flops
    np.testing.assert_allclose(small(x[:32]), model(x[:32]), rtol=1e-4, atol=1e-4)
    after = model.evaluate(x[1024:], y[1024:], verbose=0)[1]
    assert before > 0.8 and after > 0.8 * before      # pruned, fine-tuned for 2 epochs
    histograms = pruning.summary_histograms()
    assert histograms["curvature_per_pool"].shape == (len(pruning.groups),)
    events = [f for f in os.listdir(tmp_path) if "tfevents" in f]
    tags = {v.tag for f in events for e in tf.compat.v1.train.summary_iterator(
        os.path.join(tmp_path, f)) for v in e.summary.value}
    assert "pruning/curvature_per_pool" in tags


def test_weight_granularity_meets_the_sparsity_folds_and_prints(capsys):
    x, y = _digits()
    model = _digits_cnn(1)
    pruning = CampHiVe(tfprune.Target(sparsity=0.7), granularity="weight", beta=1.0,
                       calibration_data=(x[:64], y[:64]), hutchinson_samples=2, verbose=1)
    _drive(pruning, model)
    event = pruning.events[-1]
    assert event.achieved["sparsity"] >= 0.7
    total = sum(v.size for v in pruning.removed.values())
    assert event.achieved["sparsity"] * total - 0.7 * total < 1.0      # exactly: one weight
    record = pruning.records[-1]
    assert record.folded > 0 and record.error_merged <= record.error_removal
    assert set(record.curvature) == set(pruning.removed)
    printed = capsys.readouterr().out
    assert "block curvature" in printed and "Hutchinson diagonal" in printed
    assert "folded" in printed and "tfprune: step 0" in printed


def _resume_model(wrap):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for i, w in enumerate((6, 8)):
        x = L.ReLU()(L.BatchNormalization(name=f"bn{i}")(
            L.Conv2D(w, 3, padding="same", name=f"conv{i}")(x)))
    model = keras.Model(inputs, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x)))
    if wrap:
        model = tfprune.prunable(model)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), LOSS)
    return model


def _resume_callback(data):
    return CampHiVe(tfprune.Target(flops=0.4), tfprune.PolynomialDecay(0, 6, frequency=2),
                    calibration_data=(data[0][:16], data[1][:16]), power_iters=2,
                    hutchinson_samples=2, verbose=0)


@pytest.mark.parametrize("wrap", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_save_load_and_resume_reproduces_masks(tmp_path, wrap):
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(64, 8, 8, 3)).astype("float32"), rng.integers(0, 4, size=64))

    def fit(model, callback, **kwargs):
        model.fit(*data, batch_size=16, shuffle=False, verbose=0, callbacks=[callback], **kwargs)

    reference, ref_cb = _resume_model(wrap), _resume_callback(data)
    fit(reference, ref_cb, epochs=2)
    model, first = _resume_model(wrap), _resume_callback(data)
    with pytest.warns(UserWarning, match="schedule ends at step 6"):
        fit(model, first, epochs=1)
    path = os.path.join(tmp_path, "half.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    resumed = _resume_callback(data)
    fit(loaded, resumed, epochs=2, initial_epoch=1)
    assert [e.step for e in resumed.events] == [4, 6]
    assert [r.step for r in resumed.records] == [r.step for r in ref_cb.records if r.step >= 4]
    for gid in ref_cb.removed:
        np.testing.assert_array_equal(resumed.removed[gid], ref_cb.removed[gid])
    for a, b in zip(loaded.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a == 0, b == 0)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_config_round_trips():
    x, y = _digits()
    callback = CampHiVe(tfprune.Target(params=0.5), tfprune.PolynomialDecay(0, 100, 10),
                        calibration_data=(x[:8], y[:8]), merge_rule="half", beta=0.25,
                        diagonal="both", hessian="gauss_newton", power_iters=7,
                        hutchinson_samples=3, top_k=2, per_unit_cost=True, loss=LOSS,
                        min_density=0.2, verbose=0, seed=4)
    config = callback.get_config()
    again = CampHiVe.from_config(config, calibration_data=(x[:8], y[:8]))
    assert again.get_config() == config
    assert config["beta"] == 0.25 and config["diagonal"] == "both" and config["top_k"] == 2
    assert again.schedule == callback.schedule and again.target == callback.target


def test_bad_input():
    x, y = _digits()
    data = (x[:8], y[:8])
    target = tfprune.Target(flops=0.5)
    with pytest.raises(MissingCalibrationDataError):
        CampHiVe(target)
    with pytest.raises(InvalidPruningArgumentError, match="beta"):
        CampHiVe(target, calibration_data=data, beta=-0.5)
    with pytest.raises(InvalidPruningArgumentError, match="merge_rule"):
        CampHiVe(target, calibration_data=data, merge_rule="mean")
    with pytest.raises(InvalidPruningArgumentError, match="merge"):
        CampHiVe(target, calibration_data=data, merge="yes")
    with pytest.raises(InvalidCriterionError, match="diagonal"):
        CampHiVe(target, calibration_data=data, diagonal="exact")
    with pytest.raises(InvalidCriterionError, match="hessian"):
        CampHiVe(target, calibration_data=data, hessian="fisher")
    with pytest.raises(InvalidCriterionError, match="hutchinson_samples"):
        CampHiVe(target, calibration_data=data, hutchinson_samples=0)
    with pytest.raises(InvalidCriterionError, match="loss"):
        CampHiVe(target, calibration_data=data, loss=42)
    with pytest.raises(InvalidTargetError, match="sparsity"):
        CampHiVe(target, calibration_data=data, granularity="weight")
    bare = _digits_cnn(loss=None)
    callback = CampHiVe(target, calibration_data=data, verbose=0)
    callback.set_model(bare)
    callback.set_params({"epochs": 1, "steps": 1})
    with pytest.raises(MissingLossError, match="compile the model"):
        callback.on_train_begin()
    assert all(not hasattr(v.constraint, "mask") for v in bare.trainable_weights)


# --- diagonal="gates": the Gauss-Newton curvature of each channel's removal ------------------


def test_gate_saliency_is_the_gate_curvature_of_each_channel():
    model, data, groups, context = _prepared(diagonal="gates")
    estimate = context.cache[CACHE_KEY]
    assert estimate.diagonal == {} and set(estimate.seconds) == {"blocks", "diagonal"}
    gates = [[(m.layer, m.axis, m.index_map[c]) for m in g.consumers]
             for g in groups for c in range(g.size)]
    result = tfprune.curvature.gates.gate_curvature(model, LOSS, data, gates)
    criterion = CampHiVeSaliency("gates")
    start = 0
    for g in groups:
        expected = (np.abs(result.gradient[start:start + g.size])
                    + 0.5 * result.gauss_newton[start:start + g.size])
        np.testing.assert_allclose(criterion(g, context), expected, rtol=1e-6)
        start += g.size
    # deterministic: another event (other random seeds) scores the same channels alike
    again = ScoringContext(model, calibration_data=data, groups=groups, step=8)
    criterion.prepare(again)
    for g in groups:
        np.testing.assert_allclose(criterion(g, again), criterion(g, context), rtol=1e-6)


def test_gates_prune_inside_fit_and_meet_the_target():
    x, y = _digits()
    model = _digits_cnn()
    model.fit(x[:512], y[:512], batch_size=32, epochs=2, verbose=0)
    pruning = CampHiVe(tfprune.Target(flops=0.5), tfprune.PolynomialDecay(32, 48, frequency=16),
                       calibration_data=(x[:64], y[:64]), diagonal="gates", verbose=0)
    model.fit(x[:512], y[:512], batch_size=32, epochs=4, initial_epoch=2, verbose=0,
              callbacks=[pruning])
    assert [e.step for e in pruning.events] == [32, 48]
    assert pruning.achieved()["flops_kept"] <= 0.5
    last = pruning.records[-1]
    assert last.seconds["diagonal"] > 0 and last.folded > 0
    small = tfprune.strip(model)
    assert tfprune.profile(small).flops <= 0.5 * tfprune.profile(model).flops
    np.testing.assert_allclose(small(x[:32]), model(x[:32]), rtol=1e-4, atol=1e-4)


def test_regression_fold_prunes_once_and_folds_into_every_kept_channel():
    x, y = _digits()
    model = _digits_cnn()
    model.fit(x[:512], y[:512], batch_size=32, epochs=2, verbose=0)
    records = {}
    for rule in ("least_squares", "regression"):
        pruning = CampHiVe(tfprune.Target(flops=0.5), calibration_data=(x[:128], y[:128]),
                           diagonal="gates", merge_rule=rule, verbose=0)
        small = tfprune.prune(model, pruning)
        assert tfprune.profile(small).flops <= 0.5 * tfprune.profile(model).flops
        records[rule] = pruning.records[-1]
        again = CampHiVe.from_config(pruning.get_config(), calibration_data=(x[:8], y[:8]))
        assert again.merge_rule == rule
    pair, regression = records["least_squares"], records["regression"]
    assert regression.folded == pair.folded > 0          # the same channels, other weights
    assert regression.error_merged <= regression.error_removal
    np.testing.assert_allclose(regression.error_removal, pair.error_removal, rtol=1e-5)


def test_gates_refuse_single_weights_and_losses_without_gauss_newton():
    x, y = _digits()
    with pytest.raises(InvalidPruningArgumentError, match="gates"):
        CampHiVe(tfprune.Target(sparsity=0.5), calibration_data=(x[:8], y[:8]),
                 granularity="weight", diagonal="gates")
    model = _digits_cnn(loss=None)
    model.compile("sgd", lambda t, p: keras.ops.mean(keras.ops.abs(p)))
    callback = CampHiVe(tfprune.Target(flops=0.5), calibration_data=(x[:8], y[:8]),
                        diagonal="gates", verbose=0)
    callback.set_model(model)
    callback.set_params({"epochs": 1, "steps": 1})
    with pytest.raises(tfprune.errors.CurvatureError, match="Gauss-Newton"):
        callback.on_train_begin()


# --- joint=True: a group's channels scored together from its gates' Gauss-Newton matrix ----


def _greedy_brute_force(g, G, removed):
    """The greedy order, written from its definition: at each step the channel that adds
    least to q(M) = -sum g_M + 1/2 1^T G_MM 1, the removed channels first."""
    def q(m):
        m = list(m)
        return -g[m].sum() + 0.5 * G[np.ix_(m, m)].sum() if m else 0.0
    order = [int(c) for c in np.flatnonzero(removed)]
    rest = [c for c in range(len(g)) if c not in order]
    while rest:
        c = min(rest, key=lambda c: (q(order + [c]) - q(order), c))
        order.append(c)
        rest.remove(c)
    return order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_scores_follow_the_greedy_order_on_the_quadratic_model(seed):
    rng = np.random.default_rng(seed)
    n = 7
    a = rng.normal(size=(20, n))
    G, g = a.T @ a / 20, rng.normal(scale=0.3, size=n)
    removed = np.zeros(n, bool)
    removed[rng.choice(n, 2, replace=False)] = seed > 0
    order = _greedy_brute_force(g, G, removed)
    found = [int(c) for c in joint_order(g, G, removed)]
    k = int(removed.sum())    # the removed channels first, in any order among themselves
    assert set(found[:k]) == set(order[:k]) and found[k:] == order[k:]
    # the single saliencies, sorted, handed out along that order: the same values (what the
    # allocation across groups sees), strictly increasing along the joint order
    single = np.abs(g) + 0.5 * np.diag(G)
    scores = joint_scores(single, g, G, removed)
    assert [int(c) for c in np.argsort(scores, kind="stable")] == found
    np.testing.assert_allclose(np.sort(scores), np.sort(single), rtol=1e-9)
    assert np.all(np.diff(scores[found]) > 0)


def test_joint_scores_do_not_remove_both_copies_of_a_feature():
    # channels 0 and 1 carry one feature: each alone is the cheapest, both together are not
    g = np.zeros(4)
    G = np.diag([1.0, 1.0, 1.3, 2.0])
    G[0, 1] = G[1, 0] = 1.0
    single = 0.5 * np.diag(G)
    assert set(np.argsort(single)[:2]) == {0, 1}
    assert set(np.argsort(joint_scores(single, g, G))[:2]) == {0, 2}


def test_joint_gate_scores_come_from_the_groups_gate_matrices():
    model, data, groups, _ = _prepared()
    context = ScoringContext(model, calibration_data=data, groups=groups, step=3,
                             removed={groups[0].id: np.eye(groups[0].size, dtype=bool)[0]})
    criterion = CampHiVeSaliency("gates", joint=True)
    criterion.prepare(context)
    gates = [[(m.layer, m.axis, m.index_map[c]) for m in g.consumers]
             for g in groups for c in range(g.size)]
    result = tfprune.curvature.gates.gate_curvature(model, LOSS, data, gates,
                                                    blocks=[range(len(gates))])
    start = 0
    for g in groups:
        span = slice(start, start + g.size)
        single = (np.abs(result.gradient[span]) + 0.5 * result.gauss_newton[span])
        expected = joint_scores(single, result.gradient[span], result.blocks[0][span, span],
                                context.removed.get(g.id))
        np.testing.assert_allclose(criterion(g, context), expected, rtol=1e-5, atol=1e-12)
        start += g.size
    assert np.argmin(criterion(groups[0], context)) == 0      # the removed channel first
    assert criterion.get_config()["joint"] is True
    with pytest.raises(InvalidCriterionError, match="needs diagonal='gates'"):
        CampHiVeSaliency(joint=True)
    with pytest.raises(InvalidCriterionError, match="joint"):
        CampHiVeSaliency("gates", joint=1)


def test_joint_takes_as_many_channels_per_group_as_the_single_gates_not_the_same_ones():
    x, y = _digits()
    removed = {}
    for joint in (False, True):
        keras.utils.set_random_seed(0)
        model = _digits_cnn()
        pruning = CampHiVe(tfprune.Target(flops=0.4), tfprune.OneShot(0),
                           calibration_data=(x[:128], y[:128]), diagonal="gates",
                           joint=joint, merge=False, verbose=0)
        model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, callbacks=[pruning])
        removed[joint] = {gid: r.copy() for gid, r in pruning.removed.items()}
    assert removed[True].keys() == removed[False].keys()
    for gid in removed[True]:
        assert removed[True][gid].sum() == removed[False][gid].sum()
    assert any(not np.array_equal(removed[True][g], removed[False][g]) for g in removed[True])


def test_joint_gates_prune_inside_fit_meet_the_target_and_round_trip():
    x, y = _digits()
    model = _digits_cnn()
    pruning = CampHiVe(tfprune.Target(flops=0.5), tfprune.PolynomialDecay(0, 16, frequency=8),
                       calibration_data=(x[:64], y[:64]), diagonal="gates", joint=True,
                       verbose=0)
    model.fit(x[:256], y[:256], batch_size=32, epochs=3, verbose=0, callbacks=[pruning])
    assert pruning.achieved()["flops_kept"] <= 0.5 and len(pruning.events) == 3
    config = pruning.get_config()
    assert config["joint"] is True
    again = CampHiVe.from_config(config, calibration_data=(x[:64], y[:64]))
    assert again.get_config() == config and again.criterion.joint
    with pytest.raises(InvalidCriterionError, match="needs diagonal='gates'"):
        CampHiVe(tfprune.Target(flops=0.5), calibration_data=(x[:8], y[:8]), joint=True)


# --- fold_aware=True: the gates scale what the regression fold leaves of each channel ------


def test_fold_aware_scores_are_the_residual_gates_of_each_group():
    model, data, groups, _ = _prepared()
    context = ScoringContext(model, calibration_data=data, groups=groups, step=3)
    criterion = CampHiVeSaliency("gates", fold_aware=True)
    criterion.prepare(context)
    gates, spans, start = [], [], 0
    for g in groups:
        gates += [[(m.layer, m.axis, m.index_map[c]) for m in g.consumers]
                  for c in range(g.size)]
        spans.append(range(start, start + g.size))
        start += g.size
    result = tfprune.curvature.gates.gate_curvature(model, LOSS, data, gates, residuals=spans)
    plain = tfprune.curvature.gates.gate_curvature(model, LOSS, data, gates)
    for g, span in zip(groups, spans):
        expected = np.abs(result.gradient[span]) + 0.5 * result.gauss_newton[span]
        np.testing.assert_allclose(criterion(g, context), expected, rtol=1e-5, atol=1e-12)
    # the fold recovers part of every channel: its curvature is lower than plain removal's
    assert np.all(result.gauss_newton <= plain.gauss_newton * (1 + 1e-5) + 1e-12)
    assert np.mean(result.gauss_newton < plain.gauss_newton) > 0.5
    assert criterion.get_config()["fold_aware"] is True
    with pytest.raises(InvalidCriterionError, match="needs diagonal='gates'"):
        CampHiVeSaliency(fold_aware=True)
    with pytest.raises(InvalidCriterionError, match="fold_aware"):
        CampHiVeSaliency("gates", fold_aware="yes")


def test_fold_aware_gates_prune_inside_fit_meet_the_target_and_round_trip():
    x, y = _digits()
    model = _digits_cnn()
    pruning = CampHiVe(tfprune.Target(flops=0.5), tfprune.PolynomialDecay(0, 16, frequency=8),
                       calibration_data=(x[:64], y[:64]), diagonal="gates", fold_aware=True,
                       merge_rule="regression", verbose=0)
    model.fit(x[:256], y[:256], batch_size=32, epochs=3, verbose=0, callbacks=[pruning])
    assert pruning.achieved()["flops_kept"] <= 0.5 and len(pruning.events) == 3
    config = pruning.get_config()
    assert config["fold_aware"] is True
    again = CampHiVe.from_config(config, calibration_data=(x[:64], y[:64]))
    assert again.get_config() == config and again.criterion.fold_aware
