"""One DICOM series -> canonical float32 volume `[D, H, W]` + its geometry (docs/conventions.md section 3).

What happens to a series, in order:

1. Every file is parsed once (`pydicom.dcmread`, full file; pixels are decoded lazily, only for the slices
   that end up in the volume). A file that cannot be used (not DICOM, truncated, no pixel data, colour, a
   required value absent, any value read that cannot be used: not convertible, not a number, NaN/inf, out of
   range, the wrong number of values; multi-frame without per-frame geometry, undecodable pixels) is skipped,
   and only that file: `problems.report("file_skipped", path, reason, detail)` names the file, the reason and
   the field with its value (a `DicomSkipWarning`, i.e. `problems.DataProblemWarning`). Files without slice
   geometry (e.g. CR) are never guessed into a volume: if nothing usable is left, `DicomReadError` names the
   series and lists every file with its reason (the dataset builder then marks the series absent).
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
5. The slices go onto the depth axis by their true positions: where neighbouring parallel slices are
   farther apart than the series' slice spacing allows (`dicom_geometry.GAP_FACTOR`: a file missing or
   skipped from the middle), the missing slices are interpolated linearly from the two neighbours at evenly
   spaced positions, and `problems.report("series_gap", series, ...)` names the gap in mm. The geometry
   (positions, spacing, affines) describes that evenly spaced axis, so label points keep their place; a
   series without a gap is stacked exactly as it is.
6. The stack (slice, row, col) is reoriented to the canonical layout of its plane by the axis permutation
   and flips that best match the direction cosines (maximal summed |cosine| alignment).

Pixel values: RescaleSlope/RescaleIntercept applied (1/0 where absent), MONOCHROME1 inverted so that bright
is high signal everywhere. Nothing that identifies the patient (names, ids, dates, UIDs) leaves this module:
`SeriesGeometry` holds geometry, instance numbers and file names only.

This module holds the public names and `read_series` with stages 1-3; the rest lives beside it:
`dicom_slice` (one image plane, `_Slice`, from checked header values), `dicom_header` (the fast path that
reads the header values of plain single-frame files from the raw elements, and truncation), `dicom_pixels`
(stages 4-6 for the pixels: decoding and stacking into the volume) and `dicom_geometry` (`SeriesGeometry`,
the in-plane alignment, depth plan, axis permutation and per-slice affines).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import pydicom

from lumbar_jax.data import problems
from lumbar_jax.data.dicom_geometry import (
    CANONICAL_DIRECTIONS,
    INTERPOLATED,
    PLANES,
    SeriesGeometry,
    _best_permutation,
    _depth_plan,
    _DepthPlan,
    _in_plane_alignment,
    _Layout,
    _series_geometry,
)
from lumbar_jax.data.dicom_header import _plain_header, _truncation
from lumbar_jax.data.dicom_pixels import _common_shape, _decode_slices, _stack_volume
from lumbar_jax.data.dicom_slice import _file_header, _frame_slice, _get, _Skip, _Slice

# Two slices are in one orientation group when the angle between their planes is at most this. Large enough
# for sub-stacks tilted to follow the discs (typically < 10 degrees apart), far below the 90 degrees between
# a localiser and the series it sits in.
ANGLE_TOLERANCE_DEG = 15.0
# With plane=None a series is sagittal/axial when its slice normal is within this angle of the x/z axis.
# Axial slices angled through the L5/S1 disc reach ~30 degrees; beyond 40 the plane is not recognisable.
MAX_OBLIQUE_DEG = 40.0
_MAX_REASONS_IN_ERROR = 5


class DicomReadError(ValueError):
    """A series (or the single file given) cannot be read; the message names it and says why."""


# A file of a series was skipped, or slices are missing from it: the `problems.DataProblemWarning` that
# `problems.report` emits (kinds file_skipped, series_gap); its message names the file or series, the reason
# and the field and value. Kept under this name for the callers that filter or expect it.
DicomSkipWarning = problems.DataProblemWarning


def read_series(
    series: str | os.PathLike | Sequence[str | os.PathLike], plane: str | None = None
) -> tuple[np.ndarray, SeriesGeometry]:
    """One DICOM series -> (canonical float32 volume [D, H, W], SeriesGeometry).

    `series` is a directory (its `*.dcm` files) or a list of files (a single path is a one-file series).
    `plane` ('sagittal' or 'axial') selects the canonical layout; None infers it from the slice normal (x ->
    sagittal, z -> axial). The slices must run along the layout's depth axis: a coronal or too oblique series
    (plane=None), or a series whose slices do not match the requested plane, raises DicomReadError naming the
    series, as does a series without a usable image. Skipped files and gaps are reported (`problems.report`).
    """
    if plane is not None and plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES} or None, got {plane!r}")
    files, where = _series_files(series)
    candidates, skips = _read_headers(files)  # skips: (path, _Skip) of unusable files
    _report_skips(skips)
    if not candidates:
        raise _error(where, "no readable image", skips)

    groups = _orientation_groups(candidates)
    members, others = _largest_group(candidates, groups)
    layout = _stack_layout(members, plane, where)
    members.sort(key=lambda m: m.centre @ layout.depth_direction)  # stable: duplicate positions keep file order

    reference = layout.reference
    decoded = _decode_slices(members, [_in_plane_alignment(m, reference.row_dir, reference.col_dir) for m in members])
    failed = [(item.path, skip) for item, skip in decoded.failed]
    _report_skips(failed)
    skips += failed
    others += [item for item, _ in decoded.failed]
    if not decoded.slices:
        raise _error(where, "no readable image", skips)
    plan = _depth_plan(decoded.slices, layout.depth_direction)
    _report_gaps(where, decoded.slices, plan)

    common, resampled = _common_shape(decoded.images)
    volume = _stack_volume(decoded.images, decoded.transforms, common, layout.permutation, layout.flips,
                           plan.depth, plan.interpolated)
    skipped_files = tuple(dict.fromkeys([m.name for m in others] + [os.path.basename(path) for path, _ in skips]))
    geometry = _series_geometry(layout, volume.shape, decoded.slices, decoded.alignments, common, resampled,
                                len(groups), skipped_files, others, plan)
    return volume, geometry


def series_description(series_dir: str) -> str | None:
    """The SeriesDescription header of the first readable .dcm file of a series directory (None if no readable
    file has one); DicomReadError naming the folder when it holds no .dcm file, or none that pydicom can read
    (a folder of junk is not a series of unknown type). Only that one non-identifying header value is read;
    pixels are not decoded."""
    names = sorted(n for n in os.listdir(series_dir) if n.lower().endswith(".dcm"))
    readable = 0
    for name in names:
        path = os.path.join(series_dir, name)
        try:
            with problems.pydicom_warnings_naming(path):
                dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesDescription"])
        except Exception:  # unreadable files are reported by read_series; try the next one
            continue
        readable += 1
        if dataset.get("SeriesDescription"):
            return str(dataset.SeriesDescription)
    if not readable:
        raise DicomReadError(f"{series_dir}: " + (f"{len(names)} .dcm files, none readable by pydicom" if names
                                                  else "no .dcm file"))
    return None


# ------------------------------------------------------------------------------ stage 1: files -> slices
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


def _read_headers(files: list[str]) -> tuple[list[_Slice], list[tuple[str, _Skip]]]:
    """(the slices of every usable file in file order, (path, why) of every file skipped)."""
    slices: list[_Slice] = []
    skips: list[tuple[str, _Skip]] = []
    for path in files:
        try:
            with problems.pydicom_warnings_naming(path):
                slices.extend(_file_slices(path))
        except _Skip as skip:
            skips.append((path, skip))
    return slices, skips


def _lookup(dataset: pydicom.Dataset, groups: list[pydicom.Dataset], sequence: str, keyword: str, top_level: bool):
    """An attribute from a frame's functional groups (per-frame first, then shared), else from the top level;
    None where absent. _Skip naming the field and value where pydicom cannot convert it (`_get`)."""
    for group in groups:
        items = _get(group, sequence)
        if items:
            value = _get(items[0], keyword)
            if value is not None:
                return value
    return _get(dataset, keyword) if top_level else None


def _file_slices(path: str) -> list[_Slice]:
    """Parse one file's header into its slices (pixels not decoded). _Skip with the reason if unusable."""
    try:
        dataset = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        raise _Skip("not a DICOM file") from None
    except Exception as error:  # malformed: pydicom raises many types
        raise _Skip("unreadable", f"{type(error).__name__}: {error}") from None
    if "PixelData" not in dataset:  # cut in its header? (cut in the pixel data: said when decoding fails)
        truncated = _truncation(path, dataset)
        if truncated is not None:
            raise truncated
    try:
        return _header_slices(path, dataset)
    except _Skip:
        raise
    except Exception as error:  # a value that passed its check but breaks later: still only this file
        raise _Skip("invalid header", f"{type(error).__name__}: {error}") from None


