"""The training loss is the competition metric evaluated on the batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumbar_jax import labels as labels_lib
from lumbar_jax import metrics
from lumbar_jax.train.loss import localisation_loss, metric_loss


def _case(seed, n=12):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=(n, labels_lib.NUM_TARGETS), p=[0.6, 0.25, 0.15])
    labels[rng.random(labels.shape) < 0.15] = labels_lib.MISSING
    labels[0, :5] = labels_lib.MISSING  # a study without any spinal label
    logits = rng.normal(size=(n, labels_lib.NUM_TARGETS, 3)).astype(np.float32)
    return labels, logits


@pytest.mark.parametrize("seed", range(3))
def test_loss_equals_competition_score_of_softmax(seed):
    labels, logits = _case(seed)
    loss, parts = metric_loss(jnp.asarray(logits), jnp.asarray(labels))
    probs = np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))
    expected = metrics.competition_score(labels, probs)
    assert float(loss) == pytest.approx(expected["score"], rel=1e-5)
    for key in metrics.LOSS_KEYS:
        assert float(parts[key]) == pytest.approx(expected[key], rel=1e-5), key


def test_hand_computed_weighting():
    # One spinal Severe row with uniform logits: CE = log 3 for every term; the mean is log 3 regardless of
    # weights, so break symmetry: add a Normal spinal row in another study predicted perfectly-ish.
    labels = np.full((2, labels_lib.NUM_TARGETS), labels_lib.MISSING)
    labels[0, 0], labels[1, 0] = 2, 0
    logits = np.zeros((2, labels_lib.NUM_TARGETS, 3), np.float32)
    logits[1, 0] = [np.log(8.0), 0.0, 0.0]  # p(normal) = 0.8, p(severe) = 0.1
    loss, parts = metric_loss(jnp.asarray(logits), jnp.asarray(labels))
    spinal = (4 * np.log(3) + 1 * -np.log(0.8)) / 5
    any_severe = (4 * np.log(3) + 1 * -np.log(0.9)) / 5
    assert float(parts["spinal"]) == pytest.approx(spinal, rel=1e-6)
    assert float(parts["any_severe_spinal"]) == pytest.approx(any_severe, rel=1e-6)
    # Foraminal and subarticular have no labelled row: left out of the mean.
    assert float(loss) == pytest.approx((spinal + any_severe) / 2, rel=1e-6)


def test_label_smoothing_mixes_the_uniform_cross_entropy_in_and_bounds_the_optimum():
    labels = np.full((1, labels_lib.NUM_TARGETS), labels_lib.MISSING)
    labels[0, 5] = 1  # one foraminal Moderate row: the foraminal term is its cross-entropy alone
    logits = np.zeros((1, labels_lib.NUM_TARGETS, 3), np.float32)
    logits[0, 5] = [0.0, 2.0, -1.0]
    e = 0.1
    log_p = np.log(np.asarray(jax.nn.softmax(logits[0, 5].astype(np.float64))))
    _, plain = metric_loss(jnp.asarray(logits), jnp.asarray(labels))
    _, smoothed = metric_loss(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=e)
    assert float(plain["foraminal"]) == pytest.approx(-log_p[1], rel=1e-6)
    assert float(smoothed["foraminal"]) == pytest.approx(-(1 - e) * log_p[1] - e * log_p.mean(), rel=1e-6)
    # Its minimum over the row's logits is at P = (1 - e) x label + e / 3: P(label) = 1 - 2e/3, not 1.
    row = lambda x: metric_loss(jnp.asarray(logits).at[0, 5].set(x), jnp.asarray(labels), label_smoothing=e)[0]
    descend = jax.jit(lambda x: jax.lax.fori_loop(0, 2000, lambda _, x: x - 2.0 * jax.grad(row)(x), x))
    x = descend(jnp.zeros(3))
    assert np.asarray(jax.nn.softmax(x)) == pytest.approx([e / 3, 1 - 2 * e / 3, e / 3], abs=1e-4)


def test_padding_and_missing_labels_do_not_contribute_and_grads_are_finite():
    labels, logits = _case(5)
    valid = np.ones(len(labels), bool)
    valid[-3:] = False
    loss = lambda x: metric_loss(x, jnp.asarray(labels), jnp.asarray(valid))[0]
    base = float(loss(jnp.asarray(logits)))
    changed = logits.copy()
    changed[-3:] = 50.0
    changed[labels == labels_lib.MISSING] = -50.0
    assert float(loss(jnp.asarray(changed))) == pytest.approx(base, rel=1e-6)
    grads = jax.grad(loss)(jnp.asarray(logits))
    assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[-3:] == 0)
    none = jnp.full_like(jnp.asarray(labels), labels_lib.MISSING)
    assert np.all(np.isfinite(jax.grad(lambda x: metric_loss(x, none)[0])(jnp.asarray(logits))))


def test_localisation_loss_on_a_hand_made_example():
    # 2 series x 2 keys; centres along the row axis only. Study 0: target 0 annotated on series 1 at row 0.25,
    # target 1 annotated on series 0 (absent: ignored), the rest without coordinates.
    key_series = np.array([0, 0, 1, 1])
    key_centres = np.array([[0.5, 0.0, 0.5], [0.5, 1.0, 0.5], [0.5, 0.0, 0.5], [0.5, 1.0, 0.5]])
    coords = np.full((1, labels_lib.NUM_TARGETS, 3), -1.0, np.float32)
    coords_series = np.full((1, labels_lib.NUM_TARGETS), -1, np.int32)
    coords[0, 0], coords_series[0, 0] = [0.5, 0.25, 0.5], 1
    coords[0, 1], coords_series[0, 1] = [0.5, 0.5, 0.5], 0
    present = np.array([[False, True]])
    attention = np.full((1, labels_lib.NUM_TARGETS, 4), 0.25, np.float32)
    attention[0, 0] = [0.0, 0.0, 0.6, 0.4]
    sigma = 0.5
    batch = {"coords": coords, "coords_series": coords_series, "present": present}
    loss, parts = localisation_loss(attention, batch, (key_series, key_centres), (16, 65, 64), sigma)
    # Goal over series 1's keys: Gaussian weights at row distances 0.25 and 0.75.
    w = np.exp(-0.5 * np.array([0.25, 0.75]) ** 2 / sigma**2)
    goal = w / w.sum()
    expected = -(goal[0] * np.log(0.6 + 1e-9) + goal[1] * np.log(0.4 + 1e-9))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(parts["localisation"]) == pytest.approx(expected, rel=1e-5)
    # Peak: key 2 (row 0.0) vs the point at row 0.25 of a 65-row volume: 0.25 * 64 = 16 voxels.
    assert float(parts["peak_distance"]) == pytest.approx(16.0, rel=1e-5)

    # The loss is lowest when the attention follows the goal, and nothing annotated gives 0.
    attention[0, 0] = [0.0, 0.0, goal[0], goal[1]]
    best, _ = localisation_loss(attention, batch, (key_series, key_centres), (16, 65, 64), sigma)
    assert float(best) < expected
    none, _ = localisation_loss(attention, {**batch, "coords_series": np.full_like(coords_series, -1)},
                                (key_series, key_centres), (16, 65, 64), sigma)
    assert float(none) == 0.0


def test_localisation_loss_follows_the_left_right_flip():
    """Flip augmentation + target queries: on the mirrored study, the left query must look where the right
    query looked before (mirrored). The loss of an attention on a study equals the loss of the mirrored
    attention (targets swapped by MIRROR_TARGET_INDEX, keys mirrored across the left-right axis of each
    series: depth for sagittal, cols for axial) on `flip_left_right` of the study."""
    from lumbar_jax.data.augment import flip_left_right
    from lumbar_jax.models.heads import token_centres

    grid, shape = (4, 2, 4), (8, 8, 8)
    cells = token_centres(grid, shape)
    key_series = np.repeat(np.arange(3), len(cells))
    key_centres = np.tile(cells, (3, 1))
    lr_axis = np.array([0, 0, 2])[key_series]  # per key: its series' left-right component
    mirrored = key_centres.copy()
    mirrored[np.arange(len(mirrored)), lr_axis] = 1 - mirrored[np.arange(len(mirrored)), lr_axis]
    index = {(s, *np.round(c, 6)): k for k, (s, c) in enumerate(zip(key_series, key_centres))}
    key_mirror = np.array([index[(s, *np.round(c, 6))] for s, c in zip(key_series, mirrored)])

    rng = np.random.default_rng(0)
    study = {"coords": rng.uniform(0, 1, (1, labels_lib.NUM_TARGETS, 3)).astype(np.float32),
             "coords_series": rng.integers(-1, 3, (1, labels_lib.NUM_TARGETS)).astype(np.int32),
             "labels": rng.integers(0, 3, (1, labels_lib.NUM_TARGETS))}
    attention = rng.dirichlet(np.ones(len(key_series)), (1, labels_lib.NUM_TARGETS)).astype(np.float32)
    present = np.ones((1, 3), bool)
    flipped = flip_left_right(study)
    flipped_attention = attention[:, labels_lib.MIRROR_TARGET_INDEX][..., key_mirror]

    def loss(attn, s):
        return localisation_loss(attn, {**s, "present": present}, (key_series, key_centres), shape, 0.1)

    (plain, parts), (mirror, mirror_parts) = loss(attention, study), loss(flipped_attention, flipped)
    assert float(mirror) == pytest.approx(float(plain), rel=1e-5)
    assert float(mirror_parts["peak_distance"]) == pytest.approx(float(parts["peak_distance"]), rel=1e-5)
    # Without swapping the targets (a flip that forgot the labels) the loss differs.
    assert float(loss(attention[..., key_mirror], flipped)[0]) != pytest.approx(float(plain), rel=1e-3)


def test_unweighted_cross_entropy_matches_a_hand_computation():
    """train.loss='cross_entropy' (the earlier systems' objective): mean -log p(label) over labelled cells,
    every class and target weighted 1; missing labels and padding rows left out."""
    from lumbar_jax.train.loss import cross_entropy_loss

    logits = np.zeros((2, labels_lib.NUM_TARGETS, 3), np.float32)
    labels = np.full((2, labels_lib.NUM_TARGETS), labels_lib.MISSING)
    logits[0, 0] = [np.log(2.0), 0.0, 0.0]  # p = (1/2, 1/4, 1/4)
    labels[0, 0] = 0  # -log 1/2
    logits[0, 7] = [0.0, 0.0, np.log(2.0)]
    labels[0, 7] = 2  # severe: -log 1/2, NOT weighted 4 as in the metric
    labels[0, 24] = 1  # uniform logits: -log 1/3
    labels[1, 3] = 2  # row 1 is padding below
    expected = (np.log(2.0) + np.log(2.0) + np.log(3.0)) / 3
    loss, parts = cross_entropy_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray([True, False]))
    assert float(loss) == pytest.approx(expected, rel=1e-6) and float(parts["cross_entropy"]) == float(loss)
    loss_all, _ = cross_entropy_loss(jnp.asarray(logits), jnp.asarray(labels))  # row 1 counts without `valid`
    assert float(loss_all) == pytest.approx((3 * expected + np.log(3.0)) / 4, rel=1e-6)
    empty, _ = cross_entropy_loss(jnp.asarray(logits), jnp.full((2, labels_lib.NUM_TARGETS), labels_lib.MISSING))
    assert float(empty) == 0.0
