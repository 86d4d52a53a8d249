"""The PyTorch peer of the crop classifier (benchmarks/peers/crop_classifier.py) against ours on tiny sizes (K=3
slices of 16x16, 2 studies): equal parameter counts (also at the two-stage default's sizes), our weights
loading 1:1, the same eval-mode logits and gradients with absent crops, the same training-mode forward with
every crop present, the same metric loss, and a training step that learns."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks import peers
from benchmarks.peers import crop_classifier as peer_lib
from lumbar_jax.data.crops import CropSpec
from lumbar_jax.labels import NUM_SEVERITIES, NUM_TARGETS
from lumbar_jax.models import pretrained, registry
from lumbar_jax.models.crop_classifier import CropClassifier, CropClassifierConfig
from lumbar_jax.models.efficientnet import CPU_STAGES, EfficientNetConfig
from lumbar_jax.models.vit import ViTConfig
from lumbar_jax.train import config as config_lib
from lumbar_jax.train.loss import metric_loss
from tests.models.helpers import jit_fast_compile

K, P = 3, 16
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def _config(pool: str = "cls", depth: int = 2) -> CropClassifierConfig:
    """ViT and EfficientNet CPU presets on 16x16 slices (ViT patch 8x8, EfficientNet on 8x8), width 32, 4 heads."""
    vit = ViTConfig.preset("vit_cpu", input_shape=(P, P), patch=(8, 8), in_channels=1, num_classes=0, pool=pool,
                           drop_path=0.0)
    effnet = EfficientNetConfig.preset("effnet_cpu", ndim=2, in_channels=1, num_classes=0, drop_path=0.0)
    return CropClassifierConfig((K, P, P), vit, effnet, effnet_pool=2, hidden=32, num_heads=4, depth=depth)


def _num_params(model: nnx.Module) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _random_weights(model: CropClassifier, seed: int) -> None:
    """Every parameter and BatchNorm statistic of an abstract (nnx.eval_shape) model drawn with numpy (no eager
    JAX initialisation to compile): kernels normal with std 1 / sqrt(fan-in); non-trivial BatchNorm statistics,
    norm scales, biases and embeddings, which initialised to constants would hide a swapped or missing tensor."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
        leaf, shape = str(path[-1]), var.get_value().shape
        if leaf == "kernel":
            value = rng.standard_normal(shape) / math.sqrt(math.prod(shape[:-1]))
        elif leaf == "var":
            value = 0.5 + rng.random(shape)
        elif leaf == "scale":
            value = 0.75 + 0.5 * rng.random(shape)
        else:  # BatchNorm means, biases, embeddings, class token, position embeddings, target_bias
            value = 0.1 * rng.standard_normal(shape)
        var.set_value(jnp.asarray(value, var.get_value().dtype))
    abstract = [leaf for leaf in jax.tree.leaves(nnx.state(model)) if isinstance(leaf, jax.ShapeDtypeStruct)]
    assert not abstract, f"{len(abstract)} variables left abstract"


@pytest.fixture(scope="module")
def models() -> tuple[CropClassifier, peer_lib.CropClassifierPeer]:
    """(ours with random weights, and the peer with our weights loaded), both in eval mode."""
    config = _config()
    ours = nnx.eval_shape(lambda: CropClassifier(config, kernels="cpu", rngs=nnx.Rngs(0)))
    _random_weights(ours, seed=1)
    peer = peer_lib.CropClassifierPeer(config)
    peers.load_weights(peer, ours)
    ours.eval()
    return ours, peer.eval()


