"""`Classify` with `crops.tta_shift_mm`: the held-out probabilities are the mean of the classifier over the crop
at each point and the crops at the point moved +-shift mm along the series' rows and cols."""

import numpy as np
import pytest

from lumbar_jax import labels
from lumbar_jax.data.crops import CropSpec
from lumbar_jax.train import config as config_lib
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train.init import classifier_state
from lumbar_jax.train.two_stage_models import Classify, classifier_eval_step, shift_offsets
from tests.data.test_crops import native_record


def test_shift_offsets():
    assert shift_offsets(0.0) == [(0.0, 0.0, 0.0)]
    assert sorted(shift_offsets(1.5)) == sorted([(0.0, 0.0, 0.0), (0.0, 1.5, 0.0), (0.0, -1.5, 0.0),
                                                 (0.0, 0.0, 1.5), (0.0, 0.0, -1.5)])


def _moved(records, points: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """`points` [N, 25, 3] (normalised) moved by (row_mm, col_mm) in each target's own series."""
    out = points.copy()
    for n, record in enumerate(records):
        for t, s in enumerate(labels.TARGET_SERIES):
            shape = np.shape(record[f"{labels.SERIES_TYPES[s]}_native"])
            spacing = np.linalg.norm(np.asarray(record["native_affine"][s], np.float64)[:3, :3], axis=0)
            out[n, t, 1] += row_mm / spacing[1] / (shape[1] - 1)
            out[n, t, 2] += col_mm / spacing[2] / (shape[2] - 1)
    return out


def test_the_shifted_mean_is_the_mean_of_the_classifier_at_the_moved_points():
    config = config_lib.two_stage_config()
    config.crops.update(size_mm=12.0, pixels=16)  # the small native volumes of tests/data/test_crops
    config.model.update(slice_patch=(8, 8))
    mesh = mesh_lib.make_mesh(1)
    statics, state = classifier_state(config, mesh)
    crop = CropSpec.from_config(config.crops)
    records = [native_record(np.random.default_rng(seed), study_id=seed + 1) for seed in range(3)]
    indices, study_ids = np.arange(3), np.array([r["study_id"] for r in records])
    rng = np.random.default_rng(0)
    points = np.stack([r["coords"] for r in records]).astype(np.float64) * 0.8 + 0.1  # inside every series
    points += rng.uniform(-0.02, 0.02, points.shape)
    eval_step = classifier_eval_step(statics, mesh)
    single = Classify(eval_step, crop, 4, mesh)
    shifted = Classify(eval_step, crop, 4, mesh, shift_mm=1.0)
    expected = np.mean([single(state, records, indices, study_ids, _moved(records, points, o[1], o[2]))
                        for o in shift_offsets(1.0)], axis=0)
    got = shifted(state, records, indices, study_ids, points)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert not np.allclose(got, single(state, records, indices, study_ids, points), atol=1e-4)  # it does move
    assert got.sum(-1) == pytest.approx(np.ones((3, labels.NUM_TARGETS)), abs=1e-5)
