"""Pipelines: the ways a run turns a study into its 25 predictions, one object each, chosen once by name.

`config.pipeline` names one of `NAMES`; `get(name)` imports its module and returns its `Pipeline`
(pipelines/base.py): how it trains a fold, restores a fold for prediction, predicts records (with points
where it has them), evaluates a fold, and which run-directory files it writes. No other module tests a
pipeline's name. This module imports nothing of the package, so config validation can read `NAMES`.

Adding a pipeline: write `pipelines/NAME.py` with a `PIPELINE` object (a `base.Pipeline`) and add its line
below (docs/architecture.md, "Adding a pipeline").
"""

from __future__ import annotations

import importlib

_MODULES = {
    "one_stage": "lumbar_jax.pipelines.one_stage",  # the study model reads whole volumes
    "two_stage": "lumbar_jax.pipelines.two_stage",  # a localiser finds the 25 points, a classifier reads crops
}
NAMES = tuple(_MODULES)


def get(name: str):
    """The `base.Pipeline` registered as `name` (one of `NAMES`)."""
    if name not in _MODULES:
        raise ValueError(f"pipeline {name!r} unknown; use one of {NAMES}")
    return importlib.import_module(_MODULES[name]).PIPELINE

