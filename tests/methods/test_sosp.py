"""SOSP-H: saliencies against the second-order model built by brute force, global ranking,
bottleneck flagging, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tfprune.criteria import ScoringContext
from tfprune.criteria.sosp import SOSPSaliency
from tfprune.errors import (CurvatureError, InvalidCriterionError, InvalidPruningArgumentError,
                            MissingCalibrationDataError, MissingLossError)
from tfprune.keras.sosp import BottleneckReport

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp():
    """3 -> Dense(4, tanh) -> Dense(3, tanh) -> Dense(2) logits, float64."""
    inputs = keras.Input((3,), dtype="float64")
    h = keras.layers.Dense(4, activation="tanh", name="d1", dtype="float64")(inputs)
    h = keras.layers.Dense(3, activation="tanh", name="d2", dtype="float64")(h)
    return keras.Model(inputs, keras.layers.Dense(2, name="d3", dtype="float64")(h))


def _residual():
    """Conv-BN-ReLU, then a conv that reads and writes the same residual group, GAP, Dense."""
    inputs = keras.Input((4, 4, 2), dtype="float64")
    x = keras.layers.Conv2D(3, 3, padding="same", name="c1", dtype="float64")(inputs)
    x = keras.layers.BatchNormalization(name="bn", dtype="float64")(x)
    x = keras.layers.Activation("tanh", dtype="float64")(x)
    y = keras.layers.Conv2D(3, 3, padding="same", name="c2", dtype="float64")(x)
    x = keras.layers.Add(dtype="float64")([x, y])
    x = keras.layers.GlobalAveragePooling2D(dtype="float64")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head", dtype="float64")(x))
    bn = model.get_layer("bn")
    rng = np.random.default_rng(1)
    bn.moving_mean.assign(rng.normal(size=3) * 0.1)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=3))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=3))
    bn.beta.assign(rng.normal(size=3) * 0.1)
    return model


# Entries that carry channel c of each prunable group, written out by hand:
# (layer, weight, index expression) per entry set.
def _mlp_structures():
    return {
        "d1": lambda c: [("d1", "kernel", np.s_[:, c]), ("d1", "bias", np.s_[c]),
                         ("d2", "kernel", np.s_[c, :])],
        "d2": lambda c: [("d2", "kernel", np.s_[:, c]), ("d2", "bias", np.s_[c]),
                         ("d3", "kernel", np.s_[c, :])],
    }, {"d1": 4, "d2": 3}


def _residual_structures():
    return {
        "c1": lambda c: [("c1", "kernel", np.s_[..., c]), ("c1", "bias", np.s_[c]),
                         ("bn", "gamma", np.s_[c]), ("bn", "beta", np.s_[c]),
                         ("c2", "kernel", np.s_[:, :, c, :]), ("c2", "kernel", np.s_[..., c]),
                         ("c2", "bias", np.s_[c]), ("head", "kernel", np.s_[c, :])],
    }, {"c1": 3}


def _data(model, n=12):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n,) + tuple(model.input_shape[1:]))
    return x, rng.integers(0, 2, size=n)


def _brute_force(model, x, y, hessian):
    """g, and H or G as explicit matrices over the flattened trainable weights (float64)."""
    weights = model.trainable_weights
    shapes = [tuple(w.shape) for w in weights]
    sizes = [int(np.prod(s)) for s in shapes]
    non_trainable = [v.value for v in model.non_trainable_variables]
    flat0 = tf.constant(np.concatenate([w.numpy().reshape(-1) for w in weights]))

    def logits(flat):
        parts = tf.split(flat, sizes)
        values = [tf.reshape(p, s) for p, s in zip(parts, shapes)]
        out, _ = model.stateless_call(values, non_trainable, tf.constant(x), training=False)
        return out

    def mean_loss(flat):
        return tf.reduce_mean(LOSS.call(tf.constant(y), logits(flat)))

    with tf.GradientTape() as outer:
        outer.watch(flat0)
        with tf.GradientTape() as inner:
            inner.watch(flat0)
            loss = mean_loss(flat0)
        g = inner.gradient(loss, flat0)
    if hessian == "exact":
        h = outer.jacobian(g, flat0).numpy()
    else:
        with tf.GradientTape() as tape:
            tape.watch(flat0)
            z = logits(flat0)
        jac = tape.jacobian(z, flat0).numpy()          # (n, classes, params)
        p = tf.nn.softmax(z).numpy()
        h = np.zeros((flat0.shape[0],) * 2)
        for n in range(len(x)):
            lam = np.diag(p[n]) - np.outer(p[n], p[n])
            h += jac[n].T @ lam @ jac[n]
        h /= len(x)
    offsets = dict(zip([(model.get_layer(w.path.split("/")[0]).name, w.name) for w in weights],
                       np.cumsum([0] + sizes[:-1])))
    return g.numpy(), h, offsets, dict(zip(offsets, shapes))


def _theta(model, entries, offsets, shapes, total):
    """The flat vector holding the weights' values on the given entries, zeros elsewhere."""
    theta = np.zeros(total)
    for layer, weight, index in entries:
        mask = np.zeros(shapes[(layer, weight)], dtype=bool)
        mask[index] = True  # an entry listed twice (the residual conv) still counts once
        value = tfprune.graph.find_variable(model, layer, weight).numpy()
        start = offsets[(layer, weight)]
        flat = theta[start:start + value.size]
        flat[mask.reshape(-1)] = value[mask]
    return theta


