"""The phantom: one study's lumbar anatomy as a 3D intensity function, and the images a series takes of it.

Each study has an anatomy frame (u = patient left, v = posterior, w = superior; mm) placed in LPS patient
coordinates by a random origin, rotation (+-6 deg sagittal tilt, +-3 deg coronal/axial), scale (0.93-1.07) and
lordosis (v shifted by lambda * w^2). In it: vertebral bodies (elliptic column anterior to the canal) cut by
5 discs at heights w_0 > ... > w_4 (L1/L2 ... L5/S1, ~12.5 mm apart, so the 5 levels fill most of a ~72 mm
sagittal field of view); the spinal canal (CSF ellipse, ~13 x 12 mm) with two lateral recesses; a bony
posterior block in which the neural foramina are fat-filled ellipsoids at u = +-18 mm.

Severity shrinks, at its own disc level: the canal (AP by a fraction n, width by n/2; Gaussian profile along w,
sigma 3.5 mm), the left/right recess (both axes by n) and the left/right foramen (its v and w axes by n).
n is drawn uniformly within the latent class (`SHRINK`): spinal 0-0.2 / 0.45-0.6 / 0.72-0.85, foraminal and
subarticular 0-0.2 / 0.42-0.56 / 0.66-0.8 -- a severe canal is ~3 mm vs ~11 mm normal, i.e. ~7 voxels apart
even at the default 16x64x64 resampling.

Every pixel of every slice is the 3D phantom sampled at that pixel's patient position (from the slice's own
ImagePositionPatient / ImageOrientationPatient / PixelSpacing), with T1 or T2 tissue contrasts, a smooth
multiplicative bias field and Rician noise (`plan.render_series`); so the series are geometrically consistent and
flips / transposes / tilts are real acquisitions, not painted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumbar_jax import labels
from lumbar_jax.data.synthetic.labels import GROUP_NAMES

SHRINK = {  # metric group -> per-class range of the narrowing fraction n (module docstring)
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
        Written out per coordinate, in float32: it runs on every pixel of every slice, and a [N, 3] @ [3, 3]
        matmul is much slower."""
        d = [(p[i] - self.origin[i]).astype(np.float32) for i in range(3)]
        u, v, w = (sum(d[i] * np.float32(self.rotation[i, j] / self.scale) for i in range(3)) for j in range(3))
        return np.stack([u, v - np.float32(self.lordosis) * w * w, w])

    def centres(self) -> np.ndarray:
        """[25, 3] patient position of the centre of every target's structure (canal, foramen, recess)."""
        fu, fv, fdw = self.foramen[:3]
        ru, rv = self.recess[:2]
        per_condition = [(0.0, 0.0, 0.0), (fu, fv, fdw), (-fu, fv, fdw), (ru, rv, 0.0), (-ru, rv, 0.0)]
        a = np.array([(u, v, self.level_w[lv] + dw) for u, v, dw in per_condition for lv in range(labels.NUM_LEVELS)])
        return self.to_patient(a.T).T


def make_anatomy(rng: np.random.Generator, latent: np.ndarray) -> Anatomy:
    """Draw one study's anatomy; the narrowing of each target within its latent class's range."""
    ax, ay, az = np.deg2rad(rng.uniform(-1, 1, 3) * (6.0, 3.0, 3.0))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    spacing = rng.uniform(11.8, 13.2)
    level_w = (2 - np.arange(labels.NUM_LEVELS)) * spacing + rng.uniform(-0.6, 0.6, labels.NUM_LEVELS)
    bu, bv = rng.uniform(15, 18), rng.uniform(10.5, 12.5)
    ranges = np.array([SHRINK[g] for g in GROUP_NAMES])[labels.TARGET_GROUP, latent]  # [25, 2]
    return Anatomy(
        origin=rng.uniform(-1, 1, 3) * (10.0, 20.0, 40.0),
        rotation=rz @ ry @ rx,
        scale=rng.uniform(0.93, 1.07),
        lordosis=rng.uniform(-0.003, 0.003),
        level_w=level_w,
        disc_half=rng.uniform(1.8, 2.6, labels.NUM_LEVELS),
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
    sh = anat.shrink.reshape(labels.NUM_CONDITIONS, labels.NUM_LEVELS).astype(np.float32)
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
