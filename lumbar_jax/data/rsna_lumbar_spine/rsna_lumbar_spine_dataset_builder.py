"""TFDS builder `rsna_lumbar_spine`: Kaggle RSNA 2024 lumbar studies -> canonical 3D volumes (ArrayRecord).

One example per study, features exactly as docs/conventions.md section 4. Builder configs fix the volume size
[D, H, W], one per entry of `lumbar_jax.dataset_configs.DATASET_SHAPES` (shapes and uses listed there): `r64`,
`r128`, `r256` hold each series in its canonical layout; `grid32`, `grid64`, `grid128` hold the earlier system
B's shared grid (configs/baseline_vit3d_grid.py); `r64_native`, `r128_native` hold what `r64` / `r128` hold plus
every series at its own slices and pixel grid (in-plane sides capped, `NATIVE_MAX_SIZE`) and its voxel-to-patient
affine, the volumes the two-stage pipeline crops from (dynamic shapes, zlib-encoded like the others).

Sagittal and axial volumes share the size, so one encoder call can take all three series. The `grid*`
configs store the same features, but every series is resampled into ONE shared axis-aligned grid in patient
coordinates per study (the union of the series' extents, axes in the sagittal layout; `lumbar_jax.data.grid`),
so the three volumes are the aligned channels of one volume, and `coords` are normalised coordinates in that
grid (the same for every series; `coords_series` still says which series the point was annotated on). Studies are
decoded in parallel worker processes (`num_workers`); build with `python -m lumbar_jax.data.build`.

Every build writes `build_report.json` beside the records (`<data_dir>/rsna_lumbar_spine/<config>/<version>/`,
inside TFDS's incomplete directory, so the report exists exactly when the dataset does): the studies written
per split, the series absent from the records, what the readers dropped and why (`lumbar_jax.data.problems`,
collected around each study's decoding in its worker and around the CSV reading), and the source folder with
its fingerprint (`manual_dir_fingerprint`), which `lumbar_jax.data.dataset` uses to tell datasets apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import warnings

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from lumbar_jax import cli
from lumbar_jax import labels
from lumbar_jax.data import problems, study
from lumbar_jax.dataset_configs import DATASET_SHAPES, GRID_DATASETS, NATIVE_AFFINE, NATIVE_MAX_SIZE, NATIVE_VOLUMES

REPORT_FILE = "build_report.json"  # beside the records, see the module docstring

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
    native_max_size: int | None = None  # an int: also the native volumes, in-plane sides capped to it


def _builder_config(name: str) -> RsnaLumbarSpineConfig:
    """The builder config of a dataset config name (lumbar_jax.dataset_configs)."""
    shape = DATASET_SHAPES[name]
    if name in GRID_DATASETS:
        return RsnaLumbarSpineConfig(name=name, volume_shape=shape, grid=True, description=(
            f"{shape[0]}^3 shared patient-coordinate grid per study, one channel per series"))
    description = "x".join(map(str, shape)) + " volumes"
    if name in NATIVE_MAX_SIZE:
        return RsnaLumbarSpineConfig(name=name, volume_shape=shape, native_max_size=NATIVE_MAX_SIZE[name],
                                     description=f"{description} + native volumes (sides <= {NATIVE_MAX_SIZE[name]})")
    return RsnaLumbarSpineConfig(name=name, volume_shape=shape, description=description)


def _volume_feature(shape: tuple) -> tfds.features.Tensor:
    """A uint8 volume feature of `shape` (None: a dynamic axis), zlib-encoded (mostly dark voxels)."""
    return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)


def keyed_study_example(job):
    """One build job `(StudyEntry, volume shape, grid, native max size)` -> (key = study id, example): the unit
    of work of the multiprocessing build here and of the Beam build (data/beam_build.py). Jobs are made by
    `Builder.study_jobs`; the native max size (None: no native volumes) is that of *_native configs."""
    entry, shape, grid, native_max_size = job
    return entry.study_id, study.study_example(entry, shape, grid=grid, native_max_size=native_max_size)


def study_example_and_problems(job):
    """`keyed_study_example(job)` and the problems its reading reported: (key, example, [Problem]). The
    problems travel beside the example back to the building process (they are no record feature)."""
    with problems.collect() as found:
        key, example = keyed_study_example(job)
    return key, example, found


def _init_worker() -> None:
    """A decoding process logs like the build command, each warning in one line (`problems`)."""
    cli.setup_logging(logging.WARNING)
    warnings.showwarning = problems.show_warning_in_one_line


def manual_dir_fingerprint(manual_dir: str) -> str:
    """A hash of what a Kaggle folder holds: the contents of its top-level CSVs and, for every file under its
    `*_images/` folders, the relative path, size and modification time. Reads no DICOM file (one stat per
    file), and differs between two folders unless they hold the same CSVs and images."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(manual_dir)):
        path = os.path.join(manual_dir, name)
        if name.endswith(".csv") and os.path.isfile(path):
            digest.update(f"csv {name}\n".encode())
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
        elif name.endswith("_images") and os.path.isdir(path):
            for rel, size, mtime in _file_listing(path, name):
                digest.update(f"{rel} {size} {mtime}\n".encode())
    return digest.hexdigest()


def _file_listing(directory: str, prefix: str):
    """(relative path, size, mtime in ns) of every file under `directory`, sorted by path."""
    stack, out = [(directory, prefix)], []
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, f"{rel}/{e.name}"))
                else:
                    st = e.stat()
                    out.append((f"{rel}/{e.name}", st.st_size, st.st_mtime_ns))
    return sorted(out)


