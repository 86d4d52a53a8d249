"""The three Kaggle CSVs read row by row, every value parsed with its file, line and column named.

Policy (docs/conventions.md section 4; "a bad value costs at most its own file or row, and every problem is
named"): train.csv holds the labels, so a value that cannot be trusted there refuses the whole input
(ValueError naming the file, line and column: a study_id that is not an integer, an unknown severity, a
conflicting duplicate, no rows at all). A bad row of train_label_coordinates.csv or of a series descriptions CSV
costs only that row: it is skipped and reported through `problems.report` (file, line, column, value), as is a
NaN coordinate and a duplicate row (the first one is kept). Line numbers are those a text editor shows
(header = line 1). `split_studies` says which studies a split holds and reports those one source lacks.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os

import numpy as np

from lumbar_jax import labels as labels_lib
from lumbar_jax.data import problems

LABELS_CSV = "train.csv"
COORDINATES_CSV = "train_label_coordinates.csv"
COORDINATE_COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
DESCRIPTION_COLUMNS = ("study_id", "series_id", "series_description")
# Cell spellings read as "no value" (pandas' usual ones): an empty severity is a missing label.
_NA_SPELLINGS = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>"})


@dataclasses.dataclass(frozen=True)
class Annotation:
    """One row of train_label_coordinates.csv, resolved to indices; `line` is its line in that file."""

    target: int  # index in labels.TARGETS
    series_id: int
    instance_number: int
    row: float  # y in pixels of the stored image
    col: float  # x
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Row:
    """One data row of a CSV: its line number (header = line 1) and {column: text}."""

    line: int
    values: dict[str, str]


class CellError(ValueError):
    """A cell that cannot be parsed; `column` and `value` name it, the message says both."""

    def __init__(self, column: str, value: str, expected: str):
        super().__init__(f"column {column}: {value!r} is not {expected}")
        self.column, self.value = column, value


def where(path: str, line: int) -> str:
    """How a problem names a CSV row: 'train_label_coordinates.csv line 17'."""
    return f"{os.path.basename(path)} line {line}"


def read_rows(path: str, required: tuple[str, ...], strict: bool) -> list[Row]:
    """The data rows of a CSV with their line numbers. A missing file is a FileNotFoundError, a missing
    column a ValueError naming the file. A row with the wrong number of fields is a ValueError naming its
    line when `strict`, else skipped and reported (csv_row). Blank lines are skipped."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (expected the Kaggle competition layout)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; found {header}")
        rows, start = [], reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:
                continue
            if len(fields) != len(header):
                message = f"{len(fields)} fields, the header has {len(header)}"
                if strict:
                    raise ValueError(f"{path} line {line}: {message}")
                problems.report("csv_row", where(path, line), "wrong number of fields", message)
                continue
            rows.append(Row(line, dict(zip(header, (v.strip() for v in fields)))))
    return rows


def parse_int(row: Row, column: str) -> int:
    """The integer in a cell ('123', or an integral float such as '123.0'); CellError otherwise."""
    text = row.values[column]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value.is_integer() and abs(value) < 2**53):
        raise CellError(column, text, "an integer")
    return int(value)


def parse_float(row: Row, column: str) -> float:
    """The number in a cell: NaN for an empty / NaN cell (the caller decides what that costs), CellError for
    text that is not a number (e.g. '12,5px') or an infinite one."""
    text = row.values[column]
    if text.lower() in _NA_SPELLINGS:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise CellError(column, text, "a number") from None
    if math.isinf(value):
        raise CellError(column, text, "a finite number")
    return value


def read_labels(root: str) -> dict[int, np.ndarray]:
    """train.csv -> {study_id: int [25] severity codes}. Refused (ValueError naming file, line and column):
    a study_id that is not an integer, an unknown severity, two rows of one study that disagree (naming both
    lines), a row with the wrong number of fields, a file without rows. An identical repeated row is reported
    (csv_row) and read once."""
    path = os.path.join(root, LABELS_CSV)
    study_ids, codes, lines = read_label_table(path, strict=True)
    out: dict[int, np.ndarray] = {}
    first_line: dict[int, int] = {}
    for study_id, row_codes, line in zip(study_ids.tolist(), codes, lines.tolist()):
        if study_id in out:
            _repeated_study(path, study_id, first_line[study_id], line, out[study_id], row_codes)
            continue
        out[study_id], first_line[study_id] = row_codes, line
    return out


