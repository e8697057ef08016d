"""Power iteration (global and per block) against numpy.linalg.eigh of exact Hessians."""

import keras
import numpy as np
import pytest

import curvature_reference as ref
from tfprune import curvature
from tfprune.graph import ChannelGroup, Member, ParamSlice, channel_groups

LOGITS_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def residual_case():
    return ref.case("residual")


@pytest.fixture(scope="module")
def cnn_case():
    return ref.case("cnn_bn")


def _cosine(a, b):
    return abs(float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)))


def test_top_three_eigenpairs_by_deflation(residual_case):
    model, data, r, hessian = residual_case
    values, vectors = ref.top_eigenpairs(hessian, 4)
    # A fair test: the top four magnitudes are separated by clear gaps.
    assert np.all(np.abs(values[1:] / values[:-1]) < 0.8)
    top = curvature.power_iteration(model, "sparse_categorical_crossentropy", data, k=3,
                                    max_iter=200, tol=1e-6, seed=0)
    assert top.converged == [True] * 3 and len(top.eigenvectors) == 3
    assert abs(top.eigenvalues[0] - values[0]) <= 0.01 * abs(values[0])
    np.testing.assert_allclose(top.eigenvalues, values[:3], rtol=0.02)
    found = [r.flatten(v) for v in top.eigenvectors]
    assert _cosine(found[0], vectors[:, 0]) >= 0.99
    np.testing.assert_allclose([np.linalg.norm(f) for f in found], 1.0, rtol=1e-9)
    assert abs(np.dot(found[0], found[1])) < 1e-6  # deflation keeps them orthogonal


def test_gauss_newton_top_eigenvalue(residual_case):
    model, data, r, _ = residual_case
    values, vectors = ref.top_eigenpairs(r.gauss_newton("ce", strip_softmax=True), 2)
    assert values[1] / values[0] < 0.8
    top = curvature.power_iteration(model, "sparse_categorical_crossentropy", data,
                                    max_iter=200, tol=1e-6, hessian="gauss_newton")
    assert abs(top.eigenvalues[0] - values[0]) <= 0.01 * values[0]
    assert _cosine(r.flatten(top.eigenvectors[0]), vectors[:, 0]) >= 0.99


def _block_top(hessian, flat_index):
    values, _ = ref.top_eigenpairs(hessian[np.ix_(flat_index, flat_index)], 2)
    return values


def test_block_power_iteration_per_layer(cnn_case):
    model, data, r, hessian = cnn_case
    result = curvature.block_power_iteration(model, LOGITS_CE, data, max_iter=200, tol=1e-6)
    layers = ["conv2d", "batch_normalization", "conv2d_1", "batch_normalization_1", "dense"]
    assert list(result.eigenvalues) == layers
    assert all(result.converged.values())
    names = [w.path for w in model.trainable_weights]
    for layer in layers:
        index = np.concatenate([np.arange(r.offsets[k], r.offsets[k + 1])
                                for k, n in enumerate(names) if n.startswith(layer + "/")])
        values = _block_top(hessian, index)
        assert abs(values[1] / values[0]) < 0.9
        assert abs(result.eigenvalues[layer] - values[0]) <= 0.01 * abs(values[0]), layer
        vector = result.eigenvectors[layer]
        assert set(vector) == {f"{layer}/{n.split('/')[-1]}" for n in names
                               if n.startswith(layer + "/")}
    # The block top eigenvalue is not the global one (off-diagonal blocks are left out).
    assert max(result.eigenvalues.values()) < ref.top_eigenpairs(hessian, 1)[0][0] * 0.99


def test_block_power_iteration_per_channel_group(cnn_case):
    """Groups from the channel graph, and a hand-made group that covers part of a kernel."""
    model, data, r, hessian = cnn_case
    partial = ChannelGroup(
        id=99, size=2, prunable=True, reason=None,
        members=(Member("conv2d_1", "Conv2D", "producer", 3, np.array([[0], [2]]),
                        params=(ParamSlice("conv2d_1", "kernel", 3, np.array([[0], [2]]),
                                           "producer"),
                                ParamSlice("conv2d_1", "bias", 0, np.array([[0], [2]]),
                                           "producer"))),))
    groups = list(channel_groups(model)) + [partial]
    result = curvature.block_power_iteration(model, LOGITS_CE, data, blocks=groups,
                                             max_iter=200, tol=1e-6,
                                             method="forward_over_reverse")
    assert all(result.converged.values())
    assert sorted(result.eigenvalues) == sorted(g.id for g in groups)
    variables = {(w.path.split("/")[0], w.name): k for k, w in enumerate(model.trainable_weights)}
    for group in groups:
        index = []
        for p in group.params:
            if not p.trainable:
                continue
            k = variables[(p.layer, p.weight)]
            entries = np.zeros(r.shapes[k], dtype=bool)
            np.moveaxis(entries, p.axis, 0)[p.indices(range(group.size))] = True
            index.append(r.offsets[k] + np.flatnonzero(entries))
        index = np.unique(np.concatenate(index))
        values = _block_top(hessian, index)
        assert abs(result.eigenvalues[group.id] - values[0]) <= 0.01 * abs(values[0]), group.id
    assert set(result.eigenvectors[99]) == {"conv2d_1/kernel", "conv2d_1/bias"}
    kernel = result.eigenvectors[99]["conv2d_1/kernel"]
    assert np.all(kernel[..., [1, 3]] == 0) and np.any(kernel[..., [0, 2]] != 0)
