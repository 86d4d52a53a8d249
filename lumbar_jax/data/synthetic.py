"""Synthetic RSNA-2024-lumbar studies in the exact Kaggle layout, with images that carry their labels.

Why: the training job needs a dataset that exists without a download (conventions section 6), and the
reader / builder need files that exercise every oddity of the real DICOMs. Everything here is deterministic:
study `i` of seed `s` draws from `np.random.default_rng([s, 0, i, stream])` (labels, anatomy, pixel noise are
separate streams), ids from `[s, 1, 0, 0]`, so any number of workers writes byte-identical output.

Layout written by `write_synthetic_dataset` (that of the competition):
    train.csv, train_label_coordinates.csv, train_series_descriptions.csv, train_images/{study}/{series}/{n}.dcm
    [test_series_descriptions.csv, test_images/..., sample_submission.csv]  with num_test_studies > 0
    [test_solution.csv]  the test labels, train.csv-shaped (hidden in the competition; here to score locally)
    synthetic_summary.json  (written last: its presence marks a complete dataset; no PHI in it)

Phantom. Each study has an anatomy frame (u = patient left, v = posterior, w = superior; mm) placed in LPS
patient coordinates by a random origin, rotation (+-6 deg sagittal tilt, +-3 deg coronal/axial), scale
(0.93-1.07) and lordosis (v shifted by lambda * w^2). In it: vertebral bodies (elliptic column anterior to the
canal) cut by 5 discs at heights w_0 > ... > w_4 (L1/L2 ... L5/S1, ~12.5 mm apart, so the 5 levels fill
most of a ~72 mm sagittal field of view); the spinal canal (CSF ellipse, ~13 x 12 mm) with two lateral
recesses; a bony posterior block in which the neural foramina are fat-filled ellipsoids at u = +-18 mm.
Severity shrinks, at its own disc level: the canal (AP by a fraction n, width by n/2; Gaussian profile along w,
sigma 3.5 mm), the left/right recess (both axes by n) and the left/right foramen (its v and w axes by n).
n is drawn uniformly within the latent class: spinal 0-0.2 / 0.45-0.6 / 0.72-0.85, foraminal and subarticular
0-0.2 / 0.42-0.56 / 0.66-0.8 -- a severe canal is ~3 mm vs ~11 mm normal, i.e. ~7 voxels apart even at the
default 16x64x64 resampling. Every pixel of every slice is the 3D phantom sampled at that pixel's patient
position (from the slice's own ImagePositionPatient / ImageOrientationPatient / PixelSpacing), with T1 or T2
tissue contrasts, a smooth multiplicative bias field and Rician noise; so the series are geometrically
consistent and flips / transposes / tilts are real acquisitions, not painted.

Labels. Latent severities per target follow the real data's imbalance (`PRIORS`: spinal 87.7/7.5/4.8 %,
foraminal 78/18/4 %, subarticular 71/19/10 %) through a Gaussian copula: z = sqrt(0.2) g_study +
sqrt(0.3) g_(group, level) + sqrt(0.5) e, thresholded at the prior's quantiles (so left/right of one level
correlate 0.5, any two targets of a study 0.2, and the marginals are exact). Label noise (what a reader cannot
beat): at each boundary between adjacent grades a flow f = KAPPA * min(pi_c, pi_c+1) (KAPPA = 0.15) of
labels is written as the other grade in both directions, so the written marginals equal the latent ones;
the smaller class of each boundary loses 15 % of its labels to it. Moved labels: spinal 3.7 %, foraminal
6.6 %, subarticular 8.7 % (6.9 % overall). `label_noise_matrix(group)` is P(written | latent).
Missing labels (quirks only): each cell with p = 0.012, plus a whole condition of study index = 0 mod 20,
~2.2 % of cells in all.

Noise floor (`noise_floor_score(seed=0, num_studies=20000)`, `metrics.competition_score`): a reader who knows
the latent severity and predicts P(written | latent) scores 0.310 (spinal 0.233, foraminal 0.341, subarticular
0.406, any_severe_spinal 0.258); the class-prior baseline (each target's written-label frequencies, add-one
smoothed) scores 1.109 on the same rows. No model can beat ~0.31 in expectation.

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
    missing_condition          idx%20 = 0: one whole condition (5 cells) empty in train.csv
    missing_label_cells        1.2 % of cells empty in train.csv
The summary (`synthetic_summary.json`) lists where each quirk landed and the unreadable files.

Patient identifiers are fake and distinctive (`PHI_SENTINELS`): any of them in a pipeline output is a leak.

API: `write_synthetic_dataset` (and the CLI `python -m lumbar_jax.data.synthetic --out DIR --studies N --seed S
[--test_studies M] [--no-quirks] [--workers W] [--matrix_scale K]`; K multiplies the in-plane matrix, default 1:
64-96 px, 5: 320-480 px as in the real data); `make_study` plans one study (ids, labels, anatomy, series
geometry, label coordinates; no pixels), `render_series` its pixels, `write_study` its files; `draw_labels`
(label-only, fast), `label_noise_matrix`, `noise_floor_score`; `phantom` / `Anatomy` for geometric checks.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import multiprocessing
import os
import struct
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage, RLELossless
from tqdm import tqdm

from lumbar_jax import labels as L
from lumbar_jax import metrics

VERSION = "1.0.0"

# ---------------------------------------------------------------------------------------------- PHI sentinels
PHI_MARKER = "PHI-SENTINEL"  # contained in every text identifier below
PHI_PATIENT_NAME = f"SYNTHETIC^{PHI_MARKER}"
PHI_INSTITUTION = f"{PHI_MARKER} HOSPITAL"
PHI_BIRTH_DATE = "18870613"  # a DA must be 8 digits: an impossible-looking date instead of the marker
PHI_SENTINELS = (PHI_MARKER, PHI_PATIENT_NAME, PHI_INSTITUTION, PHI_BIRTH_DATE)


def phi_patient_id(index: int) -> str:
    """PatientID of study `index` (not its study_id: the id is legitimate data, the PatientID is not)."""
    return f"{PHI_MARKER}-{index:06d}"


# -------------------------------------------------------------------------------------------------- labels
PRIORS = {  # metric group -> latent (= written) class frequencies, from the real train.csv
    "spinal": (0.877, 0.075, 0.048),
    "foraminal": (0.78, 0.18, 0.04),
    "subarticular": (0.71, 0.19, 0.10),
}
KAPPA = 0.15  # label-noise flow at each grade boundary, as a fraction of the smaller class
RHO_STUDY, RHO_PAIR = 0.2, 0.3  # copula loadings: study factor, (group, level) factor shared by left/right
P_MISSING_CELL = 0.012
QUIRK_PERIOD = 20  # the scheduled quirks repeat every QUIRK_PERIOD study indices

_GROUP_NAMES = tuple(L.CONDITION_GROUPS)


def label_noise_matrix(group: str) -> np.ndarray:
    """[3, 3] P(written = column | latent = row) of a metric group; preserves the prior (see module doc)."""
    p = np.asarray(PRIORS[group])
    a, b = KAPPA * min(p[0], p[1]), KAPPA * min(p[1], p[2])
    joint = np.array([[p[0] - a, a, 0.0], [a, p[1] - a - b, b], [0.0, b, p[2] - b]])
    return joint / p[:, None]


_NOISE = np.stack([label_noise_matrix(g) for g in _GROUP_NAMES])  # [3 groups, 3, 3]
_NOISE_CDF = np.cumsum(_NOISE, axis=-1)
_THRESHOLDS = np.array([[NormalDist().inv_cdf(PRIORS[g][0]), NormalDist().inv_cdf(PRIORS[g][0] + PRIORS[g][1])]
                        for g in _GROUP_NAMES])  # [3 groups, 2] copula thresholds


def _draw_labels(seed: int, index: int, quirks: bool) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(latent [25] int8, written [25] int8 with -1 = missing, condition made missing or None) of a study.

    All random numbers are drawn whether or not quirks are on, so the latent severities never depend on it.
    """
    rng = np.random.default_rng([seed, 0, index, 0])
    g_study, g_pair, e = rng.standard_normal(), rng.standard_normal((3, L.NUM_LEVELS)), rng.standard_normal(25)
    z = np.sqrt(RHO_STUDY) * g_study + np.sqrt(RHO_PAIR) * g_pair[L.TARGET_GROUP, L.TARGET_LEVEL]
    z += np.sqrt(1.0 - RHO_STUDY - RHO_PAIR) * e
    thr = _THRESHOLDS[L.TARGET_GROUP]
    latent = (z > thr[:, 0]).astype(np.int8) + (z > thr[:, 1])
    cdf = _NOISE_CDF[L.TARGET_GROUP, latent]  # [25, 3]
    written = (rng.random(25)[:, None] > cdf[:, :2]).sum(1).astype(np.int8)
    missing_cells, missing_condition = rng.random(25) < P_MISSING_CELL, int(rng.integers(L.NUM_CONDITIONS))
    if not quirks:
        return latent, written, None
    written[missing_cells] = L.MISSING
    if index % QUIRK_PERIOD != 0:
        return latent, written, None
    written[missing_condition * L.NUM_LEVELS:(missing_condition + 1) * L.NUM_LEVELS] = L.MISSING
    return latent, written, missing_condition


