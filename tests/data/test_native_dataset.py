"""The `r64_native` dataset config: the r64 record plus every series at its own resolution and its affine.

A few synthetic studies (with a missing series, tilted axial sub-stacks, a transposed and a mixed-matrix
series) are built as `r64` and as `r64_native` and read back with `tfds.data_source`. The affine is checked
against patient positions computed with pydicom straight from the annotated files' headers.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import tensorflow_datasets as tfds

from lumbar_jax import labels
from lumbar_jax.data import build, dicom, study, synthetic, volume
from lumbar_jax.data.rsna_lumbar_spine import Builder  # registers the builder with TFDS
from lumbar_jax.dataset_configs import DATASET_SHAPES, NATIVE_AFFINE, NATIVE_MAX_SIZE, NATIVE_VOLUMES

NUM_TRAIN, NUM_TEST = 6, 1
pytestmark = pytest.mark.filterwarnings("ignore::lumbar_jax.data.problems.DataProblemWarning")  # the quirks, reported

REGULAR_TOLERANCE_MM = 0.5  # one stack of parallel, evenly spaced slices: the affine is exact
TILTED_TOLERANCE_MM = 3.0  # sub-stacks tilted 3-8 degrees: one least-squares affine for all of them


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    manual_dir, data_dir = str(root / "kaggle"), str(root / "tfds")
    synthetic.write_synthetic_dataset(manual_dir, synthetic.DatasetSpec(NUM_TRAIN, 3, NUM_TEST), progress=False)
    records = {}
    for config in ("r64", "r64_native"):
        assert build.main(["--manual_dir", manual_dir, "--data_dir", data_dir, "--config", config,
                           "--workers", "1"]) == 0
        for split in ("train", "test"):
            source = tfds.data_source(f"rsna_lumbar_spine/{config}", split=split, data_dir=data_dir)
            records[config, split] = sorted((source[i] for i in range(len(source))), key=lambda r: r["study_id"])
    return manual_dir, records


def _native_records(built):
    _, records = built
    return records["r64_native", "train"] + records["r64_native", "test"]


def _series_dir(manual_dir, record, kind):
    study_series = os.path.join(str(record["study_id"]), str(record["series_ids"][kind]))
    train = os.path.join(manual_dir, "train_images", study_series)
    return train if os.path.isdir(train) else os.path.join(manual_dir, "test_images", study_series)


def test_the_r64_features_equal_an_r64_build(built):
    _, records = built
    for split in ("train", "test"):
        plain, native = records["r64", split], records["r64_native", split]
        assert len(plain) == len(native) > 0
        for a, b in zip(plain, native):
            assert set(b) == set(a) | set(NATIVE_VOLUMES) | {NATIVE_AFFINE}
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_native_volumes_are_the_series_own_slices_normalised(built):
    manual_dir, _ = built
    checked = 0
    for r in _native_records(built):
        assert r[NATIVE_AFFINE].shape == (3, 4, 4) and r[NATIVE_AFFINE].dtype == np.float32
        for kind, name in enumerate(NATIVE_VOLUMES):
            if not r["present"][kind]:
                continue
            canonical, _ = dicom.read_series(_series_dir(manual_dir, r, kind),
                                             plane=study.PLANE_OF_SERIES[labels.SERIES_TYPES[kind]])
            assert r[name].dtype == np.uint8 and r[name].shape == canonical.shape
            np.testing.assert_array_equal(r[name], volume.normalize_uint8(canonical))
            np.testing.assert_array_equal(r[NATIVE_AFFINE][kind, 3], [0, 0, 0, 1])
            checked += 1
    assert checked >= 3 * len(_native_records(built)) - 2


def test_absent_series_is_one_zero_voxel_and_a_zero_affine(built):
    manual_dir, _ = built
    with open(os.path.join(manual_dir, "synthetic_summary.json")) as f:
        missing = {q["study_id"] for q in json.load(f)["quirks"]["missing_series"]}
    absent = [(r, kind) for r in _native_records(built) for kind in range(3) if not r["present"][kind]]
    assert {r["study_id"] for r, _ in absent} == missing
    for r, kind in absent:
        np.testing.assert_array_equal(r[NATIVE_VOLUMES[kind]], np.zeros((1, 1, 1), np.uint8))
        assert not r[NATIVE_AFFINE][kind].any()


def _header_world(path, row, col):
    """Patient position (mm) of pixel (row = y, col = x) of a DICOM file, straight from its header."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    orientation = np.array(ds.ImageOrientationPatient, np.float64)
    row_spacing, col_spacing = np.array(ds.PixelSpacing, np.float64)
    return (np.array(ds.ImagePositionPatient, np.float64)
            + orientation[:3] * col_spacing * col + orientation[3:] * row_spacing * row)


