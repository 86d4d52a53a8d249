"""The stage-2 crop classifier (models/crop_classifier.py) on tiny sizes (K=3 slices of 16x16, 2 studies):
shapes, absent crops reaching no output (train and eval mode), target embeddings, training on the metric loss
through the train state, timm-layout weights into its 2D encoders, and parity with timm's models."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks.peers import import_timm
from lumbar_jax.labels import NUM_SEVERITIES, NUM_TARGETS
from lumbar_jax.models import pretrained
from lumbar_jax.models.crop_classifier import CropClassifier, CropClassifierConfig
from lumbar_jax.models.efficientnet import EfficientNet, EfficientNetConfig
from lumbar_jax.models.fused import normalize_volumes
from lumbar_jax.models.vit import ViTConfig, VisionTransformer
from lumbar_jax.train.loss import metric_loss
from lumbar_jax.train.state import create_train_state, merge_model
from tests.models.helpers import KERNELS, cheap_rngs, jit_fast_compile
from tests.models.timm_reference import numpy_state, randomized, torch_forward

K, P = 3, 16
LOGITS_SHAPE = (NUM_TARGETS, NUM_SEVERITIES)


def _config(crop_shape=(K, P, P), vit="vit_cpu", effnet="effnet_cpu", vit_patch=(8, 8), drop_path=0.0,
            **fields) -> CropClassifierConfig:
    """The encoder presets `vit` / `effnet` (None: left out) for slices of `crop_shape`, `drop_path` deep; width
    32, 2 heads, 2 blocks unless `fields` say otherwise."""
    vit = ViTConfig.preset(vit, input_shape=crop_shape[1:], patch=vit_patch, drop_path=drop_path) if vit else None
    effnet = EfficientNetConfig.preset(effnet, ndim=2, drop_path=drop_path) if effnet else None
    return CropClassifierConfig(crop_shape, vit, effnet, **(dict(hidden=32, num_heads=2, depth=2) | fields))


def _model(seed: int = 0, **overrides) -> CropClassifier:
    return CropClassifier(_config(**overrides), kernels=KERNELS, rngs=cheap_rngs(seed))


def _batch(batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(crops uint8 [B, 25, K, P, P], crop_present [B, 25]): the foraminal crops of study 0 and the spinal
    crops of the others absent (zeros, as the pipeline cuts them)."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (batch, NUM_TARGETS, K, P, P), dtype=np.uint8)
    present = np.ones((batch, NUM_TARGETS), bool)
    present[0, 5:15] = False
    present[1:, :5] = False
    crops[~present] = 0
    return crops, present


def _with_absent_noise(crops: np.ndarray, present: np.ndarray) -> np.ndarray:
    noisy = crops.copy()
    noisy[~present] = np.random.default_rng(1).integers(0, 256, crops.shape, dtype=np.uint8)[~present]
    return noisy


@partial(jit_fast_compile, static_argnames="graphdef")
def _apply(state, crops, present, *, graphdef):
    return nnx.merge(graphdef, state)(crops, present)


def _forward(model: CropClassifier, crops, present) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(_apply(state, crops, present, graphdef=graphdef))


# ---------------------------------------------------------------------------------------------- training


def test_train_step_ignores_absent_crops_and_lowers_the_metric_loss():
    """Train mode (dropout, drop path, BatchNorm batch statistics) through the train state's merge_model: one step
    on two batches that differ only inside absent crops gives the same loss, logits, parameters and BatchNorm
    statistics; a few steps on a fixed batch lower the metric loss; eval mode then reads the running statistics."""
    model = _model(dropout=0.1, drop_path=0.1)
    statics, state = create_train_state(model, optax.adamw(3e-3), use_ema=False)

    @jit_fast_compile
    def jitted_step(state, crops, present, labels, rng_state):
        model = merge_model(statics, rng_state, state["model"], train=True)
        optimizer = nnx.merge(statics.opt_def, state["opt"])

        def loss_fn(model):
            logits = model(crops, present)
            return metric_loss(logits, labels)[0], logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        new_state = {"model": nnx.state(model, nnx.Not(nnx.RngState)), "opt": nnx.state(optimizer), "ema": None}
        return new_state, loss, logits

    train_step = lambda *args: jitted_step(*args, statics.rng_state)  # noqa: E731
    crops, present = _batch()
    labels = np.random.default_rng(2).integers(0, NUM_SEVERITIES, (2, NUM_TARGETS))
    labels[0, 20] = -1  # a missing label
    first, loss, logits = train_step(state, crops, present, labels)
    assert logits.shape == (2, *LOGITS_SHAPE) and logits.dtype == np.float32 and np.isfinite(loss)
    noisy = train_step(state, _with_absent_noise(crops, present), present, labels)
    for new, ref in zip(jax.tree.leaves(noisy), jax.tree.leaves((first, loss, logits))):
        np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-6)
    old_stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    new_stats = jax.tree.leaves(nnx.filter_state(first["model"], nnx.BatchStat))
    assert all(not np.array_equal(a, b) for a, b in zip(new_stats, old_stats))  # BatchNorm statistics updated

    losses, state = [float(loss)], first
    for _ in range(6):
        state, loss, _ = train_step(state, crops, present, labels)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses

    trained = merge_model(statics, statics.rng_state, state["model"], train=False)
    eval_logits = _forward(trained, crops, present)
    assert np.isfinite(eval_logits).all() and not np.allclose(eval_logits, logits, atol=1e-3)


# ---------------------------------------------------------------------------------------------- eval mode


def test_absent_crops_embeddings_and_output_bias():
    """Eval mode: absent crops' pixels change no logit (theirs come from the embeddings and the present crops);
    a present crop's do. With one image in every crop (or no crop at all) the 25 targets still get 25 different
    outputs: the condition / level / side embeddings tell them apart. set_output_bias adds the bias."""
    model = _model()
    model.eval()
    crops, present = _batch()
    logits = _forward(model, crops, present)
    assert logits.shape == (2, *LOGITS_SHAPE) and logits.dtype == np.float32 and np.isfinite(logits).all()
    np.testing.assert_allclose(_forward(model, _with_absent_noise(crops, present), present), logits, atol=1e-6)
    changed = crops.copy()
    changed[0, :20] = 255 - changed[0, :20]  # every crop of study 0 but target 20's
    moved = np.abs(_forward(model, changed, present) - logits).max(axis=-1)
    # Their own targets; target 20 through the study head (small at timm's initialisation, std 0.02 weights).
    assert moved[0, 0] > 1e-3 and moved[0, 20] > 1e-6
    np.testing.assert_allclose(moved[1], 0.0, atol=1e-7)  # another study

    same = np.broadcast_to(crops[:1, :1], crops.shape).copy()
    none = np.zeros_like(present)
    for batch_present in (np.ones_like(present), none):
        out = _forward(model, same, batch_present)
        assert np.isfinite(out).all()
        rows = out[0]
        gaps = np.abs(rows[:, None] - rows[None]).max(axis=-1) + np.eye(NUM_TARGETS)
        assert gaps.min() > 1e-4
    np.testing.assert_allclose(_forward(model, crops, none), _forward(model, same, none), atol=1e-6)

    bias = np.random.default_rng(3).standard_normal(LOGITS_SHAPE).astype(np.float32)
    model.set_output_bias(bias)
    np.testing.assert_allclose(_forward(model, crops, present), logits + bias, atol=1e-5)


def test_encoder_ablations_and_shape_errors():
    """Either encoder can be left out (the slice features are the other one's; traced, not compiled); none is
    refused, and so are crops of another slice count."""
    crops, present = _batch()
    for vit, effnet, width in (("vit_cpu", None, 32), (None, "effnet_cpu", 64)):
        model = _model(vit=vit, effnet=effnet, depth=1)
        features, logits = nnx.eval_shape(lambda m: (m.encode_slices(crops, present), m(crops, present)), model)
        assert features.shape == (2, NUM_TARGETS, K, width) and logits.shape == (2, *LOGITS_SHAPE)
    with pytest.raises(ValueError, match="needs a ViT, an EfficientNet or both"):
        _model(vit=None, effnet=None)
    with pytest.raises(ValueError, match=r"expected \[B, 25, 3, P, P\]"):
        _model(depth=1).encode_slices(crops[:, :, :2], present)


# ---------------------------------------------------------------------------------------------- weights


def _imagenet_layout(seed: int) -> tuple[VisionTransformer, EfficientNet]:
    """2D tiny encoders in timm's ImageNet layout (3 channels, 1000 classes) with non-trivial BatchNorm
    statistics, in eval mode: stand-ins for timm checkpoints of variants timm does not have."""
    imagenet = dict(in_channels=3, num_classes=1000, drop_path=0.0)
    vit = VisionTransformer(ViTConfig.preset("vit_cpu", input_shape=(P, P), patch=(8, 8), **imagenet),
                            kernels=KERNELS, rngs=cheap_rngs(seed))
    effnet = EfficientNet(EfficientNetConfig.preset("effnet_cpu", ndim=2, **imagenet), kernels=KERNELS,
                          rngs=cheap_rngs(seed + 1))
    stats = nnx.state(effnet, nnx.BatchStat)
    leaves, treedef = jax.tree.flatten(stats)
    rng = np.random.default_rng(seed)
    nnx.update(effnet, jax.tree.unflatten(treedef, [0.5 + rng.random(x.shape).astype(np.float32) for x in leaves]))
    vit.eval()
    effnet.eval()
    return vit, effnet


def test_timm_layout_weights_load_into_the_slice_encoder(tmp_path):
    """timm-layout checkpoint files of 3-channel ImageNet-layout 2D encoders (pretrained.timm_state_dict) load
    1:1 through pretrained.apply_pretrained (the registry's path) into the crop classifier's 1-channel
    encoders, whose slice features then equal the source models' pooled features on the normalised slices
    repeated over RGB (the stem summed over RGB, the checkpoint's classifier ignored)."""
    from safetensors.numpy import save_file

    vit, effnet = _imagenet_layout(seed=4)
    save_file(pretrained.timm_state_dict(vit), str(tmp_path / "vit.safetensors"))
    save_file(pretrained.timm_state_dict(effnet), str(tmp_path / "effnet.safetensors"))
    model = _model(seed=7)
    cfg = {"pretrained_vit": str(tmp_path / "vit.safetensors"), "inflation": "centre", "vit_depth": 0,
           "pretrained_effnet": str(tmp_path / "effnet.safetensors")}
    reports = pretrained.apply_pretrained(model, cfg)
    assert {"head.weight", "classifier.weight"} <= set(reports["pretrained_vit"].ignored
                                                         + reports["pretrained_effnet"].ignored)
    model.eval()
    crops, present = _batch(1)
    features = jit_fast_compile(lambda c, p: model.encode_slices(c, p))(crops, present)
    rgb = np.repeat(np.asarray(normalize_volumes(crops, np.float32)).reshape(-1, P, P, 1), 3, axis=-1)
    pooled = lambda x: jnp.concatenate([vit.norm(vit.encode(x)[0])[:, 0],  # noqa: E731
                                        effnet.feature_map(x).mean(axis=(1, 2))], axis=-1)
    expected = np.asarray(jit_fast_compile(pooled)(rgb))
    np.testing.assert_allclose(np.asarray(features).reshape(expected.shape), expected, atol=1e-4)
    assert np.abs(expected).max() > 0.1


def test_slice_encoder_matches_timm():
    """timm's efficientnet_b0 and vit_tiny_patch16 (at 32 px: a 2x2 position grid) with random weights and
    statistics, loaded into a crop classifier's encoders: its slice features are timm's pre-logit features of
    the normalised grey slices repeated over RGB."""
    timm = import_timm()
    timm_effnet = randomized(timm.create_model("efficientnet_b0", pretrained=False), seed=1)
    timm_vit = randomized(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32), seed=2)
    config = _config((1, 32, 32), vit="vit_ti", effnet="effnet_b0", vit_patch=(16, 16), depth=1)
    model = nnx.eval_shape(lambda: CropClassifier(config, kernels=KERNELS, rngs=nnx.Rngs(0)))
    encoder = model.encoders[0]
    pretrained.load_timm_weights(encoder.vit, numpy_state(timm_vit))
    pretrained.load_timm_weights(encoder.effnet, numpy_state(timm_effnet))
    model.eval()
    crops = np.random.default_rng(5).integers(0, 256, (1, NUM_TARGETS, 1, 32, 32), dtype=np.uint8)
    present = np.ones((1, NUM_TARGETS), bool)
    features = np.asarray(jit_fast_compile(lambda c: model.encode_slices(c, present))(crops))[0, :, 0]
    rgb = np.repeat(np.asarray(normalize_volumes(crops, np.float32)).reshape(-1, 32, 32, 1), 3, axis=-1)
    expected = np.concatenate([torch_forward(lambda t, m=m: m.forward_head(m.forward_features(t), pre_logits=True),
                                             rgb) for m in (timm_vit, timm_effnet)], axis=-1)
    assert features.shape == expected.shape == (NUM_TARGETS, 192 + 1280)
    np.testing.assert_allclose(features, expected, atol=1e-4)
    assert np.abs(expected).max() > 0.1
