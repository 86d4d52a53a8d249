"""Train one model in one fold: steps, periodic held-out evaluation, checkpoints, logging, resume.

Reads top-down like big_vision's train.py: `run_stage` is restore-or-start, the loop and the end, and each step
it takes is a named function below it. A `Stage` says what is trained (the one-stage study model of
train/one_stage.py, or the localiser and crop classifier of train/two_stage.py). Everything a fold writes lives in
`workdir/fold_{k}/` (`lumbar_jax.rundir`, docs/conventions.md section 5); a fold whose `result.json` exists is
finished and is not trained again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import optax
import tqdm
from jax.experimental import multihost_utils

from lumbar_jax import rundir
from lumbar_jax.data import pipeline
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import seeds
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.logging import MetricLogger
from lumbar_jax.train.state import CheckpointStore

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message names the fold, the step and the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One model's training in one fold: what `run_stage` needs, whatever the model is.

    The one-stage study model (train/one_stage.py), and the localiser and crop classifier of the two-stage
    pipeline (train/two_stage.py), are each a Stage: a fresh state, its jit steps, its batches, and how its
    held-out part is scored (lower is better; the best-scoring state is kept as the `best` checkpoint).
    """

    name: str  # progress-bar label, e.g. "fold 0" or "fold 0 localiser"
    directory: str  # where its checkpoints/, metrics.jsonl and tensorboard/ go
    statics: Any
    state: dict  # freshly initialised (replaced by the latest checkpoint on resume)
    train_step: Callable  # (state, batch, step) -> (state, metrics)
    eval_step: Callable  # (state, batch) -> outputs
    batches: Callable[[int], Iterator[dict]]  # first step -> this process's train batches of model inputs
    evaluate: Callable[[dict], tuple[Any, dict]]  # state -> (held-out predictions, report with a 'score')
    scalars: Callable[[dict], dict]  # a held-out report -> the scalars logged for it
    train: Any  # steps, lr, warmup_steps, batch_size, log_every, eval_every, checkpoint_every
    score_unit: str = ""  # shown after the held-out score on the progress bar, e.g. " mm" (the localiser's error)


def run_stage(stage: Stage, mesh) -> tuple[dict, int, Any, dict]:
    """Train `stage` to its last step (resuming from its latest checkpoint) and return the best checkpoint's
    (state, step, held-out predictions, held-out report)."""
    # ---------------------------------------------------------------- setup
    tc = stage.train
    writer = MetricLogger(stage.directory, enabled=jax.process_index() == 0)
    store = CheckpointStore(os.path.join(stage.directory, rundir.CHECKPOINTS_DIR), training=True)

    # ---------------------------------------------------------------- restore or start
    state, start, best = _restore_or_start(store, stage.state, stage.name)
    batches = stage.batches(start)

    best_outputs = {}  # the best evaluation of this process: {'step', 'outputs': (predictions, report)}

    def evaluate(step: int, state) -> float:
        """Score the held-out part, log it, and keep `state` as the best checkpoint when it scores lowest."""
        predictions, result = stage.evaluate(state)
        writer.write(step, stage.scalars(result))
        if result["score"] < best["score"]:
            best.update(score=result["score"], step=step)
            best_outputs.update(step=step, outputs=(predictions, result))
            store.save_best(step, state, {"step": step, "best": best}, result["score"])
        return result["score"]

    # ---------------------------------------------------------------- the loop
    bar = tqdm.tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc=stage.name,
                    unit="step", disable=jax.process_index() != 0, dynamic_ncols=True)
    interval = _Interval(step_lib.learning_rate_schedule(tc.lr, tc.steps, tc.warmup_steps), tc.batch_size)
    for step in bar:
        t0 = time.perf_counter()
        batch = mesh_lib.shard_batch(next(batches), mesh)
        state, step_metrics = stage.train_step(state, batch, step)
        step_metrics = jax.device_get(step_metrics)
        _check_finite(step_metrics["loss"], step, store, stage.name)
        # the first step of a (resumed) run compiles: its time is not throughput
        interval.add(step_metrics, None if step == start else time.perf_counter() - t0)
        done = step + 1
        if _due(done, tc.log_every, tc.steps):
            _log_train(writer, bar, done, interval.scalars(done))
            interval = _Interval(interval.schedule, tc.batch_size)
        if _due(done, tc.eval_every, tc.steps):
            bar.set_postfix(val=f"{evaluate(done, state):.4f}{stage.score_unit}")
        if _due(done, tc.checkpoint_every, tc.steps):
            store.save_latest(done, state, {"step": done, "best": best})
    bar.close()

    # ---------------------------------------------------------------- the end: the best checkpoint
    # Its held-out outputs were computed when it was evaluated in this process (a restored state gives the same);
    # the state in memory is the last step's, which is often the best one.
    if not (best["step"] == tc.steps and start < tc.steps):
        state, _ = store.restore_best(state)
    if best_outputs.get("step") == best["step"]:
        predictions, report = best_outputs["outputs"]
    else:  # the best was evaluated before a resume
        predictions, report = stage.evaluate(state)
    store.close()
    writer.close()
    return state, best["step"], predictions, report


