"""RDPrune: distortion curves against hand computation, exact budgets, minimum density,
additivity report, rounds, composition with another criterion, bad input."""

import dataclasses
import math

import keras
import numpy as np
import pytest

import tfprune
from tfprune.criteria import ScoringContext
from tfprune.criteria.sosp import SOSPSaliency
from tfprune.errors import (DataError, InvalidPruningArgumentError, InvalidTargetError,
                            MissingCalibrationDataError)

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp(softmax):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(5, activation="relu", name="d1")(inputs)
    out = keras.layers.Dense(2, activation="softmax" if softmax else None, name="d2")(h)
    return keras.Model(inputs, out)


def _small(seed=0, n=24):
    keras.utils.set_random_seed(seed)
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 6), dense=6, num_classes=3,
                                  scale=1.0)
    model.compile("sgd", LOSS)
    rng = np.random.default_rng(seed)
    return model, (rng.normal(size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, 3, n))


def _forward(w1, b1, w2, b2, x):
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("distortion", ["worst_case", "mean"])
def test_curve_values_equal_the_distortion_computed_by_hand(softmax, distortion):
    model = _mlp(softmax)
    x = np.random.default_rng(1).normal(size=(10, 3)).astype("float32")
    w1, b1, w2, b2 = (v.numpy().astype(np.float64) for v in model.weights)
    rd = tfprune.RDPrune(tfprune.Target(params=0.6), (x, np.zeros(10)), grid=5,
                         distortion=distortion, verbose=0)
    tfprune.prune(model, rd)
    curve = rd.report.curves[0]                        # the hidden units of d1
    assert curve.counts.tolist() == [0, 1, 2, 3, 4]    # grid 20%..100% of 5, capped at 4
    order = np.argsort(np.abs(w1).sum(axis=0), kind="stable")   # lowest L1 first
    reference = _forward(w1, b1, w2, b2, x)             # logits, also under a softmax
    for count, got in zip(curve.counts, curve.distortion):
        keep = np.ones(5)
        keep[order[:count]] = 0.0
        out = _forward(w1 * keep, b1 * keep, w2 * keep[:, None], b2, x)
        per_sample = ((out - reference) ** 2).mean(axis=1)
        expected = per_sample.max() if distortion == "worst_case" else per_sample.mean()
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("verbose", [0, 1])
def test_progress_and_report_print_only_when_verbose(verbose, capsys):
    x = np.random.default_rng(2).normal(size=(10, 3)).astype("float32")
    rd = tfprune.RDPrune(tfprune.Target(params=0.6), (x, np.zeros(10)), grid=4, verbose=verbose)
    tfprune.prune(_mlp(False), rd)
    out = capsys.readouterr().out
    if verbose:
        assert "variant" in out and "measured jointly" in out and "tfprune: step 0" in out
    else:
        assert out == ""
    config = rd.get_config()
    assert config["grid"] == [0.25, 0.5, 0.75, 1.0] and config["distortion"] == "worst_case"
    assert config["target"] == {"params": 0.6} and config["verbose"] == verbose
    assert config["mixtures"] == 8


def test_curves_grow_with_pruning_and_levels_do_not_retrace():
    model, data = _small(1)
    rd = tfprune.RDPrune(tfprune.Target(flops=0.5), data, grid=8, verbose=0, batch_size=16)
    tfprune.prune(model, rd)
    for curve in rd.report.curves:
        d = curve.distortion
        assert d[0] == 0.0 and np.all(d >= 0)          # (a dead channel may cost nothing)
        assert d[-1] == d.max() > 0                    # pruning to the minimum is the worst
        ranks = np.argsort(np.argsort(d))              # and it mostly grows on the way
        assert np.corrcoef(ranks, np.arange(len(d)))[0, 1] >= 0.6
    # Dozens of variants over two batch sizes (16, then the last 8): at most one trace each.
    assert rd.report.evaluations > 10
    assert rd._measure._errors.experimental_get_tracing_count() <= 2


