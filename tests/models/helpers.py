"""Shared helpers of the model tests: small uint8 study batches built with numpy (no per-shape JAX compile)."""

import functools
import math

import jax
import numpy as np
from flax import nnx

from lumbar_jax.models.efficientnet import EFFNET_VARIANTS, EfficientNet, EfficientNetConfig
from lumbar_jax.models.registry import resolve_kernels
from lumbar_jax.models.vit import ViTConfig, VisionTransformer
from lumbar_jax.train import config as config_lib

# The kernels a model built from a config uses on this backend ('cpu' on the CPU test machine).
KERNELS = resolve_kernels("auto")


def model_config(name: str = "vit_effnet", **overrides):
    """The run config's `model` section (every field) with `name` and `overrides`."""
    config = config_lib.default_config().model
    config.update(name=name, **overrides)
    return config


def study_batch(batch: int = 2, shape=(16, 64, 64), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(volumes uint8 [B, 3, D, H, W], present bool [B, 3]): series 1 absent in study 0, series 0 and 2 absent
    in study 1, all present in the others; absent volumes are zeros, as stored."""
    rng = np.random.default_rng(seed)
    volumes = rng.integers(0, 256, (batch, 3, *shape), dtype=np.uint8)
    present = np.ones((batch, 3), bool)
    present[0, 1] = False
    if batch > 1:
        present[1, [0, 2]] = False
    volumes[~present] = 0
    return volumes, present


def with_absent_noise(volumes: np.ndarray, present: np.ndarray, seed: int = 1) -> np.ndarray:
    """The same batch with random content in every absent series (which must not change the output)."""
    noisy = volumes.copy()
    noise = np.random.default_rng(seed).integers(0, 256, volumes.shape, dtype=np.uint8)
    noisy[~present] = noise[~present]
    return noisy


def cheap_rngs(seed: int = 0) -> nnx.Rngs:
    """nnx.Rngs on the 'rbg' PRNG: initialising a model and drawing dropout masks compiles about twice as fast
    on CPU as with the default threefry, which matters for a test suite dominated by compile time."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def jit_fast_compile(fn, **jit_kwargs):
    """jax.jit with XLA's LLVM optimisation off: the test programs run tiny inputs, so their compile time
    (not run time) dominates the suite; this cuts it by ~40% for the EfficientNet programs."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **jit_kwargs)


@functools.lru_cache(maxsize=None)
def abstract_encoder(variant: str, ndim: int) -> nnx.Module:
    """nnx.eval_shape of an encoder variant, 3D (1 channel, pooled features, 16x64x64, ViT patch 4x16x16) or
    2D ImageNet (3 channels, 1000 classes, 224x224, ViT patch 16x16); cached: shared by several tests."""
    if variant in EFFNET_VARIANTS:
        kw = dict(ndim=3) if ndim == 3 else dict(ndim=2, in_channels=3, num_classes=1000)
        config = EfficientNetConfig.preset(variant, **kw)
        return nnx.eval_shape(lambda: EfficientNet(config, kernels=KERNELS, rngs=nnx.Rngs(0)))
    if ndim == 3:
        kw = dict(input_shape=(16, 64, 64), patch=(4, 16, 16))
    else:
        kw = dict(input_shape=(224, 224), patch=(16, 16), in_channels=3, num_classes=1000)
    config = ViTConfig.preset(variant, **kw)
    return nnx.eval_shape(lambda: VisionTransformer(config, kernels=KERNELS, rngs=nnx.Rngs(0)))


def num_params(module: nnx.Module) -> int:
    """Number of trainable parameters (nnx.Param elements) of a concrete or `nnx.eval_shape` module."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))