def train_stream(config, fold_index: int, batch_size: int) -> pipeline.Stream:
    """This process's part of fold `fold_index`'s training stream: its share of the global `batch_size`, the
    fold's data seed (`seeds.data_seed`), this process's shard."""
    return pipeline.Stream(mesh_lib.process_batch_size(batch_size), seeds.data_seed(config.seed, fold_index),
                           shard=pipeline.Shard.of_process())


def _restore_or_start(store: CheckpointStore, state, name: str) -> tuple[dict, int, dict]:
    """(state, first step, best so far {'score', 'step'}): from the newest checkpoint, latest or best, when there
    is one (`CheckpointStore.newest_step`: a kill after a best checkpoint and before the next latest one resumes
    at the best's step)."""
    if store.newest_step() is None:
        return state, 0, {"score": math.inf, "step": -1}
    state, meta = store.restore_newest(state)
    start, best = int(meta["step"]), meta["best"]
    log.info("%s: resuming at step %d (best so far %.4f at step %d)", name, start, best["score"], best["step"])
    return state, start, best


def _due(done: int, every: int, steps: int) -> bool:
    """Whether a periodic action (log, eval, checkpoint) is due after `done` steps: every `every`, and at the end."""
    return done % every == 0 or done == steps


def _check_finite(loss, step: int, store: CheckpointStore, name: str) -> None:
    """NonFiniteLossError naming the step and the last good checkpoint when the loss is NaN or inf."""
    if not np.isfinite(loss):
        raise NonFiniteLossError(
            f"{name}: non-finite loss {loss} at step {step + 1}; the last good checkpoint (step "
            f"{store.newest_step()}) is intact under {os.path.dirname(store.latest.directory)}, where a re-run "
            "resumes")


class _Interval:
    """The train steps since the last log line: their metrics, and the time of those that did not compile.

    Logged (`scalars`): every train metric's mean over the interval; `train/learning_rate`, the rate of the
    interval's last update; `train/studies_per_s`, studies (records of 3 series) per second of the timed steps
    (data loading and the step; held-out evaluation, checkpoints and the first step's compilation are outside
    them), absent when no step of the interval was timed.
    """

    def __init__(self, schedule: optax.Schedule, batch_size: int):
        self.schedule, self.batch_size = schedule, batch_size
        self.metrics: list[dict] = []
        self.timed_steps, self.timed_s = 0, 0.0

    def add(self, step_metrics: dict, seconds: float | None) -> None:
        self.metrics.append(step_metrics)
        if seconds is not None:
            self.timed_steps, self.timed_s = self.timed_steps + 1, self.timed_s + seconds

    def scalars(self, done: int) -> dict[str, float]:
        values = {f"train/{k}": float(np.mean([float(m[k]) for m in self.metrics])) for k in self.metrics[0]}
        values["train/learning_rate"] = float(self.schedule(done - 1))  # step done-1's update used it
        if self.timed_steps and self.timed_s > 0:
            values["train/studies_per_s"] = self.timed_steps * self.batch_size / self.timed_s
        return values


def _log_train(writer: MetricLogger, bar, done: int, values: dict[str, float]) -> None:
    writer.write(done, values)
    rate = values.get("train/studies_per_s")
    bar.set_postfix(loss=f"{values['train/loss']:.3f}", **({"studies_s": f"{rate:.1f}"} if rate else {}))


def val_scalars(result: dict) -> dict:
    """The scalars of a held-out report as logged: val/{metric}, val/baseline_{metric}, the best constant."""
    return ({f"val/{k}": v for k, v in result.items() if not isinstance(v, dict)}
            | {f"val/baseline_{k}": v for k, v in result["baseline"].items()}
            | {"val/weighted_prior_score": result["weighted_prior"]["score"]})


def write_result(workdir: str, fold_index: int, result: dict) -> None:
    """Process 0 writes result.json; no process goes on (and reads it) before it is written."""
    if jax.process_index() == 0:
        rundir.write_fold_result(workdir, fold_index, result)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"lumbar_jax fold {fold_index} result.json written")
