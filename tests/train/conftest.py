"""Shared fixtures of the training tests."""

import pytest

from lumbar_jax.data import build, synthetic


@pytest.fixture(scope="session")
def kaggle_dir(tmp_path_factory):
    """A Kaggle-layout folder of 12 synthetic studies (seed 5), written once for every training test."""
    root = tmp_path_factory.mktemp("train_kaggle")
    synthetic.write_synthetic_dataset(str(root), synthetic.DatasetSpec(12, seed=5), progress=False)
    return str(root)


@pytest.fixture(scope="session")
def data_dir(kaggle_dir, tmp_path_factory):
    """`kaggle_dir` built as r64, made once for every training test."""
    out = str(tmp_path_factory.mktemp("train_data"))
    build.build_dataset(kaggle_dir, out, "r64", workers=1)
    return out


@pytest.fixture(scope="session")
def native_data_dir(kaggle_dir, tmp_path_factory):
    """`kaggle_dir` built as r64_native (the two-stage pipeline's dataset)."""
    out = str(tmp_path_factory.mktemp("train_native_data"))
    build.build_dataset(kaggle_dir, out, "r64_native", workers=1)
    return out
