"""The PyTorch peer of the localiser (benchmarks/peers/localiser.py) computes what ours computes with our
weights loaded: parameter counts, eval and training forward passes, the loss and its gradients."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks.peers import adamw_train_step, load_weights, parameter_count
from benchmarks.peers.localiser import LocaliserPeer, PeerOutput, localiser_loss
from lumbar_jax import labels
from lumbar_jax.labels import TARGET_SERIES
from lumbar_jax.models import localiser as localiser_lib
from lumbar_jax.models.localiser import Localiser
from tests.models.helpers import jit_fast_compile, num_params, study_batch

VARIANT = "loc_tiny_test"
# Odd sizes at every level (pooled 10x18x22, stem 10x9x11, heatmap grid 10x5x6, top 5x3x3): the strided convs'
# padding and the decoder's repeat-then-crop upsampling are both exercised.
SHAPE = (10, 36, 44)
ATOL = 1e-4


def _random_state(model: Localiser, seed: int = 0) -> Localiser:
    """`model` (concrete or nnx.eval_shape) with every tensor drawn at random: conv kernels He-normal, biases,
    BatchNorm scales, offsets and running statistics around their initial values (zeros and ones at init
    would hide a swapped or missing tensor)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)][-1]
        if name == "kernel":  # [*k, in / groups, out]
            value = rng.normal(0.0, math.sqrt(2.0 / math.prod(leaf.shape[:-1])), leaf.shape)
        elif name == "var":
            value = rng.uniform(0.5, 2.0, leaf.shape)
        else:  # mean, bias, scale
            value = (1.0 if name == "scale" else 0.0) + rng.normal(0.0, 0.3, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    nnx.update(model, jax.tree_util.tree_map_with_path(draw, nnx.state(model)))
    return model


@functools.lru_cache(maxsize=None)
def _models() -> tuple[Localiser, LocaliserPeer]:
    """(ours with random weights and statistics, the peer with them loaded); shared by the tests, which copy
    them. Built abstractly, then filled: no eager initialisation (seconds of op-by-op compiles)."""
    ours = nnx.eval_shape(lambda: Localiser(VARIANT, volume_shape=SHAPE, kernels="cpu", rngs=nnx.Rngs(0)))
    ours = _random_state(ours)
    peer = LocaliserPeer(VARIANT, SHAPE)
    load_weights(peer, ours)
    return ours, peer


@functools.partial(jit_fast_compile, static_argnames="graphdef")
def _forward(state, volumes, present, *, graphdef):
    """Our model's output (eval or training mode, as `state` was split) on a batch."""
    return nnx.merge(graphdef, state)(volumes, present)


@functools.partial(jit_fast_compile, static_argnames="graphdef")
def _loss_and_grads(state, volumes, present, coords, coords_series, *, graphdef):
    """(our localiser_loss at SHAPE, output, its parameter gradients, the model state after the forward pass:
    BatchNorm running averages updated in training mode)."""
    model = nnx.merge(graphdef, state)

    def loss_fn(model):
        output = model(volumes, present)
        batch = {"coords": coords, "coords_series": coords_series, "present": present}
        return localiser_lib.localiser_loss(output, batch, volume_shape=SHAPE)[0], output

    (loss, output), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return loss, output, grads, nnx.state(model)


def _targets(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(coords float32 [B, 25, 3] in [0.1, 0.9], coords_series int32 [B, 25]: some targets on another series
    or on none (-1), which the loss leaves out)."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0.1, 0.9, (batch, labels.NUM_TARGETS, 3)).astype(np.float32)
    coords_series = np.tile(TARGET_SERIES, (batch, 1)).astype(np.int32)
    coords_series[0, :4] = -1
    coords_series[-1, 10:13] = (TARGET_SERIES[10:13] + 1) % 3
    return coords, coords_series


def _max_diff(ours, peer: PeerOutput) -> dict[str, float]:
    """Max abs difference of points and log_probs between our output and the peer's."""
    return {name: float(np.abs(np.asarray(getattr(ours, name)) - getattr(peer, name).detach().numpy()).max())
            for name in ("points", "log_probs")}


@pytest.mark.parametrize("variant, shape", [("loc_small", (16, 64, 64)), (VARIANT, SHAPE)])
def test_parameter_counts_match(variant, shape):
    ours = nnx.eval_shape(lambda: Localiser(variant, volume_shape=shape, kernels="cpu", rngs=nnx.Rngs(0)))
    assert parameter_count(LocaliserPeer(variant, shape)) == num_params(ours)


def test_eval_forward_matches_and_a_perturbed_tensor_breaks_it():
    ours, peer = _models()
    volumes, present = study_batch(2, SHAPE, seed=3)  # series 1 absent in study 0, series 0 and 2 in study 1
    ours = nnx.clone(ours)
    ours.eval()
    graphdef, state = nnx.split(ours)
    expected = _forward(state, volumes, present, graphdef=graphdef)
    peer.eval()
    with torch.no_grad():
        got = peer(torch.from_numpy(volumes), torch.from_numpy(present))
        assert got.points.shape == (2, labels.NUM_TARGETS, 3)
        assert got.log_probs.shape == (2, labels.NUM_TARGETS, math.prod(ours.grid))
        np.testing.assert_allclose(got.centres.numpy(), expected.centres)
        diff = _max_diff(expected, got)
        assert max(diff.values()) < ATOL, diff
        state_dict = peer.state_dict()
        # (head.bias and refine.bn2's offsets add a constant per heatmap: log_softmax cannot see them)
        for key in ("blocks.2.0.bn3.running_var", "blocks.0.0.se.conv_reduce.bias", "lateral.0.weight"):
            original = state_dict[key].clone()
            state_dict[key].mul_(1.5)
            perturbed = peer(torch.from_numpy(volumes), torch.from_numpy(present))
            state_dict[key].copy_(original)
            assert max(_max_diff(expected, perturbed).values()) > 1e-3, key


def test_training_forward_and_gradients_match_with_every_series_present():
    ours, peer = _models()
    volumes = np.random.default_rng(4).integers(0, 256, (2, 3, *SHAPE), dtype=np.uint8)
    present = np.ones((2, 3), bool)
    coords, coords_series = _targets(2)
    ours = nnx.clone(ours)
    ours.train()
    graphdef, state = nnx.split(ours)
    loss, expected, grads, after = _loss_and_grads(state, volumes, present, coords, coords_series, graphdef=graphdef)
    peer_train = LocaliserPeer(VARIANT, SHAPE)
    peer_train.load_state_dict(peer.state_dict())
    peer_train.train()
    got = peer_train(torch.from_numpy(volumes), torch.from_numpy(present))
    diff = _max_diff(expected, got)
    assert max(diff.values()) < ATOL, diff
    # Batch statistics: the running means move alike (torch's running variance takes the unbiased variance).
    for key, ours_mean in (("bn1", after["bn1"]["mean"]), ("decoder_norm", after["decoder_norm"]["mean"])):
        np.testing.assert_allclose(peer_train.get_buffer(f"{key}.running_mean").numpy(), np.asarray(ours_mean[...]),
                                   atol=1e-5)

    peer_loss = localiser_loss(got, torch.from_numpy(coords), torch.from_numpy(coords_series),
                               torch.from_numpy(present), SHAPE)
    np.testing.assert_allclose(peer_loss.item(), float(loss), rtol=1e-5)
    peer_loss.backward()
    checked = (("conv_stem.weight", grads["conv_stem"]["kernel"]), ("head.weight", grads["head"]["kernel"]),
               ("blocks.1.0.se.conv_reduce.bias", grads["blocks"][1][0]["se"]["conv_reduce"]["bias"]))
    for name, ours_grad in checked:
        ours_grad = np.asarray(ours_grad[...])
        if ours_grad.ndim == 5:  # [*k, in, out] -> [out, in, *k]
            ours_grad = ours_grad.transpose(4, 3, 0, 1, 2)
        scale = np.abs(ours_grad).max()
        assert scale > 0 and np.abs(peer_train.get_parameter(name).grad.numpy() - ours_grad).max() < 1e-4 * scale, name


def test_loss_matches_ours_with_untrained_targets():
    batch_size, cells = 3, 60
    rng = np.random.default_rng(5)
    coords, coords_series = _targets(batch_size)
    present = np.ones((batch_size, 3), bool)
    present[1, 2] = False
    logits = rng.normal(0.0, 2.0, (batch_size, labels.NUM_TARGETS, cells)).astype(np.float32)
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    centres = localiser_lib.cell_centres(SHAPE, (3, 4, 5))
    points = np.einsum("btk,kc->btc", np.exp(log_probs), centres).astype(np.float32)
    # The last case puts every point on its annotation: the distance term at its smoothing floor sqrt(1e-6).
    for heatmap_weight, coords in ((1.0, coords), (0.0, coords), (0.0, points)):
        batch = {"coords": jnp.asarray(coords), "coords_series": jnp.asarray(coords_series), "present": present}
        expected, parts = localiser_lib.localiser_loss(localiser_lib.LocaliserOutput(points, log_probs, centres),
                                                       batch, volume_shape=SHAPE, heatmap_weight=heatmap_weight)
        assert 0 < int(parts["annotated"]) < batch_size * labels.NUM_TARGETS
        got = localiser_loss(PeerOutput(*map(torch.tensor, (points, log_probs, centres))),
                             torch.from_numpy(coords), torch.from_numpy(coords_series), torch.from_numpy(present),
                             SHAPE, heatmap_weight=heatmap_weight)
        np.testing.assert_allclose(got.item(), float(expected), rtol=1e-6)


def test_train_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    peer = LocaliserPeer(VARIANT, SHAPE)
    volumes, present = study_batch(2, SHAPE, seed=6)
    coords, coords_series = _targets(2)
    batch = [torch.from_numpy(a) for a in (volumes, present, coords, coords_series)]
    step = adamw_train_step(peer, lambda forward, volumes, present, coords, coords_series: localiser_loss(
        forward(volumes, present), coords, coords_series, present, SHAPE), lr=1e-2, weight_decay=1e-4, grad_clip=1.0)
    losses = [float(step(*batch)) for _ in range(8)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.9 * losses[0], losses


def test_load_weights_names_the_keys_that_do_not_correspond():
    ours, _ = _models()
    # loc_small has a fourth stage and a depthwise-separable block 1 (no bn3 / conv_pwl)
    expected = r"missing \(\d+\): blocks.3.0.bn1.bias, .*lateral.3.weight; unexpected \(\d+\): blocks.1.0.bn3.bias"
    with pytest.raises(ValueError, match=expected):
        load_weights(LocaliserPeer("loc_small", SHAPE), ours)
