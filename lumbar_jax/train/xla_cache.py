"""JAX's persistent compilation cache for the training job: compiled XLA programs are kept on disk, keyed by
the program, the backend and the JAX version, so a program compiled once is loaded, not compiled again.

Every fold of a run builds the same train and eval steps (the per-fold dropout key is an argument, not a
constant), so folds 1..k-1 and later runs of the same config load those programs instead of compiling them. A
loaded program is the one that was compiled: results do not change.
"""

from __future__ import annotations

import os

import jax
from jax.experimental.compilation_cache import compilation_cache

CACHE_SUBDIR = "xla"  # under config.data.cache_dir


def enable(cache_dir: str) -> str:
    """Use `{cache_dir}/xla` as JAX's compilation cache (created if needed); returns that directory."""
    directory = os.path.join(os.path.expanduser(cache_dir), CACHE_SUBDIR)
    os.makedirs(directory, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != directory:
        compilation_cache.set_cache_dir(directory)
        compilation_cache.reset_cache()  # JAX opens its cache once: a new directory needs a fresh start
    return directory
