"""The 25 targets, severities and the CSV spellings of the RSNA 2024 lumbar task.

This is the only copy of these names in lumbar_jax (docs/conventions.md section 1): arrays, logits and CSV columns
all use `TARGETS` order, `[25]` = 5 conditions x 5 levels, condition-major.
"""

from __future__ import annotations

import numpy as np

# Conditions as they appear in target names (train.csv columns) and in train_label_coordinates.csv.
CONDITIONS = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
CONDITION_CSV_NAMES = (
    "Spinal Canal Stenosis",
    "Left Neural Foraminal Narrowing",
    "Right Neural Foraminal Narrowing",
    "Left Subarticular Stenosis",
    "Right Subarticular Stenosis",
)
LEVELS = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
LEVEL_CSV_NAMES = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")

TARGETS = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS)
NUM_CONDITIONS = len(CONDITIONS)
NUM_LEVELS = len(LEVELS)
NUM_TARGETS = len(TARGETS)  # 25

# Severities: code -> name as in train.csv, and prediction column names of submission.csv.
SEVERITY_NAMES = ("Normal/Mild", "Moderate", "Severe")
SEVERITY_COLUMNS = ("normal_mild", "moderate", "severe")
NUM_SEVERITIES = len(SEVERITY_NAMES)  # 3
MISSING = -1  # severity code of a missing label: not scored, not trained on.
SEVERITY_WEIGHTS = np.array([1.0, 2.0, 4.0])  # competition sample weight per true class

# Series types in record order (docs/conventions.md section 4) and their series_descriptions.csv spellings.
SERIES_TYPES = ("sagittal_t1", "sagittal_t2", "axial_t2")
SERIES_DESCRIPTIONS = ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")

# The series type each condition is graded and annotated on in the competition data (index in SERIES_TYPES,
# per condition in CONDITIONS order): spinal canal stenosis on the sagittal T2/STIR, neural foraminal narrowing
# on the sagittal T1, subarticular stenosis on the axial T2.
CONDITION_SERIES = tuple(SERIES_TYPES.index(name) for name in
                         ("sagittal_t2", "sagittal_t1", "sagittal_t1", "axial_t2", "axial_t2"))

# Metric groups (docs/conventions.md section 2): group name -> indices of its conditions in CONDITIONS.
CONDITION_GROUPS = {
    "spinal": (0,),
    "foraminal": (1, 2),
    "subarticular": (3, 4),
}

# Per target (TARGETS order, [25] int): its condition (index in CONDITIONS), its metric group (index in
# CONDITION_GROUPS), its disc level, its side (0 = none / spinal, 1 = left, 2 = right) and the series it is
# graded, annotated, located and cropped on (index in SERIES_TYPES).
_CONDITION_GROUP = tuple(next(i for i, conds in enumerate(CONDITION_GROUPS.values()) if c in conds)
                         for c in range(NUM_CONDITIONS))
_CONDITION_SIDE = tuple(1 if name.startswith("left_") else 2 if name.startswith("right_") else 0
                        for name in CONDITIONS)
TARGET_CONDITION = np.repeat(np.arange(NUM_CONDITIONS), NUM_LEVELS)
TARGET_GROUP = np.repeat(_CONDITION_GROUP, NUM_LEVELS)
TARGET_LEVEL = np.tile(np.arange(NUM_LEVELS), NUM_CONDITIONS)
TARGET_SIDE = np.repeat(_CONDITION_SIDE, NUM_LEVELS)
TARGET_SERIES = np.repeat(CONDITION_SERIES, NUM_LEVELS)

# Left/right partner of every target (identity for spinal): what a left/right flip swaps.
_CONDITION_MIRROR = (0, 2, 1, 4, 3)
MIRROR_TARGET_INDEX = np.array(
    [_CONDITION_MIRROR[TARGET_CONDITION[t]] * NUM_LEVELS + TARGET_LEVEL[t] for t in range(NUM_TARGETS)]
)


def target_index(condition: int, level: int) -> int:
    """Index in TARGETS of condition `condition` (0..4) at level `level` (0..4)."""
    return condition * NUM_LEVELS + level


def group_target_indices(group: str) -> np.ndarray:
    """Indices in TARGETS of all targets of a metric group ('spinal', 'foraminal', 'subarticular')."""
    return np.array([target_index(c, lv) for c in CONDITION_GROUPS[group] for lv in range(NUM_LEVELS)])


def condition_from_csv(name: str) -> int:
    """Condition index of a train_label_coordinates.csv spelling; ValueError naming it otherwise."""
    try:
        return CONDITION_CSV_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown condition {name!r}; expected one of {CONDITION_CSV_NAMES}") from None


def level_from_csv(name: str) -> int:
    """Level index of a train_label_coordinates.csv spelling ('L1/L2' ... 'L5/S1')."""
    try:
        return LEVEL_CSV_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown level {name!r}; expected one of {LEVEL_CSV_NAMES}") from None


def severity_code(name) -> int:
    """Severity code of a train.csv cell: 0/1/2, or MISSING for an empty / NaN cell."""
    if name is None or (isinstance(name, float) and np.isnan(name)) or name == "":
        return MISSING
    try:
        return SEVERITY_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown severity {name!r}; expected one of {SEVERITY_NAMES} or empty") from None


def row_id(study_id: int, target: str) -> str:
    """Submission row id, e.g. '4003253_spinal_canal_stenosis_l1_l2'."""
    return f"{int(study_id)}_{target}"


def parse_row_id(rid: str) -> tuple[int, int]:
    """(study_id, target index) of a submission row id; ValueError naming it if malformed."""
    study, _, target = rid.partition("_")
    if not study.isdigit() or target not in TARGETS:
        raise ValueError(f"malformed row_id {rid!r}: expected '{{study_id}}_{{target}}' with a known target")
    return int(study), TARGETS.index(target)


def study_row_ids(study_id: int) -> list[str]:
    """The 25 row ids of one study, in target order."""
    return [row_id(study_id, t) for t in TARGETS]
