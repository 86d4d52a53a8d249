"""Fusion heads: output shape, absent series cannot influence the logits (even NaN features), present do; the
target-query head's key layout, attention and output bias."""

import numpy as np
import pytest
from flax import nnx

from lumbar_jax.labels import NUM_SEVERITIES, NUM_TARGETS
from lumbar_jax.models.heads import FUSIONS, FusionHeadConfig, fusion_head, sincos_3d, token_centres
from tests.models.helpers import KERNELS, cheap_rngs


def _head(kind: str, rngs=None, **fields):
    """A head of 3 series, 16 pooled features, width 32, 4 heads, no dropout."""
    config = FusionHeadConfig(kind, hidden=32, num_heads=4, dropout=0.0, num_series=3, features=16, **fields)
    return fusion_head(config, kernels=KERNELS, rngs=rngs or cheap_rngs())


POOLED = tuple(kind for kind in FUSIONS if kind != "target_query")
PRESENT = np.array([[True, True, True], [True, False, True], [False, False, True], [False, False, False]])


@pytest.mark.parametrize("kind", POOLED)
def test_absent_series_do_not_influence_the_logits(kind):
    head = _head(kind)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 3, 16)).astype(np.float32)
    present = PRESENT
    run = nnx.jit(lambda head, features, present: head(features, present))
    logits = run(head, features, present)
    assert logits.shape == (4, NUM_TARGETS, NUM_SEVERITIES) and np.isfinite(logits).all()

    garbage = features.copy()
    garbage[~present] = rng.normal(size=garbage[~present].shape) * 100
    garbage[3, 0] = np.nan  # not even NaN features of an absent series leak through
    np.testing.assert_allclose(run(head, garbage, present), logits, rtol=1e-6, atol=1e-6)

    changed = features.copy()
    changed[1, 0] = rng.normal(size=16)  # a present series does matter
    assert not np.allclose(run(head, changed, present)[1], logits[1], atol=1e-4)


def test_unknown_fusion():
    with pytest.raises(ValueError, match="fusion 'mean' is not one of"):
        _head("mean", nnx.Rngs(0))


# Two token sources, as the fused encoder gives: a [2, 2, 2] grid 8 wide and a [1, 2, 2] grid 6 wide.
SOURCES = (((2, 2, 2), 8), ((1, 2, 2), 6))
VOLUME = (16, 64, 64)


def _target_query_head(depth=2):
    return _head("target_query", sources=SOURCES, volume_shape=VOLUME, depth=depth)


def _tokens(rng, batch=4):
    return [rng.normal(size=(batch, 3, int(np.prod(grid)), width)).astype(np.float32) for grid, width in SOURCES]


def test_target_query_head_masks_absent_series_and_attends_only_to_present_keys():
    head = _target_query_head()
    run = nnx.jit(lambda head, tokens, present: head(tokens, present, return_attention=True))
    rng = np.random.default_rng(0)
    tokens = _tokens(rng)
    logits, attention = run(head, tokens, PRESENT)
    assert logits.shape == (4, NUM_TARGETS, NUM_SEVERITIES) and np.isfinite(logits).all()
    key_series, _ = head.key_layout()
    assert attention.shape == (4, NUM_TARGETS, len(key_series))
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
    absent_keys = ~PRESENT[:3][:, key_series]  # study 3 has no series: its attention is uniform, unused
    assert np.all(np.asarray(attention[:3])[np.broadcast_to(absent_keys[:, None], attention[:3].shape)] < 1e-30)

    garbage = [t.copy() for t in tokens]
    for t in garbage:
        t[~PRESENT] = rng.normal(size=t[~PRESENT].shape) * 100
        t[3, 0] = np.nan
    np.testing.assert_allclose(run(head, garbage, PRESENT)[0], logits, rtol=1e-5, atol=1e-5)
    changed = [t.copy() for t in tokens]
    changed[1][1, 0] = rng.normal(size=changed[1][1, 0].shape)  # present series 0 of study 1, second source
    assert not np.allclose(run(head, changed, PRESENT)[0][1], logits[1], atol=1e-4)


def test_key_layout_is_series_major_within_each_source():
    head = _target_query_head(depth=1)
    series, centres = head.key_layout()
    assert len(series) == 3 * (8 + 4)
    np.testing.assert_array_equal(series[:24], np.repeat([0, 1, 2], 8))
    np.testing.assert_array_equal(series[24:], np.repeat([0, 1, 2], 4))
    np.testing.assert_allclose(centres[:8], token_centres((2, 2, 2), VOLUME))
    np.testing.assert_allclose(centres[8:16], centres[:8])


def test_token_centres_are_in_record_coordinates():
    # Cell g of G over n voxels: centre voxel (g + 0.5) n / G - 0.5, normalised by n - 1 (0 / 1 = the centres
    # of the first / last voxel, as the records' coords).
    centres = token_centres((2, 4, 1), (16, 64, 64))
    assert centres.shape == (8, 3)
    np.testing.assert_allclose(centres[0], [3.5 / 15, 7.5 / 63, 31.5 / 63])
    np.testing.assert_allclose(centres[-1], [11.5 / 15, 55.5 / 63, 31.5 / 63])
    np.testing.assert_allclose(token_centres((1,), (1,)), [[0.5]])  # an axis without extent


def test_sincos_3d_tells_positions_apart_and_pads():
    points = token_centres((4, 4, 4), (16, 64, 64))
    enc = sincos_3d(points, 64)
    assert enc.shape == (64, 64) and np.all(enc[:, 60:] == 0)  # 3 axes x 2 x 10 frequencies, 4 padding
    distances = np.linalg.norm(enc[:, None] - enc[None], axis=-1)
    assert distances[~np.eye(64, dtype=bool)].min() > 0.1


@pytest.mark.parametrize("kind", FUSIONS)
def test_set_output_bias_shifts_every_logit_by_the_bias(kind):
    kw = dict(sources=SOURCES, volume_shape=VOLUME) if kind == "target_query" else {}
    head = _head(kind, **kw)
    rng = np.random.default_rng(1)
    inputs = _tokens(rng) if kind == "target_query" else rng.normal(size=(4, 3, 16)).astype(np.float32)
    before = np.asarray(head(inputs, PRESENT))
    bias = np.log(np.tile([0.7, 0.2, 0.1], (NUM_TARGETS, 1))).astype(np.float32)
    head.set_output_bias(bias)  # the logit biases start at zero
    np.testing.assert_allclose(np.asarray(head(inputs, PRESENT)) - before, np.broadcast_to(bias, before.shape),
                               rtol=1e-5, atol=1e-5)
