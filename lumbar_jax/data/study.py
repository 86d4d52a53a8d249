"""The Kaggle competition layout: CSVs -> per-study series choice, labels and label coordinates -> record.

A Kaggle folder holds `train.csv`, `train_label_coordinates.csv`, `{split}_series_descriptions.csv` and
`{split}_images/{study_id}/{series_id}/{instance_number}.dcm`. This module turns one study of it into the
record of docs/conventions.md section 4; the TFDS builder and `scripts/predict.py` both go through
`study_example` (`read_study_series`, then `record_volumes`: what `load_study_volumes` does), so training and
prediction see identical preprocessing. The CSVs are parsed by `kaggle_csv`; here the sources are reconciled (a
study or series present in one and missing from another is reported, and kept where it can still be used) and
every dropped series or label point is reported through `problems.report`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from lumbar_jax import labels as labels_lib
from lumbar_jax.data import dicom, problems, volume
from lumbar_jax.data import grid as grid_lib
from lumbar_jax.data.kaggle_csv import COORDINATE_COLUMNS, COORDINATES_CSV, Annotation, read_annotations
from lumbar_jax.data.kaggle_csv import read_descriptions, read_labels, split_studies
from lumbar_jax.dataset_configs import NATIVE_AFFINE, NATIVE_VOLUMES

__all__ = ["COORDINATE_COLUMNS", "PLANE_OF_SERIES", "Annotation", "StudyEntry", "choose_series", "has_split",
           "list_studies", "load_study_volumes", "map_annotations", "map_annotations_to_grid", "native_features",
           "read_annotations", "read_labels", "read_study_series", "record_volumes", "series_preference",
           "series_type_of_description", "study_example", "study_from_directory"]

# The plane of each series type, in which `dicom.read_series` orients it (docs/conventions.md section 4 order). Which
# series type each condition is annotated on is `labels.CONDITION_SERIES`.
PLANE_OF_SERIES = {"sagittal_t1": "sagittal", "sagittal_t2": "sagittal", "axial_t2": "axial"}
_DESCRIPTION_TO_TYPE = dict(zip(labels_lib.SERIES_DESCRIPTIONS, range(len(labels_lib.SERIES_TYPES))))


@dataclasses.dataclass(frozen=True)
class StudyEntry:
    """Everything the CSVs say about one study; no pixel has been read yet."""

    study_id: int
    series_dirs: tuple[tuple[tuple[int, str], ...], ...]  # per series type: ((series_id, dir), ...) candidates
    labels: np.ndarray  # int [25], -1 missing
    annotations: tuple[Annotation, ...] = ()


def has_split(root: str, split: str) -> bool:
    """Whether the Kaggle folder holds a `split` ('train' or 'test') series descriptions CSV."""
    return os.path.exists(os.path.join(root, f"{split}_series_descriptions.csv"))


def list_studies(root: str, split: str) -> list[StudyEntry]:
    """All studies of a split, sorted by study_id, with their candidate series directories and labels.

    Studies come from `{split}_series_descriptions.csv`; train studies also from train.csv (a labelled study
    without images still gets a record, every series absent), test studies also from `test_images/`. What
    one source has and another lacks is reported (study_mismatch): a described study without a train.csv
    row keeps its images (labels missing); a series folder without a descriptions row is typed by its DICOM
    SeriesDescription; a described series without a folder, and coordinates of a study or series that is not
    there, are dropped. Unknown series descriptions are ignored, reported naming their line.
    """
    desc_path = os.path.join(root, f"{split}_series_descriptions.csv")
    described = read_descriptions(desc_path)
    labels = read_labels(root) if split == "train" else {}
    annotations = read_annotations(root) if split == "train" else {}
    folders = _image_folders(os.path.join(root, f"{split}_images"))
    study_ids = split_studies(root, split, described, labels, annotations, folders)
    missing_labels = np.full(labels_lib.NUM_TARGETS, labels_lib.MISSING, dtype=np.int64)
    entries = []
    for s in study_ids:
        series_dirs = _study_series(desc_path, described.get(s, {}), folders.get(s, {}))
        entries.append(StudyEntry(s, series_dirs, labels.get(s, missing_labels),
                                  _known_series_annotations(s, annotations.get(s, ()), series_dirs)))
    return entries


def _image_folders(images: str) -> dict[int, dict[int, str]]:
    """{study_id: {series_id: dir}} of an images folder (empty if there is none); a folder whose name is not
    a number is reported (study_mismatch) and ignored."""
    out: dict[int, dict[int, str]] = {}
    if not os.path.isdir(images):
        return out
    for study_name in sorted(os.listdir(images)):
        study_dir = os.path.join(images, study_name)
        if not os.path.isdir(study_dir):
            continue
        if not study_name.isdigit():
            problems.report("study_mismatch", study_dir, "image folder name not a study id", "ignored")
            continue
        series = out.setdefault(int(study_name), {})
        for name in sorted(os.listdir(study_dir)):
            if os.path.isdir(os.path.join(study_dir, name)):
                if name.isdigit():
                    series[int(name)] = os.path.join(study_dir, name)
                else:
                    problems.report("study_mismatch", os.path.join(study_dir, name),
                                    "image folder name not a series id", "ignored")
    return out


def _study_series(desc_path: str | None, described: dict[int, tuple[str, int]], folders: dict[int, str]):
    """Per series type the candidate (series_id, dir) pairs of one study: the described series that have a
    folder, and the undescribed folders typed by their DICOM SeriesDescription (a study mismatch when there
    is a descriptions CSV, `desc_path`); the rest reported."""
    candidates: list[list[tuple[int, str]]] = [[] for _ in labels_lib.SERIES_TYPES]
    desc_name = os.path.basename(desc_path) if desc_path else None
    for series_id, (description, line) in sorted(described.items()):
        kind = _DESCRIPTION_TO_TYPE.get(description)
        if kind is None:
            problems.report("csv_row", f"{desc_name} line {line}", "unknown series description",
                            f"series_description = {description!r}")
        elif series_id not in folders:
            problems.report("study_mismatch", f"{desc_name} line {line}", "series has no image folder",
                            f"series_id = {series_id}")
        else:
            candidates[kind].append((series_id, folders[series_id]))
    for series_id, series_dir in sorted(folders.items()):
        if series_id not in described:
            kind = _type_from_header(series_dir, desc_name and f"series folder not in {desc_name}")
            if kind is not None:
                candidates[kind].append((series_id, series_dir))
    return tuple(tuple(c) for c in candidates)


def _type_from_header(series_dir: str, mismatch: str | None) -> int | None:
    """The series type of a folder from its DICOM SeriesDescription, reported as `mismatch` (study_mismatch)
    when given; None, reported as a skipped series, when the folder has no readable DICOM file or the type
    cannot be told."""
    try:
        description = dicom.series_description(series_dir)
    except dicom.DicomReadError as err:
        problems.report("series_skipped", series_dir, "no readable DICOM file",
                        str(err).removeprefix(f"{series_dir}: "))
        return None
    kind = series_type_of_description(description) if description else None
    if kind is None:
        problems.report("series_skipped", series_dir, "series type unknown", f"SeriesDescription = {description!r}")
    elif mismatch:
        problems.report("study_mismatch", series_dir, mismatch,
                        f"typed {labels_lib.SERIES_TYPES[kind]} by its SeriesDescription")
    return kind


def _known_series_annotations(study_id: int, annotations, series_dirs) -> tuple[Annotation, ...]:
    """The annotations of a study whose series is one of its candidates; the others are reported."""
    known = {sid for candidates in series_dirs for sid, _ in candidates}
    for a in annotations:
        if a.series_id not in known:
            _point_dropped(study_id, a, "series not in the study")
    return tuple(a for a in annotations if a.series_id in known)


def _point_dropped(study_id: int, a: Annotation, reason: str, detail: str = "") -> None:
    """Report a label point that gets no coordinate, naming its coordinates CSV line."""
    where = f"{COORDINATES_CSV} line {a.line}" if a.line else f"study {study_id}"
    problems.report("label_point_dropped", where, reason,
                    f"study {study_id} series {a.series_id} instance {a.instance_number} {labels_lib.TARGETS[a.target]}"
                    + (f"; {detail}" if detail else ""), stacklevel=3)


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
    else from each series' DICOM SeriesDescription; a folder the CSV does not list is typed by its header
    (reported). The study id is the folder name (0 if not a number). A series whose type cannot be told is
    ignored, reported naming it.
    """
    if not os.path.isdir(study_dir):
        raise FileNotFoundError(f"study directory {study_dir} not found")
    name = os.path.basename(os.path.normpath(study_dir))
    study_id = int(name) if name.isdigit() else 0
    folders = {int(n): os.path.join(study_dir, n) for n in sorted(os.listdir(study_dir))
               if n.isdigit() and os.path.isdir(os.path.join(study_dir, n))}
    described = read_descriptions(descriptions_csv).get(study_id, {}) if descriptions_csv else {}
    series_dirs = _study_series(descriptions_csv, described, folders)
    return StudyEntry(study_id, series_dirs, np.full(labels_lib.NUM_TARGETS, labels_lib.MISSING, dtype=np.int64))


