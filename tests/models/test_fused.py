"""The study model end to end on tiny variants: forward + backward, absent-series invariance (train and eval
mode, shared and separate encoders), bfloat16 compute, attention maps, position-embedding resampling."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lumbar_jax.labels import NUM_SEVERITIES, NUM_TARGETS
from lumbar_jax.models import create_model
from tests.models.helpers import cheap_rngs, jit_fast_compile, model_config, study_batch, with_absent_noise

LOGITS_SHAPE = (NUM_TARGETS, NUM_SEVERITIES)


# The sizes these tests were written for: the default fusion head 256 wide, ViT patch 4x16x16, the EfficientNet
# on the full volume.
SIZES = dict(patch=(4, 16, 16), head_hidden=256, effnet_pool=(1, 1, 1))


def _model(name="vit_effnet", **overrides):
    return create_model(model_config(name, **(SIZES | overrides)), cheap_rngs())


@partial(jit_fast_compile, static_argnames=("graphdef", "return_attention"))
def _apply(state, volumes, present, *, graphdef, return_attention):
    return nnx.merge(graphdef, state)(volumes, present, return_attention=return_attention)


def _forward(model, volumes, present, return_attention=False):
    """Compiled forward of `model`, one compile per model structure (eval-mode tests: nothing to update)."""
    graphdef, state = nnx.split(model)
    return _apply(state, volumes, present, graphdef=graphdef, return_attention=return_attention)


def test_forward_backward_and_absent_series_invariance_in_training():
    """Train mode (dropout, drop path, BatchNorm batch statistics): one step from the same state on two batches
    that differ only inside absent series gives the same loss, logits, gradients and updated statistics."""
    graphdef, state = nnx.split(_model())  # shared encoders, target-query fusion

    @jit_fast_compile
    def train_step(state, volumes, present, labels):
        model = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(volumes, present)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        return loss, logits, grads, nnx.state(model, nnx.BatchStat)

    volumes, present = study_batch(3)
    labels = np.random.default_rng(0).integers(0, NUM_SEVERITIES, (3, NUM_TARGETS))
    loss, logits, grads, stats = train_step(state, volumes, present, labels)
    assert logits.shape == (3, *LOGITS_SHAPE) and logits.dtype == jnp.float32
    assert np.isfinite(loss)
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves)
    assert sum(float(jnp.abs(g).sum()) == 0.0 for g in leaves) == 0  # every parameter is trained
    old_stats = jax.tree.leaves(nnx.state(nnx.merge(graphdef, state), nnx.BatchStat))
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats), old_stats))  # BN updated

    outputs = train_step(state, with_absent_noise(volumes, present), present, labels)
    for new, ref in zip(jax.tree.leaves(outputs), jax.tree.leaves((loss, logits, grads, stats))):
        np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-7)


def test_separate_encoders_concat_head_eval_invariance_and_no_series():
    model = _model("vit", share_encoders=False, fusion="concat_mlp")
    assert len(model.encoders) == 3
    model.eval()
    volumes, present = study_batch(3)
    present[2] = False  # a study with no series at all
    volumes[2] = 0
    logits = _forward(model, volumes, present)
    assert logits.shape == (3, *LOGITS_SHAPE) and np.isfinite(logits).all()
    np.testing.assert_allclose(_forward(model, with_absent_noise(volumes, present), present), logits, atol=1e-6)
    changed = volumes.copy()
    changed[0, 0] = 255 - changed[0, 0]  # a present series does matter
    assert not np.allclose(_forward(model, changed, present)[0], logits[0], atol=1e-4)


def test_bfloat16_compute_returns_float32_logits():
    model = _model(dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    model.eval()
    logits = _forward(model, *study_batch(2))
    assert logits.dtype == jnp.float32 and logits.shape == (2, *LOGITS_SHAPE)
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("share_encoders,shape", [(True, (16, 64, 64)), (False, (8, 32, 32)), (True, (32, 64, 64))])
def test_attention_maps_and_position_embedding_resampling(share_encoders, shape):
    """A ViT model built for 16x64x64 volumes runs on 8x32x32 and 32x64x64 (resampled position embeddings);
    attention maps are one `[B, S, heads, T, T]` per block, rows summing to 1."""
    model = _model("vit", share_encoders=share_encoders, volume_shape=(16, 64, 64),  # vit_cpu: 2 x 2 heads
                   fusion="attention")  # a pooled head: the target-query head is built for one token grid
    model.eval()
    volumes, present = study_batch(2, shape)
    logits, maps = _forward(model, volumes, present, return_attention=True)
    tokens = 1 + (shape[0] // 4) * (shape[1] // 16) * (shape[2] // 16)  # CLS + 4x16x16 tubelets
    assert logits.shape == (2, *LOGITS_SHAPE) and np.isfinite(logits).all()
    assert len(maps) == 2
    for m in maps:
        assert m.shape == (2, 3, 2, tokens, tokens)
        np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-5)
    if shape == (16, 64, 64):  # explicit attention (maps) == the kernels' attention (no maps)
        np.testing.assert_allclose(_forward(model, volumes, present), logits, rtol=1e-5, atol=1e-5)


def test_attention_maps_need_a_vit():
    model = _model("effnet")
    with pytest.raises(ValueError, match="needs a ViT"):
        model(*study_batch(1), return_attention=True)


def test_query_attention_with_pooled_effnet_input_matches_the_key_layout():
    model = _model("vit_effnet", effnet_pool=(1, 2, 2), head_hidden=32, patch=(4, 8, 8))
    model.eval()
    grids = [grid for grid, _ in model.encoders[0].token_sources((16, 64, 64))]
    assert grids == [(4, 8, 8), (2, 4, 4)]  # effnet_cpu: stride 8 on the 16x32x32 pooled input
    volumes, present = study_batch(2)
    present[1, 2] = False
    logits, attention = nnx.jit(lambda m, v, p: m.with_query_attention(v, p))(model, volumes, present)
    key_series, _ = model.head.key_layout()
    assert logits.shape == (2, *LOGITS_SHAPE) and attention.shape == (2, NUM_TARGETS, len(key_series))
    assert len(key_series) == 3 * (4 * 8 * 8 + 2 * 4 * 4)
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
    assert float(attention[1][:, key_series == 2].max()) < 1e-30  # absent series 2 of study 1
    np.testing.assert_allclose(_forward(model, volumes, present), logits, rtol=1e-5, atol=1e-6)


def test_query_attention_needs_the_target_query_head_and_its_volume_shape():
    with pytest.raises(ValueError, match="target_query"):
        _model("vit", fusion="concat_mlp").with_query_attention(*study_batch(1))
    with pytest.raises(ValueError, match="volume_shape"):
        _model("vit")(*study_batch(1, (8, 32, 32)))


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_effnet_output_grid_matches_its_feature_map(padding):
    model = _model("effnet", effnet_padding=padding)
    effnet = model.encoders[0].effnet
    effnet.eval()
    for shape in [(16, 64, 64), (8, 30, 33)]:
        fmap = effnet.feature_map(jnp.zeros((1, *shape, 1)))
        assert fmap.shape[1:-1] == effnet.output_grid(shape)
