import contextlib
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tfprune.errors import (DataError, InvalidCriterionError, InvalidPruningArgumentError,
                            InvalidScheduleError, InvalidTargetError,
                            MissingCalibrationDataError, NothingToPruneError)
from tfprune.graph import find_variable


def _fit(model, data, callback, epochs=1, batch_size=16, extra=(), **kwargs):
    x, y = data
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0,
                     callbacks=[callback, *extra], **kwargs)


def _slots(model, v):
    return [s for s in model.optimizer.variables
            if s.shape == v.shape and s.name.startswith(v.path.replace("/", "_"))]


def _assert_masked(model, cb, slots=True):
    """Every entry carrying a removed channel is zero, in weights and optimizer slots."""
    for g in cb.groups:
        gone = np.flatnonzero(cb.removed[g.id])
        for p in g.params:
            v = find_variable(model, p.layer, p.weight)
            for array in [v.numpy()] + ([s.numpy() for s in _slots(model, v)] if slots else []):
                assert np.all(np.take(array, p.indices(gone), axis=p.axis) == 0), p


@pytest.fixture(scope="module")
def gradual(tiny_cnn, data, tmp_path_factory):
    """One gradual channel-pruning run (Adam), with batch logs, masks and summaries recorded."""
    log_dir = tmp_path_factory.mktemp("summaries")
    model = tiny_cnn()
    cb = tfprune.MagnitudePruning(tfprune.Target(flops=0.4),
                                  tfprune.PolynomialDecay(0, 8, frequency=4))
    record = {"logs": [], "removed": [], "masked_after_step": 0}

    def after_batch(batch, logs):
        record["logs"].append(dict(logs))
        record["removed"].append(cb.removed)
        if cb.events:
            _assert_masked(model, cb)
            record["masked_after_step"] += 1

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = _fit(model, data, cb, epochs=3, extra=[
            keras.callbacks.LambdaCallback(on_train_batch_end=after_batch),
            tfprune.PruningSummaries(log_dir, update_freq=2)])
    return model, cb, history, record, out.getvalue(), log_dir


def test_flops_target_met_within_one_channel_per_group(gradual):
    model, cb, _, record = gradual[:4]
    assert [e.step for e in cb.events] == [0, 4, 8]
    cost = cb.cost_model
    index = [i for i, g in enumerate(cost.groups) if g.id in cb.removed]
    counts = np.zeros(len(cost.groups), int)
    counts[index] = [cb.removed[cost.groups[i].id].sum() for i in index]
    assert counts.sum() > 0
    budget = 0.4 * cost.dense["flops"]
    assert cost.evaluate(counts)["flops"] <= budget
    # Within one channel per group: giving one channel back to every group misses the target.
    assert cost.evaluate(np.maximum(counts - 1, 0))["flops"] > budget
    assert cb.events[-1].achieved["flops_kept"] == pytest.approx(
        cost.evaluate(counts)["flops"] / cost.dense["flops"])
    assert record["masked_after_step"] == 12      # zero after every step, Adam slots too


def test_logs_carry_pruning_progress(gradual):
    history, record = gradual[2:4]
    for key in ("pruning/flops_kept", "pruning/params_kept", "pruning/sparsity"):
        assert key in history.history and key in record["logs"][-1]
    flops = [logs["pruning/flops_kept"] for logs in record["logs"]]
    assert flops[0] == 1.0 and flops[-1] <= 0.4     # the event of step 0 keeps everything
    assert all(a >= b for a, b in zip(flops, flops[1:]))
    assert history.history["pruning/sparsity"][-1] == pytest.approx(
        1 - history.history["pruning/params_kept"][-1])


def test_masks_are_monotone_across_events(gradual):
    removed = gradual[3]["removed"]
    for before, after in zip(removed, removed[1:]):
        for gid in before:
            assert np.all(after[gid][before[gid]])
    assert any(r.any() for r in removed[-1].values())


def test_verbose_prints_one_line_per_event(gradual):
    lines = [line for line in gradual[4].splitlines() if line.startswith("tfprune:")]
    assert len(lines) == 3
    assert "step 8" in lines[-1] and "flops<=0.400" in lines[-1] and "flops_kept 0.3" in lines[-1]


