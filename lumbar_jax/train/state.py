"""Train state (model + optimizer + optional EMA) and its Orbax checkpoints (latest and best, kept apart).

The NNX model and optimizer are split once into static graph definitions and a pytree of arrays
(`TrainState`), which is what jit carries, shards and donates, and what Orbax writes. Dropout randomness is
not state: every step reseeds it from (seed, step), so a resumed run draws exactly what an uninterrupted one
would, and checkpoints hold no RNG keys.

Checkpoints of a fold (docs/conventions.md section 5): `fold_k/checkpoints/latest` (for resume, every
`checkpoint_every` steps and at the end) and `fold_k/checkpoints/best` (by validation score, lower is
better). Two managers, because Orbax's `best_fn` keeps the best N and would delete the latest.

Both kinds hold the whole train state (model, optimizer, EMA) and the step, so either is an exact resume point:
a killed run resumes from the newer of the two (`newest_step`). A best checkpoint saved after the last latest
one (an evaluation between two latest saves) is that point; resuming from the older latest would train to
the best's step again and try to save it a second time, which Orbax refuses.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class TrainStatics:
    """What jit treats as static: graph definitions and the (constant) RNG streams of the model."""

    train_def: Any  # model graphdef in train mode (dropout on, BatchNorm batch statistics)
    eval_def: Any  # the same model in eval mode
    rng_state: Any  # the model's RNG streams; reseeded every step
    opt_def: Any


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, use_ema: bool
                       ) -> tuple[TrainStatics, dict]:
    """Split a freshly built model and its optimizer into statics and a pytree state.

    Returns (statics, state) with state = {'model': nnx.State (params, batch stats),
    'opt': nnx.State (optimizer moments, step), 'ema': params copy or None}.
    """
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    model.eval()
    eval_def, _, _ = nnx.split(model, nnx.RngState, ...)
    model.train()
    train_def, rng_state, model_state = nnx.split(model, nnx.RngState, ...)
    opt_def, opt_state = nnx.split(optimizer)
    # The EMA starts as a copy of the parameters in buffers of its own: the train step donates the whole state,
    # and XLA refuses to donate one buffer twice.
    ema = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)) if use_ema else None
    return TrainStatics(train_def, eval_def, rng_state, opt_def), {"model": model_state, "opt": opt_state, "ema": ema}


def merge_model(statics: TrainStatics, rng_state, model_state, train: bool) -> nnx.Module:
    """The NNX model from its parts; `rng_state` is passed in (not closed over) so jit may reseed it."""
    return nnx.merge(statics.train_def if train else statics.eval_def, rng_state, model_state)


def eval_model_state(state: dict):
    """The model state to evaluate: EMA parameters (when kept) over the trained batch statistics."""
    if state["ema"] is None:
        return state["model"]
    return nnx.merge_state(state["model"], state["ema"])


def _to_pure(state: dict) -> dict:
    """nnx.State leaves -> nested dicts of arrays (what Orbax writes); absent parts (no EMA) are left out."""
    return {k: nnx.to_pure_dict(v) for k, v in state.items() if v is not None}


def _abstract(tree):
    """Shapes, dtypes and shardings of a pytree of arrays: Orbax restores onto exactly these devices."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _from_pure(template: dict, pure: dict) -> dict:
    out = {}
    for key, value in template.items():
        if value is None:
            out[key] = None
            continue
        restored = jax.tree.map(lambda x: x, value)
        nnx.replace_by_pure_dict(restored, pure[key])
        out[key] = restored
    return out


