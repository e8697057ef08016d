"""The benchmark protocol's settings and data stream, in plain TensorFlow and numpy.

`BENCHMARK_PROTOCOL.md` fixes the recipe every benchmark follows. Its constants and its
training data stream live here, free of Keras 3 and of tfprune, because two kinds of process
share them: tfprune's benchmarks (through `bench_common`) and the tfmot baseline
(`tfmot_baseline.py`), which runs under legacy Keras (`tf_keras`) in its own environment.
Input validation with tfprune's typed errors happens in `bench_common`.

Example:

```python
import bench_protocol as bp
(x_train, y_train), _ = bp.load_cifar10_npz("cache/cifar10_uint8.npz")
ds = bp.train_dataset(x_train, y_train, epochs=30, seed=0)
```
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE_DIR = pathlib.Path(os.environ.get("TFPRUNE_BENCH_CACHE", ROOT / "cache"))
CIFAR10_NPZ = "cifar10_uint8.npz"

PROTOCOL_LR = 2e-3
PROTOCOL_BATCH = 128
PROTOCOL_DENSE_EPOCHS = 30
# Fraction of the image size by which the protocol translates training images.
TRANSLATION = 0.125
# Training-image augmentations: the protocol's flip and translation, the flip alone, none.
AUGMENTATIONS = ("protocol", "flip", "none")
# Fine-tuning after (or during) pruning rewinds the learning rate to the dense peak (Renda et
# al., 2020): a model that lost most of its channels has to move far. Measured on ResNet-8 with
# half of every group removed (L1, 25% of the FLOPs) and 2 epochs of cosine decay: 57.4% top-1
# from 5e-4, 62.9% from 1e-3, 65.9% from 2e-3 (`docs/BENCHMARKS.md`, protocol).
FINE_TUNE_LR = 2e-3
# Int8 post-training quantization calibrates on this many training images.
REPRESENTATIVE_IMAGES = 200


def load_cifar10_npz(path):
    """`((x_train, y_train), (x_test, y_test))` from the decoded-array cache of `bench_common`."""
    with np.load(path) as d:
        return (d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])


def representative_images(x_train: np.ndarray, seed: int = 0,
                          count: int = REPRESENTATIVE_IMAGES) -> np.ndarray:
    """The protocol's int8 calibration set: `count` training images drawn with `seed`.

    Example:

    ```python
    calib = representative_images(x_train)   # (200, 32, 32, 3) uint8
    ```
    """
    order = np.random.default_rng(seed).permutation(len(x_train))
    return x_train[np.sort(order[:count])]


def augment(image, seed, translate: bool = True):
    """Random horizontal flip and a random integer translation of up to 12.5% per axis.

    Stateless ops keyed by a per-image seed make the stream a pure function of the run's seed.
    Translation pads with mirrored edges (the `SYMMETRIC` padding that Keras'
    `RandomTranslation` calls `fill_mode="reflect"`) and crops back at a random offset;
    `translate=False` flips only (with the same flips).
    """
    h, w = image.shape[0], image.shape[1]
    dy, dx = int(round(h * TRANSLATION)), int(round(w * TRANSLATION))
    seeds = tf.random.experimental.stateless_split(seed, 2)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if not translate:
        return image
    image = tf.pad(image, [[dy, dy], [dx, dx], [0, 0]], mode="SYMMETRIC")
    return tf.image.stateless_random_crop(image, tf.shape(image) - [2 * dy, 2 * dx, 0], seeds[1])


def train_dataset(x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
                  batch_size: int = PROTOCOL_BATCH, initial_epoch: int = 0,
                  augment_images=True) -> tf.data.Dataset:
    """The protocol's training stream: epochs `initial_epoch .. epochs-1`, shuffled, augmented.

    Epoch `e` is a permutation of the whole training set and per-image augmentations that
    depend only on `(seed, e)`, so a run that starts at `initial_epoch` sees exactly the
    batches an uninterrupted run would. Incomplete last batches are dropped (`len(x) //
    batch_size` steps per epoch). Images are float32 in the 0-255 range (the reference models
    rescale inside). Arguments are not validated here (see `bench_common.train_dataset`).

    Args:
        x, y: training images (uint8 or float, NHWC) and integer labels.
        epochs: index of the last epoch + 1.
        seed: seed of the shuffling and of the augmentation.
        batch_size: images per batch.
        initial_epoch: first epoch of the stream.
        augment_images: one of `AUGMENTATIONS`: `"protocol"` (or True) flips and
            translates, `"flip"` only flips, `"none"` (or False) feeds the images unchanged.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches.

    Example:

    ```python
    x = np.zeros((256, 32, 32, 3), np.uint8); y = np.zeros(256, np.int64)
    assert len(list(train_dataset(x, y, epochs=1, seed=0))) == 2
    ```
    """
    mode = {True: "protocol", False: "none"}.get(augment_images, augment_images)
    n = len(x)
    steps = n // batch_size
    images = tf.constant(x)
    labels = tf.constant(np.asarray(y, np.int64))
    run_seed = tf.constant(seed, tf.int64)

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                         seed=tf.stack([run_seed, epoch]))
        ds = tf.data.Dataset.from_tensor_slices(order[: steps * batch_size]).enumerate()

        def load(i, index):
            image = tf.cast(tf.gather(images, index), tf.float32)
            if mode != "none":
                image = augment(image, tf.stack([run_seed + 1, epoch * n + i]),
                                translate=mode == "protocol")
            return image, tf.gather(labels, index)

        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)

    ds = tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(num_images: int, batch_size: int = PROTOCOL_BATCH) -> int:
    """Training steps of one epoch (the last incomplete batch is dropped)."""
    return num_images // batch_size
