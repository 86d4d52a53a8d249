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
        """Append {step, **values} to metrics.jsonl and the same scalars to TensorBoard (the same keys in both);
        a non-finite number is null in JSON and NaN / inf in TensorBoard."""
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            self._tb.add_scalar(key, float(value), step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
