"""One image plane of a DICOM file (`_Slice`), built from checked header values; internal to `dicom`.

Both header paths end here: pydicom's (`dicom._header_slices`, every file it can parse) and the raw-element
fast path (`dicom_header._plain_header`, plain single-frame files). Each gives its header values through a
`get(keyword)` (pydicom's converted value, or the same value read from the raw element); `_file_header` and
`_frame_slice` check them in one fixed order, so a file that cannot be used is refused with the same `_Skip`
whichever path read it. A value that cannot be used (pydicom cannot convert it, not a number, NaN/inf, out of
range, wrong number of values) refuses its file, naming the field and the value; an absent optional value
takes its default. Only the fields listed here are ever shown, never a patient-identifying one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable

import numpy as np
import pydicom
from pydicom.multival import MultiValue

_MAX_MM = 1e5  # |position|, spacing and thickness beyond 100 m are not patient coordinates
_MAX_RESCALE = 1e20  # |slope|, |intercept| beyond this overflow float32 once applied to stored pixels
_INT32 = (-(2**31), 2**31 - 1)  # the range of an IS value
_SHOWN_CHARS = 48  # a value is shown up to this many characters
_BINARY_VRS = ("US", "SS", "UL", "SL", "FL", "FD", "OB", "OW", "UN")


class _Skip(Exception):
    """Internal: this file cannot be used. `reason` is short and the same for every file with this cause
    (e.g. "InstanceNumber not an integer in range"); `detail` names the field and its value."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason + (f" ({detail})" if detail else ""))
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class _Encoding:
    """How a file stores its pixels (None = element absent): read with the header, so that decoding never
    looks a value up again."""

    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int | None
    monochrome1: bool


@dataclasses.dataclass(frozen=True)
class _FileHeader:
    """The checked file-level values of one file (`_file_header`)."""

    instance_number: int
    rows: int
    cols: int
    n_frames: int
    encoding: _Encoding


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
    encoding: _Encoding
    pixel_data: bytes | None = None  # the PixelData bytes read by the fast header path; None: ask the dataset

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


