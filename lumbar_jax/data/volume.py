"""Per-volume preprocessing shared by the dataset builder and the prediction script (docs/conventions.md section 3).

There is exactly one copy of this code so that training records and test-time inputs are made the same way:
a canonical float volume `[D, H, W]` (from `lumbar_jax.data.dicom.read_series`) is resampled linearly to the
dataset config's fixed shape and normalised per volume to uint8. The *_native configs also store it at its
own resolution, in-plane sides capped (`to_native_record_volume`), with the affine of its voxels.

Resampling is corner-aligned: the centres of the first and last voxel along every axis map onto the centres
of the first and last output voxel, so normalised coordinates (0 and 1 = those centres, docs/conventions.md section 3)
mean the same point before and after. An output axis of length 1 samples the input axis at its middle, which
is where the normalised coordinate 0.5 of a length-1 axis (see `SeriesGeometry.normalized`) points.
"""

from __future__ import annotations

import numpy as np

# Percentiles the volume is clipped to before scaling to [0, 255]: robust to a few very bright voxels
# (fat, flow artefacts) that would otherwise squeeze the anatomy into a handful of grey levels.
CLIP_PERCENTILES = (0.5, 99.5)


def _resample_axis(volume: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Linear, corner-aligned resampling of one axis of a float32 array to `size` samples.

    Output sample i sits at input position i * (n - 1) / (size - 1) (the middle when size == 1); the value is
    the linear interpolation of the two neighbouring input samples, gathered with `take` so the cost is
    proportional to the output, not to the input.
    """
    n = volume.shape[axis]
    if n == size:
        return volume
    if n == 1:
        return np.repeat(volume, size, axis=axis)
    if size == 1:
        positions = np.array([(n - 1) / 2.0])
    else:
        positions = np.arange(size) * ((n - 1) / (size - 1))
    lower = np.minimum(np.floor(positions).astype(np.intp), n - 2)
    weight_shape = [1] * volume.ndim
    weight_shape[axis] = size
    upper_weight = (positions - lower).astype(np.float32).reshape(weight_shape)
    lo = volume.take(lower, axis=axis)
    out = volume.take(lower + 1, axis=axis)  # hi, then lo + (hi - lo) * upper_weight in place
    np.subtract(out, lo, out=out)
    np.multiply(out, upper_weight, out=out)
    return np.add(lo, out, out=out)


def resample(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear, corner-aligned resampling of `volume` (any rank, e.g. `[D, H, W]`) to `shape`, as float32.

    Separable: one axis at a time, which for linear interpolation equals trilinear interpolation exactly. The
    axes are processed in the order that shrinks the array fastest (largest reduction first), so the common
    case of large in-plane images going to a small fixed shape touches the full-size data only once. The
    same corner-aligned mapping as `scipy.ndimage.zoom(order=1, grid_mode=False)`.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != volume.ndim or min(shape, default=1) < 1:
        raise ValueError(f"cannot resample a volume of shape {volume.shape} to {shape}")
    out = np.asarray(volume, dtype=np.float32)
    for axis in sorted(range(out.ndim), key=lambda a: shape[a] / out.shape[a]):
        out = _resample_axis(out, axis, shape[axis])
    return np.ascontiguousarray(out)


_SAMPLE = 8192  # values sampled (fixed seed) to bracket the order statistics of a percentile
_MIN_FAST = 1 << 16  # smaller volumes: np.percentile itself


def _order_statistics(flat: np.ndarray, first: int, sample: np.ndarray, low: bool) -> np.ndarray | None:
    """sorted(flat)[first], sorted(flat)[first + 1], found in a tail of `flat` (no NaN): the values below a
    threshold taken from the sorted `sample` (low) or above one; None where the tail misses those positions."""
    n, m = flat.size, sample.size
    expected = (first + 2 if low else n - first) * m / n  # sampled values expected in the tail
    j = int(expected + 4 * np.sqrt(expected) + 16)  # a margin of ~4 standard deviations
    threshold = sample[min(j, m - 1)] if low else sample[max(m - 1 - j, 0)]
    tail = flat[flat <= threshold] if low else flat[flat >= threshold]
    offset = 0 if low else n - tail.size  # sorted(flat)[offset + i] == sorted(tail)[i]
    if not offset <= first < first + 1 < offset + tail.size:
        return None
    beyond = np.count_nonzero(tail < threshold) if low else np.count_nonzero(tail > threshold)
    if (first >= beyond) if low else (first + 1 < n - beyond):  # both are ties of the threshold
        return np.full(2, threshold, dtype=flat.dtype)
    kth = [first - offset, first + 1 - offset]
    return np.partition(tail, kth)[kth]


def clip_range(volume: np.ndarray) -> tuple[float, float]:
    """`np.percentile(volume, CLIP_PERCENTILES)` of a float volume (as float32, as normalised), the same
    values (bit for bit, but for the sign of a zero: -0.0 and 0.0 tie) in a fraction of its time for large
    volumes, which np.percentile partitions whole.

    Numpy's linear percentile (method 7 of Hyndman & Fan) is x[i] + g (x[i + 1] - x[i]) of the sorted values
    x, where i + g = (n - 1) q. The two order statistics are found exactly in a small tail of the volume
    (bracketed by thresholds from a sample) and np.quantile of just the pair at q' = g, whose own index
    (2 - 1) g is g exactly, interpolates them with numpy's code. NaN in the volume, small volumes or a sample
    that misses: np.percentile.
    """
    flat = np.asarray(volume, dtype=np.float32).reshape(-1)
    n = flat.size
    if n < _MIN_FAST or np.isnan(flat.max()):
        return tuple(np.percentile(flat, CLIP_PERCENTILES))
    # A random sample: a strided one could line up with the rows of the volume (e.g. only its edges).
    sample = np.sort(flat[np.random.default_rng(0).integers(0, n, _SAMPLE)])
    result = []
    for percentile, low in zip(CLIP_PERCENTILES, (True, False)):
        index = (n - 1) * np.true_divide(percentile, 100)  # np.percentile's virtual index (float64)
        first = int(np.floor(index))
        pair = _order_statistics(flat, first, sample, low)
        if pair is None:
            return tuple(np.percentile(flat, CLIP_PERCENTILES))
        result.append(np.quantile(pair, np.array([index - first]))[0])
    return tuple(result)


def normalize_uint8(volume: np.ndarray) -> np.ndarray:
    """Clip `volume` to its 0.5 and 99.5 percentiles and scale linearly to uint8 [0, 255] (same shape).

    Per-volume intensity normalisation: MR intensities have no absolute scale, so each volume is mapped to
    its own robust range. A volume whose clip range is empty (constant) gives zeros rather than NaN.
    """
    volume = np.asarray(volume, dtype=np.float32)
    lo, hi = clip_range(volume)
    if not hi > lo:
        return np.zeros(volume.shape, dtype=np.uint8)
    scaled = np.subtract(volume, np.float32(lo))  # then every step in place
    scaled *= np.float32(255.0 / (hi - lo))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def to_record_volume(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Canonical float volume `[D, H, W]` -> the uint8 volume `shape` stored in dataset records.

    Resample first, then normalise: the percentiles are taken over the voxels that are actually stored.
    """
    return normalize_uint8(resample(volume, shape))


def _index_map(size: int, new_size: int) -> tuple[float, float]:
    """(scale, offset): corner-aligned resampling of an axis of `size` to `new_size` samples puts output
    sample i at input position scale * i + offset (the middle when new_size == 1)."""
    if new_size == 1:
        return 0.0, (size - 1) / 2.0
    return (size - 1) / (new_size - 1), 0.0


def cap_in_plane(volume: np.ndarray, affine: np.ndarray, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Float volume [D, H, W] and its affine [4, 4] (voxel index (d, r, c, 1) -> patient mm) -> the volume
    with max(H, W) <= max_size (float32) and the affine of its voxels.

    A larger in-plane side shrinks both rows and cols by the same factor (aspect kept, sides rounded; depth
    untouched), resampled corner-aligned like `resample`, so normalised coordinates keep their point and the
    affine's row / col columns grow by the resampling step. A volume within the cap is returned as it is.
    """
    depth, rows, cols = volume.shape
    if max(rows, cols) <= max_size:
        return np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64)
    factor = max_size / max(rows, cols)
    shape = (depth, max(1, round(rows * factor)), max(1, round(cols * factor)))
    index_to_old = np.eye(4)  # new voxel index -> old voxel index
    for axis in (1, 2):
        index_to_old[axis, axis], index_to_old[axis, 3] = _index_map(volume.shape[axis], shape[axis])
    return resample(volume, shape), np.asarray(affine, dtype=np.float64) @ index_to_old


def to_native_record_volume(volume: np.ndarray, affine: np.ndarray,
                            max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical float volume [D, H, W] at its series' resolution and its affine [4, 4] -> (uint8 volume
    [D, H', W'] in-plane capped to `max_size` (`cap_in_plane`) and normalised like `to_record_volume`, its
    affine float32 [4, 4]): the native volume of the *_native dataset configs."""
    capped, capped_affine = cap_in_plane(volume, affine, max_size)
    return normalize_uint8(capped), capped_affine.astype(np.float32)
