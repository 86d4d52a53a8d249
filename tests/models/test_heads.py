"""Fusion heads: output shape, absent series cannot influence the logits (even NaN features), present do."""

import numpy as np
import pytest
from flax import nnx

from lumbar_jax.labels import NUM_SEVERITIES, NUM_TARGETS
from lumbar_jax.models.heads import FUSIONS, fusion_head
from tests.models.helpers import cheap_rngs


@pytest.mark.parametrize("kind", FUSIONS)
def test_absent_series_do_not_influence_the_logits(kind):
    head = fusion_head(kind, 16, 3, hidden=32, num_heads=4, dropout=0.0, rngs=cheap_rngs())
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 3, 16)).astype(np.float32)
    present = np.array([[True, True, True], [True, False, True], [False, False, True], [False, False, False]])
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
        fusion_head("mean", 16, 3, hidden=32, num_heads=4, dropout=0.0, rngs=nnx.Rngs(0))
