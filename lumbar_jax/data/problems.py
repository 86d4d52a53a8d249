"""Problems found in the input data: each one named (file, line, field, value), warned about, and counted.

A bad value costs at most its own file or row. Where the reader, the CSV parser or the study assembler drops
something (a DICOM file, a series, a CSV row, a label point), it calls `report(kind, where, reason, detail)`: that
emits a `DataProblemWarning` (shown once per message like any Python warning, and turned into a log line by
the commands) and, inside `collect()`, also records it, so that the dataset build can count what it dropped
and why in its report (`build_report.json` beside the dataset). What pydicom itself says about a file (a log
line and a warning, most often the same words twice, neither naming the file) is held back while the file is
read and warned once, naming it (`pydicom_warnings_naming`, a `PydicomWarning`).

Kinds (the build report's categories):
  file_skipped         a DICOM file not used (unreadable header value, truncated, no pixel data, ...)
  series_absent        a series type of a study that ends up without a volume (missing, unreadable, ...)
  series_skipped       a series not used, its study is (unreadable while another of its type is read, type
                       unknown, no readable DICOM file in its folder)
  series_gap           a series with slices missing from its middle (resampled by true slice positions)
  label_point_dropped  a label coordinate not placed in any record (NaN x/y, unknown series, outside, ...)
  csv_row              a CSV row refused or ignored (unparseable value, duplicate, unknown study, ...)
  study_mismatch       a study or series present in one source (CSV, image folder) and missing from another
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Iterator

KINDS = ("file_skipped", "series_absent", "series_skipped", "series_gap", "label_point_dropped", "csv_row",
         "study_mismatch")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One dropped or doubtful piece of input: what kind, where (a path, `file line N`, a study/series id), why
    (`reason`: short and the same for every occurrence of the cause, e.g. "InstanceNumber out of range"; the
    build report counts by it) and `detail` (the offending field and value, e.g. "InstanceNumber = 1e30")."""

    kind: str
    where: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class DataProblemWarning(UserWarning):
    """The warning of a `Problem`; `.problem` holds it."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


class PydicomWarning(UserWarning):
    """What pydicom said while reading one file (`pydicom_warnings_naming`): the file, then pydicom's words."""


_collectors: list[list[Problem]] = []


def report(kind: str, where: str, reason: str, detail: str = "", *, stacklevel: int = 2) -> Problem:
    """Warn about a problem (DataProblemWarning naming `where`, `reason` and `detail`) and record it in every
    active `collect()`; returns it."""
    if kind not in KINDS:
        raise ValueError(f"problem kind {kind!r} is not one of {KINDS}")
    problem = Problem(kind, where, reason, detail)
    for collected in _collectors:
        collected.append(problem)
    warnings.warn(DataProblemWarning(problem), stacklevel=stacklevel + 1)
    return problem


@contextlib.contextmanager
def collect() -> Iterator[list[Problem]]:
    """`with collect() as found:` every problem reported inside the block (in this process) is appended to
    `found`, in order. Nested collections each get them all."""
    found: list[Problem] = []
    _collectors.append(found)
    try:
        yield found
    finally:
        _collectors.remove(found)


def summarize(found: list[Problem]) -> dict[str, dict]:
    """{kind: {"count": n, "reasons": {reason: n}, "examples": [the first 20 as "where: reason (detail)"]}}
    for the build report; every kind present, count 0 when nothing of it was found. A problem reported more
    than once (an unreadable file is read again for each label point annotated on it) counts once: a count is
    of files, rows, series or points, not of reports."""
    out: dict[str, dict] = {kind: {"count": 0, "reasons": {}, "examples": []} for kind in KINDS}
    for p in dict.fromkeys(found):
        entry = out[p.kind]
        entry["count"] += 1
        entry["reasons"][p.reason] = entry["reasons"].get(p.reason, 0) + 1
        if len(entry["examples"]) < 20:
            entry["examples"].append(str(p))
    return out


def show_warning_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A `warnings.showwarning` that logs one line (`WARNING lumbar_jax.warnings: Category: message`) instead
    of Python's two (`file:line: Category: message` and the source line): a build of thousands of files warns
    often, and each warning should be one readable line of the log."""
    text = " ".join(str(message).split("\n"))
    logging.getLogger("lumbar_jax.warnings").warning("%s: %s", category.__name__, text)


@contextlib.contextmanager
def warnings_in_one_line() -> Iterator[None]:
    """Inside the block, warnings are shown by `show_warning_in_one_line`; the previous display is restored."""
    previous, warnings.showwarning = warnings.showwarning, show_warning_in_one_line
    try:
        yield
    finally:
        warnings.showwarning = previous


class _Messages(logging.Handler):
    """A logging handler that keeps the messages it is given."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def pydicom_warnings_naming(path: str) -> Iterator[None]:
    """Inside the block (the reading of the file `path`), what pydicom says is held back: its log lines (logger
    `pydicom`) and its Python warnings, which for most messages are the same words twice and never name the
    file. After the block, every distinct message is warned once, together, as one `PydicomWarning`
    '`path`: pydicom: message; message'. Other warnings raised inside are passed on unchanged."""
    logger, held = logging.getLogger("pydicom"), _Messages()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(held)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(held)
        logger.propagate = propagate
        messages = list(held.messages)
        for w in caught:
            if f"{os.sep}pydicom{os.sep}" in w.filename:
                messages.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if messages:
            warnings.warn(PydicomWarning(f"{path}: pydicom: {'; '.join(dict.fromkeys(messages))}"), stacklevel=3)