def _header_slices(path: str, dataset: pydicom.Dataset) -> list[_Slice]:
    """The slices of a parsed file: the fast path's (`_plain_header`) for a plain single-frame file, else read
    through pydicom, from the top level or from the functional groups of each frame of a multi-frame file."""
    plain = _plain_header(path, dataset)
    if plain is not None:
        return [plain]
    if "PixelData" not in dataset:
        raise _Skip("no pixel data")
    header = _file_header(functools.partial(_get, dataset))
    n_frames = header.n_frames
    shared = _get(dataset, "SharedFunctionalGroupsSequence") or []
    per_frame = _get(dataset, "PerFrameFunctionalGroupsSequence") or []
    if n_frames > 1 and len(per_frame) != n_frames:
        raise _Skip("multi-frame file without per-frame geometry (PerFrameFunctionalGroups)",
                    f"NumberOfFrames = {n_frames}, {len(per_frame)} per-frame groups")
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
        slices.append(_frame_slice(path, dataset, frame if n_frames > 1 else None, header, orientation, position,
                                   lookup, top))
    return slices


# -------------------------------------------------------- stages 2-3: orientation groups, plane, stacking order
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


def _largest_group(slices: list[_Slice], groups: list[list[int]]) -> tuple[list[_Slice], list[_Slice]]:
    """(the slices of the largest orientation group, on a tie the group seen first; the slices of the others)."""
    kept_group = max(groups, key=len)
    others = [slices[i] for group in groups if group is not kept_group for i in group]
    return [slices[i] for i in kept_group], others