def draw_labels(seed: int, num_studies: int, quirks: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(latent, written) int8 [num_studies, 25] of studies 0..num_studies-1, without any image (fast)."""
    draws = [_draw_labels(seed, i, quirks)[:2] for i in range(num_studies)]
    return np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws])


def noise_floor_score(seed: int = 0, num_studies: int = 20000) -> dict:
    """Competition scores of the perfect reader and of the class prior on `num_studies` label-only studies.

    The perfect reader knows each latent severity and predicts P(written | latent): the best any image model
    can do in expectation. The class prior predicts each target's written-label frequencies (add-one
    smoothed, `metrics.class_prior_baseline`) on the same rows. Returns {"noise_floor", "class_prior",
    "num_studies"} (scores: lower is better).
    """
    latent, written = draw_labels(seed, num_studies)
    perfect = _NOISE[L.TARGET_GROUP[None, :], latent]  # [N, 25, 3]
    prior = metrics.class_prior_baseline(written, num_studies)
    return {"noise_floor": metrics.competition_score(written, perfect)["score"],
            "class_prior": metrics.competition_score(written, prior)["score"], "num_studies": num_studies}


# ------------------------------------------------------------------------------------------------- anatomy
SHRINK = {  # metric group -> per-class range of the narrowing fraction n (module doc)
    "spinal": ((0.0, 0.2), (0.45, 0.6), (0.72, 0.85)),
    "foraminal": ((0.0, 0.2), (0.42, 0.56), (0.66, 0.8)),
    "subarticular": ((0.0, 0.2), (0.42, 0.56), (0.66, 0.8)),
}
# Tissue intensities (fraction of the series gain) for T1 and T2: background, bone, body, disc, fat, CSF.
_CONTRAST = np.array([[0.30, 0.38, 0.60, 0.36, 0.90, 0.10],
                      [0.22, 0.28, 0.45, 0.75, 0.62, 0.95]])
_EDGE = 1.0  # mm, width of the partial-volume ramp at tissue boundaries
_STENOSIS_SIGMA = 3.5  # mm along w, extent of a level's canal / recess narrowing


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One study's phantom: anatomy-frame shapes (mm) and the map to LPS patient coordinates.

    Patient point p = origin + scale * rotation @ (u, v + lordosis * w^2, w). `shrink` [25] is the narrowing
    fraction of every target in TARGETS order; `contrast` [2, 6] tissue intensities of T1 / T2.
    """

    origin: np.ndarray  # [3]
    rotation: np.ndarray  # [3, 3], columns = u, v, w axes in patient coordinates
    scale: float
    lordosis: float
    level_w: np.ndarray  # [5] disc heights, descending (L1/L2 first)
    disc_half: np.ndarray  # [5] half disc heights
    body: tuple  # (semi-axis u, semi-axis v, centre v)
    posterior: tuple  # (half width u, front v, back v) of the bony posterior block
    canal: tuple  # (semi-axis u, semi-axis v), centred at u = v = 0
    recess: tuple  # (centre |u|, centre v, semi-axis u, semi-axis v)
    foramen: tuple  # (centre |u|, centre v, centre w above the disc, semi-axes u, v, w)
    shrink: np.ndarray  # [25]
    contrast: np.ndarray  # [2, 6]
    bias: np.ndarray  # [4]: gradient (3) and curvature of the log bias field, per 40 mm

    def to_patient(self, a: np.ndarray) -> np.ndarray:
        """Anatomy-frame points [3, ...] (u, v, w; coordinate first) -> LPS patient mm [3, ...]."""
        bent = (a[0], a[1] + self.lordosis * a[2] ** 2, a[2])
        return np.stack([self.origin[i] + self.scale * sum(self.rotation[i, j] * bent[j] for j in range(3))
                         for i in range(3)])

    def to_anatomy(self, p: np.ndarray) -> np.ndarray:
        """LPS patient mm [3, ...] -> anatomy frame (u, v, w) [3, ...], float32 (exact inverse of to_patient).
        Written out per coordinate: a [N, 3] @ [3, 3] matmul is ~30x slower than this on the CI machines."""
        d = [(p[i] - self.origin[i]).astype(np.float32) for i in range(3)]
        u, v, w = (sum(d[i] * np.float32(self.rotation[i, j] / self.scale) for i in range(3)) for j in range(3))
        return np.stack([u, v - np.float32(self.lordosis) * w * w, w])

    def centres(self) -> np.ndarray:
        """[25, 3] patient position of the centre of every target's structure (canal, foramen, recess)."""
        fu, fv, fdw = self.foramen[:3]
        ru, rv = self.recess[:2]
        per_condition = [(0.0, 0.0, 0.0), (fu, fv, fdw), (-fu, fv, fdw), (ru, rv, 0.0), (-ru, rv, 0.0)]
        a = np.array([(u, v, self.level_w[lv] + dw) for u, v, dw in per_condition for lv in range(L.NUM_LEVELS)])
        return self.to_patient(a.T).T


