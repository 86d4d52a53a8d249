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
  (default)  CPU-sized: r64_native records, 5 slices x 40 mm crops sampled to 32x32, the encoders vit_cpu
             and effnet_cpu; localiser 150 steps, classifier 300 steps of batch 12 per fold, the metric loss
             with label smoothing 0.05; held-out crops averaged over +-1 mm moves (crops.tta_shift_mm).
  smoke      a few steps of both stages, 2 folds, few studies: checks the whole job end to end.
  r128       GPU-sized: r128_native records (native series up to 512 px), vit_s + effnet_b0, bfloat16;
             localiser 1500 steps, classifier 3000 steps of batch 32 per fold. On the real data:

               python -m lumbar_jax.main --config configs/vit_effnet.py:r128 \
                   --config.data.manual_dir=/data/rsna-2024-lumbar-spine-degenerative-classification \
                   --config.data.worker_count=16

             Expected time per fold on one H100/H200-class GPU: about 10 minutes, estimated (no GPU was lent to
             measure it) from XLA's FLOP counts of the train steps: 15 GFLOP per study for the localiser and
             about 300 GFLOP for the classifier (25 crops of 5x64x64), i.e. about 30 PFLOP per fold, 2-3 min
             at 20-30 % of ~1 PFLOP/s bf16; the rest is reading and cropping about 100k native studies per fold,
             which at the CPU rates of benchmarks/ (pipeline section) needs the 16 grain workers.

Real data: add `--config.data.manual_dir=/path/to/rsna-2024-lumbar-spine-degenerative-classification`.
"""

from lumbar_jax.train.config import apply_two_stage_variant, two_stage_config

VARIANTS = (None, "smoke", "r128")  # r256 is one-stage only


def get_config(arg: str | None = None):
    return apply_two_stage_variant(two_stage_config(), arg)
