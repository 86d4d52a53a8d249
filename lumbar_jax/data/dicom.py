"""One DICOM series -> canonical float32 volume `[D, H, W]` + its geometry (conventions section 3).

What happens to a series, in order:

1. Every file is parsed once (`pydicom.dcmread`, full file; pixels are decoded lazily, only for the slices
   that end up in the volume). A file that cannot be used (not DICOM, truncated, no pixel data, colour, no
   ImageOrientationPatient/ImagePositionPatient/PixelSpacing/InstanceNumber, multi-frame without per-frame
   geometry, undecodable pixels) is skipped; each skip is reported with `warnings.warn(..., DicomSkipWarning)`
   naming the file and the reason, once the rest of the series has been read. Files without slice geometry
   (e.g. CR) are never guessed into a volume: if nothing usable is left, `DicomReadError` names the series
   and lists every file with its reason (the dataset builder then marks the series absent).
2. Slices are grouped by orientation: two slices belong together when their planes (normals, up to sign) lie
   within `ANGLE_TOLERANCE_DEG`. Axial series are often acquired as sub-stacks tilted a few degrees to follow
   the discs; those stay one group. Clearly different planes (e.g. coronal localisers inside an axial series)
   form other groups; only the largest group is kept and the others are recorded in
   `SeriesGeometry.skipped_files` / `n_orientation_groups` (not warned about: they are routine).
3. The plane (sagittal/axial) is the given one or inferred from the group's mean normal. Slices are sorted
   by the position of their centre along that normal, turned to point the way canonical depth runs (stable,
   so duplicate positions keep file order). For slices of one orientation this is exactly the order of
   ImagePositionPatient projected onto the normal; for tilted sub-stacks the centre avoids mixing the
   in-plane offset of the corner into the position. InstanceNumber and file names are never used to order.
4. Each slice is brought to the in-plane layout of the group's first slice (transpose/flips) and, where its
   shape differs from the most common one, resampled linearly (corner-aligned) to it.
5. The stack (slice, row, col) is reoriented to the canonical layout of its plane by the axis permutation
   and flips that best match the direction cosines (maximal summed |cosine| alignment).

Pixel values: RescaleSlope/RescaleIntercept applied (1/0 where absent), MONOCHROME1 inverted so that bright
is high signal everywhere. Nothing that identifies the patient (names, ids, dates, UIDs) leaves this module:
`SeriesGeometry` holds geometry, instance numbers and file names only.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import pydicom
import pydicom.hooks
from pydicom.dataelem import RawDataElement
from pydicom.datadict import tag_for_keyword
from pydicom.tag import BaseTag

from lumbar_jax.data.volume import resample

# Two slices are in one orientation group when the angle between their planes is at most this. Large enough
# for sub-stacks tilted to follow the discs (typically < 10 degrees apart), far below the 90 degrees between
# a localiser and the series it sits in.
ANGLE_TOLERANCE_DEG = 15.0
# With plane=None a series is sagittal/axial when its slice normal is within this angle of the x/z axis.
# Axial slices angled through the L5/S1 disc reach ~30 degrees; beyond 40 the plane is not recognisable.
MAX_OBLIQUE_DEG = 40.0

PLANES = ("sagittal", "axial")
# World (LPS) direction of canonical axes (depth, rows, cols) per plane: the table of conventions section 3.
_CANONICAL_DIRECTIONS = {
    "sagittal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    "axial": np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
}
_MAX_REASONS_IN_ERROR = 5


class DicomReadError(ValueError):
    """A series (or the single file given) cannot be read; the message names it and says why."""


class DicomSkipWarning(UserWarning):
    """A file of a series was skipped; the message names the file and the reason."""


class _Skip(Exception):
    """Internal: this file cannot be used, for the reason in the message."""


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesGeometry:
    """Where the voxels of a canonical volume `[D, H, W]` came from; no patient-identifying values.

    Per-slice arrays are indexed by canonical depth. `slice_affines[k] @ (row, col, 1)` maps a pixel of the
    stored image of slice k (row = y, col = x, as in train_label_coordinates.csv) to canonical (depth, row,
    col) voxel coordinates; `pixel_to_world[k] @ (row, col, 1)` maps it to patient coordinates (mm, LPS).
    `other_pixel_to_world` does the latter for instances that were read but are not in the volume (other
    orientation groups, undecodable pixels), so their points can still be located in it.
    """

    plane: str
    shape: tuple[int, int, int]
    instance_numbers: np.ndarray  # int [D]
    slice_positions: np.ndarray  # float [D] mm along depth_direction, non-decreasing
    spacing: tuple[float, float, float]  # mm along canonical (depth, row, col)
    # Stacked (slice, row, col) axis i -> canonical axis permutation[i], then the canonical axes in `flips`
    # reversed. Slices are stacked in order along depth_direction, so the slice axis maps to depth unflipped.
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    n_orientation_groups: int
    skipped_files: tuple[str, ...]
    resampled_slices: int
    depth_direction: np.ndarray  # float [3] unit vector (LPS) of increasing canonical depth
    slice_affines: np.ndarray  # float [D, 3, 3]
    pixel_to_world: np.ndarray  # float [D, 3, 3]
    other_pixel_to_world: dict[int, np.ndarray]  # instance number -> float [3, 3]

    def canonical_index(self, instance_number: int, row: float, col: float) -> np.ndarray:
        """Float [3] (depth, row, col) voxel coordinates in the canonical volume of pixel (row, col) of the
        stored image of `instance_number`.

        For a slice of the volume the depth is its canonical index exactly and the in-plane coordinates go
        through that slice's transpose/flips and shape resampling. An instance that was read but is not in the
        volume is located through its patient coordinates (`world_to_canonical`). KeyError naming the
        instance number when the series does not have it, or when several slices share it (the frames of a
        multi-frame file): no point is better than a wrong one.
        """
        n = int(instance_number)
        matches = np.flatnonzero(self.instance_numbers == n)
        pixel = np.array([row, col, 1.0], dtype=np.float64)
        if len(matches) == 1:
            return self.slice_affines[matches[0]] @ pixel
        if len(matches) > 1:
            raise KeyError(f"instance number {n} is shared by {len(matches)} slices (a multi-frame file?)")
        if n in self.other_pixel_to_world:
            return self.world_to_canonical(self.other_pixel_to_world[n] @ pixel)
        raise KeyError(f"instance number {n} is not in this series")

    def world_to_canonical(self, point: np.ndarray) -> np.ndarray:
        """Float [3] continuous canonical (depth, row, col) coordinates of a patient-space point [3] (mm).

        The point is located between the two neighbouring slices by its signed distances to their planes and
        its coordinates are interpolated linearly between its projections onto them (extrapolated beyond the
        first/last slice; a single slice uses the depth spacing). A point on a slice gets that slice's
        coordinates exactly, also in tilted sub-stacks.
        """
        point = np.asarray(point, dtype=np.float64)
        step_row, step_col, origin = np.moveaxis(self.pixel_to_world, 2, 0)  # each [D, 3]
        normals = np.cross(step_col, step_row)
        normals *= np.sign(normals @ self.depth_direction)[:, None] / np.linalg.norm(normals, axis=1)[:, None]
        distances = np.einsum("kd,kd->k", point - origin, normals)  # > 0: beyond the slice in depth direction
        if len(distances) == 1:
            index = self._in_plane(0, point)
            index[0] += distances[0] / self.spacing[0]
            return index
        k0 = int(np.clip(np.count_nonzero(distances >= 0) - 1, 0, len(distances) - 2))
        gap = distances[k0] - distances[k0 + 1]
        t = distances[k0] / gap if gap != 0 else 0.0
        return (1.0 - t) * self._in_plane(k0, point) + t * self._in_plane(k0 + 1, point)

    def _in_plane(self, k: int, point: np.ndarray) -> np.ndarray:
        """Canonical coordinates of `point` projected onto canonical slice k (depth component = k)."""
        step_row, step_col, origin = self.pixel_to_world[k].T
        offset = point - origin
        pixel = np.array([offset @ step_row / (step_row @ step_row), offset @ step_col / (step_col @ step_col), 1.0])
        return self.slice_affines[k] @ pixel

    def normalized(self, instance_number: int, row: float, col: float) -> np.ndarray:
        """Float [3] normalised (depth, row, col) of a pixel: 0/1 = centre of the first/last voxel.

        Points outside the volume fall outside [0, 1]. An axis of length 1 has no extent; its coordinate is
        0.5, which `volume.resample` maps to the middle of the resampled axis.
        """
        return self.normalize(self.canonical_index(instance_number, row, col))

    def normalize(self, index: np.ndarray) -> np.ndarray:
        """Canonical voxel coordinates [3] -> normalised coordinates [3] (see `normalized`)."""
        extent = np.asarray(self.shape, dtype=np.float64) - 1.0
        return np.where(extent > 0, index / np.maximum(extent, 1.0), 0.5)


@dataclasses.dataclass(frozen=True)
class _PlainPixels:
    """How a plain single-frame file stores its pixels, read from its raw header elements (`_plain_header`):
    the values `_native_pixels` / `_value_transform` would otherwise look up in the dataset (None = element
    absent). Internal."""

    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int | None
    monochrome1: bool
    pixel_data: bytes


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
        # np.cross's general machinery costs ~25 us per call; this property is read O(slices * groups) times.
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


def _series_files(series) -> tuple[list[str], str]:
    """(file paths, how to name the series in messages) for a directory, a single file or a list of files."""
    if isinstance(series, (str, os.PathLike)):
        path = os.fspath(series)
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.lower().endswith(".dcm"))
            files = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
            if not files:
                raise DicomReadError(f"{path}: no .dcm files in the directory")
            return files, path
        if os.path.isfile(path):
            return [path], path
        raise DicomReadError(f"{path}: no such file or directory")
    files = [os.fspath(p) for p in series]
    if not files:
        raise DicomReadError("empty list of DICOM files")
    if len(files) == 1:
        return files, files[0]
    return files, f"{len(files)} files in {os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])}"


def series_description(series_dir: str) -> str | None:
    """The SeriesDescription header of the first readable .dcm file of a series directory (None if no file
    has one). Only that one non-identifying header value is read; pixels are not decoded."""
    for name in sorted(n for n in os.listdir(series_dir) if n.lower().endswith(".dcm")):
        try:
            dataset = pydicom.dcmread(os.path.join(series_dir, name), stop_before_pixels=True,
                                      specific_tags=["SeriesDescription"])
        except Exception:  # unreadable files are reported by read_series; try the next one
            continue
        if dataset.get("SeriesDescription"):
            return str(dataset.SeriesDescription)
    return None


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


def _lookup(dataset: pydicom.Dataset, groups: list[pydicom.Dataset], sequence: str, keyword: str, top_level: bool):
    """An attribute from a frame's functional groups (per-frame first, then shared), else from the top level."""
    for group in groups:
        items = group.get(sequence)
        if items:
            value = items[0].get(keyword)
            if value is not None:
                return value
    return dataset.get(keyword) if top_level else None