def test_summaries_write_scalars_and_histograms(gradual):
    cb, log_dir = gradual[1], gradual[5]
    values = {}
    for path in log_dir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                values.setdefault(v.tag, []).append((event.step, v))
    flops = values["pruning/flops_kept"]
    assert len(flops) == 3 + 6                     # every epoch, and every 2 batches
    final = tf.make_ndarray(flops[-1][1].tensor)
    assert final == pytest.approx(cb.achieved()["flops_kept"]) and flops[-1][0] == 12
    for tag in ("pruning/params_kept", "pruning/sparsity", "pruned/conv0/kernel",
                "pruning/kept_channels_per_group", "pruning/sparsity_per_variable"):
        assert tag in values, sorted(values)
    histogram = values["pruning/kept_channels_per_group"][-1][1]
    assert histogram.metadata.plugin_data.plugin_name == "histograms"
    assert tf.make_ndarray(histogram.tensor)[:, 2].sum() == len(cb.groups)
    assert flops[-1][1].metadata.plugin_data.plugin_name == "scalars"
    kept = cb.summary_histograms()["kept_channels_per_group"]
    assert kept.min() < 1.0 and kept.shape == (len(cb.groups),)
    with pytest.raises(InvalidPruningArgumentError, match="update_freq=0"):
        tfprune.PruningSummaries(log_dir, update_freq=0)


def test_momentum_cannot_revive_a_pruned_weight(tiny_cnn, data):
    model = tiny_cnn(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    cb = tfprune.MagnitudePruning(tfprune.Target(flops=0.5), tfprune.OneShot(3), verbose=0)
    seen = {"checked": 0}

    def check(batch, logs):
        step = int(model.optimizer.iterations.numpy())
        if step == 3:  # just before the event the momentum of every weight is non-zero
            kernel = model.get_layer("conv0").kernel
            seen["before"] = min(float(np.abs(s.numpy()).min()) for s in _slots(model, kernel))
        if step > 3:
            _assert_masked(model, cb)
            seen["checked"] += 1

    _fit(model, data, cb, epochs=2, extra=[keras.callbacks.LambdaCallback(
        on_train_batch_end=check)])
    assert seen["before"] > 0 and seen["checked"] == 5
    assert sum(r.sum() for r in cb.removed.values()) > 0


def test_prunable_model_keeps_masks_in_wrappers(tiny_cnn, data):
    model = tfprune.prunable(tiny_cnn(compile=False))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = tfprune.MagnitudePruning(tfprune.Target(params=0.5), tfprune.OneShot(1), verbose=0)
    _fit(model, data, cb, epochs=2)
    # Gradients are masked exactly, so raw weights and Adam's slots stay at zero.
    _assert_masked(model, cb)
    wrapper = model.get_layer("conv0")
    group = [g for g in cb.groups if g.producers[0].layer == "conv0"][0]
    gone = cb.removed[group.id]
    assert gone.any() and not gone.all()
    masks = {v.name: m.numpy() for v, m in wrapper.masked_weights()}
    assert np.all(masks["kernel"][..., gone] == 0) and np.all(masks["kernel"][..., ~gone] == 1)
    assert wrapper.layer.kernel.constraint is None      # nothing installed on wrapped layers


def test_steps_per_execution_prunes_at_window_starts(tiny_cnn, data):
    model = tiny_cnn(compile=False)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=3)
    cb = tfprune.MagnitudePruning(tfprune.Target(flops=0.5), tfprune.PolynomialDecay(2, 7, 5),
                                  verbose=0)
    _fit(model, data, cb, epochs=2)
    # Windows start at 0, 3, 6: the events of steps 2 and 7 run at the windows holding them,
    # and the masks hold at every step inside a window (they are part of the train step).
    assert [e.step for e in cb.events] == [2, 7]
    assert cb.events[-1].achieved["flops_kept"] <= 0.5
    _assert_masked(model, cb)


def test_optimizer_kept_and_constraints_restored(data):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, kernel_constraint=keras.constraints.MaxNorm(0.05, [0, 1, 2]),
                            name="conv0")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(True))
    optimizer, kernel = model.optimizer, model.get_layer("conv0").kernel
    original = kernel.constraint
    cb = tfprune.MagnitudePruning(tfprune.Target(flops=0.5), verbose=0)
    _fit(model, data, cb, epochs=2)
    assert model.optimizer is optimizer and kernel.constraint is original
    norms = np.sqrt((kernel.numpy() ** 2).sum(axis=(0, 1, 2)))
    assert np.all(norms <= 0.05 + 1e-6)        # the layer's own constraint still ran
    assert np.sum(norms == 0) == 3             # and the mask after it
    # Nothing is left behind: a later fit without the callback masks nothing.
    kernel.assign(np.full(kernel.shape, 0.01, np.float32))
    _fit(model, data, keras.callbacks.Callback(), epochs=1)
    assert np.all(np.abs(kernel.numpy()) > 0)


