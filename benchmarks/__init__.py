"""lumbar_jax benchmark suite: `python -m benchmarks.run [--smoke] [--only ...] [--out ...]` (see run.py)."""
