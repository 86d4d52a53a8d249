"""Fast header path: the slice of a plain single-frame DICOM file read from its raw header elements.

Reading a header value through pydicom (`dataset.get(keyword)`: conversion of the raw element, DSfloat/IS
objects, validation) is slow next to parsing the file, and a plain file needs about 17 of them (the
measurements are in benchmarks/BENCHMARKS.md, data section). `_plain_header` reads them from the raw (still
undecoded) elements instead, but only where the result is certain to be what pydicom's conversion gives:
single-frame little-endian files, every element of the expected VR (or implicit VR), each value a single clean
token of its VR's grammar (DS/IS as pydicom validates them, so no warning is skipped either), pydicom's default
conversion settings and hooks. Anything else (big endian, multi-frame or functional groups, missing, empty,
multi-valued or malformed values, deferred reads) goes through the pydicom path (`dicom._header_slices`).
Both paths hand their values to the same checks (`dicom_slice._file_header`, `_frame_slice`: ranges, counts,
finiteness); a file the checks refuse is refused by the pydicom path, which shows the values as stored.

`_truncation` tells a file that ends inside a data element (cut short) from one that lacks an element, for
every file, from the raw elements as well. Internal to `dicom`.
"""

from __future__ import annotations

import os
import re

import pydicom
import pydicom.hooks
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from lumbar_jax.data.dicom_slice import _file_header, _frame_slice, _Skip, _Slice

_DS_TOKEN = re.compile(rb" *[+\-]?([0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)([eE][+\-]?[0-9]+)? *")
_IS_TOKEN = re.compile(rb" *[+\-]?[0-9]+ *")
_CS_TOKEN = re.compile(rb"[A-Z0-9_ ]*")
_MAX_DS, _MAX_IS = 16, 12  # value lengths pydicom accepts without a warning
_TAGS = {keyword: BaseTag(tag_for_keyword(keyword)) for keyword in (
    "PixelData", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "NumberOfFrames",
    "SamplesPerPixel", "Rows", "Columns", "InstanceNumber", "ImageOrientationPatient", "ImagePositionPatient",
    "PixelSpacing", "SliceThickness", "RescaleSlope", "RescaleIntercept", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "PhotometricInterpretation")}