def test_weight_granularity_uniform_is_per_layer_sparsity(tiny_cnn, data, drive):
    model = tiny_cnn()
    cb = drive(tfprune.MagnitudePruning(tfprune.Target(sparsity=0.7), granularity="weight",
                                        allocation="uniform", verbose=0), model)
    kernels = {n: model.get_layer(n).kernel.numpy() for n in ("conv0", "conv1", "head")}
    assert set(cb.removed) == {f"{n}/kernel" for n in kernels}
    for name, k in kernels.items():
        assert abs((k == 0).mean() - 0.7) <= 1.0 / k.size + 1e-9
        nonzero = np.abs(k[k != 0])
        assert nonzero.size and np.all(nonzero > 0)
    total = sum(k.size for k in kernels.values())
    assert cb.events[-1].achieved["sparsity"] == pytest.approx(
        sum(int((k == 0).sum()) for k in kernels.values()) / total)


def test_global_weight_pruning_removes_smallest_magnitudes(tiny_cnn, drive):
    model = tiny_cnn()
    before = {n: np.abs(model.get_layer(n).kernel.numpy()) for n in ("conv0", "conv1", "head")}
    cb = drive(tfprune.MagnitudePruning(tfprune.Target(sparsity=0.6), granularity="weight",
                                        verbose=0), model)
    flat = np.concatenate([b.ravel() for b in before.values()])
    removed = np.concatenate([cb.removed[f"{n}/kernel"].ravel() for n in before])
    assert removed.sum() == int(np.ceil(0.6 * flat.size))
    assert flat[removed].max() <= flat[~removed].min()


def test_default_allocation_normalizes_channel_scores_per_group(tiny_cnn, drive):
    # One group's L1 scores scaled down a thousand times: the raw global ranking prunes that
    # group first, the default (normalised) one judges its channels against each other.
    def scaled(model):
        kernel = model.get_layer("conv0").kernel
        kernel.assign(kernel.numpy() * 1e-3)
        return model

    raw = drive(tfprune.MagnitudePruning(tfprune.Target(flops=0.5), allocation="global",
                                         verbose=0), scaled(tiny_cnn()))
    default = drive(tfprune.MagnitudePruning(tfprune.Target(flops=0.5), verbose=0),
                    scaled(tiny_cnn()))
    assert repr(default.allocation) == "GlobalRanking(per_unit_cost=False, normalize='mean')"
    first, second = (g.id for g in raw.groups)
    assert raw.removed[second].sum() == 0 and default.removed[second].sum() > 0
    assert (~raw.removed[first]).sum() < (~default.removed[first]).sum()
    assert default.events[-1].achieved["flops_kept"] <= 0.5
    weights = tfprune.MagnitudePruning(tfprune.Target(sparsity=0.5), granularity="weight",
                                       verbose=0)
    assert repr(weights.allocation) == "GlobalRanking(per_unit_cost=False, normalize=None)"


def test_taylor_uses_calibration_data(tiny_cnn, data, drive):
    model = tiny_cnn()
    cb = drive(tfprune.MagnitudePruning(tfprune.Target(flops=0.5), criterion="taylor",
                                        calibration_data=(data[0][:16], data[1][:16]),
                                        verbose=0), model)
    assert cb.events[-1].achieved["flops_kept"] <= 0.5
    _assert_masked(model, cb)


def test_non_finite_loss_skips_the_event(tiny_cnn, data, drive):
    model = tiny_cnn()
    bad = data[0][:16].copy()
    bad[0, 0, 0, 0] = np.nan
    cb = tfprune.MagnitudePruning(tfprune.Target(flops=0.5), criterion="taylor",
                                  calibration_data=(bad, data[1][:16]), verbose=0)
    with pytest.warns(UserWarning, match="step 0 skipped, masks unchanged.*calibration data"
                                         " is nan"):
        drive(cb, model)
    assert cb.events[0].skipped and not any(r.any() for r in cb.removed.values())
    assert all(np.all(model.get_layer(n).kernel.numpy() != 0) for n in ("conv0", "conv1"))
    cb = tfprune.MagnitudePruning(tfprune.Target(flops=0.5), verbose=0)
    with pytest.warns(UserWarning, match="step 0 skipped.*training loss is inf"):
        drive(cb, model, loss=float("inf"))
    assert not any(r.any() for r in cb.removed.values())


