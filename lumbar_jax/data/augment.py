"""Per-example training augmentations of `rsna_lumbar_spine` records (numpy, on the host, in grain workers).

A record is the dict of docs/conventions.md section 4: `sagittal_t1`, `sagittal_t2`, `axial_t2` uint8 [D, H, W],
`present` bool [3], `labels` int [25], `coords` float32 [25, 3] (normalised (depth, row, col) of the canonical
volume of series `coords_series[t]`), `coords_series` int [25] (-1 = no coordinate, then coords are -1).
Extra keys are passed through untouched.

`augment_record(record, rng, config)` applies, in this order:
1. Left/right flip (prob `flip_lr_prob`), see `flip_left_right`: mirrors the patient, so every left target
   trades labels and coordinates with the right target at the same level.
2. Zoom about the volume centre and shift, drawn independently per series (the three series are separate
   acquisitions with their own field of view, so they are jittered independently). The same map is applied to
   the coordinates annotated on that series, so every coordinate keeps pointing at the same anatomy; a
   coordinate pushed outside [0, 1] is marked absent (coords -1, coords_series -1; its label is kept).
3. Contrast/brightness jitter (`draw_intensity`) and optional Gaussian noise.
Absent series are left as all-zero volumes (the model and the `present` mask rely on that).
`jitter_crop_intensity` is step 3 for the crops of the two-stage pipeline (per series over its crops).

Volumes stay uint8: it keeps host->device transfers 4x smaller than float32, and the model normalises anyway.
The resampling and intensity ops run in float32 and are rounded to uint8 once at the end.

Everything is a pure function of (record, rng): the caller derives `rng` from (seed, example position) so
results do not depend on worker count or order (see `lumbar_jax.data.pipeline`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from lumbar_jax import labels
from lumbar_jax.data.dicom_geometry import RIGHT_TO_LEFT_AXIS


def mirror_volume(volume, series: int, xp=np):
    """`volume` [..., D, H, W] of series `series` (index in SERIES_TYPES) mirrored patient left <-> right:
    reversed along the series' right -> left axis (dicom_geometry.RIGHT_TO_LEFT_AXIS: sagittal depth, axial
    cols). `xp`: numpy (a view) or jax.numpy. Crops [..., K, P, P] keep the volume's axes, so they mirror alike."""
    return xp.flip(volume, axis=int(RIGHT_TO_LEFT_AXIS[series]) - 3)


def flip_left_right(example: Mapping[str, Any]) -> dict[str, Any]:
    """Mirror the patient left <-> right; works on a record and on a batch (any leading dims).

    Volumes: the per-series keys ([..., D, H, W]) and/or a stacked `volumes` ([..., 3, D, H, W], SERIES_TYPES
    order): sagittal series reverse their depth axis, the axial series its cols axis (docs/conventions.md section 3).
    Targets: `labels` [..., 25], `coords` [..., 25, 3] and `coords_series` [..., 25] are permuted by
    MIRROR_TARGET_INDEX (left foraminal/subarticular <-> right at the same level; spinal unchanged), and each
    present coordinate's left-right component becomes 1 - value (depth on series 0/1, col on series 2).
    Without the label swap a flip would silently train "left" labels on right-side anatomy.
    Flipping twice is the identity. Returns a new dict; the input is not modified. Other keys pass through.
    """
    out = dict(example)
    for s, name in enumerate(labels.SERIES_TYPES):
        if name in out:
            out[name] = np.ascontiguousarray(mirror_volume(out[name], s))
    if "volumes" in out:
        volumes = np.asarray(out["volumes"])
        flipped = np.empty_like(volumes)
        for s in range(len(labels.SERIES_TYPES)):
            flipped[..., s, :, :, :] = mirror_volume(volumes[..., s, :, :, :], s)
        out["volumes"] = flipped
    mirror = labels.MIRROR_TARGET_INDEX
    if "labels" in out:
        out["labels"] = np.asarray(out["labels"])[..., mirror]
    if "coords" in out:
        coords = np.asarray(out["coords"])[..., mirror, :].copy()
        series = np.asarray(out["coords_series"])[..., mirror]
        has = series >= 0
        lr = RIGHT_TO_LEFT_AXIS[np.where(has, series, 0)]  # [..., 25]: which component is left-right
        lr_value = np.take_along_axis(coords, lr[..., None], axis=-1)[..., 0]
        np.put_along_axis(coords, lr[..., None], np.where(has, 1.0 - lr_value, lr_value)[..., None], axis=-1)
        out["coords"] = coords
        out["coords_series"] = series
    return out


def unflip_predictions(probs):
    """Map predictions `[..., 25, C]` made on a flipped input back to the original patient's targets.

    The mirror permutation is its own inverse, so this is `probs[..., MIRROR_TARGET_INDEX, :]` (numpy or jax):
    test-time augmentation averages `predict(x)` with `unflip_predictions(predict(flip_left_right(x)))`.
    """
    return probs[..., labels.MIRROR_TARGET_INDEX, :]


def _resample_axis(volume: np.ndarray, axis: int, source: np.ndarray) -> np.ndarray:
    """Linear interpolation of float32 `volume` along `axis` at voxel positions `source` ([n_out]).

    Beyond the edges the volume is zero and interpolation continues into it (scipy.ndimage mode="grid-constant").
    """
    n = volume.shape[axis]
    lo = np.floor(source)
    frac = (source - lo).astype(np.float32)
    lo = lo.astype(np.int64)
    hi = lo + 1
    w_lo = np.where((lo >= 0) & (lo < n), 1.0 - frac, 0.0).astype(np.float32)
    w_hi = np.where((hi >= 0) & (hi < n), frac, 0.0).astype(np.float32)
    shape = [1] * volume.ndim
    shape[axis] = len(source)
    out = np.take(volume, np.clip(lo, 0, n - 1), axis=axis)
    out *= w_lo.reshape(shape)
    upper = np.take(volume, np.clip(hi, 0, n - 1), axis=axis)
    upper *= w_hi.reshape(shape)
    out += upper
    return out


