"""Shared fixtures of the training tests."""

import pytest

from lumbar_jax.data import build, synthetic


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A built r64 dataset of 12 synthetic studies (seed 5), made once for every training test."""
    root = tmp_path_factory.mktemp("train_data")
    synthetic.write_synthetic_dataset(str(root / "kaggle"), num_studies=12, seed=5, progress=False)
    build.build_dataset(str(root / "kaggle"), str(root / "tfds"), "r64", workers=1)
    return str(root / "tfds")
