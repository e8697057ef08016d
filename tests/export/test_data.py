import numpy as np
import pytest

from tfprune.errors import DataError
from tfprune.export import load_data


def _write_images(folder, classes=("cat", "dog"), per_class=3, size=(6, 5)):
    from PIL import Image

    for k, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((*size, 3), 40 * k + i, np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def test_image_folder_is_read_as_stored_and_resized_to_the_input(tmp_path):
    _write_images(tmp_path / "train")
    x, y = load_data(tmp_path / "train", input_shape=(6, 5, 3))
    assert x.shape == (6, 6, 5, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y), [3, 3])
    assert x[y == 1].min() >= 40                    # raw pixels, no rescaling
    x4, _ = load_data(tmp_path / "train", input_shape=(4, 4, 3))
    assert x4.shape == (6, 4, 4, 3)


def test_limit_is_a_seeded_subset(tmp_path):
    _write_images(tmp_path / "train", per_class=5)
    a, ya = load_data(tmp_path / "train", (6, 5, 3), limit=4, seed=0)
    b, yb = load_data(tmp_path / "train", (6, 5, 3), limit=4, seed=0)
    assert len(a) == 4
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)


def test_npz_npy_and_missing_channel_axis(tmp_path):
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(tmp_path / "d.npz", x_test=x, y_test=np.array([1, 0]))
    np.save(tmp_path / "d.npy", x)
    xs, ys = load_data(tmp_path / "d.npz", input_shape=(4, 4, 1))
    assert xs.shape == (2, 4, 4, 1) and list(ys) == [1, 0]
    xs, ys = load_data(tmp_path / "d.npy", input_shape=(4, 4, 1))
    assert xs.shape == (2, 4, 4, 1) and ys is None


def test_arrays_and_tuples(tmp_path):
    x = np.zeros((3, 2, 2, 1), np.float32)
    assert load_data(x, (2, 2, 1))[1] is None
    assert list(load_data((x, [0, 1, 2]), (2, 2, 1))[1]) == [0, 1, 2]


def test_mlperf_bin_layout(shared_data):
    x, y = load_data(shared_data / "cifar10-lossless-200", input_shape=(32, 32, 3))
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8 and len(set(y)) == 10


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "is not a data source"),
    (lambda p: "tfds:", "expected tfds:NAME"),
])
def test_bad_sources_are_clear_errors(tmp_path, make, message):
    with pytest.raises(DataError, match=message) as info:
        load_data(make(tmp_path))
    assert "accepted" in str(info.value) or "tfds:NAME" in str(info.value)


def test_wrong_shape_and_dataset_root_are_clear_errors(tmp_path):
    with pytest.raises(DataError,
                       match=r"samples of shape \(2, 2, 1\); the model takes \(4, 4, 3\)"):
        load_data(np.zeros((3, 2, 2, 1)), input_shape=(4, 4, 3))
    _write_images(tmp_path / "root" / "train")
    _write_images(tmp_path / "root" / "test")
    with pytest.raises(DataError, match="pass one split"):
        load_data(tmp_path / "root", input_shape=(6, 5, 3))


def test_unreadable_files_are_data_errors(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="could not read data"):
        load_data(tmp_path, input_shape=(4, 4, 3))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="could not read data"):
        load_data(tmp_path / "broken.npz")
