"""Hessian-vector and Gauss-Newton-vector products of a Keras model's mean loss."""

from __future__ import annotations

from typing import List, Optional, Sequence

import tensorflow as tf

from tfprune.curvature.operator import (EXACT, FORWARD_OVER_REVERSE, GAUSS_NEWTON,
                                        operator_for)


def hessian_vector_product(model, loss_fn, data, vectors: Sequence,
                           method: str = FORWARD_OVER_REVERSE, weights: Optional[Sequence] = None,
                           batch_size: int = 128) -> List[tf.Tensor]:
    """The exact Hessian of the mean loss times `vectors`: `H v`.

    `H` is the Hessian, with respect to the weights, of the mean over all samples of `data` of
    the per-sample loss, with BatchNormalization and Dropout in inference mode. It is computed
    in float32 (float64 for a float64 model), also for mixed-precision models. Under a
    `tf.distribute` strategy scope the batches are split across replicas and the replicas'
    sums are all-reduced.

    Args:
        model: a built single-output `keras.Model` (not modified).
        loss_fn: a `keras.losses.Loss`, a Keras loss name (`"sparse_categorical_crossentropy"`,
            `"mse"`, ...) or a callable `(y_true, y_pred)` returning per-sample losses or their
            batch mean. Cross-entropy on a model that ends in a softmax is evaluated from the
            softmax's input.
        data: `(x, y)` arrays/tensors, or a finite `tf.data.Dataset` of `(x, y)` batches.
        vectors: one array per weight, shaped like it.
        method: `"forward_over_reverse"` (a forward-mode derivative of the gradient) or
            `"reverse_over_reverse"` (the gradient of `<gradient, v>`, `v` held constant).
        weights: the variables `H` is taken with respect to: a subset of
            `model.trainable_weights`, or None for all of them.
        batch_size: samples per batch for `(x, y)` arrays.

    Returns:
        A list of tensors shaped like the weights.

    Raises:
        CurvatureError: a bad model, loss, data, weights or vectors (the message names it).
        NonFiniteError: the loss or the product is NaN or infinite.

    Example:

    ```python
    import numpy as np, keras, tfprune
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(3)])
    x, y = np.random.rand(64, 4).astype("float32"), np.random.randint(0, 3, 64)
    v = [np.random.randn(*w.shape).astype("float32") for w in model.trainable_weights]
    hv = tfprune.curvature.hessian_vector_product(
        model, keras.losses.SparseCategoricalCrossentropy(from_logits=True), (x, y), v)
    ```
    """
    op = operator_for(model, loss_fn, EXACT, method, weights)
    return op.products(data, [op.check_vectors(vectors)], batch_size=batch_size)[0]


def gauss_newton_vector_product(model, loss_fn, data, vectors: Sequence,
                                weights: Optional[Sequence] = None,
                                batch_size: int = 128) -> List[tf.Tensor]:
    """The Gauss-Newton matrix of the mean loss times `vectors`: `G v = J^T Lambda J v`.

    `J` is the Jacobian of the model's outputs with respect to the weights and `Lambda` the
    Hessian of the per-sample loss with respect to the outputs, averaged over samples. `G` is
    positive semi-definite. For softmax cross-entropy the outputs are the logits (the input of
    a final softmax, which is detected on functional and Sequential models) and
    `Lambda u = p*u - p<p, u>` with `p` the softmax; for mean squared error over `d` output
    entries `Lambda = 2 I / d`. Conventions as in `hessian_vector_product`.

    Args:
        model: a built single-output `keras.Model` (not modified).
        loss_fn: softmax cross-entropy (sparse or categorical, from logits or on a model ending
            in a softmax) or mean squared error, as a `keras.losses.Loss`, name or function.
        data: `(x, y)` arrays/tensors, or a finite `tf.data.Dataset` of `(x, y)` batches.
        vectors: one array per weight, shaped like it.
        weights: a subset of `model.trainable_weights`, or None for all of them.
        batch_size: samples per batch for `(x, y)` arrays.

    Returns:
        A list of tensors shaped like the weights.

    Raises:
        CurvatureError: any other loss (use `hessian_vector_product`), or bad input.
        NonFiniteError: the loss or the product is NaN or infinite.

    Example:

    ```python
    import numpy as np, keras, tfprune
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    x, y = np.random.rand(64, 4).astype("float32"), np.random.randint(0, 3, 64)
    v = [np.ones(w.shape, "float32") for w in model.trainable_weights]
    gv = tfprune.curvature.gauss_newton_vector_product(
        model, "sparse_categorical_crossentropy", (x, y), v)
    ```
    """
    op = operator_for(model, loss_fn, GAUSS_NEWTON, FORWARD_OVER_REVERSE, weights)
    return op.products(data, [op.check_vectors(vectors)], batch_size=batch_size)[0]
