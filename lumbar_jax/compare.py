"""Finished runs side by side: one row per run directory, read from its cv_summary.json and config.json.

  python scripts/compare.py --workdirs W1 W2 ... [--markdown] [--json out.json]

Every row shows the out-of-fold competition score (also calibrated, with temperatures cross-fitted over the
folds), its four component losses, accuracy and balanced accuracy next to the two references every report here
carries (docs/conventions.md section 2): the class-prior baseline and the best constant (`weighted_prior`, the
metric-weighted prior), both scored out of fold on the same studies.
A run that only matches the best constant learnt nothing from the images, whatever its accuracy.

Runs whose configs differ only in `seed` are one setting trained with several seeds: `seed_groups` gives each
such setting's OOF score as mean, standard deviation and range over its seeds, and its worst fold over every
seed (the stability figures of the README's Results).
"""

from __future__ import annotations

import hashlib
import json
import math
import os

from lumbar_jax import metrics, pipelines, rundir
from lumbar_jax.train.config import RESULT_NEUTRAL_FIELDS

# (key, plain-text header, markdown header) of every column, in order.
COLUMNS = (
    ("run", "run", "run"),
    ("pipeline", "pipeline", "pipeline"),
    ("model", "model", "model"),
    ("data", "data", "data"),
    ("loss", "loss", "loss"),
    ("score", "OOF score", "OOF score"),
    ("calibrated", "calibrated", "calibrated OOF"),
    *((k, k, k) for k in metrics.LOSS_KEYS),
    ("accuracy", "accuracy", "accuracy"),
    ("balanced_accuracy", "bal.acc", "balanced acc."),
    ("baseline", "class prior", "class-prior baseline"),
    ("best_constant", "best const", "best constant"),
)
_TEXT_COLUMNS = ("run", "pipeline", "model", "data", "loss")


class RunNotComparable(FileNotFoundError):
    """A run directory that is missing or has no complete CV summary; the message names each one."""


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _unfinished(workdir: str, config: dict) -> str:
    """Why `workdir` (which has no cv_summary.json) cannot be compared: how many folds are done."""
    num_folds = config.get("cv", {}).get("num_folds")
    if num_folds is None:
        return f"{workdir}: no cv_summary.json and no config.json: not a run directory of python -m lumbar_jax.main"
    done = sum(os.path.exists(rundir.result_path(workdir, k)) for k in range(num_folds))
    return (f"{workdir}: no cv_summary.json: the run is unfinished ({done} of {num_folds} folds done; "
            "re-run its command to finish it)")


def _pipeline(config: dict) -> str:
    """The run's pipeline as its `Pipeline.label` names it (runs before the two-stage pipeline: one-stage; a name
    this version does not know: that name as it is)."""
    name = config.get("pipeline", "one_stage")
    return pipelines.get(name).label(config) if name in pipelines.NAMES else str(name)


def run_row(workdir: str) -> dict:
    """The comparison row of one finished run; RunNotComparable naming `workdir` otherwise."""
    if not os.path.isdir(workdir):
        raise RunNotComparable(f"{workdir}: no such run directory")
    config_path, summary_path = rundir.config_path(workdir), rundir.summary_path(workdir)
    config = _read_json(config_path) if os.path.exists(config_path) else {}
    if not os.path.exists(summary_path):
        raise RunNotComparable(_unfinished(workdir, config))
    try:
        summary = _read_json(summary_path)
        oof = summary["oof"]
        row = {
            "run": workdir,
            "pipeline": _pipeline(config),
            "model": config.get("model", {}).get("name", "?"),
            "data": config.get("data", {}).get("config", "?"),
            "loss": config.get("train", {}).get("loss", "metric"),  # runs before train.loss trained on the metric
            "score": oof["score"],
            # cross-fitted, only the groups it improves calibrated, as predict.py applies it (runs before the
            # per-group choice: every group calibrated; before calibration was reported: None)
            "calibrated": summary.get("calibration", {}).get("after_selected",
                                                              summary.get("calibration", {}).get("after")),
            **{k: oof[k] for k in metrics.LOSS_KEYS},
            "accuracy": oof["accuracy"],
            "balanced_accuracy": oof["balanced_accuracy"],
            "baseline": oof["baseline"]["score"],
            "best_constant": oof["weighted_prior"]["score"],
            "baseline_losses": {k: oof["baseline"][k] for k in metrics.LOSS_KEYS},
            "num_studies": summary.get("num_studies"),
            "seed": config.get("seed"),
            "setting": _setting(config),
            **worst_fold(summary["folds"]),
        }
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise RunNotComparable(f"{summary_path}: not a CV summary of python -m lumbar_jax.main "
                               f"({type(err).__name__}: {err})") from None
    return row


