"""Kaggle-layout parsing: series choice, and label coordinates mapped across series through patient space."""

import os

import numpy as np
import pytest

from lumbar_jax import labels as L
from lumbar_jax.data import dicom, study, synthetic


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("study") / "kaggle")
    synthetic.write_synthetic_dataset(root, num_studies=3, seed=11, progress=False)
    return root


def _touch(directory, count):
    os.makedirs(directory)
    for i in range(count):
        open(os.path.join(directory, f"{i}.dcm"), "w").close()


def test_choose_series_takes_most_slices_then_lowest_id(tmp_path):
    _touch(tmp_path / "30", 5)
    _touch(tmp_path / "20", 7)
    _touch(tmp_path / "10", 7)
    candidates = tuple((int(n), str(tmp_path / n)) for n in ("30", "20", "10", "99"))  # 99 does not exist
    assert study.choose_series(candidates)[0] == 10
    assert study.choose_series(((99, str(tmp_path / "99")),)) is None


def test_point_located_through_patient_space_equals_direct_mapping(kaggle):
    entry = study.list_studies(kaggle, "train")[0]
    axial = [a for a in entry.annotations if L.TARGETS[a.target].startswith("left_subarticular")]
    series_id, series_dir = study.choose_series(entry.series_dirs[2])
    _, geometry = dicom.read_series(series_dir, plane="axial")
    for a in axial:
        assert a.series_id == series_id
        direct = geometry.normalized(a.instance_number, a.row, a.col)
        world = study._world_point(series_dir, a.instance_number, a.row, a.col, "axial")
        np.testing.assert_allclose(geometry.normalize(geometry.world_to_canonical(world)), direct, atol=1e-6)


def test_annotation_on_the_other_series_of_a_type_is_mapped_into_the_used_one(kaggle):
    entry = study.list_studies(kaggle, "train")[0]
    volumes, present, series_ids, geometries = study.load_study_volumes(entry.series_dirs, (16, 64, 64))
    expected, _ = study.map_annotations(entry, series_ids, geometries)
    # Pretend the axial points were annotated on a second "Axial T2" series: a copy of the used one.
    used_id, used_dir = study.choose_series(entry.series_dirs[2])
    twin = study.StudyEntry(
        entry.study_id,
        entry.series_dirs[:2] + ((entry.series_dirs[2][0], (used_id + 1, used_dir)),),
        entry.labels,
        tuple(study.Annotation(a.target, used_id + 1, a.instance_number, a.row, a.col)
              if a.series_id == used_id else a for a in entry.annotations),
    )
    coords, coords_series = study.map_annotations(twin, series_ids, geometries)
    axial = coords_series == 2
    assert axial.sum() >= 5
    np.testing.assert_allclose(coords[axial], expected[axial], atol=1e-5)
