"""The acquisition plan of a study: its series (slice geometry, encoding) and where the real data's quirks land.

A study gets a Sagittal T1 and a Sagittal T2/STIR series (15 slices each, right -> left) and an Axial T2 series
(superior -> inferior, one stack over the five levels or, with `axial_substacks`, one stack per group of
levels); `Series` holds the per-slice geometry exactly as the DICOM headers will state it.

Quirks (`quirks=True`; the rare ones are scheduled by study index mod 20 so that any dataset of >= 6 studies
holds each at least once and a 40-study one twice; the common ones are also drawn at random at the given rate):
    reversed_instance_numbers  idx%20 in {0 (Sag T2), 4 (Axial)} + 20 % of series: InstanceNumber runs against
                               the spatial slice order (instance 1 is otherwise the patient's right / the top;
                               file names are instance numbers everywhere, so alphabetical order is not slice
                               order)
    flipped_inplane            idx%20 in {2 (Sag T1), 4 (Axial)} + 8 % of series: row direction reversed
    transposed_inplane         idx%20 = 3 (Sag T2) + 3 % of series: row and column directions swapped
    axial_substacks            idx%20 = 1 (3 sub-stacks) + 30 % of studies (2 or 3): one stack per group of
                               levels, one of them tilted 3-8 deg about patient x
    two_axial_series           idx%20 = 1: a second, shorter Axial T2 series (use the one with more slices)
    missing_series             idx%20 = 5: no Sagittal T1 / Axial T2 / Sagittal T2/STIR (cycling with idx//20);
                               that series' label coordinates are omitted, its labels kept
    mixed_matrix               idx%20 = 2 (Sag T2): 3 slices at another matrix, same field of view
    rescale_some_files         idx%20 = 0 (Axial) + 10 % of series: RescaleSlope 2 / RescaleIntercept -50 in about
                               half of the files (stored = (value + 50) / 2), absent in the others
    monochrome1                idx%20 = 1 (Sag T1): stored = 4095 - value, PhotometricInterpretation MONOCHROME1
    rle_lossless               idx%20 = 2 (Axial): RLE Lossless transfer syntax
    jpeg2000_lossless          idx%20 = 3 (Sag T1): JPEG 2000 lossless (verified to decode identical)
    truncated_file             idx%20 = 3 (Axial): the most inferior slice's file cut in its pixel data
    junk_file                  idx%20 = 4 (Sag T2): a non-DICOM `{num_slices + 1}.dcm` in the series folder
    missing_condition          idx%20 = 0: one whole condition (5 cells) empty in train.csv (`labels`)
    missing_label_cells        1.2 % of cells empty in train.csv (`labels`)
The dataset summary (`synthetic_summary.json`) lists where each quirk landed and the unreadable files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumbar_jax import labels
from lumbar_jax.data.synthetic.labels import QUIRK_PERIOD
from lumbar_jax.data.synthetic.phantom import Anatomy

_SAGITTAL_AXES = (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]))  # rows: A->P along a row, S->I down
_AXIAL_AXES = (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))  # R->L along a row, A->P down
# In-plane matrix (Rows = Columns) drawn per series, times `matrix_scale` (`make_study`): the default 64-96 px keeps
# generation and tests fast; 5 gives 320-480 px, the sizes of the real Kaggle slices (the field of view is drawn
# alike, so a larger matrix is a finer PixelSpacing of the same anatomy).
_MATRICES, _MATRIX_P = (64, 72, 80, 96), (0.35, 0.25, 0.25, 0.15)


@dataclass(frozen=True, eq=False)
class Series:
    """Geometry and encoding of one series; per-slice arrays in instance order (row k = InstanceNumber k+1)."""

    series_id: int
    kind: int  # index in labels.SERIES_TYPES
    number: int  # SeriesNumber
    ipp: np.ndarray  # [S, 3] ImagePositionPatient (centre of the first stored pixel), mm
    iop: np.ndarray  # [S, 6] ImageOrientationPatient: row direction (along a row), column direction (down)
    spacing: np.ndarray  # [S, 2] PixelSpacing (between rows, between columns), mm
    shape: np.ndarray  # [S, 2] int (Rows, Columns)
    thickness: float
    gap: float  # SpacingBetweenSlices
    gain: float  # stored value of tissue intensity 1.0
    noise: float  # Rician noise sigma, fraction of the gain
    rescaled: np.ndarray  # [S] bool: file carries RescaleSlope 2 / RescaleIntercept -50
    codec: str = ""  # "", "rle" or "jpeg2000"
    monochrome1: bool = False
    truncated_instance: int = 0  # instance whose file is cut (0 = none)
    junk: bool = False
    quirks: tuple = ()  # names of the quirks of this series

    @property
    def description(self) -> str:
        return labels.SERIES_DESCRIPTIONS[self.kind]

    @property
    def junk_name(self) -> str:
        """File name of the junk file (junk quirk): the instance number after the last one."""
        return f"{len(self.ipp) + 1}.dcm"

    def normals(self) -> np.ndarray:
        """[S, 3] slice normals (row direction x column direction)."""
        return np.cross(self.iop[:, :3], self.iop[:, 3:])

    def pixel_points(self, k: int) -> np.ndarray:
        """[rows, cols, 3] patient position of every pixel of slice (row) k."""
        rows, cols = self.shape[k]
        r, c = self.iop[k, :3] * self.spacing[k, 1], self.iop[k, 3:] * self.spacing[k, 0]
        return self.ipp[k] + np.arange(cols)[None, :, None] * r + np.arange(rows)[:, None, None] * c

    def locate(self, p: np.ndarray) -> tuple[int, float, float]:
        """(instance number, x = column, y = row) of the slice nearest patient point p [3] and p's projection."""
        k = int(np.argmin(np.abs(np.einsum("sd,sd->s", p - self.ipp, self.normals()))))
        d = p - self.ipp[k]
        return k + 1, float(d @ self.iop[k, :3] / self.spacing[k, 1]), float(d @ self.iop[k, 3:] / self.spacing[k, 0])


