"""SOSP-H and RDPrune on ResNet-8 / CIFAR-10 (slow): budgets, shrinking, objectives, cost.

Each method must do better than the baselines *on its own objective* at the same budget: SOSP-H
a lower calibration loss than random channels, RDPrune a lower worst-case output distortion
than L1 / magnitude with global or uniform allocation. Run with
`pytest -m slow tests/methods/test_rd_sosp_cifar.py -s` to see the figures: loss, distortion
and test accuracy of each one-shot pruning without fine-tuning, and what each method costs on
this machine. (Accuracies without fine-tuning are
for orientation; the quality benchmark, with fine-tuning, is `docs/BENCHMARKS.md`'s.)
"""

import pathlib
import sys
import time

import keras
import numpy as np
import pytest

import tfprune
from tfprune.criteria.context import loss_and_gradients

pytestmark = pytest.mark.slow

LOSS = keras.losses.SparseCategoricalCrossentropy()
CALIBRATION = 1024


@pytest.fixture(scope="module")
def trained(shared_data):
    """The protocol's dense ResNet-8 (30 epochs; cached by `tools/bench_common.py`, trained there
    when absent), 1,024 training images for calibration and 5,000 test images."""
    tools = str(pathlib.Path(__file__).resolve().parents[2] / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import bench_common

    (x, y), test = bench_common.load_cifar10(shared_data)
    model = bench_common.dense_resnet8(shared_data, log_stream=None)
    model.compile("adam", "sparse_categorical_crossentropy")   # it ends in a softmax
    rng = np.random.default_rng(0)
    calib = rng.permutation(len(x))[:CALIBRATION]
    held_out = rng.permutation(len(test[0]))[:5000]      # the files are sorted by class
    return (model, (x[calib].astype("float32"), y[calib]),
            (test[0][held_out].astype("float32"), test[1][held_out]))


def _accuracy(model, data):
    x, y = data
    return float(np.mean(np.argmax(model.predict(x, batch_size=500, verbose=0), -1) == y))


def _loss(model, data):
    return float(LOSS(data[1], model.predict(data[0], batch_size=500, verbose=0)))


def _logits(model, x):
    """The logits of a model that ends in a Dense softmax: its copy with a linear last layer."""
    last = model.layers[-1]

    def clone(layer):
        config = layer.get_config()
        if layer is last:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy.predict(x, batch_size=500, verbose=0)


def _distortion(pruned, model, x):
    """Worst case over samples of the per-sample MSE of the logits, as RDPrune measures it."""
    return float(((_logits(pruned, x) - _logits(model, x)) ** 2).mean(axis=1).max())


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _gradient_pass(model, data):
    fn = loss_and_gradients(model)
    fn(data[0][:128], data[1][:128])                      # trace outside the timing
    batches = [(data[0][i:i + 128], data[1][i:i + 128]) for i in range(0, len(data[0]), 128)]
    return _timed(lambda: [fn(xb, yb) for xb, yb in batches])[1:]


def test_sosp_h_on_resnet8(trained):
    model, calib, test = trained
    target = tfprune.Target(flops=0.5)
    dense = _accuracy(model, test)
    sosp = tfprune.SOSPH(target, calib, verbose=1)
    masked, wall, cpu = _timed(lambda: tfprune.prune(model, sosp, shrink=False))
    small = tfprune.strip(masked)
    assert sosp.events[-1].achieved["flops_kept"] <= 0.5
    assert tfprune.profile(small).flops <= 0.5 * tfprune.profile(model).flops
    np.testing.assert_allclose(small(test[0][:64]), masked(test[0][:64]), rtol=1e-4, atol=1e-4)
    grad_wall, grad_cpu = _gradient_pass(model, calib)
    pruned = {name: tfprune.prune(model, name, target, calib) for name in ("l1", "taylor",
                                                                           "random")}
    pruned["sosp_h"] = small
    pruned["sosp_h per FLOP"] = tfprune.prune(model, "sosp_h", target, calib, per_flop=True)
    print(f"\nResNet-8 (protocol, 30 epochs), dense: calibration loss "
          f"{_loss(model, calib):.3f}, top-1 {dense:.4f} (5k test); one-shot to 50% FLOPs, no "
          "fine-tuning:")
    losses = {name: _loss(m, calib) for name, m in pruned.items()}
    for name, m in pruned.items():
        print(f"  {name:<16} calibration loss {losses[name]:.3f}  top-1 {_accuracy(m, test):.4f}")
    print(f"  SOSP-H prune() on {CALIBRATION} images: {wall:.1f} s wall, {cpu:.1f} s CPU; one "
          f"gradient pass: {grad_wall:.2f} s wall, {grad_cpu:.2f} s CPU")
    assert losses["sosp_h"] < losses["random"]


def _plain_and_naive_seconds(model, calib, rd, repeats=4):
    """Per variant: a plain `predict` of the calibration set (the floor), and masking a
    copy's weights in place before each `predict` (what a per-level loop would do)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    group = rd.groups[-1]

    def naive(count):
        for p in group.params:
            v = tfprune.graph.find_variable(copy, p.layer, p.weight)
            w = v.numpy()
            index = [slice(None)] * w.ndim
            index[p.axis] = p.indices(np.arange(count))
            w[tuple(index)] = 0.0
            v.assign(w)
        copy.predict(calib[0], batch_size=128, verbose=0)
        copy.set_weights(model.get_weights())

    naive(1)
    plain = _timed(lambda: [copy.predict(calib[0], batch_size=128, verbose=0)
                            for _ in range(repeats)])[1] / repeats
    return plain, _timed(lambda: [naive(c) for c in range(1, repeats + 1)])[1] / repeats


def test_rd_prune_channels_on_resnet8(trained):
    model, calib, test = trained
    target = tfprune.Target(flops=0.5)
    rd = tfprune.RDPrune(target, calib, grid=20, verbose=1)
    masked, wall, cpu = _timed(lambda: tfprune.prune(model, rd, shrink=False))
    cost = tfprune.profile.CostModel(model)
    counts = {g: int(r.sum()) for g, r in rd.removed.items()}
    assert cost.evaluate(counts)["flops"] <= 0.5 * cost.dense["flops"]
    for g in counts:
        if counts[g]:
            assert cost.evaluate({**counts, g: counts[g] - 1})["flops"] > 0.5 * cost.dense["flops"]
    report = rd.report
    per_variant = report.seconds / report.evaluations
    plain, naive = _plain_and_naive_seconds(model, calib, rd)
    mean_rd = tfprune.RDPrune(target, calib, grid=20, distortion="mean", verbose=0)
    pruned = {"rd (worst case)": tfprune.strip(masked), "rd (mean)": tfprune.prune(model, mean_rd),
              "l1 global": tfprune.prune(model, "l1", target),
              "l1 uniform": tfprune.prune(model, "l1", target, allocation="uniform")}
    distortion = {name: _distortion(m, model, calib[0]) for name, m in pruned.items()}
    print(f"\nResNet-8 channels to 50% FLOPs, no fine-tuning ({len(rd.groups)} groups, grid 20, "
          f"{CALIBRATION} images):")
    for name, m in pruned.items():
        print(f"  {name:<16} worst-case distortion {distortion[name]:8.3f}  top-1 "
              f"{_accuracy(m, test):.4f}")
    print(f"  RDPrune prune(): {wall:.1f} s wall, {cpu:.1f} s CPU; {report.evaluations} forward "
          f"passes, {per_variant * 1e3:.0f} ms each with the event's own overhead; one plain "
          f"predict: {plain * 1e3:.0f} ms; mask-assign + predict: {naive * 1e3:.0f} ms")
    print(report)
    assert distortion["rd (worst case)"] == pytest.approx(report.joint, rel=1e-3)
    assert distortion["rd (worst case)"] < min(distortion["l1 global"], distortion["l1 uniform"])


def test_rd_prune_weights_on_resnet8(trained):
    model, calib, test = trained
    target = tfprune.Target(sparsity=0.5)
    rd = tfprune.RDPrune(target, calib, granularity="weight", grid=20, verbose=0)
    masked, wall, cpu = _timed(lambda: tfprune.prune(model, rd, shrink=False))
    total = sum(r.size for r in rd.removed.values())
    assert sum(int(r.sum()) for r in rd.removed.values()) == int(np.ceil(0.5 * total - 1e-9))
    pruned = {"rd": masked}
    for allocation in ("global", "uniform"):
        m = tfprune.MagnitudePruning(target, granularity="weight", allocation=allocation,
                                     verbose=0)
        pruned[f"magnitude {allocation}"] = tfprune.prune(model, m, shrink=False)
    distortion = {name: _distortion(m, model, calib[0]) for name, m in pruned.items()}
    print("\nResNet-8 weights at 50% sparsity, no fine-tuning:")
    for name, m in pruned.items():
        print(f"  {name:<16} worst-case distortion {distortion[name]:8.3f}  top-1 "
              f"{_accuracy(m, test):.4f}")
    print(f"  RDPrune {wall:.1f} s wall, {cpu:.1f} s CPU, {rd.report.evaluations} forward passes")
    print(rd.report)
    assert distortion["rd"] < min(distortion["magnitude global"], distortion["magnitude uniform"])