def _stack_layout(members: list[_Slice], plane: str | None, where: str) -> _Layout:
    """How one orientation group stacks into the canonical volume of `plane` (None: inferred from the group's
    mean normal). DicomReadError naming the series when the plane cannot be inferred (coronal, too oblique) or
    the slices do not run along its depth axis."""
    reference = members[0]
    signs = np.sign([m.normal @ reference.normal for m in members])[:, None]
    normal = np.mean(signs * np.array([m.normal for m in members]), axis=0)
    normal /= np.linalg.norm(normal)
    if plane is None:
        plane = _infer_plane(normal, where)
    # Stack along the canonical depth direction: the normal, turned to point the way canonical depth runs.
    depth_direction = normal * np.sign(normal @ CANONICAL_DIRECTIONS[plane][0])
    permutation, flips = _best_permutation(np.stack([depth_direction, reference.col_dir, reference.row_dir]), plane)
    if permutation[0] != 0:
        raise _error(where, f"slices (normal {_rounded(normal)}) do not run along the {plane} depth axis", [])
    return _Layout(plane, depth_direction, reference, permutation, flips)


def _infer_plane(normal: np.ndarray, where: str) -> str:
    """'sagittal' / 'axial' for a unit slice normal [3] within MAX_OBLIQUE_DEG of the x / z axis."""
    axis = int(np.argmax(np.abs(normal)))
    angle = np.degrees(np.arccos(min(1.0, abs(normal[axis]))))
    if axis == 1 or angle > MAX_OBLIQUE_DEG:
        kind = f"oblique ({angle:.0f} degrees from the nearest axis)" if angle > MAX_OBLIQUE_DEG else "coronal"
        raise _error(where, f"slices are {kind} (normal {_rounded(normal)}); expected sagittal or axial", [])
    return "sagittal" if axis == 0 else "axial"


# ----------------------------------------------------------------------------------------------- reporting
def _report_skips(skips: list[tuple[str, _Skip]]) -> None:
    """One `problems.report("file_skipped", path, reason, detail)` per skipped file (its frames share the
    reason), attributed to read_series' caller."""
    for path, skip in {path: skip for path, skip in skips}.items():
        problems.report("file_skipped", path, skip.reason, skip.detail, stacklevel=3)


def _report_gaps(where: str, kept: list[_Slice], plan: _DepthPlan) -> None:
    """One `problems.report("series_gap", series, ...)` per gap of `plan` between the kept slices, naming the
    instance numbers around it, its size in mm and how many slices were interpolated in it."""
    for gap in plan.gaps:
        reason = "gap in the slice positions" if gap.interpolated else "gap in the slice positions too large to fill"
        filled = f"{gap.interpolated} slice(s) interpolated" if gap.interpolated else "not filled"
        detail = (f"{gap.distance:.1f} mm between instances {kept[gap.lower].instance_number} and "
                  f"{kept[gap.lower + 1].instance_number}, slice spacing {gap.spacing:.1f} mm: {filled}")
        problems.report("series_gap", where, reason, detail, stacklevel=3)


def _rounded(vector: np.ndarray) -> list[float]:
    return np.round(vector, 3).tolist()


def _error(where: str, problem: str, skips: list[tuple[str, _Skip]]) -> DicomReadError:
    """DicomReadError naming the series and the reasons of its skipped files (up to _MAX_REASONS_IN_ERROR)."""
    skips = list({os.path.basename(path): str(skip) for path, skip in skips}.items())  # frames share their reason
    details = "; ".join(f"{name}: {reason}" for name, reason in skips[:_MAX_REASONS_IN_ERROR])
    if len(skips) > _MAX_REASONS_IN_ERROR:
        details += f"; ... and {len(skips) - _MAX_REASONS_IN_ERROR} more"
    return DicomReadError(f"{where}: {problem}" + (f" (skipped {details})" if details else ""))