def _make_anatomy(rng: np.random.Generator, latent: np.ndarray) -> Anatomy:
    """Draw one study's anatomy; the narrowing of each target within its latent class's range."""
    ax, ay, az = np.deg2rad(rng.uniform(-1, 1, 3) * (6.0, 3.0, 3.0))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    spacing = rng.uniform(11.8, 13.2)
    level_w = (2 - np.arange(L.NUM_LEVELS)) * spacing + rng.uniform(-0.6, 0.6, L.NUM_LEVELS)
    bu, bv = rng.uniform(15, 18), rng.uniform(10.5, 12.5)
    ranges = np.array([SHRINK[g] for g in _GROUP_NAMES])[L.TARGET_GROUP, latent]  # [25, 2]
    return Anatomy(
        origin=rng.uniform(-1, 1, 3) * (10.0, 20.0, 40.0),
        rotation=rz @ ry @ rx,
        scale=rng.uniform(0.93, 1.07),
        lordosis=rng.uniform(-0.003, 0.003),
        level_w=level_w,
        disc_half=rng.uniform(1.8, 2.6, L.NUM_LEVELS),
        body=(bu, bv, -(6.5 + rng.uniform(0, 1) + bv)),
        posterior=(rng.uniform(22, 25), -7.0, rng.uniform(20, 26)),
        canal=(rng.uniform(6.0, 7.0), rng.uniform(5.5, 6.5)),
        recess=(rng.uniform(7.5, 8.5), rng.uniform(-3, -2), rng.uniform(2.8, 3.4), rng.uniform(2.3, 2.9)),
        foramen=(rng.uniform(17, 19), rng.uniform(-2, -1), rng.uniform(1, 2),
                 rng.uniform(4.2, 4.8), rng.uniform(3.2, 3.8), rng.uniform(4.6, 5.4)),
        shrink=rng.uniform(ranges[:, 0], ranges[:, 1]),
        contrast=_CONTRAST * rng.uniform(0.9, 1.1, _CONTRAST.shape),
        bias=np.concatenate([rng.normal(0, 0.1, 3), rng.uniform(-0.08, 0.08, 1)]),
    )


