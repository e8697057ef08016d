"""Shared fixtures.

Tests that read the real datasets use the `shared_data` fixture. Outside CI they are skipped
when `../shared/data` is absent; in CI (`CI=true`) a missing folder is a failure, never a skip.
"""

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    from tfprune.datasets import shared_data_dir

    path = shared_data_dir()
    if path is None:
        if IN_CI:
            pytest.fail("../shared/data is missing: CI must run with the shared data beside the clone")
        pytest.skip("../shared/data is not available on this machine")
    return path


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
