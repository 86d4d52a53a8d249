"""The plan of one synthetic study: ids, labels, phantom, series geometry, label coordinates; no pixels yet.

`make_study` is cheap and deterministic: study `index` of a dataset (`DatasetSpec`) of seed `seed` draws its
labels from their own stream (`labels`), its anatomy and series from `np.random.default_rng([seed, 0, index, 1])`,
and its ids from the dataset-wide table `draw_ids` (pixel noise has one stream per series, `render_series`), so
any study can be planned, or re-planned, alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumbar_jax import labels as labels_lib
from lumbar_jax.data import study as study_lib
from lumbar_jax.data.synthetic.acquisition import Series, plan_series
from lumbar_jax.data.synthetic.labels import draw_study_labels
from lumbar_jax.data.synthetic.phantom import Anatomy, make_anatomy, phantom


@dataclass(frozen=True)
class DatasetSpec:
    """What a synthetic dataset holds: the same spec gives byte-identical files (however they are written)."""

    num_studies: int  # train (labelled) studies: indices 0 .. num_studies - 1
    seed: int  # dataset seed: ids, labels, anatomy, geometry, pixel noise
    num_test_studies: int = 0  # unlabelled test studies: the indices after the train ones
    quirks: bool = True  # the real data's oddities (rescale, MONOCHROME1, RLE, broken files, ...); False = clean
    matrix_scale: int = 1  # in-plane matrix multiplier (64-96 px drawn; 5: 320-480 px, Kaggle-like)

    def __post_init__(self):
        if not (isinstance(self.matrix_scale, (int, np.integer)) and self.matrix_scale >= 1):
            raise ValueError(f"matrix_scale must be an integer >= 1, got {self.matrix_scale!r}")


@dataclass(frozen=True, eq=False)
class Study:
    """A planned study: ids, labels, anatomy, series (no pixels yet) and where its quirks landed.

    latent / labels: int8 [25] latent and written severities (labels -1 = missing). coordinates: rows
    (condition index, level index, series_id, instance_number, x, y) for train studies.
    """

    seed: int
    index: int
    study_id: int
    split: str  # "train" or "test"
    latent: np.ndarray
    labels: np.ndarray
    anatomy: Anatomy
    series: tuple
    coordinates: tuple
    quirks: tuple = ()  # (quirk, series_id or None, detail)

    def annotated_series(self, kind: int) -> Series | None:
        """The series of a kind a reader should use (see `choose_series`), None if absent."""
        return choose_series(self.series, kind)


def draw_ids(seed: int, num_studies: int) -> np.ndarray:
    """int64 [num_studies, 5]: study_id and 4 series ids per study, all unique, 7-10 digits; a prefix of the
    table does not depend on num_studies (so adding test studies leaves the train ids unchanged)."""
    rng = np.random.default_rng([seed, 1, 0, 0])
    seen, out = set(), []
    while len(out) < num_studies * 5:
        x = int(rng.integers(1_000_000, 4_300_000_000))
        if x not in seen:
            seen.add(x)
            out.append(x)
    return np.array(out, dtype=np.int64).reshape(num_studies, 5)


def choose_series(series, kind: int) -> Series | None:
    """Of `series`, the one of `kind` a reader uses (the rule of `study.series_preference`, docs/conventions.md section 4),
    None if there is none."""
    same = [s for s in series if s.kind == kind]
    return min(same, key=lambda s: study_lib.series_preference(s.series_id, len(s.ipp)), default=None)


def make_study(spec: DatasetSpec, index: int, ids=None, latent=None) -> Study:
    """Plan study `index` of dataset `spec` (cheap: no pixels): a train study below `spec.num_studies`, else a
    test study. ids: its row of `draw_ids` (computed if None). latent: optional int [25] forcing the latent
    severities (then written = latent): for tests and demos. The random draws do not depend on
    `spec.matrix_scale`, so ids, labels, anatomy and geometry (up to the finer pixel grid) match at every scale."""
    seed, quirks, matrix_scale = spec.seed, spec.quirks, spec.matrix_scale
    split = "train" if index < spec.num_studies else "test"
    ids = draw_ids(seed, index + 1)[index] if ids is None else ids
    lat, written, missing_condition = draw_study_labels(seed, index, quirks)
    if latent is not None:
        lat, written, missing_condition = np.asarray(latent, np.int8), np.asarray(latent, np.int8), None
    rng = np.random.default_rng([seed, 0, index, 1])
    anat = make_anatomy(rng, lat)
    series, entries = plan_series(rng, anat, ids, index, quirks, matrix_scale)
    coords = []
    if split == "train":
        entries += _label_quirk_entries(written, missing_condition)
        coords = _label_coordinates(anat, series, written)
    entries += _series_quirk_entries(series)
    return Study(seed=seed, index=index, study_id=int(ids[0]), split=split, latent=lat, labels=written,
                 anatomy=anat, series=tuple(series), coordinates=tuple(coords), quirks=tuple(entries))


def _label_quirk_entries(written: np.ndarray, missing_condition: int | None) -> list[tuple]:
    """Quirk entries (quirk, None, detail) of a train study's empty train.csv cells: a whole condition, cells."""
    entries = []
    if missing_condition is not None:
        entries.append(("missing_condition", None, labels_lib.CONDITION_CSV_NAMES[missing_condition]))
    cells = int((written == labels_lib.MISSING).sum()) - (labels_lib.NUM_LEVELS if missing_condition is not None else 0)
    if cells:
        entries.append(("missing_label_cells", None, f"{cells} cells"))
    return entries