def read_label_table(path: str, *, strict: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A train.csv-shaped file (study_id + the 25 target columns) -> its rows in file order, repeats included:
    (study_ids int64 [N], severity codes int64 [N, 25] in target order, -1 missing, line numbers int64 [N]).
    A study_id that is not an integer or an unknown severity is a ValueError naming file, line and column.
    `strict` (the builder's train.csv): a row with the wrong number of fields or a file without rows is refused
    too; lenient (a solution file being scored): such a row is skipped and reported (csv_row), no rows is N = 0."""
    rows = read_rows(path, ("study_id", *labels_lib.TARGETS), strict=strict)
    if strict and not rows:
        raise ValueError(f"{path}: no study rows (header only); every label would be missing")
    study_ids, codes = [], []
    for row in rows:
        try:
            study_ids.append(parse_int(row, "study_id"))
            codes.append([_severity(row, t) for t in labels_lib.TARGETS])
        except CellError as err:
            raise ValueError(f"{path} line {row.line}, {err}") from None
    return (np.array(study_ids, np.int64), np.array(codes, np.int64).reshape(len(rows), labels_lib.NUM_TARGETS),
            np.array([row.line for row in rows], np.int64))


def _severity(row: Row, target: str) -> int:
    text = row.values[target]
    if text.lower() in _NA_SPELLINGS:
        return labels_lib.MISSING
    try:
        return labels_lib.severity_code(text)
    except ValueError:
        raise CellError(target, text, f"a severity ({', '.join(labels_lib.SEVERITY_NAMES)} or empty)") from None


def _repeated_study(path: str, study_id: int, first: int, line: int, kept: np.ndarray, codes: np.ndarray) -> None:
    """A second train.csv row of a study: refused when it disagrees, reported when it repeats the first."""
    if not np.array_equal(kept, codes):
        column = labels_lib.TARGETS[int(np.flatnonzero(kept != codes)[0])]
        raise ValueError(f"{path} lines {first} and {line}: study_id {study_id} has two rows that disagree "
                         f"(first in column {column})")
    problems.report("csv_row", where(path, line), "duplicate row", f"study_id = {study_id}, same as line {first}")


def read_annotations(root: str) -> dict[int, list[Annotation]]:
    """train_label_coordinates.csv -> {study_id: [Annotation]}, one per (study, target): the first row wins
    and a repeat is reported naming both lines. A row that cannot be parsed (an id that is not an integer, an
    unknown condition or level, an x/y that is not a number) is skipped and reported (csv_row); a row with a
    NaN x or y loses its point (label_point_dropped). A missing file gives records without coordinates."""
    path = os.path.join(root, COORDINATES_CSV)
    if not os.path.exists(path):
        problems.report("label_point_dropped", path, "coordinates CSV not found", "records get no coordinates")
        return {}
    out: dict[int, dict[int, Annotation]] = {}
    for row in read_rows(path, COORDINATE_COLUMNS, strict=False):
        try:
            study_id, a = _annotation(row)
        except CellError as err:
            problems.report("csv_row", where(path, row.line), "unparseable value", f"{err.column} = {err.value!r}")
            continue
        if math.isnan(a.row) or math.isnan(a.col):
            column = "x" if math.isnan(a.col) else "y"
            problems.report("label_point_dropped", where(path, row.line), "NaN coordinate",
                            f"{column} = {row.values[column]!r}")
            continue
        kept = out.setdefault(study_id, {}).setdefault(a.target, a)
        if kept is not a:
            same = dataclasses.replace(kept, line=a.line) == a
            problems.report("csv_row", where(path, row.line), "duplicate row" if same else "conflicting duplicate",
                            f"study {study_id} {labels_lib.TARGETS[a.target]}: line {kept.line} kept")
    return {s: list(a.values()) for s, a in out.items()}


def _annotation(row: Row) -> tuple[int, Annotation]:
    """(study_id, Annotation) of a coordinates row; CellError naming the first bad cell."""
    study_id, series_id = parse_int(row, "study_id"), parse_int(row, "series_id")
    instance = parse_int(row, "instance_number")
    try:
        condition = labels_lib.condition_from_csv(row.values["condition"])
    except ValueError:
        raise CellError("condition", row.values["condition"], "a known condition") from None
    try:
        level = labels_lib.level_from_csv(row.values["level"])
    except ValueError:
        raise CellError("level", row.values["level"], "a known level") from None
    x, y = parse_float(row, "x"), parse_float(row, "y")
    return study_id, Annotation(labels_lib.target_index(condition, level), series_id, instance, y, x, row.line)


def read_descriptions(path: str) -> dict[int, dict[int, tuple[str, int]]]:
    """A series descriptions CSV -> {study_id: {series_id: (description, line)}}. A row whose ids are not
    integers is skipped and reported (csv_row); a repeated (study, series) row is reported naming both lines,
    the first kept."""
    out: dict[int, dict[int, tuple[str, int]]] = {}
    for row in read_rows(path, DESCRIPTION_COLUMNS, strict=False):
        try:
            study_id, series_id = parse_int(row, "study_id"), parse_int(row, "series_id")
        except CellError as err:
            problems.report("csv_row", where(path, row.line), "unparseable value", f"{err.column} = {err.value!r}")
            continue
        description = row.values["series_description"]
        kept = out.setdefault(study_id, {}).setdefault(series_id, (description, row.line))
        if kept[1] != row.line:
            reason = "duplicate row" if kept[0] == description else "conflicting duplicate"
            problems.report("csv_row", where(path, row.line), reason,
                            f"study {study_id} series {series_id}: line {kept[1]} ({kept[0]!r}) kept")
    return out


def split_studies(root: str, split: str, described: dict, labels: dict, annotations: dict,
                  folders: dict) -> list[int]:
    """The study ids of a split, sorted: those of its descriptions CSV, for train also of train.csv, for test
    also of its image folders (`folders`: {study_id: {series_id: dir}}). Every study that one source (CSV,
    image folder) has and another lacks is reported (study_mismatch), saying what becomes of it."""
    desc_name, images = f"{split}_series_descriptions.csv", f"{split}_images"
    studies = set(described) | set(labels) | (set(folders) if split == "test" else set())
    for s in sorted(set(labels) - set(described)):
        problems.report("study_mismatch", f"{LABELS_CSV} study {s}", f"study not in {desc_name}",
                        "labels kept; series from its image folder, if any")
    for s in sorted(set(described) - set(labels) if split == "train" else ()):
        problems.report("study_mismatch", f"{desc_name} study {s}", f"study not in {LABELS_CSV}", "labels missing")
    for s in sorted(set(folders) - studies):
        problems.report("study_mismatch", os.path.join(root, images, str(s)), "image folder of a study in no CSV",
                        "ignored")
    for s in sorted(set(folders) - set(described) if split == "test" else ()):
        problems.report("study_mismatch", os.path.join(root, images, str(s)), f"study not in {desc_name}",
                        "series types from their DICOM SeriesDescription")
    for s in sorted(set(annotations) - studies):
        first = min(a.line for a in annotations[s])
        problems.report("study_mismatch", f"{COORDINATES_CSV} line {first}", "study in no other CSV",
                        f"study_id = {s}; its {len(annotations[s])} points dropped")
    if split == "train" and os.path.exists(os.path.join(root, COORDINATES_CSV)):
        for s in sorted(set(labels) - set(annotations)):
            problems.report("study_mismatch", f"{LABELS_CSV} study {s}", f"study not in {COORDINATES_CSV}",
                            "no label coordinates")
    return sorted(studies)
