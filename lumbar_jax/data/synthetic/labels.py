"""The labels of the synthetic studies: latent severities, the label noise written over them, missing cells.

Latent severities per target follow the real data's imbalance (`PRIORS`: spinal 87.7/7.5/4.8 %, foraminal
78/18/4 %, subarticular 71/19/10 %) through a Gaussian copula: z = sqrt(0.2) g_study + sqrt(0.3) g_(group, level)
+ sqrt(0.5) e, thresholded at the prior's quantiles (so left/right of one level correlate 0.5, any two targets
of a study 0.2, and the marginals are exact). The latent severity is what the phantom shows (`phantom`).

Label noise (what a reader cannot beat): at each boundary between adjacent grades a flow f = KAPPA *
min(pi_c, pi_c+1) (KAPPA = 0.15) of labels is written as the other grade in both directions, so the written
marginals equal the latent ones; the smaller class of each boundary loses 15 % of its labels to it. Moved
labels: spinal 3.7 %, foraminal 6.6 %, subarticular 8.7 % (6.9 % overall). `label_noise_matrix(group)` is
P(written | latent).

Missing labels (quirks only): each cell with p = 0.012, plus a whole condition of study index = 0 mod 20,
~2.2 % of cells in all.

Noise floor (`noise_floor_score(seed=0, num_studies=20000)`, `metrics.competition_score`): the score of a
reader who knows the latent severity and predicts P(written | latent), beside the class-prior baseline (each
target's written-label frequencies, add-one smoothed) on the same rows; no model can beat it in expectation.
Its value is in the README (Results, References).

Study `index` of seed `seed` draws its labels from `np.random.default_rng([seed, 0, index, 0])`, a stream of
their own that the anatomy and pixels never touch; the quirk switch only empties cells, so the latent
severities never depend on it.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from lumbar_jax import labels
from lumbar_jax import metrics

PRIORS = {  # metric group -> latent (= written) class frequencies, from the real train.csv
    "spinal": (0.877, 0.075, 0.048),
    "foraminal": (0.78, 0.18, 0.04),
    "subarticular": (0.71, 0.19, 0.10),
}
KAPPA = 0.15  # label-noise flow at each grade boundary, as a fraction of the smaller class
RHO_STUDY, RHO_PAIR = 0.2, 0.3  # copula loadings: study factor, (group, level) factor shared by left/right
P_MISSING_CELL = 0.012  # probability that a cell of train.csv is left empty (quirks only)
QUIRK_PERIOD = 20  # the scheduled quirks (here: a missing condition) repeat every QUIRK_PERIOD study indices

GROUP_NAMES = tuple(labels.CONDITION_GROUPS)  # the metric groups, in labels.CONDITION_GROUPS order


def label_noise_matrix(group: str) -> np.ndarray:
    """[3, 3] P(written = column | latent = row) of a metric group; preserves the prior (see module doc)."""
    p = np.asarray(PRIORS[group])
    a, b = KAPPA * min(p[0], p[1]), KAPPA * min(p[1], p[2])
    joint = np.array([[p[0] - a, a, 0.0], [a, p[1] - a - b, b], [0.0, b, p[2] - b]])
    return joint / p[:, None]


_NOISE = np.stack([label_noise_matrix(g) for g in GROUP_NAMES])  # [3 groups, 3, 3]
_NOISE_CDF = np.cumsum(_NOISE, axis=-1)
_THRESHOLDS = np.array([[NormalDist().inv_cdf(PRIORS[g][0]), NormalDist().inv_cdf(PRIORS[g][0] + PRIORS[g][1])]
                        for g in GROUP_NAMES])  # [3 groups, 2] copula thresholds


def draw_study_labels(seed: int, index: int, quirks: bool) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(latent [25] int8, written [25] int8 with -1 = missing, condition made missing or None) of a study.

    All random numbers are drawn whether or not quirks are on, so the latent severities never depend on it.
    """
    rng = np.random.default_rng([seed, 0, index, 0])
    g_study, g_pair, e = rng.standard_normal(), rng.standard_normal((3, labels.NUM_LEVELS)), rng.standard_normal(25)
    z = np.sqrt(RHO_STUDY) * g_study + np.sqrt(RHO_PAIR) * g_pair[labels.TARGET_GROUP, labels.TARGET_LEVEL]
    z += np.sqrt(1.0 - RHO_STUDY - RHO_PAIR) * e
    thr = _THRESHOLDS[labels.TARGET_GROUP]
    latent = (z > thr[:, 0]).astype(np.int8) + (z > thr[:, 1])
    cdf = _NOISE_CDF[labels.TARGET_GROUP, latent]  # [25, 3]
    written = (rng.random(25)[:, None] > cdf[:, :2]).sum(1).astype(np.int8)
    missing_cells, missing_condition = rng.random(25) < P_MISSING_CELL, int(rng.integers(labels.NUM_CONDITIONS))
    if not quirks:
        return latent, written, None
    written[missing_cells] = labels.MISSING
    if index % QUIRK_PERIOD != 0:
        return latent, written, None
    written[missing_condition * labels.NUM_LEVELS:(missing_condition + 1) * labels.NUM_LEVELS] = labels.MISSING
    return latent, written, missing_condition


def draw_labels(seed: int, num_studies: int, quirks: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(latent, written) int8 [num_studies, 25] of studies 0..num_studies-1, without any image (fast)."""
    draws = [draw_study_labels(seed, i, quirks)[:2] for i in range(num_studies)]
    return np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws])


def noise_floor_score(seed: int = 0, num_studies: int = 20000) -> dict:
    """Competition scores of the perfect reader and of the class prior on `num_studies` label-only studies.

    The perfect reader knows each latent severity and predicts P(written | latent): the best any image model
    can do in expectation. The class prior predicts each target's written-label frequencies (add-one
    smoothed, `metrics.class_prior_baseline`) on the same rows. Returns {"noise_floor", "class_prior",
    "num_studies"} (scores: lower is better).
    """
    latent, written = draw_labels(seed, num_studies)
    perfect = _NOISE[labels.TARGET_GROUP[None, :], latent]  # [N, 25, 3]
    prior = metrics.class_prior_baseline(written, num_studies)
    return {"noise_floor": metrics.competition_score(written, perfect)["score"],
            "class_prior": metrics.competition_score(written, prior)["score"], "num_studies": num_studies}
