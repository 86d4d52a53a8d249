"""lumbar_jax.data.grid: series resampled into one shared patient-coordinate grid (the grid dataset configs).

Phantom series (tests/data/test_dicom.py's writer) whose pixel values are a linear function of the pixel's
patient position: trilinear interpolation reproduces a linear function exactly, so every grid voxel a series
covers must hold the phantom's value at that voxel's patient position, whatever the acquisition. Then the
same on a synthetic study (its anatomy is known in patient coordinates) and on records built by the builder.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import lumbar_jax.data.rsna_lumbar_spine  # noqa: F401  (registers the builder: tfds.data_source looks it up by name)
from lumbar_jax import labels
from lumbar_jax.data import build, grid, study, synthetic
from lumbar_jax.data.dicom import read_series
from tests.data.test_dicom import AXIAL, AXIAL_DIRS, SAGITTAL, grid_slices, tilted_axial_specs, write_series


def linear_phantom(world: np.ndarray) -> np.ndarray:
    """1000 + 10 x + 10 y + 10 z: integers on the test_dicom grids (so the stored pixels are exact)."""
    return 1000.0 + 10.0 * world[..., 0] + 10.0 * world[..., 1] + 10.0 * world[..., 2]


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory):
    """A flipped + transposed sagittal series and an axial series of the same phantom: (volume, geometry) each."""
    root = tmp_path_factory.mktemp("grid_phantom")
    write_series(root / "sag", grid_slices(SAGITTAL, (0, 0, 1), (0, -1, 0)), linear_phantom)
    write_series(root / "ax", grid_slices(AXIAL, *AXIAL_DIRS), linear_phantom)
    return read_series(root / "sag", plane="sagittal"), read_series(root / "ax", plane="axial")


def test_grid_spans_the_union_of_the_series_and_follows_the_sagittal_layout(phantom_series):
    (_, sag), (_, ax) = phantom_series
    g = grid.study_grid([sag, None, ax], (8, 9, 10))
    corners = np.concatenate([grid.series_corners(sag), grid.series_corners(ax)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)  # x -40..-25 (sagittal), y 15..37 (axial), z 100..122
    np.testing.assert_allclose(lo, [-40, 15, 100], atol=1e-9)
    np.testing.assert_allclose(hi, [-25, 37, 122], atol=1e-9)
    # axis 0 right -> left (+x), axis 1 superior -> inferior (-z), axis 2 anterior -> posterior (+y)
    np.testing.assert_allclose(g.world([0, 0, 0]), [lo[0], lo[1], hi[2]], atol=1e-9)
    np.testing.assert_allclose(g.world([7, 8, 9]), [hi[0], hi[1], lo[2]], atol=1e-9)
    np.testing.assert_allclose(g.spacing, [15 / 7, 22 / 8, 22 / 9])
    np.testing.assert_allclose(g.index(g.world([1.5, 2.0, 3.25])), [1.5, 2.0, 3.25], atol=1e-12)
    assert grid.study_grid([None, None, None], (8, 8, 8)) is None


def test_both_series_land_where_the_phantom_is(phantom_series):
    """Every covered grid voxel of each series holds the phantom value at its patient position: the two
    series (different planes, flips, transposition) line up with the patient and so with each other."""
    (sag_vol, sag), (ax_vol, ax) = phantom_series
    g = grid.study_grid([sag, None, ax], (16, 16, 16))
    expected = linear_phantom(g.points()).reshape(g.shape)
    for volume, geometry in ((sag_vol, sag), (ax_vol, ax)):
        values, inside = grid.resample_series(volume, geometry, g)
        corners = grid.series_corners(geometry)
        world = g.points().reshape(*g.shape, 3)
        within = np.all((world >= corners.min(0) - 1e-9) & (world <= corners.max(0) + 1e-9), axis=-1)
        assert within.sum() > 100 and np.all(inside[within]) and not np.any(values[~inside])
        np.testing.assert_allclose(values[within], expected[within], rtol=0, atol=1e-2)
    both = [grid.resample_series(v, geom, g) for v, geom in ((sag_vol, sag), (ax_vol, ax))]
    overlap = both[0][1] & both[1][1]
    assert overlap.sum() > 100  # the two series overlap and agree voxel by voxel where both are exact
    corner_box = [grid.series_corners(x) for x in (sag, ax)]
    world = g.points().reshape(*g.shape, 3)
    exact = np.all([np.all((world >= c.min(0) - 1e-9) & (world <= c.max(0) + 1e-9), axis=-1) for c in corner_box], 0)
    np.testing.assert_allclose(both[0][0][exact], both[1][0][exact], atol=1e-2)


def test_vectorised_world_to_canonical_matches_series_geometry(tmp_path):
    """Tilted axial sub-stacks (the general path) and a plain stack (the parallel fast path)."""
    write_series(tmp_path / "tilted", tilted_axial_specs(6.0, 120.0, 4) + tilted_axial_specs(0.0, 100.0, 5),
                 AXIAL.value)
    write_series(tmp_path / "plain", grid_slices(AXIAL, *AXIAL_DIRS), AXIAL.value)
    points = np.random.default_rng(0).uniform([-50, 5, 90], [-20, 45, 140], (300, 3))
    for name in ("tilted", "plain"):
        _, geometry = read_series(tmp_path / name, plane="axial")
        expected = np.array([geometry.world_to_canonical(p) for p in points])
        np.testing.assert_allclose(grid.world_to_canonical(geometry, points), expected, atol=1e-9)


def test_normalisation_uses_inside_voxels_and_keeps_outside_zero():
    values = np.concatenate([np.linspace(100.0, 200.0, 50), np.full(50, -1e6)]).astype(np.float32)
    inside = np.arange(100) < 50
    out = grid.normalize_inside(values, inside)
    assert out.dtype == np.uint8 and np.all(out[~inside] == 0)
    assert out[:50].min() == 0 and out[:50].max() == 255 and np.all(np.diff(out[:50].astype(int)) >= 0)
    assert not grid.normalize_inside(values, np.zeros(100, bool)).any()


def test_annotations_of_sagittal_and_axial_series_land_on_the_anatomy_in_one_grid(tmp_path):
    """A synthetic study (index 1: tilted axial sub-stacks, two axial series): each label coordinate, annotated
    on the sagittal T2 (spinal) or the axial T2 (subarticular) series, maps through its own series' geometry
    to the grid voxel of the true structure centre, within the annotation's own rounding (the synthetic
    annotator projects the centre onto the nearest slice: up to half a slice gap away)."""
    s = synthetic.make_study(synthetic.DatasetSpec(2, seed=0), 1)
    synthetic.write_study(s, str(tmp_path))
    series_dirs = [[] for _ in labels.SERIES_TYPES]
    for x in s.series:
        series_dirs[x.kind].append((x.series_id, str(tmp_path / "train_images" / str(s.study_id) / str(x.series_id))))
    annotations = [study.Annotation(labels.target_index(c, lv), sid, inst, y, x)
                   for c, lv, sid, inst, x, y in s.coordinates]
    entry = study.StudyEntry(s.study_id, tuple(map(tuple, series_dirs)), s.labels.astype(np.int64), tuple(annotations))
    example = study.study_example(entry, (32, 32, 32), grid=True)
    canonicals, series_ids, geometries = study.read_study_series(entry.series_dirs)
    g = grid.study_grid(geometries, (32, 32, 32))
    centres = s.anatomy.centres()
    checked = set()
    for t in range(labels.NUM_TARGETS):
        kind = example["coords_series"][t]
        if kind < 0:
            continue
        checked.add(int(kind))
        annotated = example["coords"][t] * (np.array(g.shape) - 1) * g.spacing  # mm along the grid axes
        truth = g.index(centres[t]) * g.spacing
        gap = 4.2 if kind < 2 else 3.2  # slice gap (mm) of the synthetic sagittal / axial series
        assert np.linalg.norm(annotated - truth) <= gap / 2 + 0.2, (labels.TARGETS[t], annotated - truth)
    assert checked == {0, 1, 2}
    # the spinal points (sagittal T2) and the subarticular ones (axial) of a level share its height (grid axis
    # 1): within the axial annotation's projection (<= 1.6 mm) and the recess' offset from the canal (< 1 mm)
    both = (example["coords_series"][0:5] == 1) & (example["coords_series"][15:20] == 2)
    spinal, subarticular = example["coords"][0:5, 1][both], example["coords"][15:20, 1][both]
    assert both.sum() >= 3
    np.testing.assert_allclose(spinal, subarticular, atol=2.6 / (g.spacing[1] * 31))
    assert np.all(np.diff(spinal) > 8.0 / (g.spacing[1] * 31))  # levels ~12.5 mm apart, superior first


@pytest.fixture(scope="module")
def grid_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid_builder")
    synthetic.write_synthetic_dataset(str(root / "kaggle"), synthetic.DatasetSpec(6, seed=3), progress=False)
    build.build_dataset(str(root / "kaggle"), str(root / "tfds"), "grid32", workers=1)
    source = tfds.data_source("rsna_lumbar_spine/grid32", split="train", data_dir=str(root / "tfds"))
    return [source[i] for i in range(len(source))]


def test_grid32_builder_config_keeps_the_record_features(grid_records):
    assert len(grid_records) == 6
    for r in grid_records:
        for k, name in enumerate(labels.SERIES_TYPES):
            assert r[name].shape == (32, 32, 32) and r[name].dtype == np.uint8
            assert r["present"][k] == (r[name].max() > 0) == (r["series_ids"][k] >= 0)
        assert r["coords"].shape == (25, 3) and r["coords_series"].shape == (25,)
        has = r["coords_series"] >= 0
        assert has.any() and np.all((r["coords"][has] >= 0) & (r["coords"][has] <= 1))


def test_grid_records_line_up_across_series(grid_records):
    """The spinal canal point, annotated on the sagittal T2, is bright CSF in the T2 channel AND in the axial
    T2 channel of the same grid: the channels are one patient."""
    hits = []
    for r in grid_records:
        if not r["present"][1:].all():
            continue
        for t in range(5):  # spinal canal levels, annotated on the sagittal T2
            if r["coords_series"][t] == 1 and r["labels"][t] == 0:
                index = tuple(np.rint(r["coords"][t] * 31).astype(int))
                hits.append([r["sagittal_t2"][index], r["axial_t2"][index], r["axial_t2"][r["axial_t2"] > 0].mean()])
    hits = np.array(hits, float)
    assert len(hits) >= 5
    assert np.median(hits[:, 0]) > 150 and np.median(hits[:, 1]) > 150 and np.all(hits[:, 1] > hits[:, 2])