def _file_slices(path: str) -> list[_Slice]:
    """Parse one file's header into its slices (pixels not decoded). _Skip with the reason if unusable."""
    try:
        dataset = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        raise _Skip("not a DICOM file") from None
    except Exception as error:  # truncated or malformed: pydicom raises many types
        raise _Skip(f"unreadable ({type(error).__name__}: {error})") from None
    try:
        return _header_slices(path, dataset)
    except _Skip:
        raise
    except Exception as error:  # a malformed value (e.g. a non-numeric IS) surfaces when it is accessed
        raise _Skip(f"invalid header ({type(error).__name__}: {error})") from None


def _header_slices(path: str, dataset: pydicom.Dataset) -> list[_Slice]:
    plain = _plain_header(path, dataset)
    if plain is not None:
        return [plain]
    if "PixelData" not in dataset:
        raise _Skip("no pixel data")
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise _Skip(f"colour image (SamplesPerPixel={dataset.SamplesPerPixel}); expected greyscale")
    rows, cols = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
    if rows < 1 or cols < 1:
        raise _Skip("no Rows/Columns")
    if dataset.get("InstanceNumber") in (None, ""):
        raise _Skip("no InstanceNumber")
    instance_number = int(dataset.InstanceNumber)
    n_frames = int(dataset.get("NumberOfFrames") or 1)
    shared = dataset.get("SharedFunctionalGroupsSequence") or []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    if n_frames > 1 and len(per_frame) != n_frames:
        raise _Skip(f"multi-frame file ({n_frames} frames) without per-frame geometry (PerFrameFunctionalGroups)")
    slices = []
    for frame in range(n_frames):
        groups = ([per_frame[frame]] if per_frame else []) + ([shared[0]] if shared else [])
        # A single-frame file may carry its geometry at the top level; frames of a multi-frame file may not
        # (the top-level value, if any, cannot tell the frames apart).
        top = n_frames == 1
        orientation = _lookup(dataset, groups, "PlaneOrientationSequence", "ImageOrientationPatient", top)
        position = _lookup(dataset, groups, "PlanePositionSequence", "ImagePositionPatient", top)
        if orientation is None or position is None:
            if n_frames > 1:
                raise _Skip("multi-frame file without per-frame geometry (PlaneOrientation/PlanePositionSequence)")
            raise _Skip("no ImageOrientationPatient/ImagePositionPatient (no slice geometry)")
        lookup = functools.partial(_lookup, dataset, groups)
        slices.append(_frame_slice(path, dataset, frame if n_frames > 1 else None, instance_number, rows, cols,
                                   orientation, position, lookup, top))
    return slices


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


