"""3D EfficientNet alone: the same data, head, loss and CV as configs/vit_effnet_one_stage.py, without the ViT.

  python -m lumbar_jax.main --config configs/effnet.py [--workdir runs/effnet]

Variants as in configs/vit_effnet_one_stage.py: (default) CPU r64, smoke, r128 (effnet_b0), r256 (effnet_b3).
"""

from lumbar_jax.train.config import apply_variant, default_config


def get_config(arg: str | None = None):
    config = default_config()
    config.model.name = "effnet"
    return apply_variant(config, arg)
