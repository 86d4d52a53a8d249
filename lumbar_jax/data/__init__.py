"""Data: DICOM reading, the Kaggle layout, the `rsna_lumbar_spine` TFDS dataset, input pipelines.

Importing this package imports no TFDS. The `rsna_lumbar_spine` builder is registered with TFDS by importing
its module, `import lumbar_jax.data.rsna_lumbar_spine`: do that before `tfds.data_source("rsna_lumbar_spine/r64",
data_dir=...)` or `tfds.builder(...)` looks it up by name.
"""