# ------------------------------------------------------------------------------------------ fast header path
# Reading a header value through pydicom (`dataset.get(keyword)`: conversion of the raw element, DSfloat/IS
# objects, validation) costs ~25 us; the ~17 values a plain file needs cost ~0.35 ms, about as much as parsing
# the file. `_plain_header` reads them from the raw (still undecoded) elements instead, but only where the
# result is certain to be what pydicom's conversion gives: single-frame little-endian files, every element of
# the expected VR (or implicit VR), each value a single clean token of its VR's grammar (DS/IS as pydicom
# validates them, so no warning is skipped either), pydicom's default conversion settings and hooks. Anything
# else (big endian, multi-frame or functional groups, missing, empty, multi-valued or malformed values,
# deferred reads) goes through the pydicom path, which therefore decides every _Skip reason.
_DS_TOKEN = re.compile(rb" *[+\-]?([0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)([eE][+\-]?[0-9]+)? *")
_IS_TOKEN = re.compile(rb" *[+\-]?[0-9]+ *")
_CS_TOKEN = re.compile(rb"[A-Z0-9_ ]*")
_MAX_DS, _MAX_IS = 16, 12  # value lengths pydicom accepts without a warning
_TAGS = {keyword: BaseTag(tag_for_keyword(keyword)) for keyword in (
    "PixelData", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "NumberOfFrames",
    "SamplesPerPixel", "Rows", "Columns", "InstanceNumber", "ImageOrientationPatient", "ImagePositionPatient",
    "PixelSpacing", "SliceThickness", "RescaleSlope", "RescaleIntercept", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "PhotometricInterpretation")}