def test_min_channels_and_min_density_are_kept(tiny_cnn, drive):
    cb = drive(tfprune.MagnitudePruning(tfprune.Target(flops=0.3), min_channels=3, verbose=0),
               tiny_cnn())
    assert all((~r).sum() >= 3 for r in cb.removed.values())
    assert any((~r).sum() == 3 for r in cb.removed.values())
    cb = drive(tfprune.MagnitudePruning(tfprune.Target(sparsity=0.75), granularity="weight",
                                        min_density=0.2, verbose=0), tiny_cnn())
    assert all((~r).mean() >= 0.2 - 1e-9 for r in cb.removed.values())


def test_config_is_json():
    cb = tfprune.MagnitudePruning(tfprune.Target(flops_reduction=2.0),
                                  tfprune.PolynomialDecay(0, 10, 5), criterion="l2", seed=4)
    config = json.loads(json.dumps(cb.get_config()))
    assert config["target"] == {"flops_reduction": 2.0} and config["seed"] == 4
    assert config["criterion"] == {"class_name": "Magnitude", "config": {"norm": "l2"}}
    schedule = keras.saving.deserialize_keras_object(config["schedule"])
    assert schedule == tfprune.PolynomialDecay(0, 10, 5)


@pytest.mark.parametrize("rule", ["regression", "least_squares"])
def test_merge_rule_folds_the_removed_channels_of_any_criterion(tiny_cnn, data, rule):
    model = tiny_cnn()
    _fit(model, data, keras.callbacks.Callback(), epochs=2)
    events, smalls = {}, {}
    for merge_rule in (None, rule):
        cb = tfprune.MagnitudePruning(tfprune.Target(flops=0.5), calibration_data=data,
                                      merge_rule=merge_rule, verbose=1)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            smalls[merge_rule] = tfprune.prune(model, cb)
        events[merge_rule] = cb.events[-1]
        assert ("folded" in out.getvalue()) == (merge_rule is not None)
        assert cb.get_config()["merge_rule"] == merge_rule
    plain, fold = events[None], events[rule].fold
    assert plain.fold is None and events[rule].removed == plain.removed   # same channels
    assert fold.folded > 0 and not fold.skipped
    assert fold.error_merged < fold.error_removal                # the consumers' own error
    assert [w.shape for w in smalls[rule].weights] == [w.shape for w in smalls[None].weights]
    assert any(not np.allclose(a, b) for a, b in zip(smalls[rule].get_weights(),
                                                     smalls[None].get_weights()))


def test_merge_rule_by_name_and_in_sosph_and_rdprune(tiny_cnn, data):
    model = tiny_cnn()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    small = tfprune.prune(model, "l1", tfprune.Target(flops=0.5), data,
                          merge_rule="regression")
    assert tfprune.profile(small).flops <= 0.5 * tfprune.profile(model).flops
    sosp = tfprune.SOSPH(tfprune.Target(flops=0.5), data, per_flop=True, loss=loss,
                         merge_rule="regression", verbose=0)
    tfprune.prune(model, sosp)
    assert sosp.events[-1].fold.folded > 0 and sosp.get_config()["merge_rule"] == "regression"
    rd = tfprune.RDPrune(tfprune.Target(flops=0.5), data, grid=4, merge_rule="least_squares",
                         verbose=0)
    tfprune.prune(model, rd)
    fold = rd.events[-1].fold
    assert fold.folded > 0 and fold.error_merged <= fold.error_removal


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("build, error, message", [
    (lambda: tfprune.MagnitudePruning(0.5), InvalidTargetError, "must be a tfprune.Target"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), granularity="filter"),
     InvalidPruningArgumentError, "granularity='filter'.*'channel'.*'weight'"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), criterion="hessian"),
     InvalidCriterionError, "criterion='hessian'.*'l1'"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(sparsity=0.5), criterion="bn_scale",
                                      granularity="weight"),
     InvalidCriterionError, "cannot score at granularity='weight'"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), granularity="weight"),
     InvalidTargetError, "only takes Target\\(sparsity=...\\)"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), schedule=100),
     InvalidScheduleError, "schedule must be"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5),
                                      tfprune.PolynomialDecay(200, 100)),
     InvalidScheduleError, "end_step \\(100\\) must come after begin_step \\(200\\)"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), min_channels=0),
     InvalidPruningArgumentError, "min_channels=0: expected an integer >= 1"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), min_density=1.0),
     InvalidPruningArgumentError, "min_density=1.0"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), allocation="best"),
     InvalidPruningArgumentError, "unknown allocation 'best'"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), criterion="taylor",
                                      calibration_data=[1, 2, 3]),
     DataError, "calibration_data must be an \\(x, y\\) tuple"),
    (lambda: tfprune.PruningCallback("taylor", tfprune.Target(flops=0.5)),
     MissingCalibrationDataError, "Taylor\\(\\) needs calibration data"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), merge_rule="regression"),
     MissingCalibrationDataError, "merge_rule='regression' fits the fold"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), merge_rule="average",
                                      calibration_data=(np.zeros((2, 8, 8, 3)), [0, 1])),
     InvalidPruningArgumentError, "merge_rule='average'.*'regression'"),
    (lambda: tfprune.MagnitudePruning(tfprune.Target(sparsity=0.5), granularity="weight",
                                      merge_rule="half",
                                      calibration_data=(np.zeros((2, 8, 8, 3)), [0, 1])),
     InvalidPruningArgumentError, "folds channels; granularity='weight'"),
])
def test_bad_arguments_are_refused_at_construction(build, error, message):
    with pytest.raises(error, match=message):
        build()


