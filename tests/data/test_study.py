"""Kaggle-layout parsing: series choice, and label coordinates mapped across series through patient space."""

import os
import shutil

import numpy as np
import pytest

from lumbar_jax import labels
from lumbar_jax.data import dicom, problems, study, synthetic


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("study") / "kaggle")
    synthetic.write_synthetic_dataset(root, synthetic.DatasetSpec(3, seed=11), progress=False)
    return root


def _copy_series(source, target, keep):
    """A copy of series folder `source` with its first `keep` files (sorted by name)."""
    os.makedirs(target)
    for name in sorted(os.listdir(source))[:keep]:
        shutil.copy(os.path.join(source, name), target)
    return str(target)


def test_choose_series_takes_most_readable_slices_then_lowest_id(kaggle, tmp_path):
    source = study.list_studies(kaggle, "train")[0].series_dirs[0][0][1]
    count = len(os.listdir(source))
    short = _copy_series(source, tmp_path / "5", count - 4)
    for i in range(8):  # more .dcm files than the others, fewer readable slices
        with open(os.path.join(short, f"junk{i}.dcm"), "wb") as f:
            f.write(b"junk")
    candidates = ((30, _copy_series(source, tmp_path / "30", count - 1)), (5, short),
                  (20, _copy_series(source, tmp_path / "20", count)),
                  (10, _copy_series(source, tmp_path / "10", count)), (99, str(tmp_path / "99")))  # 99: no folder
    with pytest.warns(UserWarning):
        assert study.choose_series(candidates, "sagittal")[0] == 10
    preference = study.series_preference
    assert preference(10, count) < preference(20, count) < preference(5, count - 4)
    assert study.choose_series(((99, str(tmp_path / "99")),)) is None
    with pytest.warns(problems.DataProblemWarning, match="no readable series"):
        assert study.read_study_series((((99, str(tmp_path / "99")),), (), ()), 7)[1].tolist() == [-1, -1, -1]


def test_point_located_through_patient_space_equals_direct_mapping(kaggle):
    entry = study.list_studies(kaggle, "train")[0]
    axial = [a for a in entry.annotations if labels.TARGETS[a.target].startswith("left_subarticular")]
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