def _ramp(x: np.ndarray) -> np.ndarray:
    """Partial-volume membership of a point at signed depth x (mm, > 0 inside) in a structure: a linear ramp
    over _EDGE mm (as cheap as a clip, unlike a sigmoid)."""
    return np.clip(x * np.float32(1 / _EDGE) + np.float32(0.5), 0, 1)


def _ellipse(e: np.ndarray, min_axis) -> np.ndarray:
    """Membership of a point at normalised radius e of an ellipse(-oid) with the given smallest semi-axis."""
    return _ramp((1 - e) * min_axis)


def _f32(*xs) -> list:
    """Scalars as float32: a float64 scalar would silently promote the float32 pixel arrays to float64."""
    return [np.float32(x) for x in xs]


def phantom(anat: Anatomy, points: np.ndarray, sequence: int) -> np.ndarray:
    """Noise-free tissue intensity [N] float32 at LPS points [3, N]; sequence 0 = T1 contrasts, 1 = T2."""
    u, v, w = anat.to_anatomy(points)
    level_w = anat.level_w.astype(np.float32)
    k = np.searchsorted(-(level_w[:-1] + level_w[1:]) / 2, -w)  # nearest disc level [N]
    dw = w - level_w[k]
    left, au = u > 0, np.abs(u)  # patient left = +u: the left-condition structures
    sh = anat.shrink.reshape(L.NUM_CONDITIONS, L.NUM_LEVELS).astype(np.float32)
    profile = np.exp(-((dw * np.float32(1 / _STENOSIS_SIGMA)) ** 2))  # a level's narrowing along w
    bg, bone, body_c, disc_c, fat, csf = _f32(*anat.contrast[sequence])

    pu, pv0, pv1 = _f32(*anat.posterior)
    img = bg + (bone - bg) * _ramp(np.minimum(np.minimum(pu - au, v - pv0), pv1 - v))
    bu, bv, bvc = _f32(*anat.body)
    column = _ellipse(np.sqrt((u / bu) ** 2 + ((v - bvc) / bv) ** 2), min(bu, bv))
    disc = _ramp(anat.disc_half.astype(np.float32)[k] - np.abs(dw))
    img += (body_c - img) * column * (1 - disc)
    img += (disc_c - img) * column * disc

    fu, fv, fdw, fau, fav, faw = _f32(*anat.foramen)
    keep = 1 - np.where(left, sh[1, k], sh[2, k])
    e = np.sqrt(((au - fu) / fau) ** 2 + ((v - fv) / (fav * keep)) ** 2 + ((dw - fdw) / (faw * keep)) ** 2)
    img += (fat - img) * _ellipse(e, fav * keep)

    cu, cv = _f32(*anat.canal)
    keep = 1 - sh[0, k] * profile
    canal = _ellipse(np.sqrt((u / (cu * (1 + keep) / 2)) ** 2 + (v / (cv * keep)) ** 2), cv * keep)
    ru, rv, rau, rav = _f32(*anat.recess)
    keep = 1 - np.where(left, sh[3, k], sh[4, k]) * profile
    recess = _ellipse(np.sqrt(((au - ru) / (rau * keep)) ** 2 + ((v - rv) / (rav * keep)) ** 2), rav * keep)
    img += (csf - img) * np.maximum(canal, recess)
    return img


