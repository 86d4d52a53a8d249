"""The configs of the `rsna_lumbar_spine` dataset: name -> volume shape, and which ones store a shared grid.

One table for the TFDS builder (its BUILDER_CONFIGS) and the run config (`data.config`, `model.volume_shape`).
It imports nothing heavy (no tensorflow_datasets), so that loading and validating a run config stays fast.
"""

from __future__ import annotations

# Dataset config -> [D, H, W] of every stored volume.
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "r64": (16, 64, 64),  # CPU runs, tests and the embedded synthetic demo
    "r128": (32, 128, 128),  # GPU runs, benchmarks
    "r256": (64, 256, 256),  # full-resolution GPU / TPU runs
    "grid32": (32, 32, 32),  # earlier system B (configs/baseline_vit3d_grid.py), CPU default
    "grid64": (64, 64, 64),  # earlier system B, mid-sized
    "grid128": (128, 128, 128),  # earlier system B as it was built (its `full` variant, GPU)
}
# Configs whose three volumes share one patient-coordinate grid per study (data/grid.py): the series' axes are
# those of the grid, not their canonical layouts, which the spatial augmentations assume.
GRID_DATASETS = ("grid32", "grid64", "grid128")
