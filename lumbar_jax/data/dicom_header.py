"""Fast header path: the slice of a plain single-frame DICOM file read from its raw header elements.

Reading a header value through pydicom (`dataset.get(keyword)`: conversion of the raw element, DSfloat/IS
objects, validation) is slow next to parsing the file, and a plain file needs about 17 of them (the
measurements are in benchmarks/BENCHMARKS.md, data section). `_plain_header` reads them from the raw (still
undecoded) elements instead, but only where the result is certain to be what pydicom's conversion gives:
single-frame little-endian files, every element of the expected VR (or implicit VR), each value a single clean
token of its VR's grammar (DS/IS as pydicom validates them, so no warning is skipped either), pydicom's default
conversion settings and hooks. Anything else (big endian, multi-frame or functional groups, missing, empty,
multi-valued or malformed values, deferred reads) goes through the pydicom path (`dicom._header_slices`),
which therefore decides every _Skip reason. Internal to `dicom`.
"""

from __future__ import annotations

import dataclasses
import re

import pydicom
import pydicom.hooks
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from lumbar_jax.data.dicom_slice import _frame_slice, _Slice

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
    give (see the module docstring); None when the file needs the pydicom path. _Skip only from the checks
    both paths share (`_frame_slice`)."""
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