# -------------------------------------------------------------------------------------------------- series
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
        return L.SERIES_DESCRIPTIONS[self.kind]

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
    level_z = anat.centres()[: L.NUM_LEVELS, 2]
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


# -------------------------------------------------------------------------------------------------- quirks
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


# --------------------------------------------------------------------------------------------------- study
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
    """Of several series of one kind, the one to use: most slices, ties lowest series_id (conventions 4)."""
    same = [s for s in series if s.kind == kind]
    return min(same, key=lambda s: (-len(s.ipp), s.series_id)) if same else None


_ANNOTATED_KIND = (1, 0, 0, 2, 2)  # series kind on which each condition is annotated (as in the real data)
_SUBSTACK_GROUPS = ([[0, 1, 2], [3, 4]], [[0, 1], [2, 3, 4]], [[0, 1], [2, 3], [4]], [[0], [1, 2], [3, 4]])


def make_study(seed: int, index: int, quirks: bool = True, split: str = "train", ids=None, latent=None,
               matrix_scale: int = 1) -> Study:
    """Plan study `index` of dataset `seed` (cheap: no pixels). ids: its row of `draw_ids` (computed if None).
    latent: optional int [25] forcing the latent severities (then written = latent): for tests and demos.
    matrix_scale: the drawn in-plane matrix (64-96 px) is multiplied by it (5: 320-480 px, Kaggle-like); the
    random draws do not depend on it, so ids, labels, anatomy and geometry (up to the finer pixel grid) match."""
    if not (isinstance(matrix_scale, (int, np.integer)) and matrix_scale >= 1):
        raise ValueError(f"matrix_scale must be an integer >= 1, got {matrix_scale!r}")
    ids = draw_ids(seed, index + 1)[index] if ids is None else ids
    lat, written, missing_condition = _draw_labels(seed, index, quirks)
    if latent is not None:
        lat, written, missing_condition = np.asarray(latent, np.int8), np.asarray(latent, np.int8), None
    rng = np.random.default_rng([seed, 0, index, 1])
    anat = _make_anatomy(rng, lat)
    flags, study_quirks = _plan_quirks(rng, index, quirks)
    groups = [[0, 1], [2, 3], [4]] if index % QUIRK_PERIOD == 1 else _SUBSTACK_GROUPS[rng.integers(4)]
    tilted = int(rng.integers(len(groups)))
    if not flags[2].get("axial_substacks"):
        groups, tilted = [list(range(L.NUM_LEVELS))], -1
    series = [_sagittal(rng, anat, ids[1], 0, flags[0], matrix_scale),
              _sagittal(rng, anat, ids[2], 1, flags[1], matrix_scale),
              _axial(rng, anat, ids[3], 3, groups, tilted, flags[2], matrix_scale)]
    entries = []
    if "two_axial_series" in study_quirks:  # a shorter repeat over two levels
        first = int(rng.integers(L.NUM_LEVELS - 1))
        series.append(_axial(rng, anat, ids[4], 4, [[first, first + 1]], -1, {}, matrix_scale))
        entries.append(("two_axial_series", int(ids[4]), "shorter extra series"))
    if "missing_series" in study_quirks:
        kind = _MISSING_SERIES_CYCLE[(index // QUIRK_PERIOD) % len(_MISSING_SERIES_CYCLE)]
        series = [s for s in series if s.kind != kind]
        entries.append(("missing_series", None, L.SERIES_DESCRIPTIONS[kind]))
    if missing_condition is not None and split == "train":
        entries.append(("missing_condition", None, L.CONDITION_CSV_NAMES[missing_condition]))
    cells = int((written == L.MISSING).sum()) - (L.NUM_LEVELS if missing_condition is not None else 0)
    if cells and split == "train":
        entries.append(("missing_label_cells", None, f"{cells} cells"))
    for s in series:
        for name in s.quirks:
            detail = {"truncated_file": f"{s.truncated_instance}.dcm", "junk_file": s.junk_name}
            entries.append((name, s.series_id, detail.get(name, "")))
    coords = []
    if split == "train":
        centres = anat.centres()
        for t in np.flatnonzero(written != L.MISSING):
            cond, lv = divmod(int(t), L.NUM_LEVELS)
            s = choose_series(series, _ANNOTATED_KIND[cond])
            if s is not None:
                coords.append((cond, lv, s.series_id, *s.locate(centres[t])))
    return Study(seed=seed, index=index, study_id=int(ids[0]), split=split, latent=lat, labels=written,
                 anatomy=anat, series=tuple(series), coordinates=tuple(coords), quirks=tuple(entries))


# ------------------------------------------------------------------------------------------------- pixels
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


# -------------------------------------------------------------------------------------------------- DICOM
# pydicom's writer costs ~3 ms a file, more than rendering it; uncompressed files are encoded here instead
# (explicit VR little endian, ~20 lines), compressed ones by pydicom. Tests read every file back with pydicom.
_IMPLEMENTATION_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "lumbar_jax.data.synthetic").int)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_SEQUENCE_TIMING = ((500, 10), (3000, 100), (4000, 95))  # (RepetitionTime, EchoTime) ms per series kind


