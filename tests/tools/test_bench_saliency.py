"""The saliency-fidelity benchmark (`tools/bench_saliency.py`) on a tiny ResNet-8."""

import pathlib
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

import bench_saliency as bs  # noqa: E402
import tfprune  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    model = tfprune.zoo.resnet8(input_shape=(16, 16, 3), widths=(4, 8, 8))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (320, 16, 16, 3)).astype("uint8")
    y = rng.integers(0, 10, 320)
    model.fit(x.astype("float32"), y, epochs=1, batch_size=64, verbose=0)
    return model, x, y


def test_spearman():
    assert bs.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bs.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert bs.spearman([1, 1, 1], [1, 2, 3]) == 0.0
    assert bs.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1])


def test_removal_is_measured_and_undone(tiny):
    model, x, y = tiny
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    before = [w.copy() for w in model.get_weights()]
    remover = bs.Remover(model, groups, x[:64].astype("float32"), y[:64])
    base = remover.mean_loss()
    changed = remover.loss_without({0: [0, 1]})
    assert changed != base
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # the same removal with the consumers' slices zeroed by hand: exactly what is measured
    for member in groups[0].consumers:
        for p in member.params:
            v = tfprune.graph.find_variable(model, p.layer, p.weight)
            value = v.numpy()
            index = [slice(None)] * value.ndim
            index[p.axis] = p.indices([0, 1])
            value[tuple(index)] = 0.0
            v.assign(value)
    try:
        assert remover.mean_loss() == pytest.approx(changed, rel=1e-6)
        # removing what is already gone changes nothing
        assert remover.loss_without({0: [0]}) == pytest.approx(changed, rel=1e-6)
    finally:
        model.set_weights(before)


def test_measure_reports_every_criterion(tiny):
    model, x, y = tiny
    names = ["L1 magnitude", "Taylor |g w|", "CAMP-HiVe, Hutchinson 8 (seed 0)",
             "CAMP-HiVe, gates"]
    assert set(names) <= set(bs.criteria(None))
    result = bs.measure(model, x, y, held_out=64, seed=0, verbose=False,
                        calibration_images=128, names=names)
    sizes = [len(c) for c in result["oracle_changes"]]
    assert sizes == [g.size for g in tfprune.channel_groups(model) if g.prunable]
    assert list(result["criteria"]) == names
    for row in result["criteria"].values():
        assert len(row["spearman"]) == len(sizes)
        assert all(-1.0 <= r <= 1.0 for r in row["spearman"])
        assert len(row["half_removed_over_oracle"]) == len(sizes)
    gates = result["criteria"]["CAMP-HiVe, gates"]
    assert gates["calibration_images"] == 128
    with pytest.raises(ValueError, match="no held-out images"):
        bs.measure(model, x[:100], y[:100], held_out=64, seed=0, verbose=False,
                   calibration_images=128)


def test_signed_estimate_is_the_gates_removal_estimate(tiny):
    model, x, y = tiny
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    data = (x[:64].astype("float32"), y[:64])
    loss = keras.losses.SparseCategoricalCrossentropy()
    criterion = bs.GateRemovalEstimate(loss)
    context = tfprune.criteria.ScoringContext(model, calibration_data=data, groups=groups)
    criterion.prepare(context)
    gates = [[(m.layer, m.axis, m.index_map[c]) for m in g.consumers]
             for g in groups for c in range(g.size)]
    expected = tfprune.curvature.gate_curvature(model, loss, data, gates).removal_estimate()
    scores = np.concatenate([criterion(g, context) for g in groups])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-9)


def test_criteria_are_chosen_by_names_or_their_beginnings():
    names = list(bs.criteria(None))
    assert bs.chosen_criteria(None, None) == names
    assert bs.chosen_criteria("L1 magnitude;CAMP-HiVe, gates, joint", None) == [
        "L1 magnitude", "CAMP-HiVe, gates, joint", "CAMP-HiVe, gates, joint, 1,024 images"]
    assert bs.chosen_criteria("Taylor |g w|", None) == ["Taylor |g w|"]
    with pytest.raises(ValueError, match="begins no criterion"):
        bs.chosen_criteria("L1 magnitude;Fisher", None)
    with pytest.raises(ValueError, match="begins no criterion"):
        bs.chosen_criteria(" ; ", None)
