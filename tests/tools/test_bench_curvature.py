"""The multiply-add model of `tools/bench_curvature.py` on a network counted by hand."""

import pathlib
import sys

import keras
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

import bench_curvature as bcv  # noqa: E402


def test_multiply_add_model_counts_by_hand():
    x = keras.Input((4,))
    h = keras.layers.Rescaling(0.5)(x)               # no weights: the next layer is fed by input
    h = keras.layers.Dense(8, activation="relu")(h)  # 32 multiply-adds, no input adjoint
    out = keras.layers.Dense(3)(h)                   # 24
    m = bcv.multiply_add_model(keras.Model(x, out), vectors=4)
    assert (m["macs"], m["macs_input_layers"]) == (56, 32)
    gradient = 3 * 56 - 32                           # forward + input adjoints + weight grads
    assert m["hvp"] == pytest.approx((8 * 56 - 5 * 32) / gradient)
    assert m["hvp_4_vectors_per_vector"] == pytest.approx(
        (2 * 56 - 32 + 4 * (6 * 56 - 4 * 32)) / 4 / gradient)
    assert m["gauss_newton"] == pytest.approx((5 * 56 - 2 * 32) / gradient)
    # deeper networks approach 8/3 and 5/3 (the input layer's share vanishes)
    assert 2.0 < m["hvp"] < 8 / 3 and m["gauss_newton"] < 5 / 3