class CheckpointStore:
    """Latest and best Orbax checkpoints of one fold, with a small JSON of metadata beside each."""

    def __init__(self, directory: str, keep_latest: int = 1, training: bool = False):
        """`training`: the store of a run that writes (train/loop.py): leftovers of a save cut short by a kill
        (Orbax's `*.orbax-checkpoint-tmp-*` folders, never read as checkpoints) are removed. Readers leave
        them alone, since a run may be saving there."""
        directory = os.path.abspath(directory)
        options = dict(enable_async_checkpointing=False, create=True, cleanup_tmp_directories=training)
        self.latest = ocp.CheckpointManager(
            os.path.join(directory, "latest"), item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep_latest, **options))
        self.best = ocp.CheckpointManager(
            os.path.join(directory, "best"), item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["score"], best_mode="min",
                                                 **options))

    @staticmethod
    def _args(state: dict, meta: dict):
        return ocp.args.Composite(state=ocp.args.StandardSave(_to_pure(state)), meta=ocp.args.JsonSave(meta))

    def save_latest(self, step: int, state: dict, meta: dict) -> None:
        self.latest.save(step, args=self._args(state, meta), force=True)
        self.latest.wait_until_finished()

    def save_best(self, step: int, state: dict, meta: dict, score: float) -> None:
        self.best.save(step, args=self._args(state, meta), metrics={"score": float(score)}, force=True)
        self.best.wait_until_finished()

    def _restore(self, manager: ocp.CheckpointManager, step: int | None, template: dict) -> tuple[dict, dict]:
        step = manager.latest_step() if step is None else step
        abstract = _abstract(_to_pure(template))
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return _from_pure(template, restored["state"]), dict(restored["meta"])

    def restore_latest(self, template: dict, step: int | None = None) -> tuple[dict, dict]:
        """(state shaped and sharded like `template`, metadata) of the latest (or given) step."""
        return self._restore(self.latest, step, template)

    def restore_best(self, template: dict) -> tuple[dict, dict]:
        return self.restore(template, "best")

    def resolve(self, which: str | int = "best") -> tuple[ocp.CheckpointManager, int]:
        """(manager, step) of the 'best' or 'latest' checkpoint, or of step `which` (an int, or its digits) from
        either manager, without reading it; FileNotFoundError naming the directory (and the steps there)
        otherwise, ValueError for anything else than those three."""
        if which == "best":
            step = self.best.best_step()
            if step is None:
                raise FileNotFoundError(f"no best checkpoint under {self.best.directory}")
            return self.best, step
        if which == "latest":
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no latest checkpoint under {self.latest.directory}")
            return self.latest, step
        if not str(which).isdigit():
            raise ValueError(f"checkpoint must be 'best', 'latest' or a step number, got {which!r}")
        step = int(which)
        for manager in (self.best, self.latest):
            if step in manager.all_steps():
                return manager, step
        available = sorted(set(self.best.all_steps()) | set(self.latest.all_steps()))
        raise FileNotFoundError(f"no checkpoint of step {step} under {os.path.dirname(self.best.directory)} "
                                f"(steps kept: {available})")

    def restore(self, template: dict, which: str | int = "best") -> tuple[dict, dict]:
        """(state, metadata) of the checkpoint `resolve(which)` names; its errors otherwise."""
        manager, step = self.resolve(which)
        return self._restore(manager, step, template)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def newest_step(self) -> int | None:
        """The step of the newest checkpoint of either kind, where a killed run resumes (None: none yet)."""
        steps = [s for s in (self.latest.latest_step(), self.best.latest_step()) if s is not None]
        return max(steps, default=None)

    def restore_newest(self, template: dict) -> tuple[dict, dict]:
        """(state, metadata) of the newest checkpoint (`newest_step`; the latest one on a tie)."""
        step = self.newest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {os.path.dirname(self.latest.directory)}")
        manager = self.latest if step == self.latest.latest_step() else self.best
        return self._restore(manager, step, template)

    @classmethod
    def has_checkpoint(cls, directory: str) -> bool:
        """Whether `directory` holds a checkpoint of either kind (a run to resume rather than start)."""
        store = cls(directory)
        try:
            return store.newest_step() is not None
        finally:
            store.close()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