def _refused_before_training(model, data, cb, error, message):
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(error, match=message):
        _fit(model, data, cb)
    assert int(model.optimizer.iterations.numpy()) == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_nothing_to_prune_is_refused_before_training(data):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _refused_before_training(model, data, tfprune.MagnitudePruning(tfprune.Target(flops=0.5)),
                             NothingToPruneError,
                             "no prunable channel group.*granularity='weight'")
    no_kernel = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.BatchNormalization(),
                                  keras.layers.GlobalAveragePooling2D()])
    no_kernel.compile("adam", "mse")
    with pytest.raises(NothingToPruneError, match="no kernel to prune"):
        no_kernel.fit(data[0], np.zeros((64, 3)), verbose=0, callbacks=[
            tfprune.MagnitudePruning(tfprune.Target(sparsity=0.5), granularity="weight")])


def test_unreachable_target_says_what_is_reachable(tiny_cnn, data):
    cb = tfprune.MagnitudePruning(tfprune.Target(flops=0.01), min_channels=2)
    _refused_before_training(
        tiny_cnn(), data, cb, InvalidTargetError,
        r"Target\(flops=0.01\) cannot be met: with min_channels=2, min_density=0.0, .* leaves "
        r"flops=0\.\d{4}; ask for no less")
    cb = tfprune.MagnitudePruning(tfprune.Target(sparsity=0.95), granularity="weight",
                                  min_density=0.1)
    _refused_before_training(
        tiny_cnn(), data, cb, InvalidTargetError,
        r"with min_density=0.1 the kernels reach at most sparsity=0\.8\d{3}; ask for no more")



class _FirstBudget(tfprune.MagnitudePruning):
    """Counts per-unit savings in the target's first budget, whichever binds."""

    def _unit_cost(self, keep, binding=None):
        return super()._unit_cost(keep)


def test_per_unit_cost_counts_savings_in_the_budget_that_binds(drive, flops_and_params_net):
    # conv0 (32 channels) holds the FLOPs, conv1 the params. With a loose FLOPs budget beside
    # a tight params one, the params budget binds: the ranking per param removed gives what
    # the params budget alone gives, where the ranking per FLOP (the target's first budget)
    # removes FLOPs it did not need to.
    def run(target, cls=tfprune.MagnitudePruning):
        model = flops_and_params_net(32, 4)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        per_unit = tfprune.allocation.GlobalRanking(per_unit_cost=True, normalize="mean")
        return drive(cls(target, allocation=per_unit, verbose=0), model)

    alone = run(tfprune.Target(params=0.5))
    both = run(tfprune.Target(flops=0.95, params=0.5))
    first = run(tfprune.Target(flops=0.95, params=0.5), _FirstBudget)
    for g in both.groups:
        np.testing.assert_array_equal(both.removed[g.id], alone.removed[g.id])
    assert any((first.removed[g.id] != both.removed[g.id]).any() for g in both.groups)
    achieved, spent = both.events[-1].achieved, first.events[-1].achieved
    assert achieved["params_kept"] <= 0.5 and achieved["flops_kept"] <= 0.95
    # Ranked per FLOP: 0.47 of the FLOPs kept where 0.91 meet both budgets.
    assert spent["params_kept"] <= 0.5 and spent["flops_kept"] < 0.6 < achieved["flops_kept"]
