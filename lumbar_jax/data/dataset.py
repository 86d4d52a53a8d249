"""Which dataset a run trains on: a built TFDS dir, a Kaggle folder to build, or the embedded synthetic set.

`config.data` decides, in this order:
  - `data_dir` holding a built `rsna_lumbar_spine/{config}`: used as is;
  - `manual_dir` (a Kaggle-layout folder): built into `data_dir` (or the cache) once, then used;
  - neither: the synthetic Kaggle-layout set (`synthetic_studies`, `synthetic_seed`) is generated into
    `cache_dir` once and built there. This is what makes the main job run with no download.
"""

from __future__ import annotations

import logging
import os

import tensorflow_datasets as tfds

from lumbar_jax.data import synthetic
from lumbar_jax.data.build import build_dataset, tfds_scratch_tempdir

log = logging.getLogger(__name__)
DATASET = "rsna_lumbar_spine"


def is_built(data_dir: str, config: str) -> bool:
    """Whether a complete `rsna_lumbar_spine/{config}` (any version) exists under data_dir."""
    root = os.path.join(data_dir, DATASET, config)
    return os.path.isdir(root) and any(
        os.path.exists(os.path.join(root, v, "dataset_info.json")) for v in os.listdir(root))


def synthetic_manual_dir(cache_dir: str, num_studies: int, seed: int) -> str:
    """Generate (once) the synthetic Kaggle-layout folder for (num_studies, seed) and return its path."""
    out = os.path.join(cache_dir, f"synthetic_{num_studies}_seed{seed}")
    marker = os.path.join(out, "synthetic_summary.json")
    if not os.path.exists(marker):
        log.info("generating %d synthetic studies into %s", num_studies, out)
        synthetic.write_synthetic_dataset(out, num_studies=num_studies, seed=seed, workers=os.cpu_count() or 1)
    return out


def prepare(data_config) -> str:
    """Resolve config.data to a TFDS data dir holding the built dataset (building it if needed)."""
    cache_dir = os.path.expanduser(data_config.cache_dir)
    workers = data_config.build_workers or os.cpu_count() or 1
    if data_config.data_dir and is_built(data_config.data_dir, data_config.config):
        return data_config.data_dir
    if data_config.manual_dir:
        data_dir = data_config.data_dir or os.path.join(cache_dir, "tfds")
        build_dataset(data_config.manual_dir, data_dir, data_config.config, workers)
        return data_dir
    if data_config.data_dir:
        raise FileNotFoundError(f"data.data_dir={data_config.data_dir} holds no built {DATASET}/"
                                f"{data_config.config}; build it or set data.manual_dir")
    manual_dir = synthetic_manual_dir(cache_dir, data_config.synthetic_studies, data_config.synthetic_seed)
    data_dir = os.path.join(manual_dir, "tfds")
    build_dataset(manual_dir, data_dir, data_config.config, workers)
    return data_dir


def load_split(data_dir: str, config: str, split: str = "train"):
    """Random-access source of a built split (ArrayRecord through TFDS's data source; no TensorFlow);
    FileNotFoundError naming the build command when the dataset is not built."""
    import lumbar_jax.data.rsna_lumbar_spine  # noqa: F401  (registers the builder)

    with tfds_scratch_tempdir():
        builder = tfds.builder(f"{DATASET}/{config}", data_dir=data_dir)
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"no built {DATASET}/{config} under data_dir {data_dir}: build it with `python -m "
                f"lumbar_jax.data.build --manual_dir KAGGLE_DIR --data_dir {data_dir} --config {config}`")
        return builder.as_data_source(split=split)
