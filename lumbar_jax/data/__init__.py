"""Data: DICOM reading, the Kaggle layout, the `rsna_lumbar_spine` TFDS dataset, input pipelines."""
