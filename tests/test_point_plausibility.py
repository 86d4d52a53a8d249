"""The plausibility rule of a study's localised points (docs/conventions.md section 7): points in order and
spaced along the spine pass; swapped, collapsed or out-of-volume points are named, with their fold."""

import os

import numpy as np
import pytest

from lumbar_jax import labels, study_report
from lumbar_jax.point_plausibility import MIN_ADJACENT_LEVEL_MM, implausible_points

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = np.array([[15, 100, 100], [15, 100, 100], [30, 100, 100]])  # native [Dn, Hn, Wn] per series


def _geometry() -> np.ndarray:
    """float [3, 4, 4] native index -> patient mm per series in the canonical layout (conventions section 3):
    sagittal (depth right -> left = +x 4 mm, rows superior -> inferior = -z 0.5 mm, cols anterior -> posterior
    = +y 0.5 mm); axial (depth superior -> inferior = -z 3 mm, rows +y 0.5 mm, cols +x 0.5 mm)."""
    sagittal = np.array([[4, 0, 0, -28], [0, 0, 0.5, -25], [0, -0.5, 0, 25], [0, 0, 0, 1]], float)
    axial = np.array([[0, 0, 0.5, -25], [0, 0.5, 0, -25], [-3, 0, 0, 45], [0, 0, 0, 1]], float)
    return np.stack([sagittal, sagittal, axial])


def _good_points() -> np.ndarray:
    """[25, 3] normalised points: the five levels of each condition going down its series' superior ->
    inferior axis (sagittal rows, axial depth), 0.15 apart (~7.4 mm on the sagittal, ~13 mm on the axial)."""
    points = np.full((labels.NUM_TARGETS, 3), 0.5)
    for t in range(labels.NUM_TARGETS):
        down = 0.2 + 0.15 * labels.TARGET_LEVEL[t]
        axis = 0 if labels.TARGET_SERIES[t] == 2 else 1
        points[t, axis] = down
    return points


def _check(points, present=(True, True, True)) -> list[str]:
    points = np.asarray(points)
    return implausible_points(points if points.ndim == 3 else points[None], _geometry(), SHAPES, np.array(present))


def test_points_in_order_and_apart_inside_their_series_pass():
    assert _check(_good_points()) == []


def test_swapped_levels_are_out_of_order():
    points = _good_points()
    spinal = labels.TARGETS.index("spinal_canal_stenosis_l1_l2")
    points[[spinal, spinal + 1]] = points[[spinal + 1, spinal]]  # L1/L2 and L2/L3 swapped
    (line,) = _check(points)
    assert line.startswith("levels out of superior-to-inferior order in 1 of 20 adjacent level pairs")
    assert "spinal canal stenosis L2/L3 7.4 mm above L1/L2, fold 0" in line


def test_collapsed_levels_are_too_close_and_out_of_order():
    points = _good_points()
    points[:, :] = points[labels.TARGET_LEVEL == 2][0]  # every level on the L3/L4 point: one disc found five times
    points[labels.TARGET_SERIES == 2] = _good_points()[labels.TARGET_SERIES == 2]  # the axial ones stay good
    lines = _check(points)
    assert len(lines) == 2
    assert lines[0].startswith("levels out of superior-to-inferior order in 12 of 20 adjacent level pairs")
    assert lines[1].startswith(f"adjacent levels closer than {MIN_ADJACENT_LEVEL_MM:g} mm in 12 of 20 adjacent")
    assert "0.0 mm apart, fold 0" in lines[1]


def test_a_point_outside_its_series_is_named_with_its_fold():
    good = _good_points()
    moved = good.copy()
    t = labels.TARGETS.index("right_subarticular_stenosis_l5_s1")
    moved[t, 2] = 1.07
    (line,) = _check(np.stack([good, moved]))  # fold 1 only
    assert line == ("points outside their series' volume in 1 of 50 points (e.g. right_subarticular_stenosis_l5_s1 "
                    "at (0.80, 0.50, 1.07), fold 1)")


def test_targets_on_an_absent_series_are_not_checked():
    points = _good_points()
    points[labels.TARGET_SERIES == 2] = 0.5  # collapsed, but on the axial series, which is absent
    points[labels.TARGET_SERIES == 2, 0] = 2.0
    assert _check(points, present=(True, True, False)) == []
    assert len(_check(points)) == 3


def test_the_rules_constants_are_the_ones_the_conventions_state():
    text = open(os.path.join(REPO, "docs", "conventions.md")).read()
    assert f"`MIN_ADJACENT_LEVEL_MM` = {MIN_ADJACENT_LEVEL_MM:g} mm" in text
    assert f"reaches {study_report.GRADE_CUMULATIVE}\n(`GRADE_CUMULATIVE`)" in text


@pytest.mark.parametrize("shift_mm", [3.0, 6.0])
def test_the_minimum_spacing_is_the_threshold(shift_mm):
    """Two levels `shift_mm` apart on the sagittal rows (0.5 mm per row): flagged below the minimum only."""
    points = _good_points()
    spinal = labels.TARGETS.index("spinal_canal_stenosis_l1_l2")
    points[spinal, 1] = points[spinal + 1, 1] - shift_mm / (0.5 * 99)
    lines = _check(points)
    assert bool(lines) == (shift_mm < MIN_ADJACENT_LEVEL_MM)
