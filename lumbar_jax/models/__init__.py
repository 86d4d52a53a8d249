"""Flax NNX models: 3D ViT and EfficientNet encoders, fusion heads, and the study model built from a config.

Entry point: `create_model(config.model, rngs)` (registry.py), for a `model` section that
`lumbar_jax.train.config.validate` has checked.
"""

from lumbar_jax.models.registry import MODEL_NAMES, create_model, resolve_kernels

__all__ = ["MODEL_NAMES", "create_model", "resolve_kernels"]