def chosen_series_dirs(entry: StudyEntry, series_ids) -> tuple[str | None, ...]:
    """Per series type (labels.SERIES_TYPES order), the folder of the series a record was read from: its
    `series_ids` (the record's feature) among the entry's candidates; None where the series is absent (-1)."""
    folders = {sid: d for candidates in entry.series_dirs for sid, d in candidates}
    return tuple(folders.get(int(s)) for s in series_ids)


def series_preference(series_id: int, num_slices: int) -> tuple[int, int]:
    """The rule for choosing among several series of one type, as a sort key (the smallest is used): most
    readable slices (those of the volume `dicom.read_series` returns that were read from files, not
    interpolated across a gap), ties to the lowest series_id.
    `read_study_series` applies it to the series it could read, the synthetic generator to the series it plans
    (it annotates the series a reader would use)."""
    return -num_slices, series_id


def _read_preferred(candidates, plane: str | None):
    """Read every candidate series of one type and keep the preferred readable one (`series_preference`):
    (series_id, dir, canonical volume, geometry), or None when none can be read. Each unreadable candidate
    is reported: skipped (series_skipped) when another is used, else with the type's absence by the caller.
    Returns (chosen or None, [(series_id, dir, error)] of the unreadable candidates)."""
    best, failed = None, []
    for series_id, series_dir in candidates:
        try:
            canonical, geometry = dicom.read_series(series_dir, plane=plane)
        except (dicom.DicomReadError, OSError) as err:
            failed.append((series_id, series_dir, err))
            continue
        key = series_preference(series_id, geometry.read_slices)
        if best is None or key < best[0]:
            best = (key, series_id, series_dir, canonical, geometry)
    if best is not None:
        for series_id, series_dir, err in failed:
            problems.report("series_skipped", series_dir, "series unreadable",
                            f"series {best[1]} of the same type used; {err}")
    return (best[1:] if best else None), failed


