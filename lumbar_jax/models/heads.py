"""Fusion heads: per-series feature vectors `[B, S, F]` + `present [B, S]` -> logits `[B, 25, 3]`.

Both heads add a learned series-type embedding (which of labels.SERIES_TYPES a vector comes from) and make an
absent series unable to influence the output: its features are replaced by zeros after normalisation
(`concat_mlp`, which also sees the present mask) or it is masked out as an attention key (`attention`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lumbar_jax.labels import NUM_SEVERITIES, NUM_TARGETS
from lumbar_jax.models.transformer import TRUNC_NORMAL, Block, Mlp, dense, layer_norm

FUSIONS = ("concat_mlp", "attention")
NUM_OUTPUTS = NUM_TARGETS * NUM_SEVERITIES


def _present_features(features: jax.Array, present: jax.Array) -> jax.Array:
    """Zero the features `[B, S, F]` of absent series (jnp.where: not even NaN / inf values reach the output)."""
    return jnp.where(present[..., None], features, jnp.zeros((), features.dtype))


class ConcatMLPHead(nnx.Module):
    """LayerNorm each series' features, add the series-type embedding, zero absent series, concatenate the S
    vectors and the present mask, MLP -> 25 x 3."""

    def __init__(self, features: int, num_series: int, *, hidden: int, dropout: float, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = layer_norm(features, **kw)
        self.series_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (num_series, features), param_dtype))
        self.mlp = Mlp(num_series * (features + 1), hidden, NUM_OUTPUTS, dropout=dropout, out_dropout=0.0, **kw)

    def __call__(self, features: jax.Array, present: jax.Array) -> jax.Array:
        """features `[B, S, F]`, present bool `[B, S]` -> logits `[B, 25, 3]`."""
        x = self.norm(features) + self.series_embed[...].astype(features.dtype)
        x = _present_features(x, present).reshape(x.shape[0], -1)
        x = jnp.concatenate([x, present.astype(x.dtype)], axis=-1)
        return self.mlp(x).reshape(-1, NUM_TARGETS, NUM_SEVERITIES)


class AttentionHead(nnx.Module):
    """A learned query token attends over the projected series tokens (+ series-type embedding) in one
    pre-LN transformer block whose key mask hides absent series; the query's output -> MLP -> 25 x 3.

    The query is itself a key, so a study with no series present still has a well-defined output."""

    def __init__(self, features: int, num_series: int, *, hidden: int, num_heads: int, dropout: float,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = layer_norm(features, **kw)
        self.proj = dense(features, hidden, **kw)
        self.series_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (num_series, hidden), param_dtype))
        self.query = nnx.Param(TRUNC_NORMAL(rngs.params(), (1, 1, hidden), param_dtype))
        self.block = Block(hidden, num_heads, dropout=dropout, **kw)
        self.norm_out = layer_norm(hidden, **kw)
        self.mlp = Mlp(hidden, hidden, NUM_OUTPUTS, dropout=dropout, out_dropout=0.0, **kw)

    def __call__(self, features: jax.Array, present: jax.Array) -> jax.Array:
        """features `[B, S, F]`, present bool `[B, S]` -> logits `[B, 25, 3]`."""
        tokens = self.proj(self.norm(features)) + self.series_embed[...].astype(features.dtype)
        tokens = _present_features(tokens, present)
        query = jnp.broadcast_to(self.query[...].astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1]))
        tokens = jnp.concatenate([query, tokens], axis=1)
        mask = jnp.concatenate([jnp.ones_like(present[:, :1]), present], axis=1)
        out = self.norm_out(self.block(tokens, mask)[:, 0])
        return self.mlp(out).reshape(-1, NUM_TARGETS, NUM_SEVERITIES)


def fusion_head(kind: str, features: int, num_series: int, *, hidden: int, num_heads: int, dropout: float,
                dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Module:
    """The head named `kind` (one of FUSIONS)."""
    kw = dict(hidden=hidden, dropout=dropout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if kind == "concat_mlp":
        return ConcatMLPHead(features, num_series, **kw)
    if kind == "attention":
        return AttentionHead(features, num_series, num_heads=num_heads, **kw)
    raise ValueError(f"fusion {kind!r} is not one of {FUSIONS}")
