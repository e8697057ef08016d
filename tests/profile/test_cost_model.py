"""`CostModel` on hand-made groups: exact against narrower models built by hand, API, errors."""

import time

import keras
import numpy as np
import pytest
from keras import layers

import tfprune
from tfprune.errors import InvalidRemovalError, NotPrunableError, ProfileError, UnknownGroupError
from tfprune.graph import ChannelGroup, Member, ParamSlice
from tfprune.profile import CostModel

KEYS = ("flops", "macs", "params", "trainable_params", "weight_bytes")


def _slice(layer, weight, axis, index_map, role, trainable=True):
    return ParamSlice(layer, weight, axis, np.asarray(index_map).reshape(len(index_map), -1),
                      role, trainable)


def _group(gid, size, slices, prunable=True, reason=None, granule=1):
    by_layer = {}
    for s in slices:
        by_layer.setdefault((s.layer, s.role), []).append(s)
    members = tuple(Member(layer, "Layer", role, -1, slices[0].index_map, tuple(slices))
                    for (layer, role), slices in by_layer.items())
    return ChannelGroup(gid, size, prunable, reason, members, granule)


def _producer(layer, n, bn=None):
    c = np.arange(n)
    out = [_slice(layer, "kernel", 3, c, "producer"), _slice(layer, "bias", 0, c, "producer")]
    if bn:
        out += [_slice(bn, w, 0, c, "producer", w in ("gamma", "beta"))
                for w in ("gamma", "beta", "moving_mean", "moving_variance")]
    return out


def _conv_chain(c1=6, c2=4):
    """conv(c1) -> BN -> ReLU -> conv(c2, stride 2) -> Flatten -> Dense(5)."""
    x = keras.Input((8, 8, 3))
    y = layers.Conv2D(c1, 3, padding="same", name="c1")(x)
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(c2, 3, strides=2, padding="same", name="c2")(y)
    y = layers.Flatten()(y)
    return keras.Model(x, layers.Dense(5, name="fc")(y))


def _conv_chain_groups():
    flat = np.arange(16)[None, :] * 4 + np.arange(4)[:, None]   # channel c at every position
    return [
        _group(0, 6, _producer("c1", 6, bn="bn") + [_slice("c2", "kernel", 2, np.arange(6),
                                                           "consumer")]),
        _group(1, 4, _producer("c2", 4) + [_slice("fc", "kernel", 0, flat, "consumer")]),
        _group(2, 5, [_slice("fc", "kernel", 1, np.arange(5), "producer"),
                      _slice("fc", "bias", 0, np.arange(5), "producer")],
               prunable=False, reason="fc is a model output"),
    ]


def _concat(a=3, b=5):
    """Two convolutions concatenated, read by a third."""
    x = keras.Input((6, 6, 2))
    ya = layers.Conv2D(a, 3, padding="same", name="ca")(x)
    yb = layers.Conv2D(b, 1, name="cb")(x)
    y = layers.Concatenate()([ya, yb])
    return keras.Model(x, layers.Conv2D(2, 3, name="cc")(y))


def _concat_groups():
    read_a = _slice("cc", "kernel", 2, np.arange(3), "consumer")
    read_b = _slice("cc", "kernel", 2, 3 + np.arange(5), "consumer")   # after a's 3 channels
    return [_group(0, 3, _producer("ca", 3) + [read_a]),
            _group(1, 5, _producer("cb", 5) + [read_b])]


def _square(n=6):
    """A dense layer whose input and output are in the same group (a residual add)."""
    x = keras.Input((7, 4))
    h = layers.Dense(n, name="d1")(x)
    y = layers.Dense(n, name="d2")(h)
    z = layers.Add()([h, y])
    return keras.Model(x, layers.Dense(3, name="out")(z))


def _square_groups():
    c = np.arange(6)
    return [_group(0, 6, [_slice("d1", "kernel", 1, c, "producer"),
                          _slice("d1", "bias", 0, c, "producer"),
                          _slice("d2", "kernel", 0, c, "consumer"),
                          _slice("d2", "kernel", 1, c, "producer"),
                          _slice("d2", "bias", 0, c, "producer"),
                          _slice("out", "kernel", 0, c, "consumer")])]


def _totals(model):
    p = tfprune.profile(model)
    return {"flops": p.flops, "macs": p.macs, "params": p.params,
            "trainable_params": p.trainable_params, "weight_bytes": p.weight_bytes}


