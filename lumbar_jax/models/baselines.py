"""The two earlier systems as models of the study-model interface, so that they train, cross-validate
and are scored exactly like the other models:

    model(volumes [B, 3, D, H, W] (uint8 scale, labels.SERIES_TYPES order), present bool [B, 3])
        -> logits float32 [B, 25, 3]

Both are one `vit.VisionTransformer` (reused as is: 2D for system A, 3D for system B) whose CLS token goes
through a single linear layer to the 25 x 3 logits (`LinearHead`; `model.head.set_output_bias` lets the
training loop start it at the log class prior, as every model here). Neither reads `present`: the earlier
systems did not, an absent series is simply an all-zero input.

- `SliceViT` (`model.name = 'vit2d'`, earlier system A): the middle sagittal T2 slice only. It takes canonical
  depth index `D // 2` of the `sagittal_t2` volume (depth runs patient right -> left, so that is the
  mid-sagittal plane; for an even D the first slice past the centre), resizes it (linear, antialiased when
  shrinking) to `model.image_size`, repeats the grey image over 3 channels and runs a 2D ViT on it. The slice
  extraction lives in the model, so the data path is the normal one.
- `GridViT` (`model.name = 'vit3d_grid'`, earlier system B): the three series of a grid dataset config
  (`grid64` / `grid128`: every series resampled into one shared patient-coordinate grid, data/grid.py) as the 3
  channels of one volume, `[B, N, N, N, 3]`, through a 3D ViT with cubic patches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lumbar_jax import labels
from lumbar_jax.models.fused import normalize_volumes
from lumbar_jax.models.transformer import dense
from lumbar_jax.models.vit import ViTConfig, VisionTransformer

BASELINE_MODELS = ("vit2d", "vit3d_grid")
SLICE_SERIES = labels.SERIES_TYPES.index("sagittal_t2")  # the series system A reads
_NUM_OUTPUTS = labels.NUM_TARGETS * labels.NUM_SEVERITIES


class LinearHead(nnx.Module):
    """features `[B, F]` -> logits `[B, 25, 3]`: one linear layer (one 3-way classifier per target)."""

    spatial = False  # a pooled head: no target queries, no coordinate supervision

    def __init__(self, features: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc = dense(features, _NUM_OUTPUTS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def set_output_bias(self, bias: jax.Array) -> None:
        """Set the bias of the logits `[25, 3]` (e.g. the log class prior of the training labels)."""
        self.fc.bias[...] = jnp.asarray(bias, self.fc.bias.dtype).reshape(-1)

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.fc(features).reshape(-1, labels.NUM_TARGETS, labels.NUM_SEVERITIES)


def middle_slice(volumes: jax.Array) -> jax.Array:
    """The slice system A sees: `volumes [B, 3, D, H, W]` -> `[B, H, W]`, depth index D // 2 of sagittal T2."""
    return volumes[:, SLICE_SERIES, volumes.shape[2] // 2]


class SliceViT(nnx.Module):
    """Earlier system A: the middle sagittal T2 slice, resized to `image_size` and repeated over 3 channels,
    through a 2D ViT (`vit`, built for `image_size` with 3 input channels); CLS token -> `head`."""

    def __init__(self, vit: VisionTransformer, head: LinearHead, image_size, *, dtype=jnp.float32):
        self.vit = vit
        self.head = head
        self.image_size = tuple(int(s) for s in image_size)
        self.dtype = dtype

    def images(self, volumes: jax.Array) -> jax.Array:
        """volumes `[B, 3, D, H, W]` -> the ViT input `[B, *image_size, 3]` (normalised like every model's)."""
        x = normalize_volumes(middle_slice(volumes), jnp.float32)  # [B, H, W]
        if x.shape[1:] != self.image_size:
            x = jax.image.resize(x, (x.shape[0], *self.image_size), method="linear")
        return jnp.repeat(x[..., None], 3, axis=-1).astype(self.dtype)

    def __call__(self, volumes: jax.Array, present: jax.Array, return_attention: bool = False):
        """-> logits float32 `[B, 25, 3]` (and the ViT attention maps, a list of `[B, heads, T, T]`)."""
        del present  # the earlier system read the slice whatever else the study held
        out = self.vit(self.images(volumes), return_attention=return_attention)
        features, maps = out if return_attention else (out, [])
        logits = self.head(features).astype(jnp.float32)
        return (logits, maps) if return_attention else logits


class GridViT(nnx.Module):
    """Earlier system B: the 3 series of a grid record as the channels of one volume `[B, N, N, N, 3]`, through
    a 3D ViT with cubic patches (`vit`, 3 input channels); CLS token -> `head`."""

    def __init__(self, vit: VisionTransformer, head: LinearHead, *, dtype=jnp.float32):
        self.vit = vit
        self.head = head
        self.dtype = dtype

    def __call__(self, volumes: jax.Array, present: jax.Array, return_attention: bool = False):
        """volumes `[B, 3, N, N, N]` -> logits float32 `[B, 25, 3]` (and the ViT attention maps)."""
        del present  # an absent series is an all-zero channel, as in the earlier system
        x = jnp.moveaxis(normalize_volumes(volumes, self.dtype), 1, -1)
        out = self.vit(x, return_attention=return_attention)
        features, maps = out if return_attention else (out, [])
        logits = self.head(features).astype(jnp.float32)
        return (logits, maps) if return_attention else logits


def create_baseline(cfg, vit: ViTConfig, *, kernels: str, dtype, param_dtype, rngs: nnx.Rngs) -> SliceViT | GridViT:
    """The baseline model of a validated `model` section whose name is in BASELINE_MODELS; `vit`: the ViT (3
    input channels), built here for the model's input and patch; `kernels`: layers.KERNELS."""
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if cfg["name"] == "vit2d":
        image_size = tuple(cfg["image_size"])
        encoder = VisionTransformer(dataclasses.replace(vit, input_shape=image_size, patch=tuple(cfg["patch"])[1:]),
                                    kernels=kernels, **kw)
        return SliceViT(encoder, LinearHead(encoder.num_features, **kw), image_size, dtype=dtype)
    if cfg["name"] == "vit3d_grid":
        grid = dataclasses.replace(vit, input_shape=tuple(cfg["volume_shape"]), patch=tuple(cfg["patch"]))
        encoder = VisionTransformer(grid, kernels=kernels, **kw)
        return GridViT(encoder, LinearHead(encoder.num_features, **kw), dtype=dtype)
    raise ValueError(f"model.name: {cfg['name']!r} is not one of {BASELINE_MODELS}")
