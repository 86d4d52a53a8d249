"""One stage, fused ViT + EfficientNet: per series a 3D ViT and a 3D EfficientNet over the whole volume; 25
target queries attend over all their spatial tokens, trained with the metric loss plus label-coordinate
supervision. The default before the two-stage pipeline (configs/vit_effnet.py); kept for the ablation.

Run (the embedded synthetic dataset, all 5 folds, a 2-core CPU):

  python -m lumbar_jax.main --config configs/vit_effnet_one_stage.py

Its scores, time and memory are in the README (Results).

Variants (`--config configs/vit_effnet_one_stage.py:VARIANT`):
  (default)  CPU-sized: r64 volumes (16x64x64), encoders vit_cpu + effnet_cpu, 320 steps of batch 12 per fold.
  smoke      a few steps, 2 folds, few studies: checks the whole job end to end in about a minute.
  r128       GPU-sized: r128 volumes (32x128x128), vit_s + effnet_b0, batch 32, bfloat16 compute.
  r256       large GPU/TPU: r256 volumes (64x256x256), vit_b + effnet_b3, batch 64, bfloat16.

Real data: add `--config.data.manual_dir=/path/to/rsna-2024-lumbar-spine-degenerative-classification`.
"""

from lumbar_jax.train.config import apply_variant, default_config


def get_config(arg: str | None = None):
    config = default_config()
    config.model.name = "vit_effnet"
    return apply_variant(config, arg)
