"""The Kaggle competition layout: CSVs -> per-study series choice, labels and label coordinates -> record.

A Kaggle folder holds `train.csv`, `train_label_coordinates.csv`, `{split}_series_descriptions.csv` and
`{split}_images/{study_id}/{series_id}/{instance_number}.dcm`. This module turns one study of it into the
record of docs/conventions.md section 4; the TFDS builder and `scripts/predict.py` both go through
`load_study_volumes`, so training and prediction see identical preprocessing.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pandas as pd

from lumbar_jax import labels as L
from lumbar_jax.data import dicom, volume
from lumbar_jax.data import grid as grid_lib

log = logging.getLogger(__name__)

# The plane of each series type, in which `dicom.read_series` orients it (docs/conventions.md section 4 order). Which
# series type each condition is annotated on is `labels.CONDITION_SERIES`.
PLANE_OF_SERIES = {"sagittal_t1": "sagittal", "sagittal_t2": "sagittal", "axial_t2": "axial"}
_DESCRIPTION_TO_TYPE = dict(zip(L.SERIES_DESCRIPTIONS, range(len(L.SERIES_TYPES))))
COORDINATE_COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")


@dataclasses.dataclass(frozen=True)
class Annotation:
    """One row of train_label_coordinates.csv, resolved to indices."""

    target: int  # index in labels.TARGETS
    series_id: int
    instance_number: int
    row: float  # y in pixels of the stored image
    col: float  # x


@dataclasses.dataclass(frozen=True)
class StudyEntry:
    """Everything the CSVs say about one study; no pixel has been read yet."""

    study_id: int
    series_dirs: tuple[tuple[tuple[int, str], ...], ...]  # per series type: ((series_id, dir), ...) candidates
    labels: np.ndarray  # int [25], -1 missing
    annotations: tuple[Annotation, ...] = ()


def _read_csv(path: str, required: tuple[str, ...]) -> pd.DataFrame:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (expected the Kaggle competition layout)")
    table = pd.read_csv(path)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {list(table.columns)}")
    return table


def has_split(root: str, split: str) -> bool:
    """Whether the Kaggle folder holds a `split` ('train' or 'test') series descriptions CSV."""
    return os.path.exists(os.path.join(root, f"{split}_series_descriptions.csv"))


def read_labels(root: str) -> dict[int, np.ndarray]:
    """train.csv -> {study_id: int [25] severity codes}; an unknown severity names the file and column."""
    path = os.path.join(root, "train.csv")
    table = _read_csv(path, ("study_id", *L.TARGETS))
    codes = np.empty((len(table), L.NUM_TARGETS), dtype=np.int64)
    for t, target in enumerate(L.TARGETS):
        try:
            codes[:, t] = [L.severity_code(v) for v in table[target]]
        except ValueError as err:
            raise ValueError(f"{path}, column {target}: {err}") from None
    return {int(s): codes[i] for i, s in enumerate(table["study_id"])}


def read_annotations(root: str) -> dict[int, list[Annotation]]:
    """train_label_coordinates.csv -> {study_id: [Annotation]} (first row wins for a repeated target)."""
    path = os.path.join(root, "train_label_coordinates.csv")
    if not os.path.exists(path):
        log.warning("%s not found: records get no label coordinates", path)
        return {}
    table = _read_csv(path, COORDINATE_COLUMNS)
    out: dict[int, dict[int, Annotation]] = {}
    for row in table.itertuples(index=False):
        try:
            target = L.target_index(L.condition_from_csv(row.condition), L.level_from_csv(row.level))
        except ValueError as err:
            raise ValueError(f"{path}, study {row.study_id}: {err}") from None
        study = out.setdefault(int(row.study_id), {})
        study.setdefault(target, Annotation(target, int(row.series_id), int(row.instance_number),
                                            float(row.y), float(row.x)))
    return {s: list(a.values()) for s, a in out.items()}


def list_studies(root: str, split: str) -> list[StudyEntry]:
    """All studies of a split, sorted by study_id, with their candidate series directories and labels.

    Studies come from `{split}_series_descriptions.csv`; train studies also from train.csv (a labelled study
    without images still gets a record, every series absent). Unknown series descriptions are ignored with
    a warning naming them.
    """
    desc_path = os.path.join(root, f"{split}_series_descriptions.csv")
    desc = _read_csv(desc_path, ("study_id", "series_id", "series_description"))
    labels = read_labels(root) if split == "train" else {}
    annotations = read_annotations(root) if split == "train" else {}
    series: dict[int, list[list[tuple[int, str]]]] = {}
    for row in desc.itertuples(index=False):
        kind = _DESCRIPTION_TO_TYPE.get(row.series_description)
        candidates = series.setdefault(int(row.study_id), [[] for _ in L.SERIES_TYPES])
        if kind is None:
            log.warning("%s: study %s series %s has unknown description %r, ignored", desc_path, row.study_id,
                        row.series_id, row.series_description)
            continue
        series_dir = os.path.join(root, f"{split}_images", str(row.study_id), str(row.series_id))
        candidates[kind].append((int(row.series_id), series_dir))
    study_ids = sorted(set(series) | set(labels))
    missing_labels = np.full(L.NUM_TARGETS, L.MISSING, dtype=np.int64)
    return [
        StudyEntry(
            study_id=s,
            series_dirs=tuple(tuple(c) for c in series.get(s, [[] for _ in L.SERIES_TYPES])),
            labels=labels.get(s, missing_labels),
            annotations=tuple(annotations.get(s, ())),
        )
        for s in study_ids
    ]


def series_type_of_description(description: str) -> int | None:
    """Series type index (labels.SERIES_TYPES) of a series description: the competition's spellings
    ("Sagittal T1", "Sagittal T2/STIR", "Axial T2") or a scanner's ("SAG T1 FSE", "AX T2"); None otherwise."""
    if description in _DESCRIPTION_TO_TYPE:
        return _DESCRIPTION_TO_TYPE[description]
    words = description.lower().replace("/", " ").replace("_", " ").split()
    sagittal, axial = any(w.startswith("sag") for w in words), any(w.startswith("ax") for w in words)
    if sagittal and "t1" in words:
        return 0
    if sagittal and ("t2" in words or "stir" in words):
        return 1
    if axial and "t2" in words:
        return 2
    return None


