"""The default: two stages. A localiser finds the 25 target points on the r64 volumes; a crop classifier then
reads crops of the native series around them (per crop slice a 2D ViT and a 2D EfficientNet, attention over
the slices, a transformer over the study's 25 crops with condition, level and side embeddings), trained with
the metric loss. Both stages train in every fold; held-out studies are cropped at the points of a localiser
that never saw them.

Run (the embedded synthetic dataset, all 5 folds, a 2-core CPU):

  python -m lumbar_jax.main --config configs/vit_effnet.py

Its scores, time and memory are in the README (Results). The one-stage model it replaced (the same encoders
in 3D over whole volumes) is configs/vit_effnet_one_stage.py.

Variants (`--config configs/vit_effnet.py:VARIANT`):
  (default)  CPU-sized: r64_native records, 5 slices x 40 mm crops sampled to 32x32, tiny encoders;
             localiser 150 steps, classifier 200 steps of batch 12 per fold.
  smoke      a few steps of both stages, 2 folds, few studies: checks the whole job end to end.
  r128       GPU-sized: r128_native records (native series up to 512 px), vit_s + effnet_b0, bfloat16.

Real data: add `--config.data.manual_dir=/path/to/rsna-2024-lumbar-spine-degenerative-classification`.
"""

from lumbar_jax.train.config import apply_variant, two_stage_config

VARIANTS = (None, "smoke", "r128")  # r256 is one-stage only


def get_config(arg: str | None = None):
    return apply_variant(two_stage_config(), arg)