def test_affine_maps_annotated_points_to_their_patient_position(built):
    manual_dir, records = built
    with open(os.path.join(manual_dir, "synthetic_summary.json")) as f:
        tilted = {q["series_id"] for q in json.load(f)["quirks"]["axial_substacks"]}
    annotations = study.read_annotations(manual_dir)
    errors = {True: [], False: []}
    for r in records["r64_native", "train"]:
        for a in annotations.get(r["study_id"], ()):
            kind = r["coords_series"][a.target]
            if kind < 0:
                continue
            native = r[NATIVE_VOLUMES[kind]]
            index = r["coords"][a.target] * (np.array(native.shape) - 1)
            world = (r[NATIVE_AFFINE][kind] @ np.append(index, 1.0))[:3]
            path = os.path.join(manual_dir, "train_images", str(r["study_id"]), str(a.series_id),
                                f"{a.instance_number}.dcm")
            errors[int(r["series_ids"][kind]) in tilted].append(
                np.linalg.norm(world - _header_world(path, a.row, a.col)))
    assert len(errors[False]) > 100 and len(errors[True]) > 5
    assert max(errors[False]) < REGULAR_TOLERANCE_MM
    assert max(errors[True]) < TILTED_TOLERANCE_MM


def _rotated_affine(spacing, origin):
    """A voxel -> patient affine [4, 4] with the given spacing, axes rotated off the patient axes."""
    c, s = np.cos(0.3), np.sin(0.3)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1, 0, 0], [0, c, s], [0, -s, c]])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rotation * np.asarray(spacing), origin
    return affine


def test_cap_shrinks_in_plane_keeping_aspect_and_the_corner_voxels_positions():
    source = np.random.default_rng(0).normal(100.0, 20.0, (4, 300, 200)).astype(np.float32)
    affine = _rotated_affine((3.5, 0.5, 0.7), (10.0, -20.0, 30.0))
    capped, capped_affine = volume.cap_in_plane(source, affine, 120)
    assert capped.shape == (4, 120, 80)
    np.testing.assert_allclose(np.linalg.norm(capped_affine[:3, :3], axis=0), [3.5, 0.5 * 299 / 119, 0.7 * 199 / 79])
    for corner in np.ndindex(2, 2, 2):
        old = np.array(corner) * (np.array(source.shape) - 1)
        new = np.array(corner) * (np.array(capped.shape) - 1)
        np.testing.assert_allclose(capped_affine @ np.append(new, 1), affine @ np.append(old, 1), atol=1e-9)
        assert capped[tuple(new)] == pytest.approx(source[tuple(old)], rel=1e-6)
    same, same_affine = volume.cap_in_plane(source, affine, 300)
    assert same.shape == source.shape and np.array_equal(same_affine, affine)
    stored, stored_affine = volume.to_native_record_volume(source, affine, 120)
    assert stored.dtype == np.uint8 and stored.shape == (4, 120, 80) and stored_affine.dtype == np.float32


def test_capped_native_volume_keeps_the_annotated_points(built):
    manual_dir, _ = built
    entry = study.list_studies(manual_dir, "train")[1]  # all three series present
    canonicals, series_ids, geometries = study.read_study_series(entry.series_dirs, entry.study_id)
    full = study.native_features(canonicals, geometries, 1000)
    capped = study.native_features(canonicals, geometries, 40)
    coords, coords_series = study.map_annotations(entry, series_ids, geometries)
    for kind, name in enumerate(NATIVE_VOLUMES):
        rows, cols = full[name].shape[1:]
        assert max(capped[name].shape[1:]) == 40 and capped[name].shape[0] == full[name].shape[0]
        assert capped[name].shape[1] / capped[name].shape[2] == pytest.approx(rows / cols, rel=0.05)
        for t in np.flatnonzero(coords_series == kind):
            points = [f[NATIVE_AFFINE][kind] @ np.append(coords[t] * (np.array(f[name].shape) - 1), 1.0)
                      for f in (full, capped)]
            np.testing.assert_allclose(points[0], points[1], atol=1e-3)


def test_native_configs_are_built_and_listed_by_the_build_command():
    native = {c.name: c for c in Builder.BUILDER_CONFIGS if c.native_max_size is not None}
    assert {name: c.native_max_size for name, c in native.items()} == NATIVE_MAX_SIZE
    assert all(tuple(c.volume_shape) == DATASET_SHAPES[name] for name, c in native.items())
    assert DATASET_SHAPES["r64_native"] == DATASET_SHAPES["r64"]
    assert DATASET_SHAPES["r128_native"] == DATASET_SHAPES["r128"]
    usage = subprocess.run([sys.executable, "-m", "lumbar_jax.data.build", "--help"], check=True,
                           capture_output=True, text=True).stdout
    assert "r64_native" in usage and "r128_native" in usage


def test_native_volumes_beside_a_shared_grid_are_refused(built):
    manual_dir, _ = built
    with pytest.raises(ValueError, match="grid"):
        study.study_example(study.list_studies(manual_dir, "train")[0], (8, 8, 8), grid=True, native_max_size=64)