def study_from_directory(study_dir: str, descriptions_csv: str | None = None) -> StudyEntry:
    """One study folder (`{study_id}/{series_id}/*.dcm`) -> its StudyEntry (no labels), for prediction.

    Series types come from `descriptions_csv` (the Kaggle `*_series_descriptions.csv` columns) when given,
    else from each series' DICOM SeriesDescription. The study id is the folder name (0 if not a number).
    A series whose type cannot be told is ignored with a warning naming it.
    """
    if not os.path.isdir(study_dir):
        raise FileNotFoundError(f"study directory {study_dir} not found")
    name = os.path.basename(os.path.normpath(study_dir))
    study_id = int(name) if name.isdigit() else 0
    known: dict[int, str] = {}
    if descriptions_csv:
        table = _read_csv(descriptions_csv, ("study_id", "series_id", "series_description"))
        known = {int(r.series_id): r.series_description for r in table.itertuples(index=False)
                 if int(r.study_id) == study_id}
    candidates: list[list[tuple[int, str]]] = [[] for _ in L.SERIES_TYPES]
    for entry in sorted(os.listdir(study_dir)):
        series_dir = os.path.join(study_dir, entry)
        if not (os.path.isdir(series_dir) and entry.isdigit()):
            continue
        description = known.get(int(entry)) if descriptions_csv else dicom.series_description(series_dir)
        kind = series_type_of_description(description) if description else None
        if kind is None:
            log.warning("%s: series type unknown (description %r), ignored", series_dir, description)
            continue
        candidates[kind].append((int(entry), series_dir))
    missing_labels = np.full(L.NUM_TARGETS, L.MISSING, dtype=np.int64)
    return StudyEntry(study_id, tuple(tuple(c) for c in candidates), missing_labels)


def series_preference(series_id: int, num_slices: int) -> tuple[int, int]:
    """The rule for choosing among several series of one type, as a sort key (the smallest is used): most
    slices, ties to the lowest series_id. `choose_series` applies it to folders, the synthetic generator to
    the series it plans (it annotates the series a reader would use)."""
    return -num_slices, series_id


