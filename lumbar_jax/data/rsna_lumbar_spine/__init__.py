"""The `rsna_lumbar_spine` TFDS dataset (registered with TFDS on import)."""

from lumbar_jax.data.rsna_lumbar_spine.rsna_lumbar_spine_dataset_builder import Builder, RsnaLumbarSpineConfig

__all__ = ["Builder", "RsnaLumbarSpineConfig"]