_DEFAULT_HOOKS = (pydicom.hooks.raw_element_vr, pydicom.hooks.raw_element_value)


class _NotPlain(Exception):
    """Internal: the header needs pydicom's own conversion (see `_plain_header`)."""


def _raw(dataset: pydicom.Dataset, keyword: str, vr: str | None) -> bytes | None:
    """The undecoded value of a little-endian element of VR `vr` (None: any VR); None if absent."""
    element = dataset.get_item(_TAGS[keyword], keep_deferred=True)
    if element is None:
        return None
    if (not isinstance(element, RawDataElement) or not element.is_little_endian or not element.value
            or not (element.VR == vr or vr is None or (element.VR is None and element.is_implicit_VR))):
        raise _NotPlain
    return element.value


def _raw_us(dataset: pydicom.Dataset, keyword: str) -> int | None:
    value = _raw(dataset, keyword, "US")
    if value is None:
        return None
    if len(value) != 2:
        raise _NotPlain
    return value[0] | value[1] << 8


def _raw_tokens(dataset: pydicom.Dataset, keyword: str, vr: str, count: int, pattern, max_len: int):
    """The `count` tokens of a DS/IS value, each valid for its VR (pydicom splits the same tokens; leading and
    trailing spaces, which pydicom strips, are all `float`/`int` ignore)."""
    value = _raw(dataset, keyword, vr)
    if value is None:
        return None
    tokens = value.rstrip(b" \x00").split(b"\\")
    if len(tokens) != count or not all(len(t) <= max_len and pattern.fullmatch(t) for t in tokens):
        raise _NotPlain
    return tokens


def _raw_floats(dataset: pydicom.Dataset, keyword: str, count: int) -> list[float] | None:
    tokens = _raw_tokens(dataset, keyword, "DS", count, _DS_TOKEN, _MAX_DS)
    return None if tokens is None else [float(t) for t in tokens]


def _raw_float(dataset: pydicom.Dataset, keyword: str) -> float | None:
    tokens = _raw_tokens(dataset, keyword, "DS", 1, _DS_TOKEN, _MAX_DS)
    return None if tokens is None else float(tokens[0])


