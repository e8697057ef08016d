import numpy as np
import pytest

from tfprune import datasets
from tfprune.errors import DataError


def test_lossless_200(shared_data):
    x, y = datasets.load_cifar10_lossless_200(shared_data)
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (200,) and set(np.unique(y)) <= set(range(10))
    assert len(np.unique(y)) == 10


def test_cifar10_folder_subset(shared_data):
    (xt, yt), (xv, yv) = datasets.load_cifar10(shared_data, limit_per_class=3)
    assert xt.shape == (30, 32, 32, 3) and xv.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(yt), [3] * 10)


def test_mnist(shared_data):
    (xt, yt), (xv, yv) = datasets.load_mnist(shared_data)
    assert xt.shape == (60000, 28, 28) and xv.shape == (10000, 28, 28)
    assert yv.min() == 0 and yv.max() == 9


def test_digits_split_is_stratified_and_disjoint():
    (xt, yt), (xv, yv) = datasets.load_digits()
    assert xt.shape[1:] == (8, 8, 1) and len(xt) + len(xv) == 1797
    assert abs(len(xv) / 1797 - 0.25) < 0.01
    assert set(np.unique(yv)) == set(range(10))


def test_bad_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        datasets.load_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        datasets.load_image_folder(tmp_path / "empty")