def _batch(all_present: bool, seed: int = 0):
    """(crops uint8 [2, 25, K, P, P], crop_present [2, 25], labels [2, 25] with -1 missing); unless
    `all_present`, study 0's foraminal crops and study 1's spinal crops are absent (zeros)."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (2, NUM_TARGETS, K, P, P), dtype=np.uint8)
    present = np.ones((2, NUM_TARGETS), bool)
    if not all_present:
        present[0, 5:15] = False
        present[1, :5] = False
    crops[~present] = 0
    labels = rng.integers(0, NUM_SEVERITIES, (2, NUM_TARGETS))
    labels[0, [0, 7, 20]] = -1
    return crops, present, labels


def _torch(*arrays):
    return [torch.from_numpy(np.asarray(a)) for a in arrays]


@jit_fast_compile
def _loss_and_grads(graphdef, state, crops, present, labels):
    """Our metric loss, logits and parameter gradients."""
    def loss_fn(model):
        logits = model(crops, present)
        return metric_loss(logits, labels)[0], logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(nnx.merge(graphdef, state))
    return loss, logits, grads


@jit_fast_compile
def _train_forward(graphdef, state, crops, present):
    """Our training-mode logits and the BatchNorm statistics it leaves."""
    model = nnx.merge(graphdef, state)
    return model(crops, present), nnx.state(model, nnx.BatchStat)


def test_parameter_counts_and_weight_layout_match(models):
    """Equal trainable parameter counts for both ViT poolings at tiny sizes and at the two-stage default's sizes
    (ours from the registry, abstract); another depth differs. Loading refuses a model of another layout."""
    for pool in ("cls", "mean"):
        ours = nnx.eval_shape(lambda: CropClassifier(_config(pool), kernels="cpu", rngs=nnx.Rngs(0)))
        assert peers.parameter_count(peer_lib.CropClassifierPeer(_config(pool))) == _num_params(ours)
    assert peers.parameter_count(peer_lib.CropClassifierPeer(_config(depth=3))) != _num_params(ours)

    default = config_lib.two_stage_config()
    crop_shape = CropSpec.from_config(default.crops).shape
    ours = nnx.eval_shape(lambda: registry.create_crop_classifier(default.model, crop_shape, nnx.Rngs(0)))
    config = registry.crop_classifier_config(default.model, crop_shape)
    assert (config.vit.width, config.effnet.stages, config.effnet_pool) == (32, CPU_STAGES, 2)  # vit_cpu, effnet_cpu
    assert peers.parameter_count(peer_lib.CropClassifierPeer(config)) == _num_params(ours)

    with pytest.raises(ValueError, match=r"missing \(\d+\): blocks\.2\.attn\.proj\.bias"):
        peers.load_weights(peer_lib.CropClassifierPeer(_config(depth=3)), models[0])


def test_eval_logits_loss_and_gradients_match(models):
    """Eval mode with absent crops: with our weights loaded the peer gives our logits, metric loss and gradients
    (encoder stems, embeddings, classifier); a changed BatchNorm statistic in the peer breaks the agreement."""
    ours, peer = models
    crops, present, labels = _batch(all_present=False)
    graphdef, state = nnx.split(ours)
    loss, logits, grads = _loss_and_grads(graphdef, state, crops, present, labels)
    grad_model = nnx.clone(ours)
    nnx.update(grad_model, grads)
    expected_grads = pretrained.torch_state_dict(grad_model)

    peer.zero_grad(set_to_none=True)
    peer_logits = peer(*_torch(crops, present))
    peer_loss = peer_lib.metric_loss(peer_logits, *_torch(labels))
    peer_loss.backward()
    assert peer_logits.dtype == torch.float32 and peer_logits.shape == (2, NUM_TARGETS, NUM_SEVERITIES)
    np.testing.assert_allclose(peer_logits.detach().numpy(), logits, **TOLERANCE)
    np.testing.assert_allclose(peer_loss.item(), loss, **TOLERANCE)
    parameters = dict(peer.named_parameters())
    for key in ("encoders.0.vit.patch_embed.proj.weight", "encoders.0.effnet.conv_stem.weight", "pool.query",
                "condition_embed", "blocks.1.mlp.fc2.bias", "classifier.weight", "target_bias"):
        expected = expected_grads[key]
        scale = np.abs(expected).max()
        assert scale > 1e-8, key
        np.testing.assert_allclose(parameters[key].grad.numpy(), expected, rtol=1e-3, atol=1e-4 * scale, err_msg=key)

    running_var = peer.encoders[0].effnet.blocks[1][0].bn2.running_var
    with torch.no_grad():
        running_var.mul_(1.5)
        perturbed = peer(*_torch(crops, present)).numpy()
        running_var.div_(1.5)
    assert np.abs(perturbed - logits).max() > 1e-3


def test_train_mode_forward_matches_with_every_crop_present(models):
    """Training mode (BatchNorm batch statistics): with every crop present the peer gives our logits and our
    updated BatchNorm running means; with absent crops it does not (our statistics exclude them, timm's
    BatchNorm cannot)."""
    ours, peer = models
    ours.train()
    peer.train()
    graphdef, state = nnx.split(ours)
    try:
        for all_present in (True, False):
            crops, present, _ = _batch(all_present, seed=3)
            logits, stats = _train_forward(graphdef, state, crops, present)
            peer_state = {key: value.clone() for key, value in peer.state_dict().items()}
            with torch.no_grad():
                peer_logits = peer(*_torch(crops, present)).numpy()
                running_mean = peer.encoders[0].effnet.bn1.running_mean.numpy().copy()
            peer.load_state_dict(peer_state)
            if all_present:
                np.testing.assert_allclose(peer_logits, logits, **TOLERANCE)
                np.testing.assert_allclose(running_mean, stats["encoders"][0]["effnet"]["bn1"]["mean"][...],
                                           **TOLERANCE)
            else:
                assert np.abs(peer_logits - logits).max() > 1e-3
    finally:
        ours.eval()
        peer.eval()


def test_metric_loss_matches_ours():
    """The torch metric loss equals ours on random logits and labels with missing (-1) labels, a study without
    any spinal label and a batch without any subarticular label; and it moves with a label."""
    rng = np.random.default_rng(4)
    logits = (2.0 * rng.standard_normal((3, NUM_TARGETS, NUM_SEVERITIES))).astype(np.float32)
    labels = rng.integers(-1, NUM_SEVERITIES, (3, NUM_TARGETS))
    labels[1, :5] = -1  # study 1: no spinal label
    no_subarticular = labels.copy()
    no_subarticular[:, 15:] = -1
    for batch_labels in (labels, no_subarticular):
        expected = float(metric_loss(jnp.asarray(logits), jnp.asarray(batch_labels))[0])
        np.testing.assert_allclose(peer_lib.metric_loss(*_torch(logits, batch_labels)).item(), expected, rtol=1e-6)
    changed = labels.copy()
    changed[0, 0] = (labels[0, 0] + 1) % NUM_SEVERITIES
    assert abs(peer_lib.metric_loss(*_torch(logits, changed)).item() - float(metric_loss(logits, labels)[0])) > 1e-3


def test_train_step_lowers_the_metric_loss():
    """peers.adamw_train_step: a few AdamW steps (gradients clipped) on one batch lower the peer's metric loss."""
    torch.manual_seed(0)
    peer = peer_lib.CropClassifierPeer(_config())
    step = peers.adamw_train_step(peer, lambda forward, crops, present, labels: peer_lib.metric_loss(
        forward(crops, present), labels), lr=3e-3, weight_decay=0.05, grad_clip=1.0)
    batch = _torch(*_batch(all_present=False))
    losses = [step(*batch).item() for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
