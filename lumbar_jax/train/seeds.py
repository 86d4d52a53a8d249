"""Every random stream of a run derived from `config.seed`, in one place (docs/architecture.md: determinism).

Model initialisation is the same in every fold (the folds differ in data, not in their starting point); the
dropout keys and the data order (batches, augmentation, crop jitter) differ per fold. The folds themselves
are split with `config.seed` as it is (train/folds.py).
"""

from __future__ import annotations

from flax import nnx


def model_rngs(seed: int) -> nnx.Rngs:
    """The streams a fresh model is initialised with: parameters from `seed`, dropout from `seed + 1`."""
    return nnx.Rngs(params=seed, dropout=seed + 1)


def dropout_seed(seed: int, fold: int) -> int:
    """The seed of fold `fold`'s dropout keys in the train step (`step.make_train_step`)."""
    return seed + 1000 * fold


def data_seed(seed: int, fold: int) -> int:
    """The seed of fold `fold`'s training batch order and augmentation (`data.pipeline.train_batches`)."""
    return seed + fold
