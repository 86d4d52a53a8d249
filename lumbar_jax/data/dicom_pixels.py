"""Pixels of the kept slices -> the canonical float32 volume `[D, H, W]`; internal to `dicom`.

Stored pixels are decoded once per file (straight from the PixelData bytes where the file is uncompressed,
else by pydicom's `pixel_array`), brought to the group's in-plane layout as views, and cast to float32 straight
into their place in the canonical volume; RescaleSlope/RescaleIntercept and the MONOCHROME1 inversion are then
applied in place, so that bright is high signal everywhere.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pydicom

from lumbar_jax.data import problems
from lumbar_jax.data.dicom_header import _truncation
from lumbar_jax.data.dicom_slice import _Skip, _Slice
from lumbar_jax.data.volume import resample

_NATIVE_SYNTAXES = (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian)
_Alignment = tuple[bool, bool, bool]  # (transpose, flip rows, flip cols): see `dicom_geometry._in_plane_alignment`


@dataclasses.dataclass
class _Decoded:
    """The slices whose pixels decoded, in depth order, with their aligned stored images `[rows, cols]` (views
    where possible), value transforms (`_value_transform`) and in-plane alignments; and the slices that failed,
    each with the reason. Internal."""

    slices: list[_Slice]
    images: list[np.ndarray]
    transforms: list[tuple[float, float, np.float32 | None]]
    alignments: list[_Alignment]
    failed: list[tuple[_Slice, _Skip]]


def _decode_slices(members: list[_Slice], alignments: list[_Alignment]) -> _Decoded:
    """Decode the slices in order (each file once) and align each image to the reference in-plane layout;
    an undecodable slice goes to `failed`, to be skipped like an unreadable file."""
    cache: dict[str, np.ndarray | _Skip] = {}
    decoded = _Decoded([], [], [], [], [])
    for item, alignment in zip(members, alignments):
        try:
            decoded.images.append(_align_image(_stored_pixels(item, cache), alignment))
        except _Skip as skip:
            decoded.failed.append((item, skip))
            continue
        decoded.transforms.append(_value_transform(item))
        decoded.slices.append(item)
        decoded.alignments.append(alignment)
    return decoded


def _native_pixels(item: _Slice) -> np.ndarray | None:
    """Pixels [rows, cols] of an uncompressed little-endian single-frame greyscale image straight from the
    PixelData bytes (what `pixel_array` returns, without its per-call decoder set-up); None for anything else
    (compressed, big endian, multi-frame, odd bit depths, short data), which goes through `pixel_array`."""
    meta = getattr(item.dataset, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in _NATIVE_SYNTAXES or item.frame is not None:
        return None
    encoding = item.encoding
    bits = encoding.bits_allocated or 0
    stored = encoding.bits_stored or bits
    signed = (encoding.pixel_representation or 0) == 1
    if bits not in (8, 16, 32) or not 0 < stored <= bits:
        return None
    dtype = np.dtype(("<i" if signed else "<u") + str(bits // 8))
    data = item.dataset.PixelData if item.pixel_data is None else item.pixel_data
    rows, cols = item.rows, item.cols
    if not isinstance(data, bytes) or len(data) < rows * cols * dtype.itemsize:
        return None
    pixels = np.frombuffer(data, dtype, rows * cols).reshape(rows, cols)
    if stored < bits:  # as pydicom: ignore the unused high bits (sign-extending signed values)
        if not signed:  # clearing them; usually they are clear already, and the pixels stay a view of the file
            return pixels & dtype.type(2**stored - 1) if int(pixels.max()) >> stored else pixels
        pixels = pixels.copy()
        np.left_shift(pixels, bits - stored, out=pixels)
        np.right_shift(pixels, bits - stored, out=pixels)
    return pixels


def _stored_pixels(item: _Slice, cache: dict[str, np.ndarray | _Skip]) -> np.ndarray:
    """Stored pixels [rows, cols] of a slice as the file holds them (integers; no copy where the file is
    uncompressed). _Skip if undecodable.

    The file's pixel data is decoded once (all frames) and cached by path for its other frames, as is a
    failure to decode it.
    """
    dataset = item.dataset
    if item.path not in cache:
        try:
            with problems.pydicom_warnings_naming(item.path):
                native = _native_pixels(item)
                cache[item.path] = native if native is not None else dataset.pixel_array
        except Exception as error:  # truncated data, unsupported or corrupt compression: many types
            cache[item.path] = (_truncation(item.path)
                                or _Skip("pixel data could not be decoded", f"{type(error).__name__}: {error}"))
    if isinstance(cache[item.path], _Skip):
        raise cache[item.path]
    pixels = cache[item.path] if item.frame is None else cache[item.path][item.frame]
    if pixels.shape != (item.rows, item.cols):
        raise _Skip("pixel array not of shape (Rows, Columns)",
                    f"shape {pixels.shape}, Rows = {item.rows}, Columns = {item.cols}")
    return pixels


def _align_image(image: np.ndarray, alignment: _Alignment) -> np.ndarray:
    """A view of `image` [rows, cols] transposed, then flipped, as `alignment` says."""
    transpose, flip_rows, flip_cols = alignment
    if transpose:
        image = image.T
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return image


def _value_transform(item: _Slice) -> tuple[float, float, np.float32 | None]:
    """(slope, intercept, inversion constant C or None) taking a slice's stored pixels v to its values:
    v * slope + intercept (float32; skipped where slope 1, intercept 0), then C - that for MONOCHROME1."""
    encoding = item.encoding
    if encoding.monochrome1:
        # Invert within the range of representable values ((lo + hi) - v maps [lo, hi] onto itself), so the
        # result does not depend on the image content and is the same for every slice.
        bits = encoding.bits_stored or encoding.bits_allocated or 16
        signed = (encoding.pixel_representation or 0) == 1
        stored_lo, stored_hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        return item.slope, item.intercept, np.float32((stored_lo + stored_hi) * item.slope + 2 * item.intercept)
    return item.slope, item.intercept, None


def _apply_transform(image: np.ndarray, transform: tuple[float, float, np.float32 | None]) -> np.ndarray:
    """`_value_transform` applied in place to float32 `image` (any view); returns it."""
    slope, intercept, inversion = transform
    if slope != 1.0 or intercept != 0.0:
        np.multiply(image, np.float32(slope), out=image)
        np.add(image, np.float32(intercept), out=image)
    if inversion is not None:
        np.subtract(inversion, image, out=image)
    return image


def _common_shape(images: list[np.ndarray]) -> tuple[tuple[int, int], int]:
    """(the image shape every slice is resampled to, how many slices need it): the most common shape, on a tie
    the larger."""
    shapes = collections.Counter(image.shape for image in images)
    common = max(shapes, key=lambda s: (shapes[s], s[0] * s[1]))
    return common, sum(1 for image in images if image.shape != common)


def _stack_volume(images: list[np.ndarray], transforms: list, shape: tuple[int, int], permutation: tuple[int, ...],
                  flips: tuple[bool, ...], depth: np.ndarray | None = None,
                  interpolated: tuple[tuple[int, int, float], ...] = ()) -> np.ndarray:
    """The canonical float32 volume (C-contiguous) of the aligned stored images of the kept slices, in depth order.

    Each image is converted to float32 straight into its place: stacked axes (slice, row, col) go to canonical
    axes `permutation`, then the canonical axes in `flips` are reversed. Its value transform follows in place,
    once over the whole volume where every slice shares it. An image of another shape than `shape` gets its
    values first and is then resampled (linearly, corner-aligned) to it. `depth` int [len(images)]: the
    stacked index of each image (default: one after the other); `interpolated` (index, kept image k, t): a
    slice (1 - t) * image k + t * image k + 1, after their values (`dicom_geometry._depth_plan`).
    """
    depth = np.arange(len(images)) if depth is None else depth
    stacked_shape = (len(images) + len(interpolated), *shape)
    volume = np.empty([stacked_shape[i] for i in np.argsort(permutation)], dtype=np.float32)
    stacked = np.flip(volume, [a for a in range(3) if flips[a]]) if any(flips) else volume
    stacked = np.transpose(stacked, permutation)  # a view of `volume` indexed (slice, row, col)
    whole = len(set(transforms)) == 1 and all(image.shape == shape for image in images)
    for index, _, _ in interpolated:
        stacked[index] = 0.0  # defined values until they are interpolated
    for k, (image, transform) in enumerate(zip(images, transforms)):
        if image.shape != shape:
            stacked[depth[k]] = resample(_apply_transform(image.astype(np.float32), transform), shape)
            continue
        stacked[depth[k]] = image  # the cast to float32
        if not whole:
            _apply_transform(stacked[depth[k]], transform)
    if whole:
        _apply_transform(volume, transforms[0])
    for index, k, t in interpolated:
        stacked[index] = np.float32(1.0 - t) * stacked[depth[k]] + np.float32(t) * stacked[depth[k + 1]]
    return volume
