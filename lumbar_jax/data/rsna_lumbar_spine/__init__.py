"""The `rsna_lumbar_spine` TFDS dataset. Importing this module registers it with TFDS: import it before
`tfds.data_source("rsna_lumbar_spine/...")` or `tfds.builder(...)` looks the dataset up by name."""

from lumbar_jax.data.rsna_lumbar_spine.rsna_lumbar_spine_dataset_builder import Builder, RsnaLumbarSpineConfig

__all__ = ["Builder", "RsnaLumbarSpineConfig"]