class _BuildTally:
    """What one build dropped: the series absent from its records per split, and every reported problem."""

    def __init__(self):
        self.absent: dict[str, dict[str, int]] = {}
        self.problems: list[problems.Problem] = []

    def add(self, split: str, example: dict, found: list) -> None:
        absent = self.absent.setdefault(split, dict.fromkeys(labels.SERIES_TYPES, 0))
        for name, present in zip(labels.SERIES_TYPES, example["present"]):
            absent[name] += int(not present)
        self.problems.extend(found)


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

    def __init__(self, *, num_workers: int = 1, source_fingerprint: str | None = None, **kwargs):
        self.num_workers = max(1, int(num_workers))
        self.source_fingerprint = source_fingerprint  # of the manual dir, when the caller computed it already
        self.build_report: dict | None = None  # set when this builder has built the dataset
        self._tally = _BuildTally()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        shape = tuple(self.builder_config.volume_shape)
        native = {}
        if self.builder_config.native_max_size is not None:
            native = {name: _volume_feature((None, None, None)) for name in NATIVE_VOLUMES}
            native[NATIVE_AFFINE] = tfds.features.Tensor(shape=(len(labels.SERIES_TYPES), 4, 4), dtype=np.float32)
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "study_id": np.int64,
                **{name: _volume_feature(shape) for name in labels.SERIES_TYPES},
                "present": tfds.features.Tensor(shape=(len(labels.SERIES_TYPES),), dtype=np.bool_),
                "series_ids": tfds.features.Tensor(shape=(len(labels.SERIES_TYPES),), dtype=np.int64),
                "labels": tfds.features.Tensor(shape=(labels.NUM_TARGETS,), dtype=np.int64),
                "coords": tfds.features.Tensor(shape=(labels.NUM_TARGETS, 3), dtype=np.float32),
                "coords_series": tfds.features.Tensor(shape=(labels.NUM_TARGETS,), dtype=np.int64),
                **native,
            }),
            supervised_keys=None,
            homepage="https://www.kaggle.com/competitions/rsna-2024-lumbar-spine-degenerative-classification",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = os.fspath(dl_manager.manual_dir)
        return {split: self._generate_examples(root, split) for split in ("train", "test")
                if study.has_split(root, split)}

    def _list_studies(self, root: str, split: str) -> list[study.StudyEntry]:
        """The split's studies (`study.list_studies`), what the CSV reading dropped counted in the report."""
        with problems.collect() as found:
            entries = study.list_studies(root, split)
        self._tally.problems.extend(found)
        return entries

    def study_jobs(self, root: str, split: str) -> list[tuple]:
        """The build jobs of a split (`keyed_study_example`): (StudyEntry, volume shape, grid, native max size)."""
        config = self.builder_config
        shape, grid = tuple(config.volume_shape), bool(config.grid)
        return [(entry, shape, grid, config.native_max_size) for entry in self._list_studies(root, split)]

    def _generate_examples(self, root: str, split: str):
        jobs = self.study_jobs(root, split)
        progress = dict(total=len(jobs), desc=f"{split}: decoding studies", unit="study")
        if self.num_workers == 1:
            results = map(study_example_and_problems, jobs)
            yield from self._tallied(split, tqdm.tqdm(results, **progress))
            return
        # spawn, not fork: the caller may have started JAX's threads, which fork would copy half-alive.
        with multiprocessing.get_context("spawn").Pool(self.num_workers, initializer=_init_worker) as pool:
            results = pool.imap(study_example_and_problems, jobs, chunksize=1)
            yield from self._tallied(split, tqdm.tqdm(results, **progress))

    def _tallied(self, split: str, results):
        """(key, example) of each (key, example, problems) result, tallying its absent series and problems."""
        for key, example, found in results:
            self._tally.add(split, example, found)
            yield key, example

    def _log_download_bytes(self) -> None:
        """Instead of TFDS's "Downloading and preparing dataset Unknown size ...": nothing is downloaded."""
        logging.getLogger(__name__).info("building %s/%s into %s from the Kaggle folder (offline)", self.name,
                                         self.builder_config.name, self.data_dir)

    def _log_download_done(self) -> None:
        """Instead of TFDS's "Dataset ... downloaded and prepared": the build prints its report (data/build.py)."""

    def _download_and_prepare(self, dl_manager, download_config):
        """TFDS's generation, then `build_report.json` beside the records (still in the incomplete dir)."""
        self._tally = _BuildTally()
        super()._download_and_prepare(dl_manager, download_config)
        manual_dir = os.fspath(dl_manager.manual_dir)
        self.build_report = self._report(manual_dir, self.source_fingerprint or manual_dir_fingerprint(manual_dir))
        with open(os.path.join(self.data_dir, REPORT_FILE), "w") as f:  # TFDS renames the whole dir when done
            json.dump(self.build_report, f, indent=1)

    def _report(self, manual_dir: str, fingerprint: str) -> dict:
        """The build report (module docstring): what was written, what was dropped and why, the source."""
        return {
            "dataset": f"{self.name}/{self.builder_config.name}/{self.version}",
            "source": {"manual_dir": os.path.abspath(manual_dir), "fingerprint": fingerprint},
            "studies": {name: int(split.num_examples) for name, split in self.info.splits.items()},
            "series_absent_in_records": self._tally.absent,
            "problems": problems.summarize(self._tally.problems),
        }
