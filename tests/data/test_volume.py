"""Tests of lumbar_jax.data.volume: corner-aligned linear resampling and per-volume uint8 normalisation."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from scipy import ndimage

from lumbar_jax.data.volume import CLIP_PERCENTILES, clip_range, normalize_uint8, resample, to_record_volume

SHAPES = [(16, 64, 64), (7, 5, 3), (20, 40, 40), (40, 80, 30), (1, 9, 9)]


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(100.0, 30.0, (20, 40, 36)).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
def test_resample_shape_dtype_and_matches_scipy_zoom(volume, shape):
    out = resample(volume, shape)
    assert out.shape == shape and out.dtype == np.float32 and out.flags.c_contiguous
    if min(shape) > 1:  # scipy's corner-aligned zoom (a length-1 axis: see the middle-sample test)
        zoomed = ndimage.zoom(volume, np.array(shape) / volume.shape, order=1, grid_mode=False)
        np.testing.assert_allclose(out, zoomed, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape", [s for s in SHAPES if min(s) > 1])
def test_resample_keeps_corner_voxels(volume, shape):
    out = resample(volume, shape)
    for corner in np.ndindex(2, 2, 2):
        source = tuple(c * (n - 1) for c, n in zip(corner, volume.shape))
        target = tuple(c * (n - 1) for c, n in zip(corner, shape))
        assert out[target] == pytest.approx(volume[source], rel=1e-6)


def test_resample_keeps_normalised_coordinates():
    """A linear ramp in normalised coordinates (0 / 1 = first / last voxel centre) is reproduced exactly."""
    d, h, w = np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 30), np.linspace(0, 1, 25), indexing="ij")
    ramp = (d + 2 * h + 4 * w).astype(np.float32)
    out = resample(ramp, (5, 17, 40))
    d, h, w = np.meshgrid(np.linspace(0, 1, 5), np.linspace(0, 1, 17), np.linspace(0, 1, 40), indexing="ij")
    np.testing.assert_allclose(out, d + 2 * h + 4 * w, atol=1e-5)


def test_resample_constant_identity_and_integer_input(volume):
    np.testing.assert_array_equal(resample(np.full((6, 7, 8), 3.5), (16, 4, 9)), np.full((16, 4, 9), 3.5))
    np.testing.assert_array_equal(resample(volume, volume.shape), volume)
    as_uint16 = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    np.testing.assert_array_equal(resample(as_uint16, (2, 3, 4)), as_uint16.astype(np.float32))


def test_resample_length_one_axes():
    """A length-1 output axis samples the middle (normalised 0.5); a length-1 input axis is repeated."""
    column = np.arange(5, dtype=np.float32).reshape(5, 1, 1)
    assert resample(column, (1, 1, 1))[0, 0, 0] == 2.0
    np.testing.assert_array_equal(resample(column[:1], (4, 2, 3)), np.zeros((4, 2, 3)))


def test_resample_any_rank_and_bad_shapes():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(resample(image, (5, 7))[[0, -1]][:, [0, -1]], [[0, 3], [8, 11]])
    with pytest.raises(ValueError, match="shape"):
        resample(image, (5, 7, 2))
    with pytest.raises(ValueError, match="shape"):
        resample(image, (0, 7))


def test_normalize_clips_to_the_percentiles_and_scales_to_uint8():
    values = np.random.default_rng(1).permutation(np.arange(20000, dtype=np.float32)).reshape(20, 25, 40)
    out = normalize_uint8(values)
    assert out.dtype == np.uint8 and out.shape == values.shape
    lo, hi = np.percentile(values, CLIP_PERCENTILES)
    assert np.all(out[values <= lo] == 0) and np.all(out[values >= hi] == 255)
    inside = (values > lo) & (values < hi)
    np.testing.assert_allclose(out[inside], (values[inside] - lo) / (hi - lo) * 255, atol=0.5 + 1e-3)
    order = np.argsort(values, axis=None)
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)  # monotonic


def test_normalize_is_robust_to_outliers():
    values = np.random.default_rng(2).uniform(0, 100, (4, 50, 50)).astype(np.float32)
    values[0, 0, :5] = 1e6  # five bright voxels (< 0.5 %) do not compress the rest
    assert normalize_uint8(values)[1:].max() >= 250


@pytest.mark.parametrize("value", [0.0, 7.0, -3.0])
def test_normalize_constant_volume_gives_zeros_without_warnings(value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize_uint8(np.full((3, 4, 5), value, dtype=np.float32))
    assert out.dtype == np.uint8 and not out.any()


def _tricky_values(n: int) -> dict[str, np.ndarray]:
    """float32 [n] value distributions that stress an order-statistics shortcut: ties (background zeros, a
    dominant value, few levels), sorted input, infinities, NaN, signed zeros, repeated blocks."""
    rng = np.random.default_rng(4)
    with_nan = rng.standard_normal(n)
    with_nan[n // 3] = np.nan
    values = {
        "gamma": rng.gamma(2.0, 300.0, n), "normal": rng.standard_normal(n), "integers": rng.integers(0, 4096, n),
        "three_levels": rng.integers(0, 3, n), "zero_background": np.where(rng.random(n) < 0.4, 0, rng.gamma(2, 3, n)),
        "dominant": np.where(rng.random(n) < 0.997, 1.0, rng.standard_normal(n)), "constant": np.full(n, 7.0),
        "sorted": np.sort(rng.standard_normal(n)), "reversed": np.sort(rng.standard_normal(n))[::-1],
        "inf": np.where(rng.random(n) < 0.003, np.inf, rng.standard_normal(n)),
        "minus_inf": np.where(rng.random(n) < 0.001, -np.inf, rng.standard_normal(n)), "nan": with_nan,
        "blocks": np.repeat(rng.standard_normal(n // 64 + 1), 64)[:n], "huge": rng.standard_normal(n) * 1e30,
        "signed_zeros": np.where(rng.random(n) < 0.5, -0.0, rng.standard_normal(n)),
    }
    return {name: v.astype(np.float32) for name, v in values.items()}


@pytest.mark.parametrize("n", [1000, (1 << 16) + 1, 32 * 128 * 128])
def test_clip_range_is_numpys_percentile_and_normalize_unchanged(n):
    """clip_range = np.percentile (bit for bit, up to the sign of a zero); normalize_uint8 gives exactly what
    clipping at np.percentile's values gives."""
    for name, values in _tricky_values(n).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf inside np.percentile, both ways
            expected, got = np.percentile(values, CLIP_PERCENTILES), np.array(clip_range(values))
            if name != "signed_zeros":
                assert got.tobytes() == expected.tobytes(), name
            np.testing.assert_array_equal(got, expected, err_msg=name)  # NaN == NaN, -0.0 == 0.0 here
            lo, hi = expected
            if hi > lo:
                scaled = (values - np.float32(lo)) * np.float32(255.0 / (hi - lo))
                reference = np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
            else:
                reference = np.zeros(n, dtype=np.uint8)
            np.testing.assert_array_equal(normalize_uint8(values), reference, err_msg=name)


def test_to_record_volume_is_resample_then_normalize(volume):
    out = to_record_volume(volume, (16, 24, 24))
    assert out.shape == (16, 24, 24) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, normalize_uint8(resample(volume, (16, 24, 24))))


def test_to_record_volume_is_fast():
    """A typical series (20 x 384 x 384) to a record shape takes a few ms (loose bound: shared CI cores)."""
    series = np.random.default_rng(3).uniform(0, 1000, (20, 384, 384)).astype(np.float32)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        to_record_volume(series, (16, 64, 64))
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.05