def choose_series(candidates: tuple[tuple[int, str], ...], plane: str | None = None) -> tuple[int, str] | None:
    """The (series_id, dir) used among several series of one type (`series_preference` over the readable
    ones: each is read), None when none can be read."""
    chosen, _ = _read_preferred(candidates, plane)
    return None if chosen is None else chosen[:2]


def load_study_volumes(series_dirs, volume_shape: tuple[int, int, int], study_id: int | None = None):
    """Read, canonicalise and normalise the three series of one study.

    Args:
      series_dirs: per series type (labels.SERIES_TYPES order), the candidate (series_id, dir) pairs.
      volume_shape: the fixed [D, H, W] every volume is resampled to.
      study_id: names the study in the reports of absent series.
    Returns:
      (volumes uint8 [3, D, H, W] (zeros where absent), present bool [3], series_ids int [3] (-1 absent),
       geometries: list of SeriesGeometry or None).
    """
    canonicals, series_ids, geometries = read_study_series(series_dirs, study_id)
    return record_volumes(canonicals, volume_shape), series_ids >= 0, series_ids, geometries


def record_volumes(canonicals, volume_shape: tuple[int, int, int]) -> np.ndarray:
    """Per series type the canonical float volume or None (absent) -> uint8 [3, D, H, W] record volumes of
    `volume_shape` (`volume.to_record_volume`), zeros where absent."""
    volumes = np.zeros((len(labels_lib.SERIES_TYPES), *volume_shape), dtype=np.uint8)
    for kind, canonical in enumerate(canonicals):
        if canonical is not None:
            volumes[kind] = volume.to_record_volume(canonical, volume_shape)
    return volumes


