"""3D ViT alone: the same data, head, loss and CV as configs/vit_effnet_one_stage.py, without the EfficientNet.

  python -m lumbar_jax.main --config configs/vit.py [--workdir runs/vit]

Variants as in configs/vit_effnet_one_stage.py: (default) CPU r64, smoke, r128 (vit_s), r256 (vit_b).
"""

from lumbar_jax.train.config import apply_variant, default_config


def get_config(arg: str | None = None):
    config = default_config()
    config.model.name = "vit"
    return apply_variant(config, arg)
