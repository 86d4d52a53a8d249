"""Crops of the native-resolution volumes around the 25 target points: stage 2's input (numpy, host side).

A `*_native` record (the r64 record of docs/conventions.md section 4 plus, per series, `{series}_native` uint8
[Dn, Hn, Wn], the canonical volume at the series' own resolution, and `native_affine` float32 [3, 4, 4], the
affine from native voxel index (depth, row, col, 1) to patient mm) is cut, per target t, around a normalised
point (depth, row, col) on series `labels.TARGET_SERIES[t]`. Normalised coordinates are resolution
independent (0/1 = centres of the first/last voxel), so the record's `coords` address the native volume too.

A crop is uint8 [K, P, P]: K neighbouring slices of the series' own depth axis, centred on the slice nearest to
the point, each an in-plane square of `size_mm` x `size_mm` centred on the point and sampled to P x P pixels
(bilinear within the slice; slices are never blended). Whatever falls outside the volume is 0. Crop axes are
the volume's axes (docs/conventions.md section 3: sagittal slices right -> left, axial rows anterior ->
posterior and cols right -> left).

Left targets (labels.TARGET_SIDE == 1) are mirrored so that they look like right-side crops and one set of
weights reads both sides: the crop is reversed along the series' right -> left axis (sagittal: slice order;
axial: cols). A crop of a left target in a study equals the crop of the right target in the left/right
mirrored study (`augment.flip_left_right`; exactly, up to float rounding of the mirrored point 1 - u);
labels keep their side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lumbar_jax import labels
from lumbar_jax.data.augment import mirror_volume
from lumbar_jax.data.dicom_geometry import normalized_to_index
from lumbar_jax.labels import TARGET_SERIES

_LEFT = labels.TARGET_SIDE == 1  # [25]
# Samples gathered per vectorised step: few enough that the float32 temporaries stay in a core's cache (cutting
# a study's crops in one piece per series is slower).
_CHUNK_SAMPLES = 1 << 15


def in_plane_spacing(affine: np.ndarray) -> tuple[float, float]:
    """(mm between rows, mm between cols) of a volume with `affine` [4, 4] (voxel (depth, row, col, 1) -> mm)."""
    affine = np.asarray(affine, dtype=np.float64)
    return float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 2]))


def _taps(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation of voxel `positions` [n, P] along an axis of `size` >= 2 voxels as taps on a pair of
    neighbours: (first voxel of the pair int64, its weight, the next voxel's weight), both float32 [n, P].

    The pair always lies inside the axis, so the next voxel is "first + 1" without a second index; a tap
    outside the axis (the volume is 0 there) has weight 0, and a position more than a voxel outside has none.
    """
    lower = np.floor(positions)
    upper_weight = positions - lower
    lower = lower.astype(np.int64)
    upper = lower + 1
    first = np.clip(lower, 0, size - 2)
    weights = []
    for voxel in (first, first + 1):
        weight = np.where(lower == voxel, 1.0 - upper_weight, 0.0) + np.where(upper == voxel, upper_weight, 0.0)
        weights.append(weight.astype(np.float32))
    return first, weights[0], weights[1]


