"""A seed ensemble (the directory `scripts/ensemble.py` writes) as what predict.py predicts with.

An ensemble directory holds ensemble_summary.json (`seed_ensemble.average_runs`): its members' run directories
and seeds, and under 'ensemble' the CV summary of their averaged out-of-fold probabilities
(`cross_validation.oof_summary`), with the calibration cross-fitted on that average. `read_seed_ensemble` checks
it before any model is built: every member a finished run (its cv_summary.json), their configs equal but for
the seed, one dataset (`seed_ensemble.check_same_setting`). predict.py then restores every member's folds
through one restorer (the members differ only in seed, so their checkpoints restore onto the same templates and
predict through the same compiled steps) and averages them all with equal weight: every member restores the
same folds, so each member weighs as much as the average of its folds. The average is calibrated with the
ensemble's temperatures, never the members' own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Sequence

from lumbar_jax import compare, rundir, seed_ensemble, study_report

CALIBRATED_WITH = (f"the seed ensemble's temperatures ({rundir.ENSEMBLE_SUMMARY_FILE}, fitted on the average's "
                   "out-of-fold predictions), not the members' own")


@dataclasses.dataclass(frozen=True)
class SeedEnsemble:
    """A checked seed-ensemble directory."""

    workdir: str  # the ensemble's directory, holding ensemble_summary.json
    members: tuple[str, ...]  # each member's run directory, found from the current directory
    seeds: tuple[int, ...]  # each member's seed
    summary: dict  # ensemble_summary.json 'ensemble': the average's CV summary ('oof', 'folds', 'calibration')

    @property
    def summary_path(self) -> str:
        return summary_path(self.workdir)


def summary_path(workdir: str) -> str:
    """`{workdir}/ensemble_summary.json`."""
    return os.path.join(workdir, rundir.ENSEMBLE_SUMMARY_FILE)


def is_seed_ensemble(workdir: str) -> bool:
    """Whether `workdir` is a seed-ensemble directory (it has ensemble_summary.json) rather than a run."""
    return os.path.isfile(summary_path(workdir))


def member_dir(workdir: str, stored: str) -> str:
    """A member's run directory as ensemble_summary.json of the ensemble in `workdir` stores it: the stored path
    (absolute; older summaries: relative to the directory the ensemble was made from) when it is a directory,
    else `{workdir}/{its last part}` (scripts/ensemble.py --config trains the members inside the ensemble's
    directory, so an ensemble moved as a whole still finds them) when that is one, else the stored path."""
    inside = os.path.join(workdir, os.path.basename(os.path.normpath(stored)))
    return inside if not os.path.isdir(stored) and os.path.isdir(inside) else stored


def read_seed_ensemble(workdir: str) -> SeedEnsemble:
    """The seed ensemble in `workdir`, checked without building a model. Errors in one line naming the file or
    member: ensemble_summary.json unreadable or not scripts/ensemble.py's, a member missing or unfinished
    (`compare.run_row`), members of different settings, datasets or the same seed."""
    path = summary_path(workdir)
    try:
        with open(path) as f:
            stored = json.load(f)
        listed = [(str(m["workdir"]), int(m["seed"])) for m in stored["members"]]
        summary = stored["ensemble"]
        float(summary["oof"]["score"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a seed-ensemble summary of scripts/ensemble.py "
                         f"({type(err).__name__}: {err})") from None
    members = [member_dir(workdir, stored_dir) for stored_dir, _ in listed]
    for member in members:
        try:
            compare.run_row(member)
        except compare.RunNotComparable as err:
            raise compare.RunNotComparable(f"{path}: member {err}") from None
    try:
        seed_ensemble.check_same_setting(members)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return SeedEnsemble(workdir, tuple(members), tuple(seed for _, seed in listed), summary)


def ensemble_quality(ensemble: SeedEnsemble) -> dict:
    """`study_report.summary_quality` of the average's CV summary: its out-of-fold score, class prior and best
    constant. The average has no localiser of its own (each member's folds crop at their own localisers'
    points), so a two-stage ensemble's localiser figures are the mean of its members' cv_summary.json
    'localiser' median and p90 mm, and say so."""
    localisers = [rundir.read_summary(member).get("localiser") for member in ensemble.members]
    localiser = None
    if all(localisers):
        localiser = {key: None if any(figures[key] is None for figures in localisers) else
                     statistics.mean(figures[key] for figures in localisers) for key in ("median_mm", "p90_mm")}
        localiser["of"] = f"mean of the {len(localisers)} members' figures"
    scored = f"seed ensemble of {len(ensemble.members)} members, their average"
    return study_report.summary_quality(ensemble.summary, ensemble.summary_path, localiser, scored)


def ensemble_provenance(ensemble: SeedEnsemble, folds: Sequence[int], models: Sequence, restorer) -> dict:
    """The seed-ensemble part of a prediction's provenance (JSON-able): ensemble_summary.json, how the members
    were averaged and calibrated, and per member its run directory, seed, folds and checkpoint steps (and the
    pipeline's part, `restorer.provenance`). `models`: every member's restored folds, member after member."""
    per_member = len(folds)
    members = []
    for index, (member, seed) in enumerate(zip(ensemble.members, ensemble.seeds)):
        own = models[index * per_member:(index + 1) * per_member]
        members.append({"workdir": os.path.abspath(member), "seed": int(seed), "folds": [int(k) for k in folds],
                        "checkpoint_steps": [int(m.step) for m in own], **restorer.provenance(own)})
    return {"summary": os.path.abspath(ensemble.summary_path), "members": members,
            "averaged": "equal weights: each member the average of its folds",
            "calibrated_with": CALIBRATED_WITH}