def native_features(canonicals, geometries, max_size: int) -> dict[str, np.ndarray]:
    """Per series type canonical float volume and SeriesGeometry (None: absent) -> the *_native record
    features (docs/conventions.md section 4): NATIVE_VOLUMES, each uint8 [Dn, Hn, Wn] capped to `max_size`
    in-plane (`volume.to_native_record_volume`; [1, 1, 1] zeros where absent), and NATIVE_AFFINE float32
    [3, 4, 4], native voxel index (depth, row, col, 1) -> patient mm (zeros where absent)."""
    features: dict[str, np.ndarray] = {NATIVE_AFFINE: np.zeros((len(labels_lib.SERIES_TYPES), 4, 4), dtype=np.float32)}
    for kind, (canonical, geometry) in enumerate(zip(canonicals, geometries)):
        if canonical is None:
            features[NATIVE_VOLUMES[kind]] = np.zeros((1, 1, 1), dtype=np.uint8)
            continue
        features[NATIVE_VOLUMES[kind]], features[NATIVE_AFFINE][kind] = volume.to_native_record_volume(
            canonical, geometry.native_affine(), max_size)
    return features


def read_study_series(series_dirs, study_id: int | None = None) -> tuple[list, np.ndarray, list]:
    """Per series type (labels.SERIES_TYPES order) the preferred readable series (`series_preference`; an
    unreadable candidate falls back to the next) read into its canonical float volume: (volumes: list of
    float32 [D, H, W] or None, series_ids int [3] (-1 absent), geometries: list of SeriesGeometry or None).
    A type without a readable series is absent, reported (series_absent) naming the study and its candidates."""
    canonicals: list = [None] * len(labels_lib.SERIES_TYPES)
    series_ids = np.full(len(labels_lib.SERIES_TYPES), -1, dtype=np.int64)
    geometries: list = [None] * len(labels_lib.SERIES_TYPES)
    for kind, series_type in enumerate(labels_lib.SERIES_TYPES):
        chosen, failed = _read_preferred(series_dirs[kind], PLANE_OF_SERIES[series_type])
        if chosen is None:
            detail = "; ".join(f"series {sid}: {err}" for sid, _, err in failed) or "no series of this type"
            study = f"study {study_id}" if study_id is not None else (
                os.path.dirname(series_dirs[kind][0][1]) if series_dirs[kind] else "a study")
            problems.report("series_absent", f"{study} {series_type}",
                            "no readable series" if failed else "no series", detail)
            continue
        series_ids[kind], _, canonicals[kind], geometries[kind] = chosen
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
    series absent, outside the volume) gets no coordinate (-1), reported naming its CSV line: a wrong point is
    worse than none.
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
                    _point_dropped(entry.study_id, a, "annotated file unreadable")
                    continue
                point = geometry.normalize(geometry.world_to_canonical(world))
        except KeyError as err:
            _point_dropped(entry.study_id, a, "instance not in the series", str(err).strip("'\""))
            continue
        _place(coords, coords_series, entry.study_id, a, kind, point)
    return coords, coords_series


def _no_coordinates() -> tuple[np.ndarray, np.ndarray]:
    """(coords float32 [25, 3], coords_series int64 [25]), every target without a coordinate (-1)."""
    return (np.full((labels_lib.NUM_TARGETS, 3), -1.0, dtype=np.float32),
            np.full(labels_lib.NUM_TARGETS, -1, dtype=np.int64))