def _orientation(flags: dict, base: tuple, tilt_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) direction cosines of a stack: base axes, optionally transposed / flipped, tilted about x."""
    r, c = base
    if flags.get("transposed_inplane"):
        r, c = c, r
    if flags.get("flipped_inplane"):
        r = -r
    t = np.deg2rad(tilt_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    return rot @ r, rot @ c


def _stack(centres: np.ndarray, r: np.ndarray, c: np.ndarray, fov: float, matrix: int) -> tuple:
    """Per-slice (ipp [S, 3], iop [S, 6], spacing [S, 2], shape [S, 2]) of square slices centred on `centres`."""
    d = fov / matrix
    ipp = centres - (matrix - 1) / 2 * d * (r + c)
    n = len(centres)
    return ipp, np.tile(np.concatenate([r, c]), (n, 1)), np.full((n, 2), d), np.full((n, 2), matrix)


def _series(series_id, kind, number, slices, flags, rng, thickness, gap) -> Series:
    """Assemble a Series from spatially ordered slice arrays (a list of `_stack` outputs) and its quirk flags:
    instance reversal, encoding, broken files; rounds the geometry to the precision written in the header, so
    that label coordinates are computed from exactly what the files say."""
    ipp, iop, spacing, shape = (np.concatenate(x) for x in zip(*slices))
    n = len(ipp)
    order = np.arange(n)[::-1] if flags.get("reversed_instance_numbers") else np.arange(n)
    rescaled = rng.random(n) < 0.5 if flags.get("rescale_some_files") else np.zeros(n, bool)
    rescaled[0] |= bool(flags.get("rescale_some_files"))  # some files with, ...
    rescaled[-1] = False  # ... and some without, always
    return Series(
        series_id=int(series_id), kind=kind, number=number, ipp=np.round(ipp[order], 4),
        iop=np.round(iop[order], 6), spacing=np.round(spacing[order], 6), shape=shape[order].astype(int),
        thickness=round(thickness, 3), gap=round(gap, 3), gain=rng.uniform(1500, 2800),
        noise=rng.uniform(0.02, 0.04), rescaled=rescaled,
        codec="rle" if flags.get("rle_lossless") else "jpeg2000" if flags.get("jpeg2000_lossless") else "",
        monochrome1=bool(flags.get("monochrome1")),
        truncated_instance=int(np.flatnonzero(order == n - 1)[0]) + 1 if flags.get("truncated_file") else 0,
        junk=bool(flags.get("junk_file")), quirks=tuple(sorted(q for q, on in flags.items() if on)))


def _sagittal(rng, anat, series_id, kind, flags, matrix_scale: int = 1) -> Series:
    """15 sagittal slices (~4 mm apart, right -> left) over the whole lumbar canal and both foramina; matrix
    `_MATRICES` x matrix_scale."""
    n, gap = 15, rng.uniform(3.6, 4.2)
    fov, m = rng.uniform(66, 78), int(rng.choice(_MATRICES, p=_MATRIX_P))
    centre = anat.origin + (rng.uniform(-2, 2), -3 + rng.uniform(-3, 3), rng.uniform(-3, 3))
    centres = centre + np.outer((np.arange(n) - (n - 1) / 2) * gap, [1.0, 0.0, 0.0])
    r, c = _orientation(flags, _SAGITTAL_AXES)
    slices = [_stack(centres, r, c, fov, m * matrix_scale)]
    if flags.get("mixed_matrix"):  # 3 slices re-acquired at another matrix over the same field of view
        odd = np.sort(rng.choice(n, 3, replace=False))
        other = _stack(centres[odd], r, c, fov, (96 if m < 96 else 64) * matrix_scale)
        for arr, alt in zip(slices[0], other):
            arr[odd] = alt
    return _series(series_id, kind, 1 + kind, slices, flags, rng, gap - rng.uniform(0, 0.5), gap)


def _axial(rng, anat, series_id, number, groups, tilted, flags, matrix_scale: int = 1) -> Series:
    """Axial slices, superior -> inferior, one stack per group of levels (consecutive level indices), the stack
    `tilted` (or -1) rotated 3-8 deg about patient x around its centre; ~5-7 mm margin beyond its end levels;
    matrix `_MATRICES` x matrix_scale."""
    fov, m = rng.uniform(66, 78), int(rng.choice(_MATRICES, p=_MATRIX_P))
    xy = anat.origin[:2] + (rng.uniform(-3, 3), -3 + rng.uniform(-3, 3))
    level_z = anat.centres()[: labels.NUM_LEVELS, 2]
    gap = rng.uniform(2.6, 3.2)
    slices = []
    for i, levels in enumerate(groups):
        top, bottom = level_z[levels[0]] + rng.uniform(5, 7), level_z[levels[-1]] - rng.uniform(5, 7)
        n = int(round((top - bottom) / gap)) + 1
        z = (top + bottom) / 2 + (np.arange(n) - (n - 1) / 2) * -gap
        tilt = rng.uniform(3, 8) * rng.choice([-1, 1]) if i == tilted else 0.0
        r, c = _orientation(flags, _AXIAL_AXES, tilt)
        normal = np.cross(r, c) * np.sign(np.cross(r, c)[2])  # superior-pointing
        centre = np.array([*xy, (top + bottom) / 2])
        slices.append(_stack(centre + np.outer(z - centre[2], normal), r, c, fov, m * matrix_scale))
    return _series(series_id, 2, number, slices, flags, rng, gap - rng.uniform(0, 0.4), gap)


# ------------------------------------------------------------------------------------------------- quirks
# Scheduled quirks: study index mod QUIRK_PERIOD -> (quirk, series kind or None for a study-level quirk).
_SCHEDULE = {
    0: (("reversed_instance_numbers", 1), ("rescale_some_files", 2), ("missing_condition", None)),
    1: (("axial_substacks", 2), ("two_axial_series", None), ("monochrome1", 0)),
    2: (("flipped_inplane", 0), ("rle_lossless", 2), ("mixed_matrix", 1)),
    3: (("transposed_inplane", 1), ("jpeg2000_lossless", 0), ("truncated_file", 2)),
    4: (("flipped_inplane", 2), ("reversed_instance_numbers", 2), ("junk_file", 1)),
    5: (("missing_series", None),),
}
_SERIES_RATES = {"reversed_instance_numbers": 0.2, "flipped_inplane": 0.08, "transposed_inplane": 0.03,
                 "rescale_some_files": 0.1}
_SUBSTACK_RATE = 0.3
_MISSING_SERIES_CYCLE = (0, 2, 1)  # series kind missing in period 0, 1, 2, ...: Sag T1, Axial, Sag T2
_SUBSTACK_GROUPS = ([[0, 1, 2], [3, 4]], [[0, 1], [2, 3, 4]], [[0, 1], [2, 3], [4]], [[0], [1, 2], [3, 4]])


def _plan_quirks(rng: np.random.Generator, index: int, enabled: bool) -> tuple[list[dict], set]:
    """Per series kind, the flags {quirk: bool} of its quirks; and the set of study-level quirks. The same
    random numbers are drawn whether or not quirks are enabled (labels and anatomy are drawn before, from
    their own streams, and never depend on the switch)."""
    draws = {q: rng.random(3) < p for q, p in _SERIES_RATES.items()}
    substacks = rng.random() < _SUBSTACK_RATE
    flags = [{q: bool(draws[q][k]) and enabled for q in _SERIES_RATES} for k in range(3)]
    flags[2]["axial_substacks"] = substacks and enabled
    study = set()
    if enabled:
        for quirk, kind in _SCHEDULE.get(index % QUIRK_PERIOD, ()):
            if kind is None:
                study.add(quirk)
            else:
                flags[kind][quirk] = True
    for f in flags:  # an inverted photometric with a rescale would leave the order of the two ambiguous
        f["rescale_some_files"] = f["rescale_some_files"] and not f.get("monochrome1")
    return flags, study


def plan_series(rng: np.random.Generator, anat: Anatomy, ids: np.ndarray, index: int, quirks: bool,
                matrix_scale: int = 1) -> tuple[list[Series], list[tuple]]:
    """The series of study `index` (ids: its row of `draw_ids`; anat: its phantom) and the quirk entries
    (quirk, series_id or None, detail) of the study-level series quirks: a second axial series, a missing
    series."""
    flags, study_quirks = _plan_quirks(rng, index, quirks)
    groups, tilted = _axial_groups(rng, index, flags[2])
    series = [_sagittal(rng, anat, ids[1], 0, flags[0], matrix_scale),
              _sagittal(rng, anat, ids[2], 1, flags[1], matrix_scale),
              _axial(rng, anat, ids[3], 3, groups, tilted, flags[2], matrix_scale)]
    entries = []
    if "two_axial_series" in study_quirks:  # a shorter repeat over two levels
        first = int(rng.integers(labels.NUM_LEVELS - 1))
        series.append(_axial(rng, anat, ids[4], 4, [[first, first + 1]], -1, {}, matrix_scale))
        entries.append(("two_axial_series", int(ids[4]), "shorter extra series"))
    if "missing_series" in study_quirks:
        kind = _MISSING_SERIES_CYCLE[(index // QUIRK_PERIOD) % len(_MISSING_SERIES_CYCLE)]
        series = [s for s in series if s.kind != kind]
        entries.append(("missing_series", None, labels.SERIES_DESCRIPTIONS[kind]))
    return series, entries


def _axial_groups(rng: np.random.Generator, index: int, axial_flags: dict) -> tuple[list[list[int]], int]:
    """(level groups of the axial stacks, index of the tilted stack or -1): one stack over all levels, or with
    the axial_substacks quirk 2-3 stacks (3 at index = 1 mod QUIRK_PERIOD), one of them tilted."""
    groups = [[0, 1], [2, 3], [4]] if index % QUIRK_PERIOD == 1 else _SUBSTACK_GROUPS[rng.integers(4)]
    tilted = int(rng.integers(len(groups)))
    if not axial_flags.get("axial_substacks"):
        return [list(range(labels.NUM_LEVELS))], -1
    return groups, tilted
