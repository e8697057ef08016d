"""The check every shrink test relies on: `shrink` computes what `mask_channels` computes.

Relative error is measured as `max|shrunk - masked| / max|masked|` over all outputs of a batch
of random inputs: the largest deviation, relative to the scale of the outputs.
"""

from __future__ import annotations

import json
import pathlib
import sys

import keras
import numpy as np

import tfprune

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))
from bench_graph import random_removal  # noqa: E402,F401  (one definition, shared with the benchmark)

RTOL = 1e-5


def randomize_statistics(model, seed=0):
    """Gives normalization statistics and biases random values, so that slicing the wrong
    entries of them shows in the outputs (their initial values are all equal).

    ConvNeXt's LayerScale starts at 1e-6, which would hide its residual branches (the part
    that is prunable) under float rounding: it gets values of order 1 too.
    """
    rng = np.random.default_rng(seed)
    for v in model.weights:
        name = v.name
        if name in ("moving_variance", "variance", "gamma"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype))
        elif name in ("moving_mean", "mean", "beta", "bias"):
            v.assign(rng.uniform(-0.2, 0.2, v.shape).astype(v.dtype))
    for _, layer in tfprune.graph.iter_layers(model):
        if type(layer).__name__ == "LayerScale":
            for v in layer.weights:
                v.assign(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype))


def random_inputs(model, batch=2, seed=0, low=-1.0, high=1.0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(low, high, (batch,) + tuple(x.shape[1:])).astype("float32")
            for x in model.inputs]


def relative_error(a, b) -> float:
    a = [np.asarray(x, dtype=np.float64) for x in keras.tree.flatten(a)]
    b = [np.asarray(x, dtype=np.float64) for x in keras.tree.flatten(b)]
    scale = max(np.abs(x).max() for x in b)
    diff = max(np.abs(x - y).max() for x, y in zip(a, b))
    return float(diff / scale) if scale > 0 else float(diff)


def snapshot(model):
    """Weights and config, to check that a model was not modified."""
    return [np.array(w) for w in model.get_weights()], json.dumps(model.get_config(), default=str)


def check_equivalence(model, fraction=0.3, seed=0, inputs=None, rtol=RTOL):
    """Removes a random `fraction` of every prunable group; asserts shrink == mask.

    Returns `(shrunk, masked, removed, error)`.
    """
    groups = tfprune.channel_groups(model)
    removed = random_removal(groups, fraction, seed)
    before = snapshot(model)
    shrunk = tfprune.shrink(model, removed)
    masked = tfprune.mask_channels(model, removed)
    after = snapshot(model)
    assert before[1] == after[1], "the input model's config changed"
    assert all(np.array_equal(x, y) for x, y in zip(before[0], after[0])), \
        "the input model's weights changed"
    x = inputs if inputs is not None else random_inputs(model, seed=seed)
    x = x[0] if len(x) == 1 else x
    error = relative_error(shrunk(x, training=False), masked(x, training=False))
    assert error <= rtol, f"shrunk and masked outputs differ: relative error {error:.3g}"
    assert type(shrunk) is type(model)
    return shrunk, masked, removed, error