def _counts_met_and_minimal(cost, removed, resource, keep):
    counts = {g: int(r.sum()) for g, r in removed.items()}
    assert cost.evaluate(counts)[resource] <= keep * cost.dense[resource]
    for g in counts:  # putting back any one channel misses the target
        if counts[g]:
            fewer = {**counts, g: counts[g] - 1}
            assert cost.evaluate(fewer)[resource] > keep * cost.dense[resource]


@pytest.mark.parametrize("target, min_density", [
    (tfprune.Target(flops=0.5), 0.0),
    (tfprune.Target(params=0.45), 0.34),
    (tfprune.Target(weight_bytes=0.55), 0.25)])
def test_channel_budget_met_exactly_with_min_density(target, min_density):
    model, data = _small(2)
    before = [w.copy() for w in model.get_weights()]
    rd = tfprune.RDPrune(target, data, grid=6, min_density=min_density, verbose=0)
    small = tfprune.prune(model, rd)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    cost = tfprune.profile.CostModel(model)
    resource, keep = next(iter(target.keep.items()))
    _counts_met_and_minimal(cost, rd.removed, resource, keep)
    assert getattr(tfprune.profile(small), resource) == cost.evaluate(
        {g: int(r.sum()) for g, r in rd.removed.items()})[resource]
    for group in rd.groups:
        kept = group.size - rd.removed[group.id].sum()
        assert kept >= max(1, math.ceil(min_density * group.size))