def choose_series(candidates: tuple[tuple[int, str], ...]) -> tuple[int, str] | None:
    """The series to use among several of one type (`series_preference`; slices = the folder's .dcm files)."""
    existing = [(sid, d) for sid, d in candidates if os.path.isdir(d)]
    for sid, d in candidates:
        if not os.path.isdir(d):
            log.warning("series directory %s listed in the descriptions CSV does not exist", d)
    if not existing:
        return None
    return min(existing, key=lambda c: series_preference(c[0], sum(f.endswith(".dcm") for f in os.listdir(c[1]))))


def load_study_volumes(series_dirs, volume_shape: tuple[int, int, int]):
    """Read, canonicalise and normalise the three series of one study.

    Args:
      series_dirs: per series type (labels.SERIES_TYPES order), the candidate (series_id, dir) pairs.
      volume_shape: the fixed [D, H, W] every volume is resampled to.
    Returns:
      (volumes uint8 [3, D, H, W] (zeros where absent), present bool [3], series_ids int [3] (-1 absent),
       geometries: list of SeriesGeometry or None).
    """
    volumes = np.zeros((len(L.SERIES_TYPES), *volume_shape), dtype=np.uint8)
    canonicals, series_ids, geometries = read_study_series(series_dirs)
    for kind, canonical in enumerate(canonicals):
        if canonical is not None:
            volumes[kind] = volume.to_record_volume(canonical, volume_shape)
    return volumes, series_ids >= 0, series_ids, geometries


def read_study_series(series_dirs) -> tuple[list, np.ndarray, list]:
    """Per series type (labels.SERIES_TYPES order) the chosen series read into its canonical float volume:
    (volumes: list of float32 [D, H, W] or None, series_ids int [3] (-1 absent), geometries: list of
    SeriesGeometry or None). An unreadable series is absent, with a warning naming it."""
    canonicals: list = [None] * len(L.SERIES_TYPES)
    series_ids = np.full(len(L.SERIES_TYPES), -1, dtype=np.int64)
    geometries: list = [None] * len(L.SERIES_TYPES)
    for kind, series_type in enumerate(L.SERIES_TYPES):
        chosen = choose_series(series_dirs[kind])
        if chosen is None:
            continue
        try:
            canonical, geometry = dicom.read_series(chosen[1], plane=PLANE_OF_SERIES[series_type])
        except dicom.DicomReadError as err:
            log.warning("%s treated as absent: %s", series_type, err)
            continue
        canonicals[kind], series_ids[kind], geometries[kind] = canonical, chosen[0], geometry
    return canonicals, series_ids, geometries


def _world_point(series_dir: str, instance_number: int, row: float, col: float, plane: str) -> np.ndarray | None:
    """Patient coordinates (mm) of a pixel of one stored instance, or None if that file cannot be read."""
    path = os.path.join(series_dir, f"{instance_number}.dcm")
    try:
        _, geometry = dicom.read_series([path], plane=plane)
    except (dicom.DicomReadError, OSError):
        return None
    return geometry.pixel_to_world[0] @ np.array([row, col, 1.0])


def map_annotations(entry: StudyEntry, series_ids: np.ndarray, geometries) -> tuple[np.ndarray, np.ndarray]:
    """Label coordinates -> normalised canonical (depth, row, col) in the volume of the series type annotated.

    A point annotated on the series used for its type maps through that series' geometry. A point annotated
    on another series of the same type (a study with two axial series) is located in patient coordinates and
    mapped into the used series' volume. A point that cannot be placed (unknown instance, unreadable file,
    series absent) gets no coordinate (-1): a wrong point is worse than none.
    Returns (coords float32 [25, 3], coords_series int64 [25]).
    """
    coords, coords_series = _no_coordinates()
    for a, kind, other_dir in _annotations_to_place(entry, series_ids):
        geometry = geometries[kind]
        try:
            if other_dir is None:
                point = geometry.normalized(a.instance_number, a.row, a.col)
            else:
                world = _world_point(other_dir, a.instance_number, a.row, a.col, geometry.plane)
                if world is None:
                    continue
                point = geometry.normalize(geometry.world_to_canonical(world))
        except KeyError as err:
            log.warning("series %s: annotation of %s not mapped: %s", a.series_id, L.TARGETS[a.target], err)
            continue
        _place(coords, coords_series, a.target, kind, point)
    return coords, coords_series


