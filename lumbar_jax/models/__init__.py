"""Flax NNX models: 3D ViT and EfficientNet encoders, fusion heads, and the study model built from a config.

Entry points: `create_model(config.model, rngs)` and `validate_model_config(config.model)` (registry.py).
"""

from lumbar_jax.models.registry import (
    MODEL_FIELDS,
    MODEL_NAMES,
    create_model,
    default_model_config,
    validate_model_config,
)

__all__ = ["MODEL_FIELDS", "MODEL_NAMES", "create_model", "default_model_config", "validate_model_config"]