@pytest.mark.parametrize("hessian", ["gauss_newton", "exact"])
@pytest.mark.parametrize("build, structures", [(_mlp, _mlp_structures),
                                               (_residual, _residual_structures)])
def test_saliency_equals_brute_force_second_order_model(build, structures, hessian):
    keras.utils.set_random_seed(0)
    model = build()
    model.compile("sgd", LOSS)
    x, y = _data(model)
    g, h, offsets, shapes = _brute_force(model, x, y, hessian)
    by_layer, sizes = structures()
    thetas = {layer: [_theta(model, make(c), offsets, shapes, g.size) for c in range(n)]
              for layer, (make, n) in ((k, (by_layer[k], sizes[k])) for k in by_layer)}
    theta_p = np.zeros(g.size)
    for vectors in thetas.values():
        for t in vectors:
            theta_p = np.where(t != 0, t, theta_p)     # the union of all structures' entries

    groups = [gr for gr in tfprune.channel_groups(model) if gr.prunable]
    assert sorted(gr.producers[0].layer for gr in groups) == sorted(by_layer)
    context = ScoringContext(model, calibration_data=(x, y), groups=groups, batch_size=5)
    criterion = SOSPSaliency(hessian, batch_size=5)
    criterion.prepare(context)
    for group in groups:
        layer = group.producers[0].layer
        expected = [abs(-t @ g + 0.5 * t @ (h @ theta_p)) for t in thetas[layer]]
        got = criterion(group, context)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
        # The correlation term matters: the diagonal model theta_s.H theta_s ranks otherwise.
        diagonal = [abs(-t @ g + 0.5 * t @ (h @ t)) for t in thetas[layer]]
        assert not np.allclose(got, diagonal, rtol=1e-3)


def _small(seed=0, loss=LOSS):
    keras.utils.set_random_seed(seed)
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 6), dense=6, num_classes=3)
    model.compile("sgd", loss)
    rng = np.random.default_rng(seed)
    return model, (rng.uniform(0, 255, (24, 8, 8, 1)).astype("float32"),
                   rng.integers(0, 3, 24))


def _run(callback, model, data):
    """One pruning event at step 0, without fit."""
    callback.set_model(model)
    callback.set_params({"epochs": 1, "steps": 1, "verbose": 0})
    callback.on_train_begin()
    callback.on_train_batch_begin(0)
    callback.on_train_end()
    return callback


def _saliencies(model, data, groups):
    context = ScoringContext(model, calibration_data=data, groups=groups)
    criterion = SOSPSaliency()
    criterion.prepare(context)
    return {g.id: criterion(g, context) for g in groups}


