"""Pre-LayerNorm transformer blocks: self-attention (the ViT encoder, the attention fusion head) and
cross-attention (queries over spatial tokens, the target-query head).

Module and parameter names follow timm's `vision_transformer.Block` (norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2) so pretrained weights map 1:1 (torch Linear `weight [out, in]` = our `kernel [in, out]`.T).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lumbar_jax.models.layers import DropPath, dropout_layer

# timm ViT initialisation: truncated normal(0.02) weights, zero biases; LayerNorm eps 1e-6.
TRUNC_NORMAL = nnx.initializers.truncated_normal(stddev=0.02)
LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """The architecture of one pre-LN attention block (self- or cross-attention) and of its attention."""

    dim: int  # token width E (divisible by num_heads)
    num_heads: int  # attention heads, each of width E // num_heads
    mlp_ratio: float = 4.0  # the MLP's hidden width / E
    dropout: float = 0.0  # after the attention projection and inside the MLP
    drop_path: float = 0.0  # stochastic depth of both residual branches (self-attention blocks only)

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"attention width {self.dim} is not divisible by num_heads={self.num_heads}")


def dense(din: int, dout: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """nnx.Linear with timm's ViT initialisation."""
    return nnx.Linear(din, dout, kernel_init=TRUNC_NORMAL, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def layer_norm(dim: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def explicit_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None,
                       bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Scaled dot-product attention written out, so that its weights can be returned.

    q `[B, Q, H, d]`, k / v `[B, K, H, d]`, key mask bool `[B, K]` (False = ignored), bias `[Q, K]` added to
    the logits of every head -> (`[B, Q, H, d]`, weights float32 `[B, H, Q, K]`). Softmax in float32.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    weights = _softmax(logits, None if mask is None else mask[:, None, None, :])
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v), weights


def _softmax(logits: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """Softmax over the last (key) axis of float32 `logits`; keys where the broadcastable `key_mask` is False
    get no weight."""
    if key_mask is not None:
        logits = jnp.where(key_mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


def _fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`jax.nn.dot_product_attention` (a fused cuDNN kernel on GPU where the dtype allows)."""
    return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None, None, :])


def _per_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """One batched dot per head, softmax in float32: XLA:CPU runs the matmuls of `jax.nn.dot_product_attention`
    (batched over B and H, softmax fused in) well below its plain matmul rate, while a dot batched over B alone
    runs at it (`benchmarks/BENCHMARKS.md`; `python -m benchmarks.profile_models` shows where the time goes)."""
    scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    heads = []
    for h in range(q.shape[2]):
        logits = jnp.einsum("bqd,bkd->bqk", q[:, :, h], k[:, :, h]).astype(jnp.float32) * scale
        weights = _softmax(logits, None if mask is None else mask[:, None, :]).astype(v.dtype)
        heads.append(jnp.einsum("bqk,bkd->bqd", weights, v[:, :, h]))
    return jnp.stack(heads, axis=2)


# The attention of each layers.KERNELS entry.
ATTENTION = {"cpu": _per_head_attention, "xla": _fused_attention}


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *, kernels: str
              ) -> jax.Array:
    """Scaled dot-product attention without its weights: q `[B, Q, H, d]`, k / v `[B, K, H, d]`, key mask bool
    `[B, K]` (False = ignored) -> `[B, Q, H, d]`. `kernels` (layers.KERNELS): 'xla' =
    `jax.nn.dot_product_attention`, 'cpu' = per-head dots (the same values, faster on XLA:CPU)."""
    return ATTENTION[kernels](q, k, v, mask)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout) and an optional key mask.

    Written out rather than `nnx.MultiHeadAttention` so that (a) the parameters are timm's `qkv` / `proj`
    and (b) the attention maps can be returned for analysis. Without maps it calls `attention` with its
    `kernels` (layers.KERNELS).
    """

    def __init__(self, config: BlockConfig, *, kernels: str, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        """config: width, heads and dropout (its mlp_ratio and drop_path are the block's)."""
        dim = config.dim
        self.num_heads = config.num_heads
        self.kernels = kernels
        self.qkv = dense(dim, 3 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj = dense(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj_drop = dropout_layer(config.dropout, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, return_attention: bool = False):
        """x `[B, T, E]`, mask bool `[B, T]` (False = key ignored) -> `[B, T, E]`, and the attention weights
        `[B, heads, T, T]` (float32) when `return_attention`."""
        b, t, e = x.shape
        q, k, v = jnp.moveaxis(self.qkv(x).reshape(b, t, 3, self.num_heads, e // self.num_heads), 2, 0)
        if return_attention:
            out, weights = explicit_attention(q, k, v, mask)
        else:
            weights = None
            out = attention(q, k, v, mask, kernels=self.kernels)
        out = self.proj_drop(self.proj(out.reshape(b, t, e)))
        return (out, weights) if return_attention else out


class Mlp(nnx.Module):
    """fc1 -> GELU (exact, as torch nn.GELU) -> dropout -> fc2 -> dropout (`out_dropout`, default the same;
    0 when fc2 produces logits): `[..., din]` -> `[..., dout]`, `sizes` = (din, hidden, dout)."""

    def __init__(self, sizes: tuple[int, int, int], *, dropout: float = 0.0, out_dropout: float | None = None,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        din, hidden, dout = sizes
        self.fc1 = dense(din, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.drop1 = dropout_layer(dropout, rngs)
        self.fc2 = dense(hidden, dout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.drop2 = dropout_layer(dropout if out_dropout is None else out_dropout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.drop2(self.fc2(self.drop1(jax.nn.gelu(self.fc1(x), approximate=False))))


class Block(nnx.Module):
    """x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))) on tokens `[B, T, E]`; `kernels`: the
    attention's (layers.KERNELS)."""

    def __init__(self, config: BlockConfig, *, kernels: str, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dim = config.dim
        self.norm1 = layer_norm(dim, **kw)
        self.attn = Attention(config, kernels=kernels, **kw)
        self.norm2 = layer_norm(dim, **kw)
        self.mlp = Mlp((dim, int(dim * config.mlp_ratio), dim), dropout=config.dropout, **kw)
        self.drop_path = DropPath(config.drop_path, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, return_attention: bool = False):
        """x `[B, T, E]`, key mask `[B, T]` -> `[B, T, E]` (and `[B, heads, T, T]` if `return_attention`)."""
        attn = self.attn(self.norm1(x), mask, return_attention)
        attn, weights = attn if return_attention else (attn, None)
        x = x + self.drop_path(attn)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x


class CrossAttention(nnx.Module):
    """Multi-head attention of queries `[B, Q, E]` over keys/values `[B, K, E]` with a key mask; it also
    returns its attention weights (written out: with few queries the explicit softmax costs nothing)."""

    def __init__(self, config: BlockConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        """config: width, heads and dropout (its mlp_ratio is the block's)."""
        dim = config.dim
        self.num_heads = config.num_heads
        self.q = dense(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.kv = dense(dim, 2 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj = dense(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj_drop = dropout_layer(config.dropout, rngs)

    def __call__(self, queries: jax.Array, tokens: jax.Array, mask: jax.Array | None = None,
                 bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """queries `[B, Q, E]`, tokens `[B, K, E]`, mask bool `[B, K]` (False = key ignored), bias `[Q, K]`
        added to the attention logits of every head -> (`[B, Q, E]`, attention weights float32
        `[B, heads, Q, K]`)."""
        (b, nq, e), nk, h = queries.shape, tokens.shape[1], self.num_heads
        q = self.q(queries).reshape(b, nq, h, e // h)
        k, v = jnp.moveaxis(self.kv(tokens).reshape(b, nk, 2, h, e // h), 2, 0)
        out, weights = explicit_attention(q, k, v, mask, bias)
        return self.proj_drop(self.proj(out.reshape(b, nq, e))), weights


class CrossBlock(nnx.Module):
    """q + CrossAttn(LN(q), LN(tokens)), then q + MLP(LN(q)): queries `[B, Q, E]` read tokens `[B, K, E]`."""

    def __init__(self, config: BlockConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if config.drop_path:
            raise ValueError("a CrossBlock has no stochastic depth: config.drop_path must be 0")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dim = config.dim
        self.norm_q = layer_norm(dim, **kw)
        self.norm_kv = layer_norm(dim, **kw)
        self.attn = CrossAttention(config, **kw)
        self.norm2 = layer_norm(dim, **kw)
        self.mlp = Mlp((dim, int(dim * config.mlp_ratio), dim), dropout=config.dropout, **kw)

    def __call__(self, queries: jax.Array, tokens: jax.Array, mask: jax.Array | None = None,
                 bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """-> (queries `[B, Q, E]`, attention weights `[B, heads, Q, K]`); mask and bias as CrossAttention."""
        attended, weights = self.attn(self.norm_q(queries), self.norm_kv(tokens), mask, bias)
        queries = queries + attended
        return queries + self.mlp(self.norm2(queries)), weights
