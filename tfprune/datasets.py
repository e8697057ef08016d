"""Loaders for the data formats tfprune's tools, examples and benchmarks read.

All loaders return numpy arrays `(x, y)`: images as `uint8` in HWC order, labels as `int64`.
They never download anything; `load_tfds` is the only one that may, through TFDS itself.

Example:

```python
from tfprune import datasets
(x_train, y_train), (x_test, y_test) = datasets.load_cifar10(datasets.shared_data_dir())
```
"""

from __future__ import annotations

import csv
import os
import pathlib
from typing import List, Optional, Tuple

import numpy as np

from tfprune.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
ENV_DATA_DIR = "TFPRUNE_DATA_DIR"


def shared_data_dir(required: bool = False) -> Optional[pathlib.Path]:
    """Where the real datasets live: `$TFPRUNE_DATA_DIR`, else `../shared/data` of the project.

    Returns None when neither exists (or raises `DataError` if `required`).
    """
    candidates = []
    if os.environ.get(ENV_DATA_DIR):
        candidates.append(pathlib.Path(os.environ[ENV_DATA_DIR]))
    root = pathlib.Path(__file__).resolve().parents[1]
    candidates += [root.parent / "shared" / "data", pathlib.Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    if required:
        raise DataError(
            "no data folder found: set $TFPRUNE_DATA_DIR or place the shared data at "
            f"{candidates[1]} (looked in: {', '.join(map(str, candidates))})")
    return None


def load_image_folder(path, image_size: Optional[Tuple[int, int]] = None,
                      limit_per_class: Optional[int] = None):
    """Reads `path/<class>/<image>` into `(x uint8 NHWC, y int64, class_names)`.

    Class folders sorted alphabetically give labels `0..n-1` (the Keras convention).
    Grayscale images keep one channel; everything else is converted to RGB.
    """
    from PIL import Image

    path = pathlib.Path(path)
    if not path.is_dir():
        raise DataError(f"image folder {str(path)!r} does not exist")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{str(path)!r} has no class subfolders (expected <folder>/<class>/<image>)")
    xs: List[np.ndarray] = []
    ys: List[int] = []
    for label, name in enumerate(classes):
        files = sorted(f for f in (path / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if limit_per_class is not None:
            files = files[:limit_per_class]
        for f in files:
            with Image.open(f) as im:
                im = im.convert("L" if im.mode in ("L", "1", "I;16") else "RGB")
                if image_size is not None and im.size != (image_size[1], image_size[0]):
                    im = im.resize((image_size[1], image_size[0]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
            xs.append(a[..., None] if a.ndim == 2 else a)
            ys.append(label)
    if not xs:
        raise DataError(f"{str(path)!r} has class folders but no images ({', '.join(IMAGE_SUFFIXES)})")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DataError(f"images in {str(path)!r} have different shapes {sorted(shapes)[:4]}; "
                        "pass image_size=(h, w) to resize them")
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes


def load_mlperf_bin(path, image_shape=(32, 32, 3)):
    """Reads the MLPerf Tiny / EEMBC evaluation layout: raw HWC uint8 `.bin` files + `y_labels.csv`.

    `y_labels.csv` rows are `file,num_classes,label`. Returns `(x, y)` in the csv's order.
    """
    path = pathlib.Path(path)
    labels = path / "y_labels.csv"
    if not labels.is_file():
        raise DataError(f"{str(path)!r} has no y_labels.csv (rows 'file,num_classes,label')")
    n = int(np.prod(image_shape))
    xs, ys = [], []
    with open(labels, newline="") as fh:
        for row in csv.reader(fh):
            if not row:
                continue
            if len(row) < 3:
                raise DataError(f"{labels}: row {row!r} is not 'file,num_classes,label'")
            raw = np.fromfile(path / row[0], dtype=np.uint8)
            if raw.size != n:
                raise DataError(f"{path / row[0]}: {raw.size} bytes, expected {n} for HWC {image_shape}")
            xs.append(raw.reshape(image_shape))
            ys.append(int(row[2]))
    if not xs:
        raise DataError(f"{labels} lists no images")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def load_npz(path, x_key: Optional[str] = None, y_key: Optional[str] = None):
    """Reads `(x, y)` from an `.npz` (keys `x`/`y`, `x_test`/`y_test`, ...) or `x` from an `.npy`."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist")
    if path.suffix == ".npy":
        return np.load(path), None
    with np.load(path) as data:
        keys = list(data.keys())
        xk = x_key or next((k for k in ("x", "x_test", "x_train", "images", "inputs") if k in keys), None)
        if xk is None:
            raise DataError(f"{str(path)!r} has keys {keys}; expected one of x, x_test, x_train, "
                            "images, inputs (or pass x_key=)")
        yk = y_key or {"x": "y", "x_test": "y_test", "x_train": "y_train", "images": "labels",
                       "inputs": "labels"}.get(xk)
        return data[xk], (data[yk] if yk in keys else None)


def load_cifar10(data_dir=None, limit_per_class: Optional[int] = None):
    """CIFAR-10 from `<data_dir>/cifar10/{train,test}/<class>/*.jpg`: `((x, y), (x, y))`."""
    base = pathlib.Path(data_dir) if data_dir is not None else shared_data_dir(required=True)
    if (base / "cifar10").is_dir():
        base = base / "cifar10"
    train = load_image_folder(base / "train", limit_per_class=limit_per_class)[:2]
    test = load_image_folder(base / "test", limit_per_class=limit_per_class)[:2]
    return train, test


def load_cifar10_lossless_200(data_dir=None):
    """The 200 pixel-exact CIFAR-10 test images of the MLPerf Tiny evaluation set."""
    base = pathlib.Path(data_dir) if data_dir is not None else shared_data_dir(required=True)
    if (base / "cifar10-lossless-200").is_dir():
        base = base / "cifar10-lossless-200"
    return load_mlperf_bin(base)


def load_mnist(data_dir=None):
    """MNIST from `<data_dir>/mnist/mnist.npz`: `((x, y), (x, y))`, images `(n, 28, 28)` uint8."""
    base = pathlib.Path(data_dir) if data_dir is not None else shared_data_dir(required=True)
    f = base / "mnist" / "mnist.npz" if (base / "mnist").is_dir() else base / "mnist.npz"
    if not f.is_file():
        raise DataError(f"no mnist.npz under {str(base)!r}")
    with np.load(f) as d:
        return (d["x_train"], d["y_train"].astype(np.int64)), (d["x_test"], d["y_test"].astype(np.int64))


def load_digits(test_fraction: float = 0.25, seed: int = 0):
    """The 1,797 8x8 handwritten digits bundled with scikit-learn (no download).

    Returns `((x, y), (x, y))` with images `(n, 8, 8, 1)` as float32 in [0, 16], split
    stratified by `seed`.
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - sklearn is in the data/test extras
        raise DataError("the digits dataset needs scikit-learn: pip install 'tfprune[data]'") from e
    d = _load()
    x = d.images.astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(len(idx) * test_fraction))])
    mask = np.zeros(len(y), bool)
    mask[test_idx] = True
    return (x[~mask], y[~mask]), (x[mask], y[mask])


def load_tfds(name: str, split: str = "test", limit: Optional[int] = None, data_dir=None):
    """`(x, y)` from a TensorFlow Datasets name (downloads only if TFDS itself is online)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"loading the TFDS dataset {name!r} needs tensorflow-datasets: "
                        "pip install 'tfprune[data]'") from e
    try:
        ds = tfds.load(name, split=split if limit is None else f"{split}[:{limit}]",
                       as_supervised=True, data_dir=data_dir)
    except Exception as e:  # TFDS raises many types; say which dataset failed and why
        raise DataError(f"TFDS could not load {name!r} (split {split!r}): {e}") from e
    xs, ys = zip(*[(x, y) for x, y in tfds.as_numpy(ds)])
    return np.stack(xs), np.asarray(ys, dtype=np.int64)
