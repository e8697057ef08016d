"""Resolving a DATA argument (calibration and evaluation sets) with `tfprune.datasets`.

DATA is one of:
- an image folder `<folder>/<class>/<image>` (labels from the sorted class names);
- the MLPerf Tiny / EEMBC layout: raw HWC `uint8` `.bin` files and `y_labels.csv`
  (e.g. `../shared/data/cifar10-lossless-200`);
- an `.npz` (keys `x`/`y`, `x_test`/`y_test`, ...) or an `.npy` of inputs;
- `tfds:NAME[:SPLIT]`, a TensorFlow Datasets name (split `test` by default, TFDS slicing
  allowed: `tfds:cifar10:train[:1000]`);
- in Python also an array of inputs, or an `(x, y)` tuple.

Samples are fed to the model exactly as stored: nothing is rescaled (the reference models
take raw 0-255 pixels and rescale inside). Images are resized to the model's input size only
when a folder holds images of another size; a missing channel axis of size 1 is added.

Example:

```python
from tfprune.export import load_data
x, y = load_data("../shared/data/cifar10-lossless-200", input_shape=(32, 32, 3))
x, _ = load_data("../shared/data/cifar10/train", input_shape=(32, 32, 3), limit=200)
```
"""

from __future__ import annotations

import math
import os
import pathlib
import zipfile
from typing import Optional, Tuple

import numpy as np

from tfprune import datasets
from tfprune.errors import DataError

TFDS_PREFIX = "tfds:"
ACCEPTED = ("an image folder <folder>/<class>/<image>, a folder of raw .bin files with "
            "y_labels.csv, an .npz or .npy file, or tfds:NAME[:SPLIT]")


def _load_folder(path: pathlib.Path, input_shape, limit):
    if (path / "y_labels.csv").is_file():
        shape = tuple(input_shape) if input_shape is not None else (32, 32, 3)
        return datasets.load_mlperf_bin(path, image_shape=shape)
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if classes and all(not any(f.is_file() for f in c.iterdir()) for c in classes):
        raise DataError(
            f"{str(path)!r} holds folders of folders ({', '.join(c.name for c in classes[:4])}): "
            f"it looks like a dataset root with splits; pass one split, e.g. "
            f"{str(path / classes[0].name)!r}")
    per_class = math.ceil(limit / len(classes)) if limit and classes else None
    size = tuple(input_shape[:2]) if input_shape is not None and len(input_shape) == 3 else None
    x, y, _ = datasets.load_image_folder(path, image_size=size, limit_per_class=per_class)
    return x, y


def _load_source(source, input_shape, limit):
    if isinstance(source, tuple) and len(source) == 2:
        return np.asarray(source[0]), None if source[1] is None else np.asarray(source[1])
    if isinstance(source, np.ndarray):
        return source, None
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"data must be a path, tfds:NAME, an array or an (x, y) tuple; got "
                        f"{type(source).__name__}")
    text = os.fspath(source)
    if text.startswith(TFDS_PREFIX):
        name, _, split = text[len(TFDS_PREFIX):].partition(":")
        if not name:
            raise DataError(f"{text!r}: expected tfds:NAME or tfds:NAME:SPLIT")
        sliced = "[" in split
        return datasets.load_tfds(name, split=split or "test", limit=None if sliced else limit)
    path = pathlib.Path(text)
    if path.is_dir():
        return _load_folder(path, input_shape, limit)
    if path.is_file() and path.suffix in (".npz", ".npy"):
        return datasets.load_npz(path)
    if path.exists():
        raise DataError(f"{text!r} is not a data source tfprune reads; accepted: {ACCEPTED}")
    raise DataError(f"data {text!r} does not exist; accepted: {ACCEPTED}")


def load_data(source, input_shape=None, limit: Optional[int] = None,
              seed: int = 0) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Loads inputs (and labels, when the source has them) for a model.

    Args:
        source: a DATA argument (see the module docstring).
        input_shape: the model's input shape without the batch axis, to check the samples
            against (and to size images and `.bin` files).
        limit: keep at most this many samples, a seeded random subset (image folders read
            only about `limit / classes` images per class).
        seed: seed of the subset.

    Returns:
        `(x, y)`: inputs as stored (e.g. uint8 pixels) and int labels or None.

    Raises:
        DataError: a source that does not exist or cannot be read, or samples whose shape
            does not fit `input_shape`.

    Example:

    ```python
    x, y = load_data("tfds:cifar10:train[:1000]", input_shape=(32, 32, 3), limit=200)
    ```
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer; got {limit!r}")
    try:
        x, y = _load_source(source, input_shape, limit)
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # an unreadable image or array file
        raise DataError(f"could not read data {_describe(source)}: {type(e).__name__}: {e}") from e
    x = np.asarray(x)
    if y is not None and len(y) != len(x):
        raise DataError(f"data has {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"data {source!r} holds no samples")
    if input_shape is not None:
        want = tuple(input_shape)
        if x.ndim == len(want) and want[-1] == 1:
            x = x[..., None]
        if tuple(x.shape[1:]) != want:
            raise DataError(f"data {_describe(source)} has samples of shape {tuple(x.shape[1:])}; "
                            f"the model takes {want}")
    if limit is not None and len(x) > limit:
        keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
        x, y = x[keep], (None if y is None else y[keep])
    return x, (None if y is None else np.asarray(y, dtype=np.int64))


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    return f"({type(source).__name__})"
