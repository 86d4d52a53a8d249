"""One image plane of a DICOM file (`_Slice`), built from checked header values; internal to `dicom`.

Both header paths end here: pydicom's (`dicom._header_slices`, every file it can parse) and the raw-element
fast path (`dicom_header._plain_header`, plain single-frame files). `_frame_slice` checks the values in one
fixed order, so a file that cannot be used is refused with the same `_Skip` reason whichever path read it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pydicom

if TYPE_CHECKING:
    from lumbar_jax.data.dicom_header import _PlainPixels


class _Skip(Exception):
    """Internal: this file cannot be used, for the reason in the message."""


@dataclasses.dataclass
class _Slice:
    """One image plane of a file (a file holds several when it is multi-frame). Internal."""

    path: str
    name: str
    dataset: pydicom.Dataset
    frame: int | None  # index into the file's frames; None for a single-frame file
    instance_number: int
    row_dir: np.ndarray  # [3] direction of increasing column index (first ImageOrientationPatient triplet)
    col_dir: np.ndarray  # [3] direction of increasing row index (second triplet)
    origin: np.ndarray  # [3] ImagePositionPatient: centre of pixel (0, 0)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    rows: int
    cols: int
    slope: float
    intercept: float
    thickness: float | None
    plain: _PlainPixels | None = None  # pixel encoding read by the fast header path; None: ask the dataset

    @functools.cached_property
    def normal(self) -> np.ndarray:
        """[3] plane normal row_dir x col_dir. Written out rather than `np.cross`, whose general machinery
        dominates for one pair of [3] vectors; this is read O(slices * groups) times."""
        (a0, a1, a2), (b0, b1, b2) = self.row_dir.tolist(), self.col_dir.tolist()
        return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])

    @property
    def centre(self) -> np.ndarray:
        return self.pixel_to_world @ np.array([(self.rows - 1) / 2.0, (self.cols - 1) / 2.0, 1.0])

    @property
    def pixel_to_world(self) -> np.ndarray:
        """[3, 3]: (row, col, 1) -> patient coordinates (mm)."""
        return np.stack(
            [self.pixel_spacing[0] * self.col_dir, self.pixel_spacing[1] * self.row_dir, self.origin], axis=1
        )


def _floats(value, count: int, what: str) -> np.ndarray:
    if value is None:
        raise _Skip(f"no {what}")
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
    try:
        array = np.array([float(v) for v in values])
    except (TypeError, ValueError):
        raise _Skip(f"invalid {what}") from None
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise _Skip(f"invalid {what} (expected {count} numbers)")
    return array


def _optional_float(value, default: float) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return default
    return result if np.isfinite(result) else default


def _frame_slice(path: str, dataset: pydicom.Dataset, frame: int | None, instance_number: int, rows: int, cols: int,
                 orientation, position, lookup, top: bool, plain: _PlainPixels | None = None) -> _Slice:
    """One slice from its header values, checked in a fixed order (the first problem is the _Skip reason).
    `lookup(sequence, keyword, top_level)` gives PixelSpacing, SliceThickness and the rescale values, each
    when it is needed."""
    orientation = _floats(orientation, 6, "ImageOrientationPatient")
    row_dir, col_dir = orientation[:3], orientation[3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if min(norms) < 1e-6 or abs(row_dir @ col_dir) / (norms[0] * norms[1]) > 1e-2:
        raise _Skip("invalid ImageOrientationPatient (direction cosines not orthogonal unit vectors)")
    spacing = _floats(lookup("PixelMeasuresSequence", "PixelSpacing", top), 2, "PixelSpacing")
    if np.any(spacing <= 0):
        raise _Skip("invalid PixelSpacing (not positive)")
    thickness = _optional_float(lookup("PixelMeasuresSequence", "SliceThickness", top), 0.0)
    rescale = "PixelValueTransformationSequence"
    slope = _optional_float(lookup(rescale, "RescaleSlope", True), 1.0)
    intercept = _optional_float(lookup(rescale, "RescaleIntercept", True), 0.0)
    return _Slice(
        path=path,
        name=os.path.basename(path),
        dataset=dataset,
        frame=frame,
        instance_number=instance_number,
        row_dir=row_dir / norms[0],
        col_dir=col_dir / norms[1],
        origin=_floats(position, 3, "ImagePositionPatient"),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        rows=rows,
        cols=cols,
        slope=slope,
        intercept=intercept,
        thickness=thickness if thickness > 0 else None,
        plain=plain,
    )
