"""The cause of a costly held-out row (analysis.costly): each rule on hand-made rows, in its order."""

import numpy as np
import pytest

from lumbar_jax import labels as labels_lib
from lumbar_jax import metrics
from lumbar_jax.analysis import costly
from lumbar_jax.localiser_metrics import PointErrors

N, T = 2, labels_lib.NUM_TARGETS


def _rows(**changes) -> costly.HeldOutRows:
    """Two studies, every target labelled Normal/Mild and predicted 0.9 / 0.05 / 0.05 at the localiser's and
    at the annotated point, every point scored and every crop full; `changes` replace fields."""
    labels = np.zeros((N, T), np.int64)
    probs = np.broadcast_to([0.9, 0.05, 0.05], (N, T, 3)).copy()
    zeros, ones = np.zeros((N, T)), np.ones((N, T), bool)
    fields = dict(study_ids=np.array([11, 12]), folds=np.array([0, 1]), labels=labels, probs=probs, latent=None,
                  reader_shares=None, image=ones, annotated_probs=probs.copy(),
                  point_errors=PointErrors(zeros, zeros, ones, ones, ones, "mm"), crop_fill=np.ones((N, T)))
    fields |= changes
    fields["shares"] = metrics.row_score_shares(fields["labels"], fields["probs"])
    return costly.HeldOutRows(**fields)


def test_a_well_read_row_is_the_models():
    assert set(_rows().causes().ravel()) == {"model"}


def test_each_cause_where_its_rule_applies_and_the_first_rule_wins():
    probs = np.broadcast_to([0.9, 0.05, 0.05], (N, T, 3)).copy()
    probs[0, 0] = probs[0, 1] = probs[0, 2] = probs[0, 3] = [0.001, 0.001, 0.998]  # four confident mistakes
    annotated = probs.copy()
    annotated[0, 1] = annotated[0, 3] = [0.9, 0.05, 0.05]  # the annotated point's crop reads rows 1 and 3 right
    fill = np.ones((N, T))
    fill[0, 2] = fill[0, 3] = costly.MIN_CROP_FILL - 0.01  # rows 2 and 3: crops at the edge of the series
    image = np.ones((N, T), bool)
    image[0, 4] = False
    latent = np.zeros((N, T), np.int64)
    latent[0, 0] = latent[0, 3] = 2  # rows 0 and 3: the image shows Severe, the label says Normal/Mild
    rows = _rows(probs=probs, annotated_probs=annotated, crop_fill=fill, image=image, latent=latent)
    cause = rows.causes()
    assert list(cause[0, :5]) == ["label noise", "localiser", "crop", "label noise", "no image"]
    assert set(cause[0, 5:]) | set(cause[1]) == {"model"}
    assert rows.p_true()[0, 0] == pytest.approx(0.001)


def test_unscored_points_are_not_blamed_on_the_localiser_and_missing_labels_have_no_cause():
    probs = np.broadcast_to([0.9, 0.05, 0.05], (N, T, 3)).copy()
    probs[0, 0] = [0.01, 0.01, 0.98]
    zeros, ones = np.zeros((N, T)), np.ones((N, T), bool)
    unscored = ones.copy()
    unscored[0, 0] = False
    labels = np.zeros((N, T), np.int64)
    labels[1, 7] = labels_lib.MISSING
    rows = _rows(probs=probs, labels=labels, point_errors=PointErrors(zeros, zeros, ones, ones, unscored, "mm"),
                 crop_fill=np.zeros((N, T)))
    cause = rows.causes()
    assert cause[0, 0] == "model" and cause[1, 7] is None


def test_tables_rank_by_cost_and_split_the_score_by_cause():
    probs = np.broadcast_to([0.9, 0.05, 0.05], (N, T, 3)).copy()
    probs[1, 6] = [0.005, 0.5, 0.495]
    probs[0, 2] = [0.2, 0.4, 0.4]
    annotated = probs.copy()
    annotated[1, 6] = [0.9, 0.05, 0.05]
    rows = _rows(probs=probs, annotated_probs=annotated)
    top = costly.costly_rows(rows, 2)
    assert [(r["study_id"], r["target"]) for r in top] == [(12, labels_lib.TARGETS[6]), (11, labels_lib.TARGETS[2])]
    assert top[0]["cause"] == "localiser" and top[0]["p_true"] == pytest.approx(0.005)
    assert top[0]["p_true_at_annotated_point"] == pytest.approx(0.9) and top[1]["cause"] == "model"
    by_cause = {r["cause"]: r for r in costly.loss_by_cause(rows)}
    assert by_cause["all"]["rows"] == N * T and by_cause["localiser"]["rows"] == 1
    assert by_cause["all"]["score_share"] == pytest.approx(rows.shares.sum())
    assert by_cause["localiser"]["confident_mistakes"] == 1 and by_cause["model"]["confident_mistakes"] == 0
    assert sum(by_cause[c]["score_share"] for c in costly.CAUSES) == pytest.approx(rows.shares.sum())


def test_score_by_fold_scores_each_fold_beside_its_perfect_reader():
    probs = np.broadcast_to([0.9, 0.05, 0.05], (N, T, 3)).copy()
    probs[1, 3] = [0.005, 0.005, 0.99]  # fold 1: one confident mistake
    latent = np.zeros((N, T), np.int64)
    rows = _rows(probs=probs, latent=latent)
    folds = costly.score_by_fold(rows)
    assert [f["fold"] for f in folds] == [0, 1] and [f["studies"] for f in folds] == [1, 1]
    for f, n in zip(folds, range(N)):
        assert f["score"] == pytest.approx(metrics.competition_score(rows.labels[n:n + 1], probs[n:n + 1])["score"])
        reader = costly._perfect_reader(latent[n:n + 1])
        assert f["perfect_reader_score"] == pytest.approx(
            metrics.competition_score(rows.labels[n:n + 1], reader)["score"])
    assert [f["confident_mistakes"] for f in folds] == [0, 1]
    assert "perfect_reader_score" not in costly.score_by_fold(_rows())[0]  # no latent grades: no floor