def test_per_flop_warns_when_another_budget_binds_and_the_advised_ranking_follows_it(
        flops_and_params_net, recwarn):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(32, 8, 8, 3)).astype("float32"), rng.integers(0, 4, 32)

    def run(target, **kwargs):
        model = flops_and_params_net(32, 4)
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return _run(tfprune.SOSPH(target, data, verbose=0, **kwargs), model, data)

    def warned():
        return [w for w in recwarn if "per_flop=True" in str(w.message)]

    both = tfprune.Target(flops=0.95, params=0.5)
    with pytest.warns(UserWarning, match=r"per_flop=True\): the params budget of "
                      r"Target\(flops=0.95, params=0.5\) binds.*per_flop=False, allocation="):
        per_flop = run(both, per_flop=True)
    recwarn.clear()
    advised = run(both, allocation=tfprune.allocation.GlobalRanking(per_unit_cost=True,
                                                                    normalize="mean"))
    spent, achieved = per_flop.events[-1].achieved, advised.events[-1].achieved
    for a in (spent, achieved):
        assert a["params_kept"] <= 0.5 and a["flops_kept"] <= 0.95
    assert spent["flops_kept"] < achieved["flops_kept"] - 0.05  # 0.60 against 0.68
    # FLOPs binding, or FLOPs alone: no warning.
    run(tfprune.Target(flops=0.3, params=0.9), per_flop=True)
    run(tfprune.Target(flops=0.3), per_flop=True)
    assert not warned()


@pytest.mark.parametrize("target, per_flop, allocation", [
    (tfprune.Target(flops=0.5), False, "global"), (tfprune.Target(params=0.4), False, "global"),
    (tfprune.Target(flops=0.6), True, "global"), (tfprune.Target(flops=0.6), True, None),
    (tfprune.Target(params=0.5), True, "normalized")])
def test_global_ranking_meets_the_target_with_the_lowest_saliencies(target, per_flop,
                                                                    allocation):
    model, data = _small()
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    scores = _saliencies(model, data, groups)
    cost = tfprune.profile.CostModel(model)
    if allocation != "global":  # each group over its mean, then per FLOP
        scores = {gid: s / s.mean() for gid, s in scores.items()}
    if per_flop:  # FLOPs whatever the target's resource
        flops = cost.marginal(np.zeros(len(cost.groups), int))["flops"]
        index = {g.id: i for i, g in enumerate(cost.groups)}
        scores = {gid: s / flops[index[gid]] for gid, s in scores.items()}
    # "global" is the paper's ranking: raw saliencies of all groups on one scale.
    sosp = _run(tfprune.SOSPH(target, data, per_flop=per_flop, allocation=allocation,
                              verbose=0), model, data)
    removed = sosp.removed
    achieved = sosp.events[-1].achieved
    resource, keep = next(iter(target.keep.items()))
    assert achieved[f"{resource}_kept"] <= keep + 1e-12
    # Global: every removed channel ranks below every kept one (groups above their minimum).
    gone = np.concatenate([scores[g][removed[g]] for g in removed])
    kept = np.concatenate([scores[g][~removed[g]] for g in removed if (~removed[g]).sum() > 1])
    assert gone.size and gone.max() <= kept.min()
    # Minimal: putting back the highest-ranked removed channel misses the target.
    top = max(((g, c) for g in removed for c in np.flatnonzero(removed[g])),
              key=lambda gc: scores[gc[0]][gc[1]])
    counts = {g: int(r.sum()) - (g == top[0]) for g, r in removed.items()}
    key = "params" if resource == "params" else "flops"
    assert cost.evaluate(counts)[key] > keep * cost.dense[key]


def test_pruned_model_is_the_masked_model_and_strips():
    model, data = _small(1)
    sosp = _run(tfprune.SOSPH(tfprune.Target(flops=0.5), data, verbose=0), model, data)
    small = tfprune.strip(model)
    np.testing.assert_allclose(small(data[0]), model(data[0]), rtol=1e-5, atol=1e-5)
    assert tfprune.profile(small).flops <= 0.5 * tfprune.profile(model).flops
    assert sosp.report is not None