def cut_crops(volume: np.ndarray, affine: np.ndarray, points: np.ndarray, crop: CropSpec, *,
              offsets: np.ndarray | None = None) -> np.ndarray:
    """Crops uint8 [n, K=crop.slices, P=crop.pixels, P] of `volume` uint8 [D, H, W] around `points` [n, 3]
    (normalised).

    Crop i takes slices round(points[i, 0] * (D - 1) + offsets[i, 0]) + (-(K // 2) ... K - 1 - K // 2) and, in
    each, the `crop.size_mm` square centred on (points[i, 1] * (H - 1), points[i, 2] * (W - 1)) moved by
    offsets[i, 1:] mm along rows / cols; pixel centres lie (j - (P - 1) / 2) * size_mm / P from the centre.
    In-plane spacing comes from `affine` [4, 4] (`in_plane_spacing`). `offsets` [n, 3]: (slices, mm, mm) in the
    volume's frame, default 0. Vectorised over the crops (in cache-sized chunks).
    """
    volume = np.asarray(volume)
    if volume.dtype != np.uint8 or volume.ndim != 3:
        raise ValueError(f"volume must be uint8 [D, H, W], got {volume.dtype} {volume.shape}")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    offsets = np.zeros_like(points) if offsets is None else np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
    row_mm, col_mm = in_plane_spacing(affine)
    if not (row_mm > 0 and col_mm > 0):
        raise ValueError(f"affine has no in-plane spacing (rows {row_mm} mm, cols {col_mm} mm): absent series?")
    depth, height, width = volume.shape
    slices, size_mm, pixels = crop.slices, crop.size_mm, crop.pixels
    if height < 2 or width < 2:
        raise ValueError(f"volume needs at least 2 x 2 pixels per slice, got {volume.shape}")

    index = normalized_to_index(points, volume.shape)  # [n, 3] voxel positions of the crop centres
    centre_slice = np.rint(index[:, 0] + offsets[:, 0]).astype(np.int64)
    slice_index = centre_slice[:, None] + (np.arange(slices) - slices // 2)  # [n, K]
    in_volume = ((slice_index >= 0) & (slice_index < depth)).astype(np.float32)[:, :, None, None]
    slice_start = np.clip(slice_index, 0, depth - 1) * (height * width)

    grid_mm = (np.arange(pixels) - (pixels - 1) / 2) * (size_mm / pixels)  # [P], symmetric about 0
    rows = index[:, 1:2] + (offsets[:, 1:2] + grid_mm) / row_mm  # [n, P] voxel positions
    cols = index[:, 2:3] + (offsets[:, 2:3] + grid_mm) / col_mm
    row_taps = _taps(rows, height)
    col_taps = _taps(cols, width)

    out = np.empty((len(points), slices, pixels, pixels), np.uint8)
    flat = volume.reshape(-1)
    step = max(1, _CHUNK_SAMPLES // (slices * pixels * pixels))
    for chunk in (slice(i, i + step) for i in range(0, len(points), step)):
        out[chunk] = _bilinear(flat, width, slice_start[chunk], in_volume[chunk],
                               [t[chunk] for t in row_taps], [t[chunk] for t in col_taps])
    return out


def _bilinear(flat: np.ndarray, width: int, slice_start: np.ndarray, in_volume: np.ndarray,
              row_taps: list[np.ndarray], col_taps: list[np.ndarray]) -> np.ndarray:
    """Bilinear samples uint8 [n, K, P, P] of the flat volume `flat` (rows of `width` voxels): slices starting
    at flat offsets `slice_start` [n, K] (in_volume [n, K, 1, 1] is 0 for slices outside the volume), rows and
    cols given by `_taps` ([n, P] each)."""
    row_first, w_row_first, w_row_next = row_taps
    col_first, w_col_first, w_col_next = col_taps
    # Flat index of the top-left voxel of each pixel's 2 x 2 neighbourhood; the other three are the same index
    # into the flat volume shifted by 1 (next col) and `width` (next row).
    first = (slice_start[:, :, None] + row_first[:, None, :] * width)[..., None] + col_first[:, None, None, :]
    w_col_first, w_col_next = w_col_first[:, None, None, :], w_col_next[:, None, None, :]  # [n, 1, 1, P]
    out = flat.take(first) * w_col_first
    out += flat[1:].take(first) * w_col_next
    out *= w_row_first[:, None, :, None]
    next_row = flat[width:].take(first) * w_col_first
    next_row += flat[width + 1:].take(first) * w_col_next
    next_row *= w_row_next[:, None, :, None]
    out += next_row
    out *= in_volume
    out += 0.5  # then truncation = rounding; weights sum to <= 1, so values stay below 256
    return out.astype(np.uint8)


def draw_offsets(jitter: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian crop offsets float64 [25, 3] (slices, mm along rows, mm along cols) in each volume's frame.

    `jitter` [3, 3]: standard deviations per condition group (labels.CONDITION_GROUPS order) and component.
    Always draws 25 x 3 normals, so later draws from `rng` do not depend on which series are present.
    """
    jitter = np.asarray(jitter, dtype=np.float64)
    if jitter.shape != (len(labels.CONDITION_GROUPS), 3) or np.any(jitter < 0):
        raise ValueError(f"jitter must be non-negative [{len(labels.CONDITION_GROUPS)}, 3] std, got {jitter.tolist()}")
    return rng.standard_normal((labels.NUM_TARGETS, 3)) * jitter[labels.TARGET_GROUP]


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """What a crop is (`config.crops`): K slices of `size_mm` x `size_mm` squares sampled to P x P pixels."""

    slices: int  # K: neighbouring slices of the series' depth axis, centred on the point's nearest slice
    size_mm: float  # side of the in-plane square, mm
    pixels: int  # P: pixels per side the square is sampled to

    @classmethod
    def from_config(cls, crops_config) -> CropSpec:
        """The crops section of a run config (`config.crops`) as a CropSpec."""
        return cls(int(crops_config.slices), float(crops_config.size_mm), int(crops_config.pixels))

    @property
    def shape(self) -> tuple[int, int, int]:
        """[K, P, P]: one crop's shape."""
        return self.slices, self.pixels, self.pixels


def study_crops(record: Mapping[str, Any], points: np.ndarray, crop: CropSpec, *, jitter: np.ndarray | None = None,
                rng: np.random.Generator | None = None, offset: Sequence[float] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The 25 crops of a `*_native` record: (crops uint8 [25, K, P, P], crop_present bool [25]) of `crop`'s
    shape.

    Target t is cut from series TARGET_SERIES[t] around `points[t]` (normalised, [25, 3]); a NaN point means
    "no point" (see `training_points`). crop_present[t] = the series is present and the point is finite; other
    crops are 0. With `jitter` ([3, 3] std, see `draw_offsets`; needs `rng`) every crop is moved by a Gaussian
    offset in its volume's frame BEFORE the left targets are mirrored, so the mirror stays an exact flip of
    what was cut: a left crop moved by o is the right crop of the mirrored patient moved by o mirrored (and
    the Gaussian is symmetric, so both sides see the same jitter distribution). `offset` [3] (slices, mm, mm)
    moves every crop by the same amount in its volume's frame (test-time shifts), on top of any jitter.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (labels.NUM_TARGETS, 3):
        raise ValueError(f"points must be [{labels.NUM_TARGETS}, 3], got {points.shape}")
    if jitter is not None and rng is None:
        raise ValueError("jitter needs an rng")
    offsets = draw_offsets(jitter, rng) if jitter is not None else np.zeros_like(points)
    if offset is not None:
        offsets = offsets + np.asarray(offset, dtype=np.float64)
    present = np.asarray(record["present"], dtype=bool)
    crop_present = present[TARGET_SERIES] & np.all(np.isfinite(points), axis=-1)
    crops = np.zeros((labels.NUM_TARGETS, *crop.shape), np.uint8)
    for s, name in enumerate(labels.SERIES_TYPES):
        targets = np.flatnonzero(crop_present & (TARGET_SERIES == s))
        if len(targets) == 0:
            continue
        cut = cut_crops(record[f"{name}_native"], np.asarray(record["native_affine"])[s], points[targets], crop,
                        offsets=offsets[targets])
        left = _LEFT[targets]
        cut[left] = mirror_volume(cut[left], s)
        crops[targets] = cut
    return crops, crop_present


def training_points(record: Mapping[str, Any], predicted: np.ndarray | None = None) -> np.ndarray:
    """Where to cut each target's crop for training: float64 [25, 3] normalised, NaN = nowhere.

    The annotated point where it lies on the target's own series (coords_series[t] == TARGET_SERIES[t]); else
    `predicted[t]` ([25, 3], e.g. the localiser's prediction for this study) when given; else NaN, which
    `study_crops` turns into an absent crop (crop_present False, zeros). No guessed place (such as the volume
    centre) is cut: a crop of the wrong anatomy under a true label teaches noise, while an absent crop leaves
    the label to the study's other 24 crops, which the stage-2 head sees together.
    """
    annotated = np.asarray(record["coords_series"]) == TARGET_SERIES
    fallback = np.full((labels.NUM_TARGETS, 3), np.nan) if predicted is None else np.asarray(predicted, np.float64)
    return np.where(annotated[:, None], np.asarray(record["coords"], dtype=np.float64), fallback)
