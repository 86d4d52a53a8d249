"""The one-stage pipeline: one study model per fold reads the three whole volumes (models/fused.py).

Training is train/one_stage.py. A trained run is restored by `OneStageRestorer`: each fold's study model on
whatever devices are present (a checkpoint written on 4 devices restores on 1: the state is replicated, and
Orbax restores onto the shardings of a freshly built template), predicted alone or as the ensemble of folds,
optionally averaged with the left/right-mirrored study (flip TTA); target-query models also show where each
query looked (`query_attention`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lumbar_jax import inference
from lumbar_jax import labels
from lumbar_jax.data import augment
from lumbar_jax.dataset_configs import GRID_DATASETS
from lumbar_jax.models import registry
from lumbar_jax.pipelines.base import Pipeline, Restorer
from lumbar_jax.train import one_stage
from lumbar_jax.train.eval_loop import Predict
from lumbar_jax.train.folds import evaluate_fold
from lumbar_jax.train.init import study_model_state
from lumbar_jax.train.state import eval_model_state, merge_model


@dataclasses.dataclass(frozen=True)
class FoldModel:
    """One fold's restored study model."""

    fold: int
    step: int  # training step of the restored checkpoint
    state: dict


class FlippedRecords(Sequence):
    """`records` mirrored left <-> right (`augment.flip_left_right`), lazily, record by record."""

    def __init__(self, records: Sequence[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return augment.flip_left_right(self.records[index])


class OneStageRestorer(Restorer):
    """The folds of a one-stage run restored onto `mesh`: the model is built once, and two eval steps (plain,
    and with the attention-peak distance of target-query models, for evaluation) compile on first use."""

    def __init__(self, workdir: str, config, mesh: Mesh):
        self.workdir, self.config, self.mesh = workdir, config, mesh
        self.statics, self.template = study_model_state(config, mesh)
        self.eval_step = one_stage.study_eval_step(config, self.statics, mesh, with_attention_peaks=False)
        self.evaluation_step = one_stage.study_eval_step(config, self.statics, mesh, with_attention_peaks=True)
        self.batch_size = inference.eval_batch_size(config, mesh)

    def restore(self, fold: int, checkpoint: str | int = "best", workdir: str | None = None) -> FoldModel:
        (directory, which, what), = PIPELINE.checkpoints(workdir or self.workdir, fold, checkpoint)
        state, step = inference.restore_checkpoint(directory, self.template, which, what)
        return FoldModel(fold, step, state)

    def evaluate_fold(self, model: FoldModel, fold) -> dict:
        probs, val = evaluate_fold(self.evaluation_step, model.state, fold, self.batch_size, self.mesh)
        return {"fold": fold.index, "best_step": model.step, "val": val, "val_indices": fold.val_idx,
                "val_probs": probs}

    def predict_records(self, model: FoldModel, records: Sequence[dict], tta: bool = False) -> np.ndarray:
        """Probabilities float [N, 25, 3] of one fold's model for every record, in order. With `tta` the mean of
        the prediction and the unflipped prediction of the mirrored study."""
        indices, study_ids = np.arange(len(records)), np.array([int(r["study_id"]) for r in records])
        predict = Predict(self.eval_step, self.batch_size, self.mesh)
        probs, _ = predict(model.state, records, indices, study_ids)
        if tta:
            flipped, _ = predict(model.state, FlippedRecords(records), indices, study_ids)
            probs = (probs + augment.unflip_predictions(flipped)) / 2
        return probs

    def predict(self, models: Sequence[FoldModel], records: Sequence[dict], tta: bool = False
                ) -> tuple[np.ndarray, None]:
        return np.mean([self.predict_records(m, records, tta) for m in models], axis=0), None

    def query_attention(self, model: FoldModel, records: list[dict]) -> tuple[np.ndarray, np.ndarray, dict]:
        """Where each target query of a target-query model looked, for a few studies (in memory).

        Returns (probabilities float [N, 25, 3], attention float [N, 25, K] over the head's keys (rows sum to
        1), layout {'series': int [K], 'centres': float [K, 3] normalised (depth, row, col), 'grids': the token
        grid of each key source, 'volume_shape': [D, H, W]}); keys are series-major within each source,
        sources in order (ViT patches, then EfficientNet cells).
        """
        net = merge_model(self.statics, self.statics.rng_state, eval_model_state(model.state), train=False)
        if not net.head.spatial:
            raise ValueError("attention maps need a model with the 'target_query' fusion head")
        volumes = np.stack([np.stack([r[name] for name in labels.SERIES_TYPES]) for r in records])
        present = np.stack([np.asarray(r["present"], bool) for r in records])
        logits, attention = nnx.jit(lambda m, v, p: m.with_query_attention(v, p))(net, volumes, present)
        series, centres = net.head.key_layout()
        layout = {"series": series, "centres": centres, "grids": net.head.grids,
                  "volume_shape": net.head.volume_shape}
        return np.asarray(jax.nn.softmax(logits, axis=-1)), np.asarray(attention), layout


class OneStagePipeline(Pipeline):
    name = "one_stage"
    localises = False
    fold_files = {}

    def train_fold(self, config, workdir: str, fold, mesh) -> dict:
        return one_stage.train_fold(config, workdir, fold, mesh)

    def restorer(self, workdir: str, config, mesh) -> OneStageRestorer:
        return OneStageRestorer(workdir, config, mesh)

    def tta_refusal(self, workdir: str, config) -> str | None:
        if config.data.config in GRID_DATASETS:  # records in one shared patient grid (data/grid.py)
            return f"the {config.data.config} grid records of {workdir} have no canonical layout to mirror"
        return None

    def has_target_queries(self, config) -> bool:
        return registry.uses_query_attention(config.model)


PIPELINE = OneStagePipeline()
