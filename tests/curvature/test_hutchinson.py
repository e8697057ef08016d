"""Hutchinson's diagonal and trace estimates against exact Hessians."""

import keras
import numpy as np

import curvature_reference as ref
from tfprune import curvature
from tfprune.graph import channel_groups

LOGITS_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_diagonal_and_trace_with_200_samples():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5)], name="softmax_regression")
    x, y = ref.classification_data(model, 256, 5)
    r = ref.Reference(model, ref.sparse_ce_logits, x, y)
    hessian = r.hessian()
    exact = np.diag(hessian)
    # A fair test: the estimator's own standard deviation of the trace at 200 samples,
    # sqrt(2 * sum of squared off-diagonal entries / 200), is far below the 5% asked for.
    off = hessian - np.diag(exact)
    assert np.sqrt(2 * np.sum(off ** 2) / 200) < 0.0125 * exact.sum()
    est = curvature.hutchinson(model, LOGITS_CE, (x, y), samples=200, seed=0)
    assert est.samples == 200
    assert [d.shape for d in est.diagonal] == r.shapes
    assert np.corrcoef(r.flatten(est.diagonal), exact)[0, 1] >= 0.9
    assert abs(est.trace - exact.sum()) <= 0.05 * exact.sum()
    assert abs(est.trace - sum(d.sum() for d in est.diagonal)) < 1e-9 * abs(est.trace)
    assert 0 < est.trace_stderr < 0.05 * est.trace


def test_per_layer_and_per_group_sums_of_the_diagonal():
    model, (x, y), _, _ = ref.case("cnn_bn")
    est = curvature.hutchinson(model, LOGITS_CE, (x, y), samples=4, seed=1, vectors_per_pass=2,
                               method="reverse_over_reverse")
    by_layer = est.per_layer()
    assert list(by_layer) == ["conv2d", "batch_normalization", "conv2d_1",
                              "batch_normalization_1", "dense"]
    diag = {w.path: d for w, d in zip(model.trainable_weights, est.diagonal)}
    assert np.isclose(by_layer["conv2d_1"], diag["conv2d_1/kernel"].sum() + diag["conv2d_1/bias"].sum())
    groups = channel_groups(model)
    per_group = est.per_group(groups)
    for group in groups:
        expected = np.zeros(group.size)
        for c in range(group.size):
            for p in group.params:
                if p.trainable:
                    expected[c] += np.take(diag[f"{p.layer}/{p.weight}"], p.indices([c]),
                                           axis=p.axis).sum()
        np.testing.assert_allclose(per_group[group.id], expected, rtol=1e-10, atol=1e-12)
    assert sum(v.sum() for v in per_group.values()) != 0
