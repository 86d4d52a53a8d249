"""lumbar_jax.data.dataset: opening a dataset that is not built fails with the build command to run, and
leaves nothing in /tmp; a Kaggle folder is built into a cache directory of its own content (two folders never
share one, the same folder reuses its own), a data dir built from another folder is refused, and a run's
dataset record names the dataset it trains on."""

import os
import shutil
import tempfile

import pandas as pd
import pytest

from lumbar_jax import labels as labels_lib
from lumbar_jax import rundir
from lumbar_jax.data import dataset, synthetic
from lumbar_jax.data.rsna_lumbar_spine.rsna_lumbar_spine_dataset_builder import manual_dir_fingerprint
from lumbar_jax.train import config as config_lib


def test_opening_an_unbuilt_dataset_leaves_no_temporary_directory(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(FileNotFoundError, match=r"no built rsna_lumbar_spine/r64 .*lumbar_jax.data.build"):
        dataset.load_split(str(tmp_path / "empty"), "r64")
    assert os.listdir(scratch) == []  # TFDS would leave an empty tmp*tfds directory here
    assert tempfile.tempdir == str(scratch)  # restored


# ------------------------------------------------------------------------------------ which folder was built
@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    """(folder A, folder B = A with one train.csv label changed, shared cache dir)."""
    root = tmp_path_factory.mktemp("two_folders")
    a, b = str(root / "kaggle_a"), str(root / "kaggle_b")
    synthetic.write_synthetic_dataset(a, synthetic.DatasetSpec(4, seed=1, quirks=False), progress=False)
    shutil.copytree(a, b)
    labels = pd.read_csv(os.path.join(b, "train.csv"), dtype=str, keep_default_na=False)
    target = labels_lib.TARGETS[0]
    labels.loc[0, target] = "Severe" if labels.loc[0, target] != "Severe" else "Normal/Mild"
    labels.to_csv(os.path.join(b, "train.csv"), index=False)
    return a, b, str(root / "cache")


def _data_config(manual_dir: str, cache_dir: str, data_dir: str = ""):
    c = config_lib.default_config().data
    c.update(manual_dir=manual_dir, cache_dir=cache_dir, data_dir=data_dir, config="r64", build_workers=1)
    return c


def _first_label(data_dir: str) -> tuple[int, int]:
    """(study id, its first target's label) of the train record with the lowest study id."""
    source = dataset.load_split(data_dir, "r64")
    first = min((source[i] for i in range(len(source))), key=lambda r: r["study_id"])
    return int(first["study_id"]), int(first["labels"][0])


def test_two_folders_with_one_cache_give_two_datasets_and_the_same_folder_reuses_its_own(two_folders, capsys):
    a, b, cache = two_folders
    dir_a = dataset.prepare(_data_config(a, cache))
    dir_b = dataset.prepare(_data_config(b, cache))
    assert dir_a != dir_b and all(d.startswith(os.path.join(cache, "tfds")) for d in (dir_a, dir_b))
    assert "built rsna_lumbar_spine/r64" in capsys.readouterr().out
    (id_a, label_a), (id_b, label_b) = _first_label(dir_a), _first_label(dir_b)
    assert id_a == id_b and label_a != label_b  # each trains on its own train.csv
    record_a, record_b = dataset.dataset_record(dir_a, "r64"), dataset.dataset_record(dir_b, "r64")
    assert record_a["source"]["manual_dir"] == os.path.abspath(a) and record_b["source"]["manual_dir"] == os.path.abspath(b)
    assert record_a["content_hash"] != record_b["content_hash"]
    assert record_a["name"] == "rsna_lumbar_spine/r64/1.0.0" and record_a["studies"] == {"train": 4}

    info = os.path.join(record_a["path"], "dataset_info.json")
    before = os.path.getmtime(info)
    assert dataset.prepare(_data_config(a, cache)) == dir_a  # the same folder again: reused, not rebuilt
    assert os.path.getmtime(info) == before and "built" not in capsys.readouterr().out
    assert dataset.dataset_record(dir_a, "r64") == record_a


def test_a_data_dir_built_from_another_folder_is_refused_naming_both(two_folders):
    a, b, cache = two_folders
    dir_a = dataset.prepare(_data_config(a, cache))
    with pytest.raises(ValueError, match=rf"built from {a}.*data.manual_dir={b} is another folder"):
        dataset.prepare(_data_config(b, cache, data_dir=dir_a))
    assert dataset.prepare(_data_config(a, cache, data_dir=dir_a)) == dir_a


def test_a_run_with_trained_folds_refuses_another_dataset(two_folders, tmp_path):
    a, b, cache = two_folders
    record_a = dataset.dataset_record(dataset.prepare(_data_config(a, cache)), "r64")
    record_b = dataset.dataset_record(dataset.prepare(_data_config(b, cache)), "r64")
    workdir = str(tmp_path / "run")
    os.makedirs(rundir.checkpoints_dir(workdir, 0))
    rundir.write_dataset_record(workdir, record_a)
    rundir.check_dataset_record(workdir, record_a, num_folds=2)  # the same dataset: resumes
    with pytest.raises(ValueError, match=rf"trained on {record_a['path']}.*this config gives {record_b['path']}"):
        rundir.check_dataset_record(workdir, record_b, num_folds=2)
    shutil.rmtree(rundir.fold_dir(workdir, 0))
    rundir.check_dataset_record(workdir, record_b, num_folds=2)  # nothing trained yet: any dataset


def test_fingerprint_reads_csvs_and_the_file_list(two_folders, tmp_path):
    a, _, _ = two_folders
    copy = str(tmp_path / "copy")
    shutil.copytree(a, copy, copy_function=shutil.copy2)  # same contents, sizes and modification times
    assert manual_dir_fingerprint(copy) == manual_dir_fingerprint(a)
    some_file = next(os.path.join(d, f[0]) for d, _, f in os.walk(os.path.join(copy, "train_images")) if f)
    os.utime(some_file, ns=(0, 0))
    assert manual_dir_fingerprint(copy) != manual_dir_fingerprint(a)