def test_several_budgets_curves_measured_once_and_levels_costed_by_all_budgets(
        flops_and_params_net):
    # conv0 (12 channels) holds the FLOPs, conv1 the params; seed 2.
    rng = np.random.default_rng(2)
    data = rng.normal(size=(24, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 24)

    def run(target):
        model = flops_and_params_net(12, 3, seed=2)
        model.compile("sgd", LOSS)
        rd = tfprune.RDPrune(target, data, grid=6, verbose=0)
        tfprune.prune(model, rd)
        return rd

    def curve_passes(rd):  # the report's own passes: one per unit pruned alone, one joint
        return rd.report.evaluations - sum(u.removed > u.removed_before
                                           for u in rd.report.units) - 1

    alone = run(tfprune.Target(params=0.5))
    both = run(tfprune.Target(flops=0.95, params=0.5))
    # One set of curves and one report per event, as with one budget.
    assert len(both.reports) == len(alone.reports) == 1
    assert curve_passes(both) == curve_passes(alone) > 0
    assert alone.report.weights is None
    assert set(both.report.weights) == {"flops", "params"}
    assert sum(both.report.weights.values()) == pytest.approx(1.0)
    assert "levels costed by" in str(both.report)
    assert both.report.dp_steps > alone.report.dp_steps     # nine weightings, one bisection each
    achieved = both.achieved()
    assert achieved["params_kept"] <= 0.5 and achieved["flops_kept"] <= 0.95
    # Among the weightings is params alone; the one kept predicts no more distortion (seed 2:
    # the levels costed in FLOPs, summed single-unit distortion 1.34 against 1.44).
    assert both.report.predicted <= alone.report.predicted


def test_weight_budget_met_exactly_with_min_density_and_magnitude_inside_layers():
    model, data = _small(3)
    rd = tfprune.RDPrune(tfprune.Target(sparsity=0.7), data, granularity="weight", grid=5,
                         min_density=0.2, verbose=0)
    masked = tfprune.prune(model, rd, shrink=False)
    total = sum(r.size for r in rd.removed.values())
    removed = sum(int(r.sum()) for r in rd.removed.values())
    assert removed == math.ceil(0.7 * total - 1e-9)     # exactly the target, not a weight more
    weights = {f"{path}/{v.name}": v.numpy() for path, layer in tfprune.graph.iter_layers(model)
               for v in layer.weights}
    masked_weights = {f"{path}/{v.name}": v.numpy()
                      for path, layer in tfprune.graph.iter_layers(masked) for v in layer.weights}
    for name, r in rd.removed.items():
        assert (~r).sum() >= max(1, math.ceil(0.2 * r.size))
        w = np.abs(weights[name])
        if r.any():
            assert w[r].max() <= w[~r].min()            # the smallest weights of the kernel go
        assert np.all(masked_weights[name][r] == 0) and np.all(masked_weights[name][~r] != 0)


def test_additivity_report_against_the_pruned_network():
    model, data = _small(4)
    x = data[0]
    rd = tfprune.RDPrune(tfprune.Target(flops=0.45), data, grid=5, distortion="worst_case",
                         verbose=0)
    masked = tfprune.prune(model, rd, shrink=False)
    report = rd.report
    assert report.predicted == pytest.approx(sum(u.distortion for u in report.units))
    expected = ((masked(x).numpy() - model(x).numpy()) ** 2).mean(axis=1).max()
    assert report.joint == pytest.approx(expected, rel=1e-4)
    assert report.additivity_error == pytest.approx(
        (report.joint - report.predicted) / report.joint)
    assert [u.removed for u in report.units] == [int(r.sum()) for r in rd.removed.values()]
    assert "measured jointly" in str(report)


def test_rounds_reach_the_target_geometrically_during_fit():
    model, (x, y) = _small(5, n=48)
    rd = tfprune.RDPrune(tfprune.Target(flops=0.4), (x[:16], y[:16]), grid=4, rounds=3,
                         round_steps=2, verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[rd], verbose=0)
    assert [e.step for e in rd.events] == [0, 2, 4]
    assert [e.keep["flops"] for e in rd.events] == pytest.approx([0.4 ** (1 / 3), 0.4 ** (2 / 3),
                                                                  0.4])
    kept = [e.achieved["flops_kept"] for e in rd.events]
    assert all(k <= e.keep["flops"] + 1e-12 for k, e in zip(kept, rd.events))
    assert kept[0] > kept[1] > kept[2]
    assert len(rd.reports) == 3


def test_rd_allocation_with_the_sosp_saliency_ranking_inside_groups():
    model, data = _small(6)
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    context = ScoringContext(model, calibration_data=data, groups=groups)
    sosp = SOSPSaliency()
    sosp.prepare(context)
    saliency = {g.id: sosp(g, context) for g in groups}
    rd = tfprune.RDPrune(tfprune.Target(flops=0.5), data, grid=4, criterion=SOSPSaliency(),
                         verbose=0)
    tfprune.prune(model, rd)
    for gid, removed in rd.removed.items():
        if removed.any() and (~removed).any():
            assert saliency[gid][removed].max() <= saliency[gid][~removed].min()


def test_bad_input():
    model, data = _small()
    target = tfprune.Target(flops=0.5)
    with pytest.raises(MissingCalibrationDataError):
        tfprune.RDPrune(target, None)
    for grid in (1, [0.0, 0.5], "fine", []):
        with pytest.raises(InvalidPruningArgumentError, match="grid"):
            tfprune.RDPrune(target, data, grid=grid)
    with pytest.raises(InvalidPruningArgumentError, match="distortion"):
        tfprune.RDPrune(target, data, distortion="max")
    with pytest.raises(InvalidPruningArgumentError, match="rounds"):
        tfprune.RDPrune(target, data, rounds=0)
    with pytest.raises(InvalidTargetError, match="sparsity"):
        tfprune.RDPrune(target, data, granularity="weight")
    with pytest.raises(InvalidTargetError, match="cannot be met"):
        tfprune.prune(model, tfprune.RDPrune(tfprune.Target(flops=0.05), data,
                                             min_density=0.5, verbose=0))
    with pytest.raises(DataError, match="calibration data"):
        tfprune.prune(model, tfprune.RDPrune(target, (data[0][:, :4], data[1]), verbose=0))
