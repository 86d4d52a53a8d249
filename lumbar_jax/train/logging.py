"""Metrics of a fold to `metrics.jsonl` (one JSON object per line) and TensorBoard event files.

Only process 0 writes (`enabled`), so a multi-host run leaves one copy.
"""

from __future__ import annotations

import json
import math
import os

from tensorboardX import SummaryWriter


class MetricLogger:
    def __init__(self, directory: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self._jsonl = open(os.path.join(directory, "metrics.jsonl"), "a")
        self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))

    def write(self, step: int, values: dict[str, float]) -> None:
        """Append {step, **values}; non-finite numbers are written as null in JSON (and skipped in TB)."""
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()
        for key, value in clean.items():
            if value is not None:
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