_US_KEYWORDS = ("SamplesPerPixel", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")
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
    give (see the module docstring); None when the file needs the pydicom path, also when the shared checks
    (`_file_header`, `_frame_slice`) refuse it: the pydicom path then refuses it for the same reason."""
    if not _pydicom_defaults():
        return None
    try:
        if (_raw(dataset, "SharedFunctionalGroupsSequence", None) is not None
                or _raw(dataset, "PerFrameFunctionalGroupsSequence", None) is not None):
            return None
        pixel_data = _raw(dataset, "PixelData", None)
        values = {keyword: _raw_us(dataset, keyword) for keyword in _US_KEYWORDS}
        values |= {"InstanceNumber": _raw_int(dataset, "InstanceNumber"),
                   "NumberOfFrames": _raw_int(dataset, "NumberOfFrames"),
                   "ImageOrientationPatient": _raw_floats(dataset, "ImageOrientationPatient", 6),
                   "ImagePositionPatient": _raw_floats(dataset, "ImagePositionPatient", 3),
                   "PixelSpacing": _raw_floats(dataset, "PixelSpacing", 2),
                   "SliceThickness": _raw_float(dataset, "SliceThickness"),
                   "RescaleSlope": _raw_float(dataset, "RescaleSlope"),
                   "RescaleIntercept": _raw_float(dataset, "RescaleIntercept")}
        required = ("Rows", "Columns", "InstanceNumber", "ImageOrientationPatient", "ImagePositionPatient",
                    "PixelSpacing")
        if (not isinstance(pixel_data, bytes) or values["SamplesPerPixel"] not in (None, 1)
                or values["NumberOfFrames"] not in (None, 1) or any(values[k] is None for k in required)):
            return None
        photometric = _raw(dataset, "PhotometricInterpretation", "CS")
        if photometric is not None:
            photometric = photometric.rstrip(b" \x00")
            if not _CS_TOKEN.fullmatch(photometric):
                raise _NotPlain
            values["PhotometricInterpretation"] = photometric.decode("ascii")
    except _NotPlain:
        return None
    try:
        header = _file_header(lambda keyword: values.get(keyword))
        return _frame_slice(path, dataset, None, header, values["ImageOrientationPatient"],
                            values["ImagePositionPatient"], lambda sequence, keyword, top_level: values[keyword],
                            True, pixel_data)
    except _Skip:  # refused: the pydicom path refuses it too, showing the values as stored ("1e999", not inf)
        return None


# ------------------------------------------------------------------------------------------- truncation
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PREAMBLE_AND_META_HEADER = 128 + 4 + 12  # preamble, "DICM", FileMetaInformationGroupLength element


def _truncation(path: str, dataset: pydicom.Dataset | None = None) -> _Skip | None:
    """`_find_truncation`, which never raises: it is asked about files that are already broken."""
    try:
        return _find_truncation(path, dataset)
    except Exception:  # a file too broken to tell where it ends: the caller keeps its own reason
        return None


def _find_truncation(path: str, dataset: pydicom.Dataset | None) -> _Skip | None:
    """_Skip("truncated", "file ends at byte N inside <element>") when the file ends inside a data element:
    the last element read declares more bytes than the file holds (a file cut in a value, e.g. the pixel
    data), or, where the dataset has no pixel data, bytes are left after the last element read (pydicom drops
    an element cut in its header, and the whole dataset when undefined-length pixel data lacks its end
    delimiter: the elements before the pixel data are then read again). None otherwise. `dataset`: the file
    as just read (its elements still raw); None: read it again (after a failure, so the cost does not matter)."""
    if dataset is None:
        dataset = pydicom.dcmread(path)
    size = os.path.getsize(path)
    last = _last_raw_element(dataset)
    if last is not None and last.length != _UNDEFINED_LENGTH and last.value_tell + last.length > size:
        return _Skip("truncated", f"file ends at byte {size} inside {_element_name(last.tag)}, "
                                  f"{last.length} bytes declared from byte {last.value_tell}")
    if "PixelData" in dataset:
        return None
    if last is None:
        last = _last_raw_element(pydicom.dcmread(path, stop_before_pixels=True))
    if last is not None:
        end = last.value_tell + last.length if last.length != _UNDEFINED_LENGTH else None
    else:  # nothing read after the file meta information
        meta_length = dataset.file_meta.get("FileMetaInformationGroupLength")
        end = _PREAMBLE_AND_META_HEADER + (meta_length if isinstance(meta_length, int) else 0)
        if end > size:
            return _Skip("truncated", f"file ends at byte {size} inside the file meta information")
    if end is None or end >= size:
        return None
    with open(path, "rb") as file:
        file.seek(end)
        head = file.read(4)
    big_endian = dataset.file_meta.get("TransferSyntaxUID") == pydicom.uid.ExplicitVRBigEndian
    where = f"the element at byte {end}"
    if len(head) == 4:
        group, element = (int.from_bytes(head[i:i + 2], "big" if big_endian else "little") for i in (0, 2))
        where = f"{_element_name(BaseTag(group << 16 | element))} at byte {end}"
    return _Skip("truncated", f"file ends at byte {size} inside {where}")


def _last_raw_element(dataset: pydicom.Dataset) -> RawDataElement | None:
    """The last element of `dataset` in file order if it is still raw (value not converted), else None."""
    tag = next(reversed(dataset.keys()), None)
    element = None if tag is None else dataset.get_item(tag, keep_deferred=True)
    return element if isinstance(element, RawDataElement) else None


def _element_name(tag: BaseTag) -> str:
    """"PixelData (7FE0,0010)"; a private or unknown tag by its number alone."""
    keyword = keyword_for_tag(tag)
    return f"{keyword} {tag}" if keyword else f"element {tag}"