def _annotations_to_place(entry: StudyEntry, series_ids: np.ndarray):
    """(annotation, its series type, the directory of its series when that is not the series used for the
    type, else None) for every annotation whose series type is present; the others are reported dropped."""
    kind_of_series = {sid: kind for kind, candidates in enumerate(entry.series_dirs) for sid, _ in candidates}
    dir_of_series = {sid: d for candidates in entry.series_dirs for sid, d in candidates}
    for a in entry.annotations:
        kind = kind_of_series.get(a.series_id)
        if kind is None:
            _point_dropped(entry.study_id, a, "series not in the study")
        elif series_ids[kind] < 0:
            _point_dropped(entry.study_id, a, "series type absent", labels_lib.SERIES_TYPES[kind])
        else:
            yield a, kind, None if a.series_id == series_ids[kind] else dir_of_series[a.series_id]


def _place(coords: np.ndarray, coords_series: np.ndarray, study_id: int, a: Annotation, kind: int,
           point: np.ndarray) -> None:
    """Store a normalised point unless it lies well outside the volume (a point outside is not in it:
    reported dropped)."""
    if np.all((point > -0.05) & (point < 1.05)):
        coords[a.target] = np.clip(point, 0.0, 1.0)
        coords_series[a.target] = kind
    else:
        _point_dropped(study_id, a, "outside the volume", f"normalised {np.round(point, 3).tolist()}")


def map_annotations_to_grid(entry: StudyEntry, series_ids: np.ndarray, geometries, grid
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Label coordinates -> normalised (depth, row, col) in the study's shared grid (`grid_lib.Grid`, the
    grid dataset configs): each annotated pixel is located in patient coordinates through the geometry of
    the series it was annotated on (another series of the same type: through its own file) and mapped into
    the grid, which all three series share. Unplaceable points get -1, reported, as in `map_annotations`.
    Returns (coords float32 [25, 3], coords_series int64 [25]: the series type annotated)."""
    coords, coords_series = _no_coordinates()
    for a, kind, other_dir in _annotations_to_place(entry, series_ids):  # grid None: no series, all reported
        geometry = geometries[kind]
        if other_dir is None:
            try:
                world = grid_lib.pixel_world(geometry, a.instance_number, a.row, a.col)
            except KeyError as err:
                _point_dropped(entry.study_id, a, "instance not in the series", str(err).strip("'\""))
                continue
        else:
            world = _world_point(other_dir, a.instance_number, a.row, a.col, geometry.plane)
            if world is None:
                _point_dropped(entry.study_id, a, "annotated file unreadable")
                continue
        _place(coords, coords_series, entry.study_id, a, kind, grid.normalize(grid.index(world)))
    return coords, coords_series


def study_example(entry: StudyEntry, volume_shape: tuple[int, int, int], grid: bool = False,
                  native_max_size: int | None = None) -> dict[str, np.ndarray | int]:
    """One study -> the record of docs/conventions.md section 4 (a dict of numpy values).

    grid: False = each series in its own canonical volume of `volume_shape`; True = all series resampled into
    one shared patient-coordinate grid of `volume_shape` (`lumbar_jax.data.grid`; coords refer to that grid).
    native_max_size: None = the record as above; an int (the *_native configs, canonical volumes only) = also
    every series at its own resolution, in-plane sides capped to it, and its affine (`native_features`).
    """
    if grid and native_max_size is not None:
        raise ValueError("native volumes are stored beside canonical volumes only, not beside a shared grid")
    canonicals, series_ids, geometries = read_study_series(entry.series_dirs, entry.study_id)
    if grid:
        volumes, study_grid = grid_lib.grid_volumes(canonicals, geometries, volume_shape)
        coords, coords_series = map_annotations_to_grid(entry, series_ids, geometries, study_grid)
    else:
        volumes = record_volumes(canonicals, volume_shape)
        coords, coords_series = map_annotations(entry, series_ids, geometries)
    example: dict[str, np.ndarray | int] = {
        "study_id": entry.study_id,
        "present": series_ids >= 0,
        "series_ids": series_ids,
        "labels": entry.labels.astype(np.int64),
        "coords": coords,
        "coords_series": coords_series,
    }
    example.update({name: volumes[k] for k, name in enumerate(labels_lib.SERIES_TYPES)})
    if native_max_size is not None:
        example.update(native_features(canonicals, geometries, native_max_size))
    return example
