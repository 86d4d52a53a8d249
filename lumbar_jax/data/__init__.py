"""Data: DICOM reading, the Kaggle layout, the `rsna_lumbar_spine` TFDS dataset, input pipelines.

Importing this package registers the `rsna_lumbar_spine` builder with TFDS, so that
`tfds.data_source("rsna_lumbar_spine/r64", data_dir=...)` finds it.
"""

from lumbar_jax.data import rsna_lumbar_spine  # noqa: F401  (registers the TFDS builder)
