"""The Apache Beam build (DirectRunner, 2 worker processes) writes the same records as the default build.

Needs the `beam` extra (apache-beam); without it this module is skipped.
"""

import os

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from lumbar_jax.data import beam_build, build, dataset, synthetic  # noqa: E402


def test_beam_build_writes_the_same_examples_as_the_default_build(tmp_path):
    kaggle = str(tmp_path / "kaggle")
    synthetic.write_synthetic_dataset(kaggle, synthetic.DatasetSpec(8, seed=5), progress=False)
    splits = list(build.build_dataset(kaggle, str(tmp_path / "plain"), "r64", workers=1).info.splits)
    assert list(beam_build.build_dataset_beam(kaggle, str(tmp_path / "beam"), "r64", workers=2).info.splits) == splits

    for split in splits:
        plain = dataset.load_split(str(tmp_path / "plain"), "r64", split)
        beam = dataset.load_split(str(tmp_path / "beam"), "r64", split)
        assert len(plain) == len(beam) > 0
        for a, b in zip(plain, beam):  # same order too (TFDS shuffles by key hash in both writers)
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split} {key}")
    version_dir = lambda d: os.path.join(tmp_path, d, "rsna_lumbar_spine", "r64", "1.0.0")
    assert os.path.exists(os.path.join(version_dir("beam"), "dataset_info.json"))
    assert sorted(f for f in os.listdir(version_dir("beam")) if f.endswith(".json")) == sorted(
        f for f in os.listdir(version_dir("plain")) if f.endswith(".json"))
