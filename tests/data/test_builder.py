"""The `rsna_lumbar_spine` builder on a Kaggle-layout folder it has never seen (TFDS builder-test style).

The dummy data is a handful of synthetic studies generated into a temporary manual dir (with every quirk:
truncated and junk files, a missing series, two axial series, RLE / JPEG 2000 pixel data, flipped and
transposed acquisitions, empty labels), built with the project's build command, and read back with
`tfds.data_source` (no TensorFlow).
"""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

import lumbar_jax.data.rsna_lumbar_spine  # noqa: F401  (registers the builder: tfds.data_source looks it up by name)
from lumbar_jax import cli
from lumbar_jax import labels
from lumbar_jax.data import build, study, synthetic

NUM_TRAIN, NUM_TEST = 8, 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("builder")
    manual_dir, data_dir = str(root / "kaggle"), str(root / "tfds")
    synthetic.write_synthetic_dataset(manual_dir, synthetic.DatasetSpec(NUM_TRAIN, 3, NUM_TEST), progress=False)
    assert build.main(["--manual_dir", manual_dir, "--data_dir", data_dir, "--config", "r64", "--workers", "1"]) == 0
    source = {split: tfds.data_source("rsna_lumbar_spine/r64", split=split, data_dir=data_dir)
              for split in ("train", "test")}
    records = {split: sorted((src[i] for i in range(len(src))), key=lambda r: r["study_id"])
               for split, src in source.items()}
    return manual_dir, data_dir, records


def test_every_study_in_both_splits_with_the_conventions_features(built):
    manual_dir, _, records = built
    train_ids = sorted(pd.read_csv(os.path.join(manual_dir, "train.csv"))["study_id"])
    test_ids = sorted(set(pd.read_csv(os.path.join(manual_dir, "test_series_descriptions.csv"))["study_id"]))
    assert [r["study_id"] for r in records["train"]] == train_ids
    assert [r["study_id"] for r in records["test"]] == test_ids
    r = records["train"][0]
    for name in labels.SERIES_TYPES:
        assert r[name].shape == (16, 64, 64) and r[name].dtype == np.uint8
    assert r["present"].shape == (3,) and r["present"].dtype == bool
    assert r["labels"].shape == (25,) and r["coords"].shape == (25, 3) and r["coords"].dtype == np.float32
    assert all((t["labels"] == -1).all() and (t["coords_series"] == -1).all() for t in records["test"])


def test_labels_match_train_csv_including_missing(built):
    manual_dir, _, records = built
    expected = study.read_labels(manual_dir)
    for r in records["train"]:
        np.testing.assert_array_equal(r["labels"], expected[r["study_id"]])
    assert any((r["labels"] == -1).any() for r in records["train"])


def test_missing_series_is_absent_and_zero(built):
    manual_dir, _, records = built
    with open(os.path.join(manual_dir, "synthetic_summary.json")) as f:
        missing = {q["study_id"] for q in json.load(f)["quirks"]["missing_series"]}
    for r in records["train"] + records["test"]:
        for k, name in enumerate(labels.SERIES_TYPES):
            assert r["present"][k] == (r[name].max() > 0)
            assert r["present"][k] == (r["series_ids"][k] >= 0)
        assert r["present"].all() != (r["study_id"] in missing)


def _value_at(record, target):
    volume = record[labels.SERIES_TYPES[record["coords_series"][target]]]
    index = np.round(record["coords"][target] * (np.array(volume.shape) - 1)).astype(int)
    return float(volume[tuple(index)]), float(volume.mean())


def test_coordinates_land_on_bright_structures_of_normal_targets(built):
    _, _, records = built
    hits = [_value_at(r, t) for r in records["train"] for t in range(25)
            if r["labels"][t] == 0 and r["coords_series"][t] >= 0]
    assert len(hits) > 50
    at, mean = np.array(hits).T
    # The canal, foramina and recesses are fluid/fat-bright; the coordinate must sit on them, not beside.
    assert np.median(at) > 200 and np.all(at > mean)


def test_canonical_orientation_from_coordinates(built):
    _, _, records = built
    for r in records["train"]:
        c, s = r["coords"], r["coords_series"]

        def coord(condition, level, axis):
            t = labels.target_index(condition, level)
            return c[t, axis] if s[t] >= 0 else None

        # Levels run superior -> inferior: rows of sagittal volumes, depth of the axial volume.
        rows = [coord(0, lv, 1) for lv in range(5)]
        if None not in rows:
            assert np.all(np.diff(rows) > 0), r["study_id"]
        depths = [coord(3, lv, 0) for lv in range(5)]
        if None not in depths:
            assert np.all(np.diff(depths) > 0), r["study_id"]
        for lv in range(5):
            # Patient left is the high end of sagittal depth and of axial columns.
            left, right = coord(1, lv, 0), coord(2, lv, 0)
            if left is not None and right is not None:
                assert left > right, r["study_id"]
            left, right = coord(3, lv, 2), coord(4, lv, 2)
            if left is not None and right is not None:
                assert left > right, r["study_id"]


def test_no_phi_in_any_output_file(built):
    _, data_dir, _ = built
    for directory, _, files in os.walk(data_dir):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                content = f.read()
            for sentinel in synthetic.PHI_SENTINELS:
                assert sentinel.encode() not in content, (name, sentinel)


def test_rebuild_is_safe_and_parallel_build_is_identical(built, tmp_path):
    manual_dir, data_dir, records = built
    assert build.main(["--manual_dir", manual_dir, "--data_dir", data_dir, "--config", "r64"]) == 0
    build.build_dataset(manual_dir, str(tmp_path), "r64", workers=2)
    parallel = tfds.data_source("rsna_lumbar_spine/r64", split="train", data_dir=str(tmp_path))
    again = sorted((parallel[i] for i in range(len(parallel))), key=lambda r: r["study_id"])
    for a, b in zip(records["train"], again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_build_command_names_a_bad_manual_dir(tmp_path, capsys):
    assert cli.run(build.main, ["--manual_dir", str(tmp_path), "--data_dir", str(tmp_path / "out")]) == 2
    assert "train_series_descriptions.csv" in capsys.readouterr().err


def test_the_builder_module_registers_the_builder_and_the_data_package_imports_no_tfds():
    import subprocess
    import sys

    code = ("import sys, lumbar_jax.data, lumbar_jax.data.build; "
            "assert 'tensorflow_datasets' not in sys.modules; "
            "import tensorflow_datasets as tfds, lumbar_jax.data.rsna_lumbar_spine; "
            "assert 'rsna_lumbar_spine' in tfds.list_builders(with_community_datasets=False); "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