def _no_coordinates() -> tuple[np.ndarray, np.ndarray]:
    """(coords float32 [25, 3], coords_series int64 [25]), every target without a coordinate (-1)."""
    return np.full((L.NUM_TARGETS, 3), -1.0, dtype=np.float32), np.full(L.NUM_TARGETS, -1, dtype=np.int64)


def _annotations_to_place(entry: StudyEntry, series_ids: np.ndarray):
    """(annotation, its series type, the directory of its series when that is not the series used for the
    type, else None) for every annotation whose series type is present; the others get no coordinate."""
    kind_of_series = {sid: kind for kind, candidates in enumerate(entry.series_dirs) for sid, _ in candidates}
    dir_of_series = {sid: d for candidates in entry.series_dirs for sid, d in candidates}
    for a in entry.annotations:
        kind = kind_of_series.get(a.series_id)
        if kind is None or series_ids[kind] < 0:
            continue
        yield a, kind, None if a.series_id == series_ids[kind] else dir_of_series[a.series_id]


def _place(coords: np.ndarray, coords_series: np.ndarray, target: int, kind: int, point: np.ndarray) -> None:
    """Store a normalised point unless it lies well outside the volume (a point outside is not in it)."""
    if np.all((point > -0.05) & (point < 1.05)):
        coords[target] = np.clip(point, 0.0, 1.0)
        coords_series[target] = kind


def map_annotations_to_grid(entry: StudyEntry, series_ids: np.ndarray, geometries, grid
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Label coordinates -> normalised (depth, row, col) in the study's shared grid (`grid_lib.Grid`, the
    grid dataset configs): each annotated pixel is located in patient coordinates through the geometry of
    the series it was annotated on (another series of the same type: through its own file) and mapped into
    the grid, which all three series share. Unplaceable points get -1, as in `map_annotations`.
    Returns (coords float32 [25, 3], coords_series int64 [25]: the series type annotated)."""
    coords, coords_series = _no_coordinates()
    if grid is None:
        return coords, coords_series
    for a, kind, other_dir in _annotations_to_place(entry, series_ids):
        geometry = geometries[kind]
        if other_dir is None:
            try:
                world = grid_lib.pixel_world(geometry, a.instance_number, a.row, a.col)
            except KeyError as err:
                log.warning("series %s: annotation of %s not mapped: %s", a.series_id, L.TARGETS[a.target], err)
                continue
        else:
            world = _world_point(other_dir, a.instance_number, a.row, a.col, geometry.plane)
            if world is None:
                continue
        _place(coords, coords_series, a.target, kind, grid.normalize(grid.index(world)))
    return coords, coords_series


def study_example(entry: StudyEntry, volume_shape: tuple[int, int, int],
                  grid: bool = False) -> dict[str, np.ndarray | int]:
    """One study -> the record of docs/conventions.md section 4 (a dict of numpy values).

    grid: False = each series in its own canonical volume of `volume_shape`; True = all series resampled into
    one shared patient-coordinate grid of `volume_shape` (`lumbar_jax.data.grid`; coords refer to that grid).
    """
    if grid:
        canonicals, series_ids, geometries = read_study_series(entry.series_dirs)
        volumes, study_grid = grid_lib.grid_volumes(canonicals, geometries, volume_shape)
        present = series_ids >= 0
        coords, coords_series = map_annotations_to_grid(entry, series_ids, geometries, study_grid)
    else:
        volumes, present, series_ids, geometries = load_study_volumes(entry.series_dirs, volume_shape)
        coords, coords_series = map_annotations(entry, series_ids, geometries)
    example: dict[str, np.ndarray | int] = {
        "study_id": entry.study_id,
        "present": present,
        "series_ids": series_ids,
        "labels": entry.labels.astype(np.int64),
        "coords": coords,
        "coords_series": coords_series,
    }
    example.update({name: volumes[k] for k, name in enumerate(L.SERIES_TYPES)})
    return example