@pytest.mark.parametrize("build, groups, narrow", [
    (_conv_chain, _conv_chain_groups, lambda r: _conv_chain(6 - int(r[0]), 4 - int(r[1]))),
    (_concat, _concat_groups, lambda r: _concat(3 - int(r[0]), 5 - int(r[1]))),
    (_square, _square_groups, lambda r: _square(6 - int(r[0]))),
])
def test_evaluate_equals_profile_of_narrower_model(build, groups, narrow):
    model, gs = build(), groups()
    cost = CostModel(model, gs)
    assert cost.dense == _totals(model)
    rng = np.random.default_rng(0)
    for _ in range(4):
        counts = np.array([int(rng.integers(0, g.size)) if g.prunable else 0 for g in gs])
        assert cost.evaluate(counts) == _totals(narrow(counts)), counts
        assert cost.evaluate({g.id: int(k) for g, k in zip(gs, counts)}) == cost.evaluate(counts)


def test_batched_evaluate_and_marginal():
    model, gs = _conv_chain(), _conv_chain_groups()
    cost = CostModel(model, gs)
    counts = np.array([[0, 0, 0], [2, 1, 0], [5, 3, 0]])
    batch = cost.evaluate(counts)
    for i, row in enumerate(counts):
        one = cost.evaluate(row)
        assert all(batch[k][i] == one[k] for k in KEYS)
    start = {0: 2, 1: 1}
    here = cost.evaluate(start)
    m = cost.marginal(start)
    for i, g in enumerate(gs):
        if not g.prunable:
            continue
        step = dict(start)
        step[g.id] = step.get(g.id, 0) + 1
        after = cost.evaluate(step)
        assert all(m[k][i] == here[k] - after[k] for k in KEYS)
    # Group 1 is read through the Flatten: one channel carries 16 input rows of the Dense.
    assert m["params"][1] == 3 * 3 * (6 - 2) + 1 + 16 * 5   # c2 kernel column, bias, fc rows
    assert m["flops"][0] > 0 and np.all(m["macs"] >= 0)


def test_evaluate_is_fast():
    # Pruning callbacks evaluate thousands of removals per pruning event.
    model, gs = _conv_chain(), _conv_chain_groups()
    cost = CostModel(model, gs)
    counts = np.array([3, 2, 0])
    times = []
    for _ in range(200):
        t = time.perf_counter()
        cost.evaluate(counts)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 1e-3


def test_model_and_groups_are_not_changed():
    model, gs = _conv_chain(), _conv_chain_groups()
    before = [w.copy() for w in model.get_weights()]
    cost = CostModel(model, gs)
    cost.evaluate({0: 2})
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert cost.groups == tuple(gs)
    assert cost.group_ids.tolist() == [0, 1, 2] and cost.sizes.tolist() == [6, 4, 5]


def test_bad_counts():
    model, gs = _conv_chain(), _conv_chain_groups()
    gs[1] = _group(1, 4, gs[1].params, granule=2)
    cost = CostModel(model, gs)
    with pytest.raises(UnknownGroupError, match=r"no channel group 7.*\[0, 1, 2\]"):
        cost.evaluate({7: 1})
    with pytest.raises(InvalidRemovalError, match=r"group 0 .*cannot remove 6 channels.*0 to 5"):
        cost.evaluate({0: 6})
    with pytest.raises(InvalidRemovalError, match=r"cannot remove -1"):
        cost.evaluate(np.array([-1, 0, 0]))
    with pytest.raises(NotPrunableError, match=r"group 2 .*fc is a model output"):
        cost.evaluate({2: 1})
    with pytest.raises(InvalidRemovalError, match=r"blocks of 2"):
        cost.evaluate({1: 1})
    assert cost.evaluate({1: 2})["params"] < cost.dense["params"]
    with pytest.raises(InvalidRemovalError, match=r"shape \(2,\).*\(3,\)"):
        cost.evaluate(np.array([1, 0]))
    with pytest.raises(InvalidRemovalError, match="integers"):
        cost.evaluate(np.array([0.5, 0, 0]))
    with pytest.raises(InvalidRemovalError, match="number of channels removed"):
        cost.evaluate({0: [1, 2]})
    with pytest.raises(InvalidRemovalError, match="one removal"):
        cost.marginal(np.zeros((2, 3), int))
    other = keras.Sequential([keras.Input((4,)), layers.Dense(2, name="d")])
    with pytest.raises(ProfileError, match=r"group 0 .*'c1'/'kernel'.*another model"):
        CostModel(other, _conv_chain_groups())
