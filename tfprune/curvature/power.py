"""Top eigenpairs of the loss curvature by power iteration, globally or per block.

The power method multiplies a unit vector by the curvature and normalises it again, with the
norm taken over *all* of the vector's tensors at once (one norm per tensor would not be the
power method). The eigenvalue estimate is the Rayleigh quotient `v . Hv`; iteration stops
when it changes by at most `tol` (relative) or after `max_iter` products. It finds the
eigenvalue of largest *magnitude*: for a Hessian with a large negative eigenvalue that one is
returned, with its sign.

Several eigenpairs are found one after the other by deflation: the k-th iteration multiplies by
`H - sum_j lambda_j v_j v_j^T` and keeps its vector orthogonal to the eigenvectors already found
(Gram-Schmidt after every product, against round-off).

The block variant gives, for each layer or channel group `b`, the top eigenvalue of the diagonal
block `H[b, b]`: the curvature of the loss in the directions of that block's weights alone.
That needs `H[b, b] v_b`, which is *not* the `b` part of `H` applied to the sum of every
block's vector (that would add the off-diagonal blocks `H[b, c] v_c`). So every block gets its
own product, but all of them are computed in one compiled pass: the forward pass and the
gradient are shared, and each block's tangents only run through the layers that depend on it.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np

from tfprune.curvature.blocks import group_blocks, layer_blocks
from tfprune.curvature.data import CalibrationData
from tfprune.curvature.operator import (EXACT, FORWARD_OVER_REVERSE, REVERSE_OVER_REVERSE,
                                        check_positive_int, check_seed, check_tolerance,
                                        operator_for)
from tfprune.errors import CurvatureError


@dataclasses.dataclass(frozen=True)
class EigenResult:
    """Eigenpairs found by `power_iteration`.

    Attributes:
        eigenvalues: float64 array `(k,)`, in the order found (largest magnitude first).
        eigenvectors: `k` lists of float64 arrays shaped like the weights, each of unit norm
            over all its arrays.
        iterations: products used for each eigenpair.
        converged: whether each eigenvalue met `tol` within `max_iter`.
        names: the weights' names (`layer path/variable name`).
    """

    eigenvalues: np.ndarray
    eigenvectors: List[List[np.ndarray]]
    iterations: List[int]
    converged: List[bool]
    names: List[str]


@dataclasses.dataclass(frozen=True)
class BlockEigenResult:
    """Top eigenpair of each diagonal block, from `block_power_iteration`.

    Attributes:
        eigenvalues: `{block key: top eigenvalue of H[b, b]}`; keys are layer paths or group ids.
        eigenvectors: `{block key: {weight name: array}}`, of unit norm over the block, zero
            outside the block's entries.
        iterations: `{block key: products until it converged (or max_iter)}`.
        converged: `{block key: bool}`.
    """

    eigenvalues: Dict[object, float]
    eigenvectors: Dict[object, Dict[str, np.ndarray]]
    iterations: Dict[object, int]
    converged: Dict[object, bool]


def _dot(a, b) -> float:
    return float(sum(np.vdot(x, y) for x, y in zip(a, b)))


def _scaled(a, s):
    return [x * s for x in a]


def _orthogonalize(v, basis):
    for u in basis:
        c = _dot(u, v)
        v = [x - c * y for x, y in zip(v, u)]
    return v


def _numpy(tensors):
    return [np.asarray(t, dtype=np.float64) for t in tensors]


def _changed(new: float, old: Optional[float], tol: float) -> bool:
    return old is None or abs(new - old) > tol * abs(new)


def power_iteration(model, loss_fn, data, k: int = 1, max_iter: int = 100, tol: float = 1e-4,
                    seed: Optional[int] = 0, weights: Optional[Sequence] = None,
                    hessian: str = EXACT, method: str = FORWARD_OVER_REVERSE,
                    batch_size: int = 128) -> EigenResult:
    """The `k` eigenpairs of largest magnitude of the Hessian (or Gauss-Newton matrix).

    Args:
        model: a built single-output `keras.Model` (not modified).
        loss_fn: a `keras.losses.Loss`, a Keras loss name or a callable (see
            `hessian_vector_product`).
        data: `(x, y)` arrays/tensors or a finite `tf.data.Dataset` of `(x, y)` batches; read
            once and reused by every product.
        k: number of eigenpairs, found one after the other by deflation.
        max_iter: most products per eigenpair.
        tol: stop when the Rayleigh quotient changes by at most `tol` times its value.
        seed: seed of the random start vectors (None: not reproducible).
        weights: a subset of `model.trainable_weights`, or None for all of them.
        hessian: `"exact"` or `"gauss_newton"`.
        method: `"forward_over_reverse"` or `"reverse_over_reverse"` (exact Hessian).
        batch_size: samples per batch for `(x, y)` arrays.

    Returns:
        An `EigenResult`.

    Example:

    ```python
    import numpy as np, keras, tfprune
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(3)])
    x, y = np.random.rand(64, 4).astype("float32"), np.random.randint(0, 3, 64)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    top = tfprune.curvature.power_iteration(model, loss, (x, y), k=2, max_iter=50)
    print(top.eigenvalues, top.converged)
    ```
    """
    check_positive_int("k", k)
    check_positive_int("max_iter", max_iter)
    check_tolerance(tol)
    check_seed(seed)
    op = operator_for(model, loss_fn, hessian, method, weights)
    data = CalibrationData.of(data, batch_size)
    rng = np.random.default_rng(seed)
    shapes = [tuple(w.shape) for w in op.weights]
    values, vectors, iterations, converged = [], [], [], []
    for _ in range(k):
        v = _orthogonalize([rng.standard_normal(s) for s in shapes], vectors)
        v = _scaled(v, 1.0 / np.sqrt(_dot(v, v)))
        value, done, used = None, False, 0
        while used < max_iter and not done:
            hv = _numpy(op.products(data, [v])[0])
            used += 1
            for lam, u in zip(values, vectors):
                c = lam * _dot(u, v)
                hv = [x - c * y for x, y in zip(hv, u)]
            new = _dot(v, hv)
            hv = _orthogonalize(hv, vectors)
            norm = np.sqrt(_dot(hv, hv))
            done = not _changed(new, value, tol) or norm == 0.0
            value = new
            if norm > 0.0:
                v = _scaled(hv, 1.0 / norm)
        values.append(value)
        vectors.append(v)
        iterations.append(used)
        converged.append(done)
    return EigenResult(np.asarray(values, dtype=np.float64), vectors, iterations, converged,
                       list(op.names))


def block_power_iteration(model, loss_fn, data, blocks="layers", max_iter: int = 100,
                          tol: float = 1e-4, seed: Optional[int] = 0,
                          weights: Optional[Sequence] = None, hessian: str = EXACT,
                          method: str = REVERSE_OVER_REVERSE,
                          batch_size: int = 128) -> BlockEigenResult:
    """The top eigenvalue of each layer's (or channel group's) diagonal curvature block.

    All blocks iterate together, with one compiled pass per iteration that computes every
    block's product `H[b, b] v_b` (see the module docstring); a block that has converged keeps
    its eigenpair while the others go on, until all have converged or `max_iter` passes.

    Args:
        model: a built single-output `keras.Model` (not modified).
        loss_fn: as for `power_iteration`.
        data: as for `power_iteration`.
        blocks: `"layers"` (one block per layer with weights among `weights`), or a sequence of
            `tfprune.ChannelGroup` (one block per group: every entry of its trainable
            `ParamSlice`s; groups with none among `weights` are left out).
        max_iter: most passes.
        tol: stop a block when its Rayleigh quotient changes by at most `tol` (relative).
        seed: seed of the random start vectors.
        weights: a subset of `model.trainable_weights`, or None for all of them.
        hessian: `"exact"` or `"gauss_newton"`.
        method: `"reverse_over_reverse"` (default: here one persistent tape serves every
            block, which measured twice as fast as forward-over-reverse on ResNet-8, with
            less memory and a third of the tracing time) or `"forward_over_reverse"`.
        batch_size: samples per batch for `(x, y)` arrays.

    Returns:
        A `BlockEigenResult` keyed by layer path or group id.

    Example:

    ```python
    import numpy as np, keras, tfprune
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(3)])
    x, y = np.random.rand(64, 4).astype("float32"), np.random.randint(0, 3, 64)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    per_layer = tfprune.curvature.block_power_iteration(model, loss, (x, y), max_iter=50)
    print(per_layer.eigenvalues)   # {"dense": ..., "dense_1": ...}
    ```
    """
    check_positive_int("max_iter", max_iter)
    check_tolerance(tol)
    check_seed(seed)
    op = operator_for(model, loss_fn, hessian, method, weights)
    shapes = [tuple(w.shape) for w in op.weights]
    if isinstance(blocks, str) and blocks == "layers":
        found = layer_blocks(op.view.layer_paths)
    elif isinstance(blocks, (list, tuple)) and blocks:
        keys = {(p, w.name): i for i, (p, w) in enumerate(zip(op.view.layer_paths, op.weights))}
        found = group_blocks(blocks, keys, shapes)
        if not found:
            raise CurvatureError("none of the given channel groups has a trainable weight slice "
                                 "among the weights")
    else:
        raise CurvatureError("blocks must be 'layers' or a non-empty sequence of "
                             f"tfprune.ChannelGroup; received {blocks!r}")
    data = CalibrationData.of(data, batch_size)
    rng = np.random.default_rng(seed)
    layout = [b.indices for b in found]
    vs = []
    for b in found:
        v = b.restrict([rng.standard_normal(shapes[i]) for i in b.indices])
        vs.append(_scaled(v, 1.0 / np.sqrt(_dot(v, v))))
    values = [None] * len(found)
    used = [0] * len(found)
    done = [False] * len(found)
    for _ in range(max_iter):
        products = op.products(data, vs, blocks=layout)
        for j, b in enumerate(found):
            if done[j]:
                continue
            hv = b.restrict(_numpy(products[j]))
            used[j] += 1
            new = _dot(vs[j], hv)
            norm = np.sqrt(_dot(hv, hv))
            done[j] = not _changed(new, values[j], tol) or norm == 0.0
            values[j] = new
            if norm > 0.0:
                vs[j] = _scaled(hv, 1.0 / norm)
        if all(done):
            break
    names = op.names
    return BlockEigenResult(
        {b.key: float(values[j]) for j, b in enumerate(found)},
        {b.key: {names[i]: a for i, a in zip(b.indices, vs[j])} for j, b in enumerate(found)},
        {b.key: used[j] for j, b in enumerate(found)},
        {b.key: done[j] for j, b in enumerate(found)})
