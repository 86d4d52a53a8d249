"""Localisation metrics on hand-made studies whose answers are known: mm through the native affine, level
swaps, slice errors, the voxel fallback, which points are scored."""

import json

import numpy as np
import pytest

from lumbar_jax import labels
from lumbar_jax.labels import TARGET_SERIES
from lumbar_jax.localiser_metrics import level_correct, localisation_report, scored_points, to_space

# Native geometry of a hand-made study: sagittal 15 slices of 80x80 at 4 mm x 0.9 mm, axial 20 slices of 64x64
# at 3 mm x 1.1 mm (diagonal affines: only the spacing and an offset matter to distances).
SHAPES = np.array([[15, 80, 80], [15, 80, 80], [20, 64, 64]])
SPACING = np.array([[4.0, 0.9, 0.9], [4.0, 0.9, 0.9], [3.0, 1.1, 1.1]])


def _affines(n):
    affine = np.zeros((3, 4, 4))
    for s in range(3):
        affine[s, :3, :3] = np.diag(SPACING[s])
        affine[s, :3, 3] = (10.0 * s, -5.0, 20.0)
        affine[s, 3, 3] = 1.0
    return np.tile(affine, (n, 1, 1, 1)), np.tile(SHAPES, (n, 1, 1))


def _study(n=2):
    """Annotated points on exact native voxels, levels 8 rows (sagittal) / 4 slices (axial) apart, every
    target on its own series."""
    coords = np.zeros((n, labels.NUM_TARGETS, 3))
    for t in range(labels.NUM_TARGETS):
        level, series = labels.TARGET_LEVEL[t], TARGET_SERIES[t]
        dn, hn, wn = SHAPES[series] - 1
        if series == 2:  # axial: level = slice, side = col
            index = (2 + 4 * level, 30, 20 if labels.TARGET_SIDE[t] == 2 else 44)
        else:  # sagittal: side = slice, level = row
            index = ({0: 7, 1: 11, 2: 3}[labels.TARGET_SIDE[t]], 20 + 8 * level, 40)
        coords[:, t] = np.array(index) / (dn, hn, wn)
    return coords, np.tile(TARGET_SERIES, (n, 1))


def test_perfect_prediction():
    coords, series = _study()
    report = localisation_report(coords, coords, series, *_affines(2))
    assert report["unit"] == "mm" and report["n"] == 50 and report["level_n"] == 50
    for key in ("median_mm", "p90_mm"):
        assert report[key] == pytest.approx(0.0, abs=1e-9)
    for key in ("level_accuracy", "slice_exact", "slice_within_1"):
        assert report[key] == 1.0
    assert set(report) >= {"spinal", "foraminal", "subarticular"}
    assert report["foraminal"]["n"] == 20 and report["spinal"]["n"] == 10
    json.dumps(report)


def test_error_in_mm_follows_each_series_spacing():
    """One native voxel along rows on sagittal series (0.9 mm) and one slice on the axial series (3 mm)."""
    coords, series = _study(1)
    pred = coords.copy()
    sagittal = TARGET_SERIES < 2
    pred[0, sagittal, 1] += 1 / (SHAPES[0, 1] - 1)
    pred[0, ~sagittal, 0] += 1 / (SHAPES[2, 0] - 1)
    report = localisation_report(pred, coords, series, *_affines(1))
    assert report["spinal"]["median_mm"] == pytest.approx(0.9)
    assert report["foraminal"]["p90_mm"] == pytest.approx(0.9)
    assert report["subarticular"]["median_mm"] == pytest.approx(3.0)
    assert report["subarticular"]["slice_exact"] == 0.0 and report["subarticular"]["slice_within_1"] == 1.0
    assert report["spinal"]["slice_exact"] == 1.0
    assert report["level_accuracy"] == 1.0


def test_level_swap_is_caught_even_when_close():
    """The spinal L2/L3 and L3/L4 predictions swapped: 2 of 5 spinal points on the wrong level."""
    coords, series = _study(1)
    pred = coords.copy()
    a, b = labels.target_index(0, 1), labels.target_index(0, 2)
    pred[0, [a, b]] = coords[0, [b, a]]
    report = localisation_report(pred, coords, series, *_affines(1))
    assert report["spinal"]["level_accuracy"] == pytest.approx(3 / 5)
    assert report["foraminal"]["level_accuracy"] == 1.0
    assert report["level_accuracy"] == pytest.approx(23 / 25)
    # A prediction off by less than half the level spacing keeps its level.
    pred = coords.copy()
    pred[0, a, 1] += 3 / (SHAPES[1, 1] - 1)
    assert localisation_report(pred, coords, series, *_affines(1))["spinal"]["level_accuracy"] == 1.0


def test_sagittal_slice_error():
    coords, series = _study(1)
    pred = coords.copy()
    foraminal = labels.group_target_indices("foraminal")
    pred[0, foraminal[:4], 0] += 1 / (SHAPES[0, 0] - 1)  # one slice off
    pred[0, foraminal[4:6], 0] += 2 / (SHAPES[0, 0] - 1)  # two slices off
    report = localisation_report(pred, coords, series, *_affines(1))["foraminal"]
    assert report["slice_exact"] == pytest.approx(4 / 10)
    assert report["slice_within_1"] == pytest.approx(8 / 10)
    assert report["median_mm"] == pytest.approx(4.0)  # errors 0,0,0,0,4,4,4,4,8,8 mm


def test_only_points_on_their_own_present_series_are_scored():
    coords, series = _study(2)
    series[0, labels.target_index(0, 0)] = 0  # spinal annotated on the sagittal T1: not the localiser's series
    series[0, labels.target_index(1, 0)] = -1  # not annotated
    affine, shapes = _affines(2)
    affine[1, 2] = 0.0  # study 1 has no axial series
    scored = scored_points(series, affine)
    assert scored.sum() == 50 - 2 - 10
    assert not scored[0, 0] and not scored[0, 5] and not scored[1, 15:].any()
    pred = coords + 0.5  # far off everywhere
    report = localisation_report(pred, coords, series, affine, shapes)
    assert report["n"] == 38 and report["subarticular"]["n"] == 10


def test_level_accuracy_counts_only_conditions_with_another_level():
    coords, series = _study(1)
    series[0, labels.target_index(0, 1):labels.target_index(0, 5)] = -1  # spinal: only L1/L2 annotated
    correct, counted = level_correct(*(to_space(coords),) * 2, scored_points(series))
    assert not counted[0, labels.target_index(0, 0)] and counted[0, labels.target_index(1, 0)]
    assert (correct == counted).all()


def test_voxel_fallback_and_empty_groups():
    coords, series = _study(1)
    pred = coords.copy()
    pred[0, :, 2] += 2 / 63  # two r64 voxels along cols
    series[0, labels.group_target_indices("subarticular")] = -1
    report = localisation_report(pred, coords, series, volume_shape=(16, 64, 64))
    assert report["unit"] == "vox" and "median_mm" not in report
    assert report["median_vox"] == pytest.approx(2.0) and report["spinal"]["p90_vox"] == pytest.approx(2.0)
    assert report["subarticular"] == {"median_vox": None, "p90_vox": None, "level_accuracy": None,
                                      "slice_exact": None, "slice_within_1": None, "n": 0, "level_n": 0}
    json.dumps(report)
    with pytest.raises(ValueError, match="both"):
        localisation_report(pred, coords, series, native_affine=_affines(1)[0])