# ------------------------------------------------------------------------------------------ values
def _shown(value) -> str:
    """A header value as a message shows it: as stored (IS/DS keep their text), several as [a, b], raw
    bytes as text (binary VRs as hex), at most _SHOWN_CHARS characters."""
    if isinstance(value, (MultiValue, list, tuple)):
        text = "[" + ", ".join(_shown(v) for v in value) + "]"
    elif isinstance(value, bytes):
        text = value.decode("latin-1").strip(" \x00")
    else:
        text = str(getattr(value, "original_string", None) or value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _field(keyword: str, value) -> str:
    """The `detail` of a _Skip: "keyword = value"."""
    return f"{keyword} = {_shown(value)}"


def _get(dataset: pydicom.Dataset, keyword: str):
    """`dataset.get(keyword)`, None where absent or empty. Where pydicom cannot convert the stored value
    (its value classes raise OverflowError, ValueError, TypeError, ...): _Skip naming the field and the value
    as stored."""
    try:
        value = dataset.get(keyword)
    except Exception as error:  # pydicom's conversion of a malformed value: many types
        element = dataset.get_item(keyword, keep_deferred=True)
        raw = getattr(element, "value", None)
        if isinstance(raw, bytes) and (getattr(element, "VR", None) or "") in _BINARY_VRS:
            raw = "0x" + raw.hex()
        raise _Skip(f"{keyword} not readable", f"{_field(keyword, raw)}: {type(error).__name__}") from None
    if value is None or (isinstance(value, (str, bytes, MultiValue, list)) and len(value) == 0):
        return None
    return value


def _integer(keyword: str, value, lo: int, hi: int, reason: str) -> int:
    """One integer in [lo, hi] (an integral float such as IS '3.0' too); else _Skip(reason) naming the value."""
    number = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        number = int(value)
    if number is None or not lo <= number <= hi:
        raise _Skip(reason, _field(keyword, value))
    return number


def _numbers(keyword: str, value, count: int, bound: float, reason: str, positive: bool = False) -> np.ndarray:
    """float [count]: `count` finite numbers of magnitude at most `bound` (> 0 where `positive`); else
    _Skip(reason) naming the value."""
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    try:
        array = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise _Skip(reason, _field(keyword, value)) from None
    if (array.shape != (count,) or not np.all(np.isfinite(array)) or np.any(np.abs(array) > bound)
            or (positive and np.any(array <= 0))):
        raise _Skip(reason, _field(keyword, value))
    return array


def _file_header(get: Callable[[str], object]) -> _FileHeader:
    """The file-level values through `get(keyword)` (None = absent), checked in this order (the first
    problem is the _Skip): SamplesPerPixel (1: greyscale), PhotometricInterpretation, Rows, Columns,
    InstanceNumber, NumberOfFrames, BitsAllocated, BitsStored, PixelRepresentation."""
    samples = get("SamplesPerPixel")
    if samples is not None and _integer("SamplesPerPixel", samples, 1, 2**16 - 1,
                                        "SamplesPerPixel not a positive integer") != 1:
        raise _Skip("colour image; expected greyscale", _field("SamplesPerPixel", samples))
    photometric = get("PhotometricInterpretation")
    if photometric is not None and str(photometric).strip() not in ("MONOCHROME1", "MONOCHROME2"):
        raise _Skip("PhotometricInterpretation not MONOCHROME1/MONOCHROME2",
                    _field("PhotometricInterpretation", photometric))
    shape = [get("Rows"), get("Columns")]
    if None in shape:
        raise _Skip("no Rows/Columns")
    rows, cols = (_integer(keyword, value, 1, 2**16 - 1, f"{keyword} not an integer in 1..65535")
                  for keyword, value in zip(("Rows", "Columns"), shape))
    instance = get("InstanceNumber")
    if instance is None:
        raise _Skip("no InstanceNumber")
    instance = _integer("InstanceNumber", instance, *_INT32, "InstanceNumber not an integer in range")
    frames = get("NumberOfFrames")
    if frames is not None:
        frames = _integer("NumberOfFrames", frames, 1, _INT32[1], "NumberOfFrames not a positive integer")
    allocated = get("BitsAllocated")
    if allocated is not None:
        allocated = _integer("BitsAllocated", allocated, 1, 64, "BitsAllocated not 1 or a multiple of 8 up to 64")
        if allocated != 1 and allocated % 8:
            raise _Skip("BitsAllocated not 1 or a multiple of 8 up to 64", _field("BitsAllocated", allocated))
    stored = get("BitsStored")
    if stored is not None:
        stored = _integer("BitsStored", stored, 1, allocated or 64, "BitsStored not in 1..BitsAllocated")
    representation = get("PixelRepresentation")
    if representation is not None:
        representation = _integer("PixelRepresentation", representation, 0, 1, "PixelRepresentation not 0 or 1")
    monochrome1 = photometric is not None and str(photometric).strip() == "MONOCHROME1"
    return _FileHeader(instance, rows, cols, frames or 1, _Encoding(allocated, stored, representation, monochrome1))


def _optional_number(lookup, sequence: str, keyword: str, top: bool, bound: float, reason: str) -> float | None:
    """An optional single number (None where absent), checked as `_numbers`."""
    value = lookup(sequence, keyword, top)
    return None if value is None else float(_numbers(keyword, value, 1, bound, reason)[0])


def _frame_slice(path: str, dataset: pydicom.Dataset, frame: int | None, header: _FileHeader, orientation, position,
                 lookup, top: bool, pixel_data: bytes | None = None) -> _Slice:
    """One slice from its header values, checked in a fixed order (the first problem is the _Skip reason):
    ImageOrientationPatient, ImagePositionPatient, PixelSpacing, SliceThickness, RescaleSlope,
    RescaleIntercept. `lookup(sequence, keyword, top_level)` gives the last four, each when it is needed."""
    orientation = _numbers("ImageOrientationPatient", orientation, 6, _MAX_MM, "ImageOrientationPatient not 6 numbers")
    row_dir, col_dir = orientation[:3], orientation[3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if min(norms) < 1e-6 or abs(row_dir @ col_dir) / (norms[0] * norms[1]) > 1e-2:
        raise _Skip("ImageOrientationPatient not two orthogonal directions",
                    _field("ImageOrientationPatient", orientation.tolist()))
    origin = _numbers("ImagePositionPatient", position, 3, _MAX_MM, "ImagePositionPatient not 3 numbers within 1e5 mm")
    spacing = lookup("PixelMeasuresSequence", "PixelSpacing", top)
    if spacing is None:
        raise _Skip("no PixelSpacing")
    spacing = _numbers("PixelSpacing", spacing, 2, _MAX_MM, "PixelSpacing not 2 positive numbers up to 1e5 mm",
                       positive=True)
    thickness = _optional_number(lookup, "PixelMeasuresSequence", "SliceThickness", top, _MAX_MM,
                                 "SliceThickness not a number within 1e5 mm")
    rescale = "PixelValueTransformationSequence"
    slope = _optional_number(lookup, rescale, "RescaleSlope", True, _MAX_RESCALE,
                             "RescaleSlope not a number within 1e20")
    if slope == 0:
        raise _Skip("RescaleSlope zero", _field("RescaleSlope", lookup(rescale, "RescaleSlope", True)))
    intercept = _optional_number(lookup, rescale, "RescaleIntercept", True, _MAX_RESCALE,
                                 "RescaleIntercept not a number within 1e20")
    return _Slice(
        path=path, name=os.path.basename(path), dataset=dataset, frame=frame, instance_number=header.instance_number,
        row_dir=row_dir / norms[0], col_dir=col_dir / norms[1], origin=origin,
        pixel_spacing=(float(spacing[0]), float(spacing[1])), rows=header.rows, cols=header.cols,
        slope=1.0 if slope is None else slope, intercept=0.0 if intercept is None else intercept,
        thickness=thickness if thickness is not None and thickness > 0 else None,
        encoding=header.encoding, pixel_data=pixel_data,
    )