def test_bottleneck_rule():
    model, _ = _small()
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    sizes = {g.id: g.size for g in groups}
    # Fractions pruned 0.5, 0.5 and (with 4 + 6 + 6 channels) a third group near 0.
    a, b, c = (g.id for g in groups)
    removed = {a: np.arange(sizes[a]) < sizes[a] // 2, b: np.arange(sizes[b]) < sizes[b] // 2,
               c: np.zeros(sizes[c], bool)}
    report = BottleneckReport.from_removed(groups, removed, ratio=0.25)
    mean = np.mean([0.5, 0.5, 0.0])
    assert report.mean_pruned == pytest.approx(mean)
    assert report.bottlenecks == tuple(m.layer for m in groups[2].producers)
    assert "bottleneck" in str(report)
    # At 1/6 pruned the third group is above 0.25 x mean (0.083) and no longer flagged.
    removed[c][0] = True
    assert BottleneckReport.from_removed(groups, removed, ratio=0.25).bottlenecks == ()
    # ... but it is with a stricter rule.
    assert BottleneckReport.from_removed(groups, removed, ratio=0.9).bottlenecks
    # Nothing pruned: nothing flagged.
    none = {g.id: np.zeros(g.size, bool) for g in groups}
    assert BottleneckReport.from_removed(groups, none).bottlenecks == ()


def test_sosp_flags_a_layer_it_cannot_afford_to_prune(capsys):
    model, data = _small(2)
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    # Make the first conv's channels carry the signal: its consumers' weights x 30.
    first = groups[0]
    for p in first.params:
        if p.role == "consumer":
            v = tfprune.graph.find_variable(model, p.layer, p.weight)
            v.assign(v.numpy() * 30.0)
    sosp = _run(tfprune.SOSPH(tfprune.Target(flops=0.6), data, allocation="global", verbose=1),
                model, data)
    assert set(m.layer for m in first.producers) <= set(sosp.report.bottlenecks)
    assert "<- bottleneck" in capsys.readouterr().out


def test_wrapped_model_gives_the_same_saliencies():
    model, data = _small(3)
    wrapped = tfprune.prunable(model)
    wrapped.compile("sgd", LOSS)
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    plain = _saliencies(model, data, groups)
    masked = _saliencies(wrapped, data, groups)
    for gid in plain:
        np.testing.assert_allclose(masked[gid], plain[gid], rtol=1e-4, atol=1e-7)


def test_config():
    _, data = _small()
    sosp = tfprune.SOSPH(tfprune.Target(flops=0.5), data, hessian="exact", per_flop=True,
                         loss=LOSS, bottleneck_ratio=0.5, verbose=0)
    config = sosp.get_config()
    assert (config["hessian"], config["per_flop"], config["bottleneck_ratio"]) == \
        ("exact", True, 0.5)
    criterion = SOSPSaliency.from_config(sosp.criterion.get_config())
    assert criterion.hessian == "exact" and criterion.loss.get_config() == LOSS.get_config()


def test_bad_input():
    model, data = _small()
    target = tfprune.Target(flops=0.5)
    with pytest.raises(InvalidCriterionError, match="hessian='diagonal'"):
        tfprune.SOSPH(target, data, hessian="diagonal")
    with pytest.raises(InvalidPruningArgumentError, match="per_flop"):
        tfprune.SOSPH(target, data, per_flop="yes")
    with pytest.raises(InvalidPruningArgumentError, match="allocation='uniform'"):
        tfprune.SOSPH(target, data, per_flop=True, allocation="uniform")
    with pytest.raises(InvalidPruningArgumentError, match="bottleneck_ratio"):
        tfprune.SOSPH(target, data, bottleneck_ratio=0.0)
    with pytest.raises(InvalidPruningArgumentError, match="only 'channel'"):
        tfprune.SOSPH(target, data, granularity="weight")
    with pytest.raises(MissingCalibrationDataError):
        tfprune.SOSPH(target, None)
    with pytest.raises(InvalidCriterionError, match="loss"):
        tfprune.SOSPH(target, data, loss=42)
    # An uncompiled model has no loss: refused before the first step, masks left detached.
    bare, _ = _small(loss=None)
    callback = tfprune.SOSPH(target, data, verbose=0)
    callback.set_model(bare)
    callback.set_params({"epochs": 1, "steps": 1})
    with pytest.raises(MissingLossError, match="compile the model"):
        callback.on_train_begin()
    assert all(not hasattr(v.constraint, "mask") for v in bare.trainable_weights)
    # A Gauss-Newton product needs cross-entropy or MSE.
    model.compile("sgd", "mae")
    with pytest.raises(CurvatureError, match="hessian='exact'"):
        _run(tfprune.SOSPH(target, data, verbose=0), model, data)