def _zoom_shift(volume: np.ndarray, scale: float, shift: np.ndarray) -> np.ndarray:
    """Resample float32 `volume` [D, H, W] so the content at normalised u moves to 0.5 + scale*(u-0.5) + shift.

    Axis-aligned, so trilinear interpolation factors into three 1-D passes: several times faster than
    scipy.ndimage.affine_transform order=1, and equal to it with mode="grid-constant" up to float rounding.
    """
    for axis, n in enumerate(volume.shape):
        if n < 2 or (scale == 1.0 and shift[axis] == 0.0):
            continue
        u_out = np.arange(n) / (n - 1)
        u_in = 0.5 + (u_out - 0.5 - shift[axis]) / scale  # inverse of the coordinate map
        volume = _resample_axis(volume, axis, u_in * (n - 1))
    return volume


def draw_intensity(rng: np.random.Generator, intensity_scale: tuple[float, float],
                   intensity_shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Per series (SERIES_TYPES order): contrast ~ U(intensity_scale) and brightness ~ U(+-intensity_shift) * 255
    (uint8 grey levels), float64 [3] each, drawn in that order."""
    contrasts = rng.uniform(*intensity_scale, size=len(labels.SERIES_TYPES))
    brightness = rng.uniform(-intensity_shift, intensity_shift, size=len(labels.SERIES_TYPES)) * 255.0
    return contrasts, brightness


def jitter_crop_intensity(crops: np.ndarray, crop_present: np.ndarray, rng: np.random.Generator,
                          intensity_scale: tuple[float, float], intensity_shift: float) -> np.ndarray:
    """Contrast and brightness jitter of a study's crops uint8 [25, K, P, P] per series, as `augment_record`
    does per volume: the present crops (crop_present bool [25]) of series s (labels.TARGET_SERIES) become
    (v - mean) * contrast + mean + brightness, mean over those crops, rounded to uint8 (a new array; `crops`
    itself when the jitter is neutral). Always draws `draw_intensity` first, so later draws from `rng` do not
    depend on the settings."""
    contrasts, brightness = draw_intensity(rng, intensity_scale, intensity_shift)
    if tuple(intensity_scale) == (1.0, 1.0) and intensity_shift == 0:
        return crops
    out = crops.copy()
    for s in range(len(labels.SERIES_TYPES)):
        targets = crop_present & (labels.TARGET_SERIES == s)
        if not targets.any():
            continue
        values = crops[targets].astype(np.float32)
        offset = 0.5 + float(values.mean()) * (1.0 - contrasts[s]) + brightness[s]  # +0.5, truncation: rounding
        values *= np.float32(contrasts[s])
        values += np.float32(offset)
        out[targets] = np.clip(values, 0, 255, out=values).astype(np.uint8)
    return out


def augment_record(record: Mapping[str, Any], rng: np.random.Generator,
                   config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A randomly augmented copy of `record` (see the module docstring); `record` is not modified.

    Deterministic given `rng`'s state. `config`: the run config's `augment` section (its fields are documented
    in lumbar_jax.train.config, checked by its `validate`). Volumes come back uint8 [D, H, W], coords
    float32 [25, 3], coords_series with its input dtype.
    """
    if not config.enabled:
        return dict(record)
    n_series = len(labels.SERIES_TYPES)
    do_flip = rng.random() < config.flip_lr_prob
    scales = rng.uniform(*config.scale, size=n_series).tolist()
    shifts = rng.uniform(-config.shift, config.shift, size=(n_series, 3)).astype(np.float32)
    contrasts, brightness = (a.tolist() for a in draw_intensity(rng, config.intensity_scale, config.intensity_shift))

    out = flip_left_right(record) if do_flip else dict(record)
    coords = np.array(out["coords"], dtype=np.float32)
    coords_series = np.array(out["coords_series"])
    spatial = config.shift > 0 or tuple(config.scale) != (1.0, 1.0)
    intensity = (tuple(config.intensity_scale) != (1.0, 1.0) or config.intensity_shift > 0
                 or config.noise_std > 0)
    present = np.asarray(out["present"], dtype=bool)
    for s, name in enumerate(labels.SERIES_TYPES):
        if not present[s] or not (spatial or intensity):
            continue
        volume = np.array(out[name], dtype=np.float32)  # a copy: updated in place below
        if spatial:
            volume = _zoom_shift(volume, scales[s], shifts[s])
            on_series = coords_series == s
            coords[on_series] = 0.5 + scales[s] * (coords[on_series] - 0.5) + shifts[s]
        offset = 0.5  # +0.5 then truncation by astype = rounding
        if intensity:
            # (v - mean) * contrast + mean + brightness, as one multiply-add.
            offset += float(volume.mean()) * (1.0 - contrasts[s]) + brightness[s]
            volume *= contrasts[s]
            if config.noise_std > 0:
                volume += rng.standard_normal(volume.shape, dtype=np.float32) * np.float32(config.noise_std * 255.0)
        volume += offset
        out[name] = np.clip(volume, 0, 255, out=volume).astype(np.uint8)

    # Coordinates the zoom/shift pushed out of the field of view no longer point at visible anatomy.
    lost = (coords_series >= 0) & np.any((coords < 0) | (coords > 1), axis=-1)
    coords[lost] = -1.0
    coords_series[lost] = -1
    out["coords"] = coords
    out["coords_series"] = coords_series
    return out
