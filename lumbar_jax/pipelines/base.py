"""What a pipeline provides to the rest of the package: `Pipeline` (training, restoring, run files) and the
`Restorer` it returns for a trained run (prediction and checkpoint evaluation).

The main job (`cross_validation.cross_validate`) asks a pipeline to check the config against the mesh,
train each fold and add its own figures to the summary; `evaluate`, `predict` and `analysis` ask its
restorer to restore folds, predict records and evaluate folds. Each method's contract is here; the
pipelines are pipelines/one_stage.py and pipelines/two_stage.py.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import numpy as np

from lumbar_jax import labels, rundir


class Restorer(abc.ABC):
    """The folds of one trained run, restored onto a mesh: models built and eval steps compiled once for all
    folds (same config, same shapes), so an ensemble of 5 folds costs one compilation."""

    config = None  # the run's config (`inference.load_run_config`)

    @abc.abstractmethod
    def restore(self, fold: int, checkpoint: str | int = "best", workdir: str | None = None):
        """Fold `fold`'s model(s) at `checkpoint` ('best', 'latest' or a step): an object with `fold` and
        `step` (the training step of the restored checkpoint). `workdir`: the run to restore from, by default
        this restorer's; another run of the same config but its seed (a seed-ensemble member) restores onto the
        same templates, and its models predict through the same compiled steps (`predict`)."""

    @abc.abstractmethod
    def evaluate_fold(self, model, fold) -> dict:
        """A train.folds.Fold's held-out studies through `model`, as training scored them: {'fold',
        'best_step', 'val' (`metrics.evaluate_predictions` report), 'val_indices', 'val_probs'} and the
        pipeline's own figures (`describe_fold` says them in a line)."""

    def describe_fold(self, result: dict) -> str:
        """One log line of an `evaluate_fold` result."""
        return (f"fold {result['fold']}, step {result['best_step']}: score {result['val']['score']:.4f} "
                f"(baseline {result['val']['baseline']['score']:.4f})")

    def pooled_figures(self, results: Sequence[dict]) -> dict:
        """Figures over every fold's `evaluate_fold` result together, beside the OOF scores ({} if none)."""
        return {}

    @abc.abstractmethod
    def predict(self, models: Sequence, records: Sequence[dict], tta: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean over `models` of their probabilities float [N, 25, 3], each fold's normalised points float
        [F, N, 25, 3] or None for a pipeline without points) for every record (in memory), in order."""

    def provenance(self, models: Sequence) -> dict:
        """The pipeline's part of a prediction's provenance (JSON-able)."""
        return {}

    def blank_record(self) -> dict:
        """A record with every series absent (docs/conventions.md section 4), to compile the eval steps on."""
        return {"study_id": 0, "present": np.zeros(len(labels.SERIES_TYPES), bool),
                "labels": np.full(labels.NUM_TARGETS, labels.MISSING),
                "coords": np.full((labels.NUM_TARGETS, 3), -1.0, np.float32),
                "coords_series": np.full(labels.NUM_TARGETS, -1),
                **{name: np.zeros(tuple(self.config.model.volume_shape), np.uint8) for name in labels.SERIES_TYPES}}


class Pipeline(abc.ABC):
    """One way of turning studies into predictions: train a fold, restore a run, describe its files."""

    name: str  # its `config.pipeline` name (pipelines.NAMES)
    localises: bool  # whether it predicts the 25 target points (and saves them per fold)
    fold_files: Mapping[str, str]  # run-directory files of a fold beyond the common ones: path -> meaning

    def check_config(self, config, mesh) -> None:
        """Refuse a config this pipeline cannot run on `mesh` (e.g. a batch size the devices do not divide)."""

    def batch_fields(self, config) -> dict[str, int]:
        """{field: global batch size} of every model it trains: each must fit into a fold's training studies."""
        return {"train.batch_size": config.train.batch_size}

    @abc.abstractmethod
    def train_fold(self, config, workdir: str, fold, mesh) -> dict:
        """Train every model of `fold` (resuming where it stopped) and return its result, also written as
        result.json: {'fold', 'best_step', 'val', 'val_indices', 'val_probs'} and the pipeline's own figures."""

    def summary_figures(self, workdir: str, split) -> dict:
        """The pipeline's figures over every fold's held-out studies, added to cv_summary.json ({} if none)."""
        return {}

    def checkpoints(self, workdir: str, fold: int, checkpoint: str | int) -> list[tuple[str, str | int, str]]:
        """(directory, which checkpoint, what it is: a phrase for errors) of every checkpoint that restoring
        fold `fold` at `checkpoint` reads, in the order the restorer reads them: by default the fold's model."""
        return [(rundir.checkpoints_dir(workdir, fold), checkpoint, f"fold {fold} of {workdir}")]

    @abc.abstractmethod
    def restorer(self, workdir: str, config, mesh) -> Restorer:
        """The `Restorer` of a trained run of this pipeline."""

    def label(self, stored_config: Mapping) -> str:
        """The pipeline as `compare.py` names it, from a run's stored config.json."""
        return self.name

    def tta_refusal(self, workdir: str, config) -> str | None:
        """Why flip TTA is refused for the run in `workdir`, or None when `Restorer.predict(..., tta=True)` is
        meaningful."""
        return None

    def native_max_size(self, config) -> int | None:
        """The size cap of the native series a study is read with for this run (None: no native series)."""
        return None

    def has_target_queries(self, config) -> bool:
        """Whether the run's model has target queries whose attention can be drawn (analysis/attention.py)."""
        return False
