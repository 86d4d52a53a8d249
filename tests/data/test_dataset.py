"""lumbar_jax.data.dataset: opening a dataset that is not built fails with the build command to run, and
leaves nothing in /tmp."""

import os
import tempfile

import pytest

from lumbar_jax.data import dataset


def test_opening_an_unbuilt_dataset_leaves_no_temporary_directory(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(FileNotFoundError, match=r"no built rsna_lumbar_spine/r64 .*lumbar_jax.data.build"):
        dataset.load_split(str(tmp_path / "empty"), "r64")
    assert os.listdir(scratch) == []  # TFDS would leave an empty tmp*tfds directory here
    assert tempfile.tempdir == str(scratch)  # restored