def _raw_int(dataset: pydicom.Dataset, keyword: str) -> int | None:
    tokens = _raw_tokens(dataset, keyword, "IS", 1, _IS_TOKEN, _MAX_IS)
    return None if tokens is None else int(tokens[0])


def _pydicom_defaults() -> bool:
    """Whether pydicom converts values as `_plain_header` assumes (no user settings, callbacks or hooks)."""
    config, hooks = pydicom.config, pydicom.hooks.hooks
    return not (config.use_DS_decimal or config.use_DS_numpy or config.use_IS_numpy or config.data_element_callback
                or hooks.raw_element_kwargs) and (hooks.raw_element_vr, hooks.raw_element_value) == _DEFAULT_HOOKS


def _plain_header(path: str, dataset: pydicom.Dataset) -> _Slice | None:
    """The slice of a plain single-frame file read from its raw header elements, with the values pydicom would
    give (see above); None when the file needs the pydicom path. _Skip only from the checks both paths share."""
    if not _pydicom_defaults():
        return None
    try:
        if (_raw(dataset, "SharedFunctionalGroupsSequence", None) is not None
                or _raw(dataset, "PerFrameFunctionalGroupsSequence", None) is not None):
            return None
        pixel_data = _raw(dataset, "PixelData", None)
        samples = _raw_us(dataset, "SamplesPerPixel")
        rows, cols = _raw_us(dataset, "Rows"), _raw_us(dataset, "Columns")
        instance_number = _raw_int(dataset, "InstanceNumber")
        frames = _raw_int(dataset, "NumberOfFrames")
        orientation = _raw_floats(dataset, "ImageOrientationPatient", 6)
        position = _raw_floats(dataset, "ImagePositionPatient", 3)
        if (not isinstance(pixel_data, bytes) or samples not in (None, 1) or not rows or not cols
                or instance_number is None or frames not in (None, 1) or orientation is None or position is None):
            return None
        values = {"PixelSpacing": _raw_floats(dataset, "PixelSpacing", 2),
                  "SliceThickness": _raw_float(dataset, "SliceThickness"),
                  "RescaleSlope": _raw_float(dataset, "RescaleSlope"),
                  "RescaleIntercept": _raw_float(dataset, "RescaleIntercept")}
        if values["PixelSpacing"] is None:
            return None
        photometric = _raw(dataset, "PhotometricInterpretation", "CS")
        if photometric is not None:
            photometric = photometric.rstrip(b" \x00")
            if not _CS_TOKEN.fullmatch(photometric):
                raise _NotPlain
        plain = _PlainPixels(
            bits_allocated=_raw_us(dataset, "BitsAllocated"), bits_stored=_raw_us(dataset, "BitsStored"),
            pixel_representation=_raw_us(dataset, "PixelRepresentation"),
            monochrome1=photometric is not None and photometric.strip(b" ") == b"MONOCHROME1", pixel_data=pixel_data)
    except _NotPlain:
        return None
    return _frame_slice(path, dataset, None, instance_number, rows, cols, orientation, position,
                        lambda sequence, keyword, top_level: values[keyword], True, plain)


_NATIVE_SYNTAXES = (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian)


