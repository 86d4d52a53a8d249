"""Two-stage: a localiser finds the 25 target points on the r64 volumes, then a crop classifier reads crops of
the native series around them (per crop slice a 2D ViT and a 2D EfficientNet, attention over the slices, a
transformer over the study's 25 crops), trained with the metric loss.

Run (the embedded synthetic dataset, all 5 folds, a 2-core CPU):

  python -m lumbar_jax.main --config configs/two_stage.py

Its scores, time and memory are in the README (Results).

Variants (`--config configs/two_stage.py:VARIANT`):
  (default)  CPU-sized: r64_native records, 5x32x32-pixel crops of 40 mm, tiny encoders.
  smoke      a few steps of both stages, 2 folds, few studies: checks the whole job end to end.
  r128       GPU-sized: r128_native records (native series up to 512 px), vit_s + effnet_b0, bfloat16.

Real data: add `--config.data.manual_dir=/path/to/rsna-2024-lumbar-spine-degenerative-classification`.
"""

from lumbar_jax.train.config import apply_variant, two_stage_config


def get_config(arg: str | None = None):
    return apply_variant(two_stage_config(), arg)
