"""TFDS builder `rsna_lumbar_spine`: Kaggle RSNA 2024 lumbar studies -> canonical 3D volumes (ArrayRecord).

One example per study, features exactly as docs/conventions.md section 4. Builder configs fix the volume size
[D, H, W], one per entry of `lumbar_jax.dataset_configs.DATASET_SHAPES` (shapes and uses listed there): `r64`,
`r128`, `r256` hold each series in its canonical layout; `grid32`, `grid64`, `grid128` hold the earlier system
B's shared grid (configs/baseline_vit3d_grid.py).

Sagittal and axial volumes share the size, so one encoder call can take all three series. The `grid*`
configs store the same features, but every series is resampled into ONE shared axis-aligned grid in patient
coordinates per study (the union of the series' extents, axes in the sagittal layout; `lumbar_jax.data.grid`),
so the three volumes are the aligned channels of one volume, and `coords` are normalised coordinates in that
grid (the same for every series; `coords_series` still says which series the point was annotated on). Studies are
decoded in parallel worker processes (`num_workers`); build with `python -m lumbar_jax.data.build`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from lumbar_jax import labels as L
from lumbar_jax.data import study
from lumbar_jax.dataset_configs import DATASET_SHAPES, GRID_DATASETS

_DESCRIPTION = """
RSNA 2024 Lumbar Spine Degenerative Classification studies as geometry-correct 3D volumes: per study the
Sagittal T1, Sagittal T2/STIR and Axial T2 series, each sorted along its slice normal, reoriented to the
lumbar_jax canonical layout, resampled to the config's [D, H, W] and normalised to uint8; the 25 severity
labels; and the annotated label coordinates in normalised canonical volume coordinates. No DICOM header
value that identifies a patient is stored.
"""

_CITATION = """
@misc{rsna-2024-lumbar-spine-degenerative-classification,
  author = {Tyler Richards and Jason Talbott and Robyn Ball and others},
  title = {RSNA 2024 Lumbar Spine Degenerative Classification},
  year = {2024},
  howpublished = {Kaggle},
  url = {https://kaggle.com/competitions/rsna-2024-lumbar-spine-degenerative-classification}
}
"""


@dataclasses.dataclass
class RsnaLumbarSpineConfig(tfds.core.BuilderConfig):
    volume_shape: tuple[int, int, int] = (16, 64, 64)  # [D, H, W] of every stored volume
    grid: bool = False  # True: all series resampled into one shared patient-coordinate grid (data/grid.py)


def _builder_config(name: str) -> RsnaLumbarSpineConfig:
    """The builder config of a dataset config name (lumbar_jax.dataset_configs)."""
    shape = DATASET_SHAPES[name]
    if name in GRID_DATASETS:
        return RsnaLumbarSpineConfig(name=name, volume_shape=shape, grid=True, description=(
            f"{shape[0]}^3 shared patient-coordinate grid per study, one channel per series"))
    return RsnaLumbarSpineConfig(name=name, volume_shape=shape, description="x".join(map(str, shape)) + " volumes")


def keyed_study_example(job):
    """One build job `(StudyEntry, volume shape, grid)` -> (key = study id, example): the unit of work of the
    multiprocessing build here and of the Beam build (data/beam_build.py)."""
    entry, shape, grid = job
    return entry.study_id, study.study_example(entry, shape, grid=grid)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the RSNA 2024 lumbar spine studies (manual download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: canonical volumes, labels, normalised label coordinates."}
    BUILDER_CONFIGS = [_builder_config(name) for name in DATASET_SHAPES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the competition data from
    https://www.kaggle.com/competitions/rsna-2024-lumbar-spine-degenerative-classification/data
    (`kaggle competitions download -c rsna-2024-lumbar-spine-degenerative-classification`), unzip it, and
    pass that folder (the one holding train.csv and train_images/) as the manual dir:
    `python -m lumbar_jax.data.build --manual_dir KAGGLE_DIR --data_dir OUT --config r128`.
    `python -m lumbar_jax.data.synthetic --out DIR` writes a synthetic folder of the same layout.
    """

    def __init__(self, *, num_workers: int = 1, **kwargs):
        self.num_workers = max(1, int(num_workers))
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        shape = tuple(self.builder_config.volume_shape)
        volume = lambda: tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "study_id": np.int64,
                **{name: volume() for name in L.SERIES_TYPES},
                "present": tfds.features.Tensor(shape=(len(L.SERIES_TYPES),), dtype=np.bool_),
                "series_ids": tfds.features.Tensor(shape=(len(L.SERIES_TYPES),), dtype=np.int64),
                "labels": tfds.features.Tensor(shape=(L.NUM_TARGETS,), dtype=np.int64),
                "coords": tfds.features.Tensor(shape=(L.NUM_TARGETS, 3), dtype=np.float32),
                "coords_series": tfds.features.Tensor(shape=(L.NUM_TARGETS,), dtype=np.int64),
            }),
            supervised_keys=None,
            homepage="https://www.kaggle.com/competitions/rsna-2024-lumbar-spine-degenerative-classification",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = os.fspath(dl_manager.manual_dir)
        return {split: self._generate_examples(root, split) for split in ("train", "test")
                if study.has_split(root, split)}

    def _generate_examples(self, root: str, split: str):
        entries = study.list_studies(root, split)
        shape = tuple(self.builder_config.volume_shape)
        jobs = [(entry, shape, bool(self.builder_config.grid)) for entry in entries]
        progress = dict(total=len(jobs), desc=f"{split}: decoding studies", unit="study")
        if self.num_workers == 1:
            yield from tqdm.tqdm(map(keyed_study_example, jobs), **progress)
            return
        # spawn, not fork: the caller may have started JAX's threads, which fork would copy half-alive.
        with multiprocessing.get_context("spawn").Pool(self.num_workers) as pool:
            yield from tqdm.tqdm(pool.imap(keyed_study_example, jobs, chunksize=1), **progress)