def _setting(config: dict) -> str:
    """What a run trained, but for its seed: a digest of its config without `seed` and the fields that cannot
    change results (`RESULT_NEUTRAL_FIELDS`: the data's location, worker counts, ...); equal digests = one
    setting."""
    def kept(tree: dict, prefix: str = "") -> dict:
        return {k: kept(v, f"{prefix}{k}.") if isinstance(v, dict) else v for k, v in tree.items()
                if f"{prefix}{k}" not in RESULT_NEUTRAL_FIELDS and f"{prefix}{k}" != "seed"}

    canonical = json.dumps(kept(config), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def worst_fold(folds: list[dict]) -> dict:
    """{'worst_fold': the highest held-out score of a fold, 'worst_fold_index': that fold} (None without folds)."""
    scored = [(f["val"]["score"], f["fold"]) for f in folds if "val" in f]
    score, fold = max(scored) if scored else (None, None)
    return {"worst_fold": score, "worst_fold_index": fold}


def seed_groups(rows: list[dict]) -> list[dict]:
    """One entry per setting trained with two or more seeds, in order of first appearance: {'runs', 'seeds',
    'mean', 'std' (sample standard deviation over the seeds), 'min', 'max' of the OOF score, 'worst_fold',
    'worst_fold_run', 'worst_fold_index'}."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        scores = [r["score"] for r in members]
        mean = sum(scores) / len(scores)
        worst = max((r for r in members if r["worst_fold"] is not None), key=lambda r: r["worst_fold"], default=None)
        out.append({"runs": [r["run"] for r in members], "seeds": [r["seed"] for r in members], "mean": mean,
                    "std": math.sqrt(sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)),
                    "min": min(scores), "max": max(scores),
                    "worst_fold": worst["worst_fold"] if worst else None,
                    "worst_fold_run": worst["run"] if worst else None,
                    "worst_fold_index": worst["worst_fold_index"] if worst else None})
    return out


def format_seed_groups(groups: list[dict]) -> str:
    """One line per setting trained with several seeds; '' when there is none."""
    lines = []
    for g in groups:
        worst = ("" if g["worst_fold"] is None else
                 f"; worst fold {g['worst_fold']:.4f} ({g['worst_fold_run']}, fold {g['worst_fold_index']})")
        lines.append(f"{len(g['runs'])} seeds {g['seeds']} of one setting ({', '.join(g['runs'])}): OOF score mean "
                     f"{g['mean']:.4f}, std {g['std']:.4f}, range {g['min']:.4f}-{g['max']:.4f}{worst}")
    return "\n".join(lines)


def compare_runs(workdirs: list[str]) -> list[dict]:
    """Rows of every run, in the given order; RunNotComparable naming every run that cannot be compared."""
    rows, problems = [], []
    for workdir in workdirs:
        try:
            rows.append(run_row(workdir))
        except RunNotComparable as err:
            problems.append(str(err))
    if problems:
        raise RunNotComparable("\n".join(problems))
    return rows


def _cell(row: dict, key: str) -> str:
    value = row[key]
    if key in _TEXT_COLUMNS:
        return str(value)
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


def format_table(rows: list[dict]) -> str:
    """Aligned plain-text table (one line per run)."""
    cells = [[header for _, header, _ in COLUMNS]] + [[_cell(r, k) for k, _, _ in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        lines.append("  ".join(c.ljust(w) if k in _TEXT_COLUMNS else c.rjust(w)
                               for c, w, (k, _, _) in zip(line, widths, COLUMNS)))
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    """A GitHub-markdown table (one row per run)."""
    lines = ["| " + " | ".join(h for _, _, h in COLUMNS) + " |",
             "|" + "|".join("---" if k in _TEXT_COLUMNS else "---:" for k, _, _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(r, k) for k, _, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def to_json(rows: list[dict]) -> str:
    return json.dumps({"columns": [k for k, _, _ in COLUMNS], "runs": rows, "seed_groups": seed_groups(rows)},
                      indent=2)