@functools.lru_cache(maxsize=8192)
def _element(keyword: str, value) -> tuple[int, bytes]:
    """(tag, explicit-VR little-endian bytes) of one element; value: int (US/UL), bytes (OB), str or a tuple
    of str (multi-valued). Tags and VRs from pydicom's data dictionary; cached, as most elements of a series
    repeat in every file."""
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    if vr in ("US", "UL"):
        raw = struct.pack("<H" if vr == "US" else "<I", value)
    elif vr == "OB":
        raw = value
    else:
        raw = ("\\".join(value) if isinstance(value, tuple) else value).encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
    head += struct.pack("<2xI", len(raw)) if vr in _LONG_VRS else struct.pack("<H", len(raw))
    return tag, head + raw


def _encode(items: list, pixels: bytes = b"") -> bytes:
    """Element list [(keyword, value)] -> their bytes sorted by tag, then PixelData (the last tag), as OW."""
    out = b"".join(b for _, b in sorted(_element(k, v) for k, v in items))
    return out + (struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", len(pixels)) + pixels if pixels else b"")


def _file_meta(sop_instance_uid: str) -> list:
    """[(keyword, value)] of the file meta information group (0002), without its group length (pydicom's
    compress() replaces the transfer syntax of compressed files)."""
    return [("FileMetaInformationVersion", b"\x00\x01"), ("MediaStorageSOPClassUID", MRImageStorage),
            ("MediaStorageSOPInstanceUID", sop_instance_uid), ("TransferSyntaxUID", ExplicitVRLittleEndian),
            ("ImplementationClassUID", _IMPLEMENTATION_UID), ("ImplementationVersionName", "LUMBARJAX_SYN1")]


def _fmt(values, digits: int) -> tuple:
    """DS strings of floats (at most 16 characters for the ranges used here)."""
    return tuple(f"{v:.{digits}f}" for v in values)


def _header(study: Study, s: Series, k: int, rescaled: bool) -> list:
    """[(keyword, value)] of the dataset of slice k of series s, without PixelData."""
    rows, cols = (int(x) for x in s.shape[k])
    tr, te = _SEQUENCE_TIMING[s.kind]
    items = [
        ("ImageType", ("ORIGINAL", "PRIMARY", "M", "ND")), ("SOPClassUID", MRImageStorage),
        ("SOPInstanceUID", f"{study.study_id}.{s.series_id}.{k + 1}"), ("Modality", "MR"),
        ("Manufacturer", "LUMBAR_JAX SYNTHETIC"), ("InstitutionName", PHI_INSTITUTION),
        ("SeriesDescription", s.description), ("PatientName", PHI_PATIENT_NAME),
        ("PatientID", phi_patient_id(study.index)), ("PatientBirthDate", PHI_BIRTH_DATE),
        ("SliceThickness", f"{s.thickness:.3f}"), ("RepetitionTime", str(tr)), ("EchoTime", str(te)),
        ("MagneticFieldStrength", "1.5"), ("SpacingBetweenSlices", f"{s.gap:.3f}"),
        ("StudyInstanceUID", str(study.study_id)), ("SeriesInstanceUID", str(s.series_id)),
        ("SeriesNumber", str(s.number)), ("InstanceNumber", str(k + 1)),
        ("ImagePositionPatient", _fmt(s.ipp[k], 4)), ("ImageOrientationPatient", _fmt(s.iop[k], 6)),
        ("FrameOfReferenceUID", f"{study.study_id}.0"), ("SamplesPerPixel", 1),
        ("PhotometricInterpretation", "MONOCHROME1" if s.monochrome1 else "MONOCHROME2"),
        ("Rows", rows), ("Columns", cols), ("PixelSpacing", _fmt(s.spacing[k], 6)),
        ("BitsAllocated", 16), ("BitsStored", 12), ("HighBit", 11), ("PixelRepresentation", 0),
    ]
    if rescaled:
        items += [("RescaleIntercept", "-50"), ("RescaleSlope", "2")]
    return items


def _dicom_bytes(study: Study, s: Series, k: int, values: np.ndarray) -> bytes:
    """The .dcm file of slice k: stored pixels derived from the image content `values` [rows, cols] uint16
    (rescale quirk: stored = (values + 50) / 2; MONOCHROME1: stored = 4095 - values), then encoded."""
    rescaled = bool(s.rescaled[k])
    stored = values
    if rescaled:
        stored = ((values.astype(np.int32) + 51) // 2).astype(np.uint16)  # round half up; decodes within 1
    if s.monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    items = _header(study, s, k, rescaled)
    meta_items = _file_meta(dict(items)["SOPInstanceUID"])
    if not s.codec:
        meta = _encode(meta_items)
        return (b"\0" * 128 + b"DICM" + _encode([("FileMetaInformationGroupLength", len(meta))]) + meta
                + _encode(items, stored.astype("<u2").tobytes()))
    ds = Dataset()
    for keyword, value in items:
        setattr(ds, keyword, list(value) if isinstance(value, tuple) else value)
    ds.file_meta = FileMetaDataset()
    for keyword, value in meta_items:
        setattr(ds.file_meta, keyword, value)
    if s.codec == "rle":  # pydicom's own encoder: always present, so the bytes do not depend on plugins
        ds.compress(RLELossless, stored, encoding_plugin="pydicom", generate_instance_uid=False)
    else:
        ds.compress(JPEG2000Lossless, stored, generate_instance_uid=False)
        if not np.array_equal(ds.pixel_array, stored):
            raise RuntimeError("JPEG 2000 lossless round trip changed the pixels: broken openjpeg encoder")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_study(study: Study, root: str) -> dict:
    """Render and write one study's images under root/{split}_images/{study_id}/{series_id}/{instance}.dcm.
    Returns {"files", "bytes", "unreadable": [paths relative to root]}."""
    files = size = 0
    unreadable = []
    for s in study.series:
        rel_dir = os.path.join(f"{study.split}_images", str(study.study_id), str(s.series_id))
        os.makedirs(os.path.join(root, rel_dir), exist_ok=True)
        outputs = [(f"{k + 1}.dcm", _dicom_bytes(study, s, k, v)) for k, v in enumerate(render_series(study, s))]
        if s.truncated_instance:
            name, data = outputs[s.truncated_instance - 1]
            pixels = int(s.shape[s.truncated_instance - 1].prod()) * 2
            outputs[s.truncated_instance - 1] = (name, data[: len(data) - pixels // 2])
            unreadable.append(os.path.join(rel_dir, name))
        if s.junk:
            outputs.append((s.junk_name, b"scanner export log -- not a DICOM file\n" * 20))
            unreadable.append(os.path.join(rel_dir, s.junk_name))
        for name, data in outputs:
            with open(os.path.join(root, rel_dir, name), "wb") as f:
                f.write(data)
            files, size = files + 1, size + len(data)
    return {"files": files, "bytes": size, "unreadable": unreadable}


# ------------------------------------------------------------------------------------------------ dataset
def _write_csv(path: str, header: str, rows: list) -> int:
    """Write a CSV of pre-formatted rows (plain ',' joins: none of the values needs quoting); its size."""
    data = "\n".join([header, *(",".join(str(x) for x in row) for row in rows)]) + "\n"
    with open(path, "w", newline="") as f:
        f.write(data)
    return len(data)


def write_synthetic_dataset(out_dir: str, num_studies: int, seed: int, num_test_studies: int = 0,
                            quirks: bool = True, workers: int = 1, progress: bool = True,
                            matrix_scale: int = 1) -> dict:
    """Write a complete Kaggle-layout dataset of num_studies train (+ num_test_studies test) studies to
    out_dir and return its summary, also written as synthetic_summary.json. Same arguments -> byte-identical
    files, whatever `workers`. The summary is removed first and written last, so its presence marks a
    complete dataset and an interrupted run can simply be repeated into the same folder (every file is
    rewritten; nothing else there is touched). matrix_scale: in-plane matrix multiplier (`make_study`); the
    summary records it when it is not 1 (scale 1 writes exactly the files it always did)."""
    os.makedirs(out_dir, exist_ok=True)
    marker = os.path.join(out_dir, "synthetic_summary.json")
    if os.path.exists(marker):
        os.remove(marker)
    start = time.time()
    total = num_studies + num_test_studies
    ids = draw_ids(seed, total)
    studies = [make_study(seed, i, quirks, "train" if i < num_studies else "test", ids[i], matrix_scale=matrix_scale)
               for i in range(total)]
    bar = dict(total=total, desc="synthetic studies", unit="study", disable=not progress)
    if workers > 1:  # spawn, not fork: the caller may be a multithreaded (JAX) process
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(tqdm(pool.map(write_study, studies, [out_dir] * total, chunksize=4), **bar))
    else:
        results = [write_study(st, out_dir) for st in tqdm(studies, **bar)]

    train = sorted((st for st in studies if st.split == "train"), key=lambda st: st.study_id)
    test = sorted((st for st in studies if st.split == "test"), key=lambda st: st.study_id)
    def label_rows(split_studies):
        return [[st.study_id, *("" if c == L.MISSING else L.SEVERITY_NAMES[c] for c in st.labels)]
                for st in split_studies]

    label_header = ",".join(("study_id",) + L.TARGETS)
    sizes = [
        _write_csv(os.path.join(out_dir, "train.csv"), label_header, label_rows(train)),
        _write_csv(os.path.join(out_dir, "train_label_coordinates.csv"),
                   "study_id,series_id,instance_number,condition,level,x,y",
                   [[st.study_id, series_id, instance, L.CONDITION_CSV_NAMES[c], L.LEVEL_CSV_NAMES[lv],
                     f"{x:.4f}", f"{y:.4f}"] for st in train for c, lv, series_id, instance, x, y in st.coordinates]),
        _write_csv(os.path.join(out_dir, "train_series_descriptions.csv"), "study_id,series_id,series_description",
                   [[st.study_id, s.series_id, s.description]
                    for st in train for s in sorted(st.series, key=lambda s: s.series_id)]),
    ]
    if test:
        sizes += [
            _write_csv(os.path.join(out_dir, "test_series_descriptions.csv"), "study_id,series_id,series_description",
                       [[st.study_id, s.series_id, s.description]
                        for st in test for s in sorted(st.series, key=lambda s: s.series_id)]),
            _write_csv(os.path.join(out_dir, "sample_submission.csv"), "row_id," + ",".join(L.SEVERITY_COLUMNS),
                       [[rid, *["0.333333"] * L.NUM_SEVERITIES]
                        for st in test for rid in L.study_row_ids(st.study_id)]),
            # Not in the Kaggle layout (the competition keeps it hidden): the test labels, so that a
            # submission can be scored locally with `python -m lumbar_jax.score --solution test_solution.csv`.
            _write_csv(os.path.join(out_dir, "test_solution.csv"), label_header, label_rows(test)),
        ]
    occurrences = {}
    for st in studies:
        for name, series_id, detail in st.quirks:
            occurrences.setdefault(name, []).append(
                {"study_id": st.study_id, "split": st.split, "series_id": series_id, "detail": detail})
    summary = {
        "generator": "lumbar_jax.data.synthetic", "version": VERSION, "seed": seed, "quirks_enabled": quirks,
        "num_train_studies": num_studies, "num_test_studies": num_test_studies,
        "num_series": sum(len(st.series) for st in studies),
        "files": sum(r["files"] for r in results) + len(sizes),
        "bytes": sum(r["bytes"] for r in results) + sum(sizes),
        "label_noise": {"kappa": KAPPA, "moved_labels_train": int(sum(
            ((st.latent != st.labels) & (st.labels != L.MISSING)).sum() for st in train))},
        "missing_label_cells": int(sum((st.labels == L.MISSING).sum() for st in train)),
        "quirks": {name: occurrences[name] for name in sorted(occurrences)},
        "unreadable_files": sorted(p for r in results for p in r["unreadable"]),
    }
    if matrix_scale != 1:
        summary["matrix_scale"] = int(matrix_scale)
    with open(marker + ".tmp", "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    os.replace(marker + ".tmp", marker)
    if progress:
        print(f"wrote {total} studies, {summary['files']} files, {summary['bytes'] / 1e6:.1f} MB to {out_dir} "
              f"in {time.time() - start:.1f} s")
    return summary


def main(argv=None) -> dict:
    """CLI: python -m lumbar_jax.data.synthetic --out DIR --studies N --seed S [--test_studies M] ..."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--studies", type=int, required=True, help="number of train studies")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed: same seed -> identical files")
    parser.add_argument("--test_studies", type=int, default=0, help="number of unlabelled test studies")
    parser.add_argument("--quirks", action=argparse.BooleanOptionalAction, default=True,
                        help="real-data oddities (module docstring); --no-quirks for clean files")
    parser.add_argument("--workers", type=int, default=1, help="processes writing studies")
    parser.add_argument("--matrix_scale", type=int, default=1,
                        help="multiply the in-plane matrix of every series (64-96 px) by this: 5 gives 320-480 px "
                             "slices, the Kaggle sizes (same studies, labels and geometry; ~25x the pixels)")
    args = parser.parse_args(argv)
    summary = write_synthetic_dataset(args.out, args.studies, args.seed, args.test_studies, args.quirks,
                                      args.workers, matrix_scale=args.matrix_scale)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("quirks", "unreadable_files")}, indent=1))
    print("quirks:", json.dumps({k: sorted({o["study_id"] for o in v}) for k, v in summary["quirks"].items()}))
    return summary


if __name__ == "__main__":
    main()