def _series_quirk_entries(series: list[Series]) -> list[tuple]:
    """Quirk entries (quirk, series_id, detail) of every series' own quirks; detail names a broken file."""
    entries = []
    for s in series:
        for name in s.quirks:
            detail = {"truncated_file": f"{s.truncated_instance}.dcm", "junk_file": s.junk_name}
            entries.append((name, s.series_id, detail.get(name, "")))
    return entries


def _label_coordinates(anat: Anatomy, series: list[Series], written: np.ndarray) -> list[tuple]:
    """Rows (condition index, level index, series_id, instance_number, x, y) of train_label_coordinates.csv:
    each labelled target's structure centre, located on the series its condition is annotated on (none if
    that series is missing)."""
    coords = []
    centres = anat.centres()
    for t in np.flatnonzero(written != labels_lib.MISSING):
        cond, lv = divmod(int(t), labels_lib.NUM_LEVELS)
        s = choose_series(series, labels_lib.CONDITION_SERIES[cond])
        if s is not None:
            coords.append((cond, lv, s.series_id, *s.locate(centres[t])))
    return coords


def render_series(study: Study, s: Series) -> list[np.ndarray]:
    """The image content of every slice, in instance order: uint16 [rows, cols] values in [0, 4095], i.e.
    what a reader must obtain after applying the rescale and the MONOCHROME1 inversion of the stored pixels.
    Phantom x smooth bias field, Rician noise (its own RNG stream per series), times the series gain."""
    points = np.concatenate([s.pixel_points(k).reshape(-1, 3) for k in range(len(s.ipp))]).T  # [3, N]
    anat = study.anatomy
    img = phantom(anat, points, 0 if s.kind == 0 else 1)
    d = [((points[i] - anat.origin[i]) / 40.0).astype(np.float32) for i in range(3)]
    b = anat.bias.astype(np.float32)
    img *= np.exp(d[0] * b[0] + d[1] * b[1] + d[2] * b[2] + b[3] * (d[0] ** 2 + d[1] ** 2 + d[2] ** 2))
    rng = np.random.default_rng([study.seed, 0, study.index, 2 + s.number])
    noise = rng.standard_normal((2, len(img)), dtype=np.float32) * np.float32(s.noise)
    values = np.clip(np.rint(np.hypot(img + noise[0], noise[1]) * np.float32(s.gain)), 0, 4095).astype(np.uint16)
    return [v.reshape(shape) for v, shape in zip(np.split(values, np.cumsum(s.shape.prod(1))[:-1]), s.shape)]