def _native_pixels(dataset: pydicom.Dataset, rows: int, cols: int, plain: _PlainPixels | None = None
                   ) -> np.ndarray | None:
    """Pixels of an uncompressed little-endian single-frame greyscale image straight from the PixelData bytes
    (what `pixel_array` returns, without its ~0.5 ms of per-call decoder set-up); None for anything else
    (compressed, big endian, multi-frame, odd bit depths, short data), which goes through `pixel_array`.
    `plain`: the encoding already read from the raw header (a single-frame file), else it is looked up."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in _NATIVE_SYNTAXES:
        return None
    if plain is None:
        if int(dataset.get("NumberOfFrames") or 1) != 1:
            return None
        bits = int(dataset.get("BitsAllocated") or 0)
        stored = int(dataset.get("BitsStored") or bits)
        signed = int(dataset.get("PixelRepresentation") or 0) == 1
    else:
        bits = plain.bits_allocated or 0
        stored = plain.bits_stored or bits
        signed = (plain.pixel_representation or 0) == 1
    if bits not in (8, 16, 32) or not 0 < stored <= bits:
        return None
    dtype = np.dtype(("<i" if signed else "<u") + str(bits // 8))
    data = dataset.PixelData if plain is None else plain.pixel_data
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
            native = _native_pixels(dataset, item.rows, item.cols, item.plain)
            cache[item.path] = native if native is not None else dataset.pixel_array
        except Exception as error:  # truncated data, unsupported or corrupt compression: many types
            cache[item.path] = _Skip(f"pixel data could not be decoded ({type(error).__name__}: {error})")
    if isinstance(cache[item.path], _Skip):
        raise cache[item.path]
    pixels = cache[item.path] if item.frame is None else cache[item.path][item.frame]
    if pixels.shape != (item.rows, item.cols):
        raise _Skip(f"pixel array of shape {pixels.shape}, expected ({item.rows}, {item.cols})")
    return pixels


def _value_transform(item: _Slice) -> tuple[float, float, np.float32 | None]:
    """(slope, intercept, inversion constant C or None) taking a slice's stored pixels v to its values:
    v * slope + intercept (float32; skipped where slope 1, intercept 0), then C - that for MONOCHROME1."""
    dataset, plain = item.dataset, item.plain
    if (plain.monochrome1 if plain is not None
            else str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"):
        # Invert within the range of representable values ((lo + hi) - v maps [lo, hi] onto itself), so the
        # result does not depend on the image content and is the same for every slice.
        if plain is not None:
            bits = plain.bits_stored or plain.bits_allocated or 16
            signed = (plain.pixel_representation or 0) == 1
        else:
            bits = int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 16)
            signed = int(dataset.get("PixelRepresentation") or 0) == 1
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


def _stack_volume(images: list[np.ndarray], transforms: list, shape: tuple[int, int], permutation: tuple[int, ...],
                  flips: tuple[bool, ...]) -> np.ndarray:
    """The canonical float32 volume (C-contiguous) of the aligned stored images of the kept slices, in depth order.

    Each image is converted to float32 straight into its place: stacked axes (slice, row, col) go to canonical
    axes `permutation`, then the canonical axes in `flips` are reversed. Its value transform follows in place,
    once over the whole volume where every slice shares it. An image of another shape than `shape` gets its
    values first and is then resampled (linearly, corner-aligned) to it.
    """
    stacked_shape = (len(images), *shape)
    volume = np.empty([stacked_shape[i] for i in np.argsort(permutation)], dtype=np.float32)
    stacked = np.flip(volume, [a for a in range(3) if flips[a]]) if any(flips) else volume
    stacked = np.transpose(stacked, permutation)  # a view of `volume` indexed (slice, row, col)
    whole = len(set(transforms)) == 1 and all(image.shape == shape for image in images)
    for k, (image, transform) in enumerate(zip(images, transforms)):
        if image.shape != shape:
            stacked[k] = resample(_apply_transform(image.astype(np.float32), transform), shape)
            continue
        stacked[k] = image  # the cast to float32
        if not whole:
            _apply_transform(stacked[k], transform)
    if whole:
        _apply_transform(volume, transforms[0])
    return volume


def _orientation_groups(slices: list[_Slice]) -> list[list[int]]:
    """Indices of `slices` grouped by plane (normals within ANGLE_TOLERANCE_DEG, up to sign), in order of
    first appearance. Each slice joins the first group whose first slice's plane is close enough."""
    min_cos = np.cos(np.deg2rad(ANGLE_TOLERANCE_DEG))
    groups: list[list[int]] = []
    for i, item in enumerate(slices):
        for group in groups:
            if abs(item.normal @ slices[group[0]].normal) >= min_cos:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _in_plane_alignment(item: _Slice, ref_row_dir: np.ndarray, ref_col_dir: np.ndarray) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip cols) that bring a slice's image to the reference in-plane layout.

    Rows of the aligned image run along the reference's col_dir, columns along its row_dir. The transpose is
    applied first, then the flips of the aligned axes.
    """
    straight = abs(item.col_dir @ ref_col_dir) + abs(item.row_dir @ ref_row_dir)
    crossed = abs(item.row_dir @ ref_col_dir) + abs(item.col_dir @ ref_row_dir)
    transpose = crossed > straight
    down, across = (item.row_dir, item.col_dir) if transpose else (item.col_dir, item.row_dir)
    return transpose, bool(down @ ref_col_dir < 0), bool(across @ ref_row_dir < 0)


def _in_plane_matrix(item: _Slice, alignment: tuple[bool, bool, bool], shape: tuple[int, int]) -> np.ndarray:
    """[3, 3]: stored pixel (row, col, 1) -> (row, col, 1) in the aligned image resampled to `shape`."""
    transpose, flip_rows, flip_cols = alignment
    aligned = (item.cols, item.rows) if transpose else (item.rows, item.cols)
    matrix = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) if transpose else np.eye(3)
    for axis, flip in ((0, flip_rows), (1, flip_cols)):
        if flip:
            matrix[axis] = -matrix[axis]
            matrix[axis, 2] += aligned[axis] - 1
    scale = np.eye(3)
    for axis in range(2):
        if aligned[axis] == 1:  # a single row is repeated: it sits in the middle of the resampled axis
            scale[axis, axis], scale[axis, 2] = 0.0, (shape[axis] - 1) / 2.0
        else:
            scale[axis, axis] = (shape[axis] - 1) / (aligned[axis] - 1)
    return scale @ matrix


def _resampled_spacing(item: _Slice, alignment: tuple[bool, bool, bool], shape: tuple[int, int]) -> list[float]:
    """(row, col) spacing in mm of a slice's image once aligned and resampled to `shape` (corner-aligned)."""
    transpose = alignment[0]
    aligned_shape = (item.cols, item.rows) if transpose else (item.rows, item.cols)
    aligned_spacing = item.pixel_spacing[::-1] if transpose else item.pixel_spacing
    return [
        s * (n - 1) / (m - 1) if n > 1 and m > 1 else s for s, n, m in zip(aligned_spacing, aligned_shape, shape)
    ]


