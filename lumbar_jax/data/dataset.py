"""Which dataset a run trains on: a built TFDS dir, a Kaggle folder to build, or the embedded synthetic set.

`config.data` decides, in this order:
  - `data_dir` holding a built `rsna_lumbar_spine/{config}`: used as is, unless `manual_dir` is given too and
    the dataset was built from another folder (its `build_report.json` says which): that is refused, naming
    both folders;
  - `manual_dir` (a Kaggle-layout folder): built into `data_dir`, or else into the cache under a directory
    keyed by the folder's content (`tfds/{folder name}-{fingerprint}`: a hash of its CSVs and of its image
    files' paths, sizes and modification times), so two folders never share a build and the same folder
    reuses its own;
  - neither: the synthetic Kaggle-layout set (`synthetic_studies`, `synthetic_seed`) is generated into
    `cache_dir` once and built there. This is what makes the main job run with no download.
`dataset_record` says which dataset a data dir holds (path, name, source, content hash): a run writes it to
its `dataset.json` (docs/conventions.md section 5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import tensorflow_datasets as tfds

from lumbar_jax.data import synthetic
from lumbar_jax.data.build import build_dataset, tfds_scratch_tempdir
from lumbar_jax.data.rsna_lumbar_spine.rsna_lumbar_spine_dataset_builder import REPORT_FILE, manual_dir_fingerprint

log = logging.getLogger(__name__)
DATASET = "rsna_lumbar_spine"


def built_version_dir(data_dir: str, config: str) -> str | None:
    """The directory of the newest complete `rsna_lumbar_spine/{config}/{version}` under data_dir, or None."""
    root = os.path.join(data_dir, DATASET, config)
    if not os.path.isdir(root):
        return None
    versions = [v for v in os.listdir(root) if os.path.exists(os.path.join(root, v, "dataset_info.json"))]
    if not versions:
        return None
    return os.path.join(root, max(versions, key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split("."))))


def is_built(data_dir: str, config: str) -> bool:
    """Whether a complete `rsna_lumbar_spine/{config}` (any version) exists under data_dir."""
    return built_version_dir(data_dir, config) is not None


def synthetic_folder(cache_dir: str, num_studies: int, seed: int) -> str:
    """Where the synthetic Kaggle-layout folder for (num_studies, seed) lives under `cache_dir`."""
    return os.path.join(cache_dir, f"synthetic_{num_studies}_seed{seed}")


def synthetic_manual_dir(cache_dir: str, num_studies: int, seed: int) -> str:
    """Generate (once) the synthetic Kaggle-layout folder for (num_studies, seed) and return its path."""
    out = synthetic_folder(cache_dir, num_studies, seed)
    marker = os.path.join(out, "synthetic_summary.json")
    if not os.path.exists(marker):
        log.info("generating %d synthetic studies into %s", num_studies, out)
        synthetic.write_synthetic_dataset(out, synthetic.DatasetSpec(num_studies, seed), workers=os.cpu_count() or 1)
    return out


def cache_data_dir(cache_dir: str, manual_dir: str, fingerprint: str) -> str:
    """The cache's data dir for one Kaggle folder's content: `{cache_dir}/tfds/{folder name}-{fingerprint[:16]}`."""
    name = os.path.basename(os.path.normpath(os.path.abspath(manual_dir))) or "kaggle"
    return os.path.join(cache_dir, "tfds", f"{name}-{fingerprint[:16]}")


def built_source(data_dir: str, config: str) -> dict | None:
    """The `source` of a built dataset's report ({'manual_dir', 'fingerprint'}); None when it has no report
    (built before reports existed, or not by this project)."""
    version_dir = built_version_dir(data_dir, config)
    path = os.path.join(version_dir, REPORT_FILE) if version_dir else None
    if path is None or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("source")


def check_built_from(data_dir: str, config: str, manual_dir: str, fingerprint: str) -> None:
    """ValueError naming both folders when the dataset built in data_dir came from another folder (or from
    this folder with other contents) than `manual_dir`; a warning when the dataset does not say."""
    source = built_source(data_dir, config)
    if source is None:
        log.warning("%s/%s in %s has no %s: cannot check that it was built from data.manual_dir=%s; using it",
                    DATASET, config, data_dir, REPORT_FILE, manual_dir)
    elif source["fingerprint"] != fingerprint:
        same = os.path.realpath(source["manual_dir"]) == os.path.realpath(manual_dir)
        change = "has changed since" if same else "is another folder"
        raise ValueError(
            f"data.data_dir={data_dir} holds {DATASET}/{config} built from {source['manual_dir']} (content "
            f"fingerprint {source['fingerprint'][:16]}), but data.manual_dir={manual_dir} {change} (fingerprint "
            f"{fingerprint[:16]}): give another data.data_dir, or leave it empty to build into the cache")


def prepare(data_config) -> str:
    """Resolve config.data to a TFDS data dir holding the built dataset (building it if needed)."""
    cache_dir = os.path.expanduser(data_config.cache_dir)
    workers = data_config.build_workers or os.cpu_count() or 1
    config, manual_dir, data_dir = data_config.config, data_config.manual_dir, data_config.data_dir
    if manual_dir:
        if not os.path.isdir(manual_dir):
            raise FileNotFoundError(f"data.manual_dir {manual_dir} is not a directory")
        fingerprint = manual_dir_fingerprint(manual_dir)
        if data_dir and is_built(data_dir, config):
            check_built_from(data_dir, config, manual_dir, fingerprint)
            return data_dir
        data_dir = data_dir or cache_data_dir(cache_dir, manual_dir, fingerprint)
        build_dataset(manual_dir, data_dir, config, workers, source_fingerprint=fingerprint)
        return data_dir
    if data_dir:
        if is_built(data_dir, config):
            return data_dir
        raise FileNotFoundError(f"data.data_dir={data_dir} holds no built {DATASET}/{config}; build it or "
                                "set data.manual_dir")
    manual_dir = synthetic_manual_dir(cache_dir, data_config.synthetic_studies, data_config.synthetic_seed)
    data_dir = os.path.join(manual_dir, "tfds")
    build_dataset(manual_dir, data_dir, config, workers)
    return data_dir


def dataset_record(data_dir: str, config: str) -> dict:
    """Which dataset data_dir holds, for a run's dataset.json: `path` (its version directory), `name`
    (`rsna_lumbar_spine/{config}/{version}`), `source` (the Kaggle folder and its fingerprint, from the build
    report; None if it has none), `studies` per split, and `content_hash`: a hash of the name, the source
    fingerprint and every record file's name and size (no record is read, so it is instant on any size)."""
    version_dir = built_version_dir(data_dir, config)
    if version_dir is None:
        raise FileNotFoundError(f"no built {DATASET}/{config} under data_dir {data_dir}")
    name = f"{DATASET}/{config}/{os.path.basename(version_dir)}"
    source = built_source(data_dir, config)
    report_path = os.path.join(version_dir, REPORT_FILE)
    studies = json.load(open(report_path)).get("studies") if os.path.exists(report_path) else None
    files = sorted((f, os.path.getsize(os.path.join(version_dir, f))) for f in os.listdir(version_dir)
                   if not f.endswith(".json"))  # the records; TFDS may rewrite its metadata files
    digest = hashlib.sha256(json.dumps([name, source and source["fingerprint"], files]).encode()).hexdigest()
    return {"path": os.path.abspath(version_dir), "name": name, "source": source, "studies": studies,
            "content_hash": digest}


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
