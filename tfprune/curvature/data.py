"""Calibration data for curvature: read once, held in memory, batched, distributed.

Every product of a power iteration or a Hutchinson estimate must see the same function, so a
`tf.data.Dataset` is read once (shuffling or augmentation in it would otherwise change the
loss between products) and its batches are concatenated; `(x, y)` arrays are taken as they
are. Both are then served as batches of `batch_size` samples. The result of a product is a
mean over samples and does not depend on how they are batched.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfprune.errors import CurvatureError

ACCEPTED = "an (x, y) tuple of arrays/tensors or a tf.data.Dataset of (x, y) batches"


class CalibrationData:
    """`(x, y)` arrays or a finite `tf.data.Dataset` of `(x, y)` batches, in memory.

    Args:
        data: `(x, y)`; `x` may be a nested structure (dict, list) for multi-input models.
        batch_size: samples per batch for `(x, y)` arrays; a dataset keeps the size of its
            largest batch.

    Raises:
        CurvatureError: data of another structure, an infinite dataset, no samples, or
            `x` and `y` with different numbers of samples.
    """

    def __init__(self, data, batch_size: int = 128):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
                or batch_size < 1:
            raise CurvatureError(f"batch_size must be a positive int; received {batch_size!r}")
        if isinstance(data, tf.data.Dataset):
            x, y, batch_size = _read_dataset(data)
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            try:
                x, y = (tf.nest.map_structure(tf.convert_to_tensor, part) for part in data)
            except (ValueError, TypeError) as e:
                raise CurvatureError(f"data must be {ACCEPTED}; x or y cannot be converted to a "
                                     f"tensor: {e}") from None
        else:
            raise CurvatureError(f"data must be {ACCEPTED}; received "
                                 f"{_describe_structure(data)}")
        counts = {int(t.shape[0]) if t.shape.rank else -1
                  for t in tf.nest.flatten(x) + tf.nest.flatten(y)}
        if len(counts) != 1 or -1 in counts:
            raise CurvatureError(f"x and y must have the same number of samples on their first "
                                 f"axis; found sample counts {sorted(counts)}")
        self.num_samples = counts.pop()
        if self.num_samples == 0:
            raise CurvatureError("data has no samples")
        self.x, self.y = x, y
        self.batch_size = int(min(batch_size, self.num_samples))
        self.dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(self.batch_size)
        self._distributed = {}

    def batches(self, strategy):
        """The batches, split across the replicas of `strategy` (re-iterable)."""
        key = id(strategy)
        if key not in self._distributed:
            self._distributed[key] = (strategy, strategy.experimental_distribute_dataset(self.dataset))
        return self._distributed[key][1]

    @classmethod
    def of(cls, data, batch_size: int = 128) -> "CalibrationData":
        return data if isinstance(data, cls) else cls(data, batch_size)


def _describe_structure(data) -> str:
    if isinstance(data, (tuple, list)):
        return f"a {type(data).__name__} of {len(data)} elements"
    return type(data).__name__


def _read_dataset(dataset):
    spec = dataset.element_spec
    if not isinstance(spec, (tuple, list)) or len(spec) != 2:
        n = len(spec) if isinstance(spec, (tuple, list)) else None
        hint = (" (sample weights are not supported: the curvature is that of the plain mean "
                "loss)" if n == 3 else "")
        raise CurvatureError(f"data must be {ACCEPTED}; the dataset yields "
                             f"{_describe_structure(spec) if n else type(spec).__name__}{hint}")
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise CurvatureError("the dataset is infinite (e.g. .repeat()); pass a finite dataset, "
                             "e.g. dataset.take(n)")
    xs, ys, largest = [], [], 0
    for x, y in dataset:
        xs.append(x)
        ys.append(y)
        first = tf.nest.flatten(x)[0]
        largest = max(largest, int(first.shape[0]) if first.shape.rank else 0)
    if not xs:
        raise CurvatureError("the dataset yields no batches")
    if any(t.shape.rank == 0 for t in tf.nest.flatten((xs[0], ys[0]))):
        raise CurvatureError("the dataset yields scalars: it is not batched; batch it "
                             "(dataset.batch(n))")
    x = tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *xs)
    y = tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *ys)
    return x, y, max(largest, 1)