def _align_image(image: np.ndarray, alignment: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, flip_rows, flip_cols = alignment
    if transpose:
        image = image.T
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return image


def _best_permutation(directions: np.ndarray, plane: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Permutation and flips taking stacked axes with world `directions` [3 (slice, row, col), 3] to the
    canonical axes of `plane`: the permutation maximises the summed |direction cosine| alignment."""
    cosines = directions @ _CANONICAL_DIRECTIONS[plane].T  # [stacked axis, canonical axis]
    permutation = max(itertools.permutations(range(3)), key=lambda p: sum(abs(cosines[i, p[i]]) for i in range(3)))
    flips = [False] * 3
    for i, axis in enumerate(permutation):
        flips[axis] = bool(cosines[i, axis] < 0)
    return permutation, tuple(flips)


def _rounded(vector: np.ndarray) -> list[float]:
    return np.round(vector, 3).tolist()


def _error(where: str, problem: str, skips: list[tuple[str, str]]) -> DicomReadError:
    skips = list(dict.fromkeys(skips))  # frames of one file share their reason
    details = "; ".join(f"{name}: {reason}" for name, reason in skips[:_MAX_REASONS_IN_ERROR])
    if len(skips) > _MAX_REASONS_IN_ERROR:
        details += f"; ... and {len(skips) - _MAX_REASONS_IN_ERROR} more"
    return DicomReadError(f"{where}: {problem}" + (f" (skipped {details})" if details else ""))


def read_series(
    series: str | os.PathLike | Sequence[str | os.PathLike], plane: str | None = None
) -> tuple[np.ndarray, SeriesGeometry]:
    """One DICOM series -> (canonical float32 volume [D, H, W], SeriesGeometry).

    `series` is a directory (its `*.dcm` files) or a list of files (a single path is a one-file series).
    `plane` ('sagittal' or 'axial') selects the canonical layout; None infers it from the slice normal (x ->
    sagittal, z -> axial). The slices must run along the layout's depth axis: a coronal or too oblique series
    (plane=None), or a series whose slices do not match the requested plane, raises DicomReadError naming the
    series, as does a series without a usable image. Skipped files are warned about (DicomSkipWarning).
    """
    if plane is not None and plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES} or None, got {plane!r}")
    files, where = _series_files(series)

    skips: list[tuple[str, str]] = []  # (file name, reason) of unusable files
    candidates: list[_Slice] = []
    for path in files:
        try:
            candidates.extend(_file_slices(path))
        except _Skip as skip:
            skips.append((os.path.basename(path), str(skip)))
    if not candidates:
        raise _error(where, "no readable image", skips)

    groups = _orientation_groups(candidates)
    kept_group = max(groups, key=len)  # ties: the group seen first
    others = [candidates[i] for group in groups if group is not kept_group for i in group]
    members = [candidates[i] for i in kept_group]

    reference = members[0]
    signs = np.sign([m.normal @ reference.normal for m in members])[:, None]
    normal = np.mean(signs * np.array([m.normal for m in members]), axis=0)
    normal /= np.linalg.norm(normal)

    if plane is None:
        axis = int(np.argmax(np.abs(normal)))
        angle = np.degrees(np.arccos(min(1.0, abs(normal[axis]))))
        if axis == 1 or angle > MAX_OBLIQUE_DEG:
            kind = f"oblique ({angle:.0f} degrees from the nearest axis)" if angle > MAX_OBLIQUE_DEG else "coronal"
            raise _error(where, f"slices are {kind} (normal {_rounded(normal)}); expected sagittal or axial", [])
        plane = "sagittal" if axis == 0 else "axial"
    # Stack along the canonical depth direction: the normal, turned to point the way canonical depth runs.
    depth_direction = normal * np.sign(normal @ _CANONICAL_DIRECTIONS[plane][0])
    permutation, flips = _best_permutation(np.stack([depth_direction, reference.col_dir, reference.row_dir]), plane)
    if permutation[0] != 0:
        raise _error(where, f"slices (normal {_rounded(normal)}) do not run along the {plane} depth axis", [])
    members.sort(key=lambda m: m.centre @ depth_direction)  # stable: duplicate positions keep file order

    # Decode the kept slices in order; an undecodable one is skipped like an unreadable file.
    cache: dict[str, np.ndarray | _Skip] = {}
    images, transforms, kept, alignments = [], [], [], []
    for item in members:
        alignment = _in_plane_alignment(item, reference.row_dir, reference.col_dir)
        try:
            images.append(_align_image(_stored_pixels(item, cache), alignment))
        except _Skip as skip:
            skips.append((item.name, str(skip)))
            others.append(item)
            continue
        transforms.append(_value_transform(item))
        kept.append(item)
        alignments.append(alignment)
    if not kept:
        raise _error(where, "no readable image", skips)
    for name, reason in dict.fromkeys(skips):  # once per file, also for several frames of one file
        warnings.warn(f"{where}: skipped {name}: {reason}", DicomSkipWarning, stacklevel=2)

    shapes = collections.Counter(image.shape for image in images)
    common = max(shapes, key=lambda s: (shapes[s], s[0] * s[1]))  # most common; ties: the larger
    resampled = sum(1 for image in images if image.shape != common)
    volume = _stack_volume(images, transforms, common, permutation, flips)

    # Affine from stacked (slice, row, col, 1) to canonical (depth, row, col); depth is never flipped.
    to_canonical = np.zeros((3, 4))
    for i, axis in enumerate(permutation):
        to_canonical[axis, i] = -1.0 if flips[axis] else 1.0
        to_canonical[axis, 3] = volume.shape[axis] - 1 if flips[axis] else 0.0
    affines = []
    for k, (item, alignment) in enumerate(zip(kept, alignments)):
        in_plane = _in_plane_matrix(item, alignment, common)[:2]
        affines.append(to_canonical @ np.vstack([[0.0, 0.0, k], in_plane, [0.0, 0.0, 1.0]]))
    positions = np.array([m.centre @ depth_direction for m in kept])
    depth_spacing = float(np.median(np.diff(positions))) if len(kept) > 1 else kept[0].thickness or 1.0
    row_spacing, col_spacing = np.median([_resampled_spacing(m, a, common) for m, a in zip(kept, alignments)], axis=0)
    if permutation[1] == 2:
        row_spacing, col_spacing = col_spacing, row_spacing

    geometry = SeriesGeometry(
        plane=plane,
        shape=tuple(int(s) for s in volume.shape),
        instance_numbers=np.array([m.instance_number for m in kept], dtype=np.int64),
        slice_positions=positions,
        spacing=(depth_spacing, float(row_spacing), float(col_spacing)),
        permutation=tuple(int(p) for p in permutation),
        flips=flips,
        n_orientation_groups=len(groups),
        skipped_files=tuple(dict.fromkeys([m.name for m in others] + [name for name, _ in skips])),
        resampled_slices=resampled,
        depth_direction=depth_direction,
        slice_affines=np.array(affines),
        pixel_to_world=np.array([m.pixel_to_world for m in kept]),
        other_pixel_to_world={m.instance_number: m.pixel_to_world for m in reversed(others)},  # first wins
    )
    return volume, geometry
