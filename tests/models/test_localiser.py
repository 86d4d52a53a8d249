"""The localiser on its tiny variant: shapes, training on a fixed batch, absent series, left/right flips."""

from functools import partial

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lumbar_jax import labels
from lumbar_jax.data.augment import flip_left_right
from lumbar_jax.labels import TARGET_SERIES
from lumbar_jax.models.localiser import (
    Localiser,
    cell_centres,
    flip_volumes,
    localiser_loss,
    predict_points,
    trained_targets,
    unflip_points,
)
from tests.models.helpers import KERNELS, cheap_rngs, jit_fast_compile, study_batch, with_absent_noise

SHAPE = (8, 32, 32)


def _targets(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(coords float32 [B, 25, 3] in [0.2, 0.8], coords_series int32 [B, 25]: each target on its series)."""
    coords = np.random.default_rng(seed).uniform(0.2, 0.8, (batch, labels.NUM_TARGETS, 3)).astype(np.float32)
    return coords, np.tile(TARGET_SERIES, (batch, 1)).astype(np.int32)


def _model():
    return Localiser("loc_tiny_test", volume_shape=SHAPE, kernels=KERNELS, rngs=cheap_rngs())


@partial(jit_fast_compile, static_argnames="graphdef")
def _step(state, volumes, present, coords, coords_series, *, graphdef):
    """One AdamW step on localiser_loss with its heatmap term -> (state, loss, points)."""
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model):
        output = model(volumes, present)
        batch = {"coords": coords, "coords_series": coords_series, "present": present}
        loss, _ = localiser_loss(output, batch, volume_shape=SHAPE, heatmap_weight=1.0)
        return loss, output.points

    (loss, points), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss, points


def _trainer(lr=1e-2):
    """(state, step(state, volumes, present, coords, coords_series)) of a fresh tiny model with AdamW."""
    model = _model()
    graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.adamw(lr), wrt=nnx.Param)))
    return state, partial(_step, graphdef=graphdef)


@partial(jit_fast_compile, static_argnames=("graphdef", "flip_tta"))
def _predict(state, volumes, present, *, graphdef, flip_tta):
    return predict_points(nnx.merge(graphdef, state), volumes, present, flip_tta=flip_tta)


def _eval_points(model, volumes, present, flip_tta=False) -> np.ndarray:
    model.eval()
    graphdef, state = nnx.split(model)
    return np.asarray(_predict(state, volumes, present, graphdef=graphdef, flip_tta=flip_tta))


def test_output_shapes_and_heatmaps():
    model = _model()
    output = nnx.eval_shape(lambda m: m(jnp.zeros((3, 3, *SHAPE), jnp.uint8), jnp.ones((3, 3), bool)), model)
    assert model.grid == (8, 4, 4)  # depth kept, in-plane / 8 (pool 2, stem 2, stage 2)
    assert output.points.shape == (3, labels.NUM_TARGETS, 3) and output.points.dtype == jnp.float32
    assert output.log_probs.shape == (3, labels.NUM_TARGETS, 8 * 4 * 4)
    assert output.centres.shape == (8 * 4 * 4, 3)


def test_cell_centres_tile_the_volume_symmetrically():
    centres = cell_centres((16, 64, 64), (16, 16, 16)).reshape(16, 16, 16, 3)
    np.testing.assert_allclose(centres[:, 0, 0, 0], np.arange(16) / 15, atol=1e-6)  # depth kept: voxel centres
    np.testing.assert_allclose(centres[0, :, 0, 1], (np.arange(16) * 4 + 1.5) / 63, atol=1e-6)
    np.testing.assert_allclose(centres[::-1, ::-1, ::-1], 1.0 - centres, atol=1e-6)  # a flip maps cells onto cells


def test_loss_decreases_on_a_fixed_batch():
    volumes, present = study_batch(3, SHAPE)
    coords, coords_series = _targets(3)
    state, step = _trainer()
    losses = []
    for _ in range(20):
        state, loss, _ = step(state, volumes, present, coords, coords_series)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses


def test_absent_series_and_foreign_points_do_not_count():
    """Training mode: what lies inside absent series changes neither the loss nor the points of targets on
    present series; targets annotated on another series, or on an absent one, are not trained on."""
    volumes, present = study_batch(3, SHAPE)  # study 0 lacks series 1, study 1 lacks series 0 and 2
    coords, coords_series = _targets(3)
    coords_series[2, 7] = 2  # a foraminal point annotated on the axial series
    trained = np.asarray(trained_targets(coords_series, present))
    assert not trained[0, :5].any() and trained[0, 5:].all()  # spinal lives on the absent sagittal T2
    assert trained[1, :5].all() and not trained[1, 5:].any()
    assert not trained[2, 7] and trained[2].sum() == 24

    state, step = _trainer()
    _, loss, points = step(state, volumes, present, coords, coords_series)
    noisy = with_absent_noise(volumes, present)
    moved = coords.copy()
    moved[~trained] = 0.5  # untrained targets' coordinates are ignored
    _, loss_noisy, points_noisy = step(state, noisy, present, moved, coords_series)
    np.testing.assert_allclose(loss_noisy, loss, rtol=1e-5)
    on_present = np.asarray(present)[:, TARGET_SERIES]
    np.testing.assert_allclose(np.asarray(points_noisy)[on_present], np.asarray(points)[on_present], atol=1e-5)


def test_flip_helpers_match_the_augmentation():
    volumes, present = study_batch(2, SHAPE)
    coords, coords_series = _targets(2)
    flipped = flip_left_right({"volumes": volumes, "coords": coords, "coords_series": coords_series})
    np.testing.assert_array_equal(flip_volumes(volumes), flipped["volumes"])
    np.testing.assert_array_equal(np.asarray(flip_volumes(jnp.asarray(volumes))), flipped["volumes"])
    # Annotated points are mirrored exactly as the augmentation mirrors the labels' coordinates.
    np.testing.assert_allclose(unflip_points(coords), flipped["coords"], atol=1e-6)
    np.testing.assert_allclose(unflip_points(unflip_points(coords)), coords, atol=1e-6)  # an involution
    spinal, left_foraminal = labels.target_index(0, 2), labels.target_index(1, 2)
    right_foraminal = labels.MIRROR_TARGET_INDEX[left_foraminal]
    np.testing.assert_allclose(unflip_points(coords)[:, spinal, 0], 1 - coords[:, spinal, 0], atol=1e-6)
    np.testing.assert_allclose(unflip_points(coords)[:, left_foraminal, 1:], coords[:, right_foraminal, 1:])


def test_flipped_batch_trains_and_flip_tta_is_equivariant():
    """The loss of flipped volumes with flipped targets is finite; with flip TTA the prediction on a flipped
    batch is exactly the mirror (`unflip_points`) of the prediction on the batch (eval mode)."""
    volumes, present = study_batch(3, SHAPE)
    coords, coords_series = _targets(3)
    flipped = flip_left_right({"volumes": volumes, "coords": coords, "coords_series": coords_series})
    state, step = _trainer()
    _, loss, points = step(state, flipped["volumes"], present, flipped["coords"], flipped["coords_series"])
    assert np.isfinite(loss) and ((points >= 0) & (points <= 1)).all()

    model = _model()
    points = _eval_points(model, volumes, present, flip_tta=True)
    points_of_flipped = _eval_points(model, flipped["volumes"], present, flip_tta=True)
    np.testing.assert_allclose(points_of_flipped, unflip_points(points), atol=1e-5)
    plain = _eval_points(model, volumes, present)
    assert not np.allclose(plain, points, atol=1e-5)  # the TTA did average two different predictions


def test_xla_kernels_give_the_same_points():
    """The 'xla' convolutions (GPU / TPU) compute the same model as the CPU formulations."""
    volumes, present = study_batch(3, SHAPE)
    cpu = Localiser("loc_tiny_test", volume_shape=SHAPE, kernels="cpu", rngs=cheap_rngs())
    xla = Localiser("loc_tiny_test", volume_shape=SHAPE, kernels="xla", rngs=cheap_rngs())
    np.testing.assert_allclose(_eval_points(xla, volumes, present), _eval_points(cpu, volumes, present), atol=1e-4)
