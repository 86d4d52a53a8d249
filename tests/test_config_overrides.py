"""The main job's config loader and `--config.FIELD=VALUE` parser (lumbar_jax/config_overrides.py): fields read
as their type, tuples, bools, None-valued typed fields, the `fold` / `cv.fold` alias, refusals that name the
field, value or path; and the same configs as ml_collections' absl `config_flags`, which it replaced."""

import json
import os
import textwrap

import pytest

from lumbar_jax import config_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A config file of the shapes the project's configs use, without importing the project (fast, and independent
# of the run config's schema).
CONFIG_FILE = '''
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.train = ml_collections.ConfigDict()
    c.train.steps = 320
    c.train.lr = 3e-3
    c.train.loss = "metric"
    c.model = ml_collections.ConfigDict()
    c.model.patch = (4, 8, 8)
    c.model.share_encoders = True
    c.augment = ml_collections.ConfigDict()
    c.augment.scale = (1.0, 1.0)
    c.data = ml_collections.ConfigDict()
    c.data.cache_dir = "~/.cache/lumbar_jax"
    c.cv = ml_collections.ConfigDict()
    c.fold = -1
    c.cv.fold = c.get_ref("fold")
    c.mesh = ml_collections.ConfigDict()
    c.mesh.num_devices = ml_collections.FieldReference(None, field_type=int)
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ml_collections.FieldReference(None, field_type=str)
    if arg == "smoke":
        c.train.steps = 6
    elif arg:
        raise ValueError(f"config variant {arg!r} unknown; use one of '', 'smoke'")
    return c
'''


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(CONFIG_FILE)
    return str(path)


def configured(config_path, *argv, variant=""):
    rest, overrides = config_overrides.split_overrides(list(argv))
    assert rest == []
    config = config_overrides.load_config(config_path + variant)
    config_overrides.apply_overrides(config, overrides)
    return config


def test_values_are_read_as_the_fields_types(config_path):
    c = configured(config_path, "--config.train.steps=20", "--config.train.lr", "1", "--config.train.loss=x=y",
                   "--config.data.cache_dir=/tmp/x", "--config.seed", "0x10")
    assert (c.train.steps, c.train.lr, c.train.loss, c.data.cache_dir, c.seed) == (20, 1.0, "x=y", "/tmp/x", 16)
    assert type(c.train.lr) is float and type(c.train.steps) is int


def test_tuples_from_any_spelling_and_repeated_flags_append(config_path):
    assert configured(config_path, "--config.model.patch=(2,16,16)").model.patch == (2, 16, 16)
    assert configured(config_path, "--config.model.patch", "2,16,16").model.patch == (2, 16, 16)
    assert configured(config_path, "--config.augment.scale=(0.9,1.1)").augment.scale == (0.9, 1.1)
    assert configured(config_path, "--config.model.patch=8").model.patch == (8,)
    repeated = configured(config_path, "--config.model.patch", "2", "--config.model.patch=3,4")
    assert repeated.model.patch == (2, 3, 4)


@pytest.mark.parametrize("argv, value", [
    (["--config.model.share_encoders=false"], False), (["--config.model.share_encoders", "False"], False),
    (["--config.model.share_encoders=0"], False), (["--noconfig.model.share_encoders"], False),
    (["--noconfig.model.share_encoders", "--config.model.share_encoders"], True),
    (["--config.model.share_encoders=T"], True)])
def test_bools(config_path, argv, value):
    assert configured(config_path, *argv).model.share_encoders is value


def test_none_valued_fields_take_their_declared_type(config_path):
    c = configured(config_path, "--config.mesh.num_devices=4", "--config.distributed.coordinator_address=h:12")
    assert c.mesh.num_devices == 4 and c.distributed.coordinator_address == "h:12"
    with pytest.raises(config_overrides.OverrideError, match=r"config.mesh.num_devices: cannot read 'four' as int"):
        configured(config_path, "--config.mesh.num_devices=four")
    assert configured(config_path, "--config.mesh.num_devices=None").mesh.num_devices is None


@pytest.mark.parametrize("flag", ["--config.fold=0", "--config.cv.fold=0", "--config.fold 0", "--config.cv.fold 0"])
def test_fold_alias_sets_both(config_path, flag):
    c = configured(config_path, *flag.split())
    assert c.fold == 0 and c.cv.fold == 0
    assert configured(config_path, "--config.fold", "-1").cv.fold == -1  # a negative number is a value


def test_variant_and_other_arguments_pass_through(config_path):
    rest, overrides = config_overrides.split_overrides(["--config", config_path + ":smoke", "--config.train.steps", "3",
                                          "--workdir", "w", "-h"])
    assert rest == ["--config", config_path + ":smoke", "--workdir", "w", "-h"]
    assert overrides == [config_overrides.Override("train.steps", "3")]
    assert config_overrides.load_config(config_path + ":smoke").train.steps == 6


@pytest.mark.parametrize("flag, message", [
    ("--config.train.lrr=1", r"^config.train has no field 'lrr' \(did you mean 'lr'\?\)$"),
    ("--config.trian.lr=1", r"^config has no field 'trian' \(did you mean 'train'\?\)$"),
    ("--config.train.zzz=1", r"^config.train has no field 'zzz'; its fields: loss, lr, steps$"),
    ("--config.train.steps.x=1", r"^config.train.steps is an int value, not a group of fields"),
    ("--config.train=1", r"^config.train is a group of fields"),
    ("--config.train.steps=1e3", r"^config.train.steps: cannot read '1e3' as int$"),
    ("--config.train.lr=fast", r"^config.train.lr: cannot read 'fast' as float$"),
    ("--config.model.share_encoders=maybe", r"^config.model.share_encoders: cannot read 'maybe' as bool$"),
    ("--config.model.patch=(1,", r"^config.model.patch: cannot read '\(1,' as tuple$"),
    ("--config.train.steps", r"config.train.steps is an int field: give a value"),
    ("--noconfig.train.steps", r"config.train.steps is an int field: give a value"),
])
def test_refusals_name_the_field_and_value(config_path, flag, message):
    with pytest.raises(config_overrides.OverrideError, match=message):
        configured(config_path, flag)


def test_the_config_is_locked(config_path):
    with pytest.raises(AttributeError):
        configured(config_path).train.new_field = 1


def test_bad_config_paths_and_variants(tmp_path, config_path):
    with pytest.raises(FileNotFoundError, match=r"^--config nope/x.py:smoke: no such file nope/x.py$"):
        config_overrides.load_config("nope/x.py:smoke")
    with pytest.raises(config_overrides.OverrideError, match=f"--config {tmp_path}: .* is not a file"):
        config_overrides.load_config(str(tmp_path))
    with pytest.raises(config_overrides.OverrideError,
                       match=r"^--config .*tiny.py:bogus: config variant 'bogus' unknown"):
        config_overrides.load_config(config_path + ":bogus")
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(config_overrides.OverrideError, match="defines no get_config"):
        config_overrides.load_config(str(tmp_path / "empty.py"))


def test_a_config_file_whose_code_fails_is_one_line_naming_its_line(tmp_path):
    (tmp_path / "syntax.py").write_text("X = 1\nY = (\n")
    with pytest.raises(config_overrides.OverrideError, match=r"syntax.py line 2: '\(' was never closed$"):
        config_overrides.load_config(str(tmp_path / "syntax.py"))
    (tmp_path / "raises.py").write_text("def get_config(arg=None):\n    return {}['lr']\n")
    with pytest.raises(config_overrides.OverrideError, match=r"raises.py line 2: KeyError: 'lr'$"):
        config_overrides.load_config(str(tmp_path / "raises.py"))


def test_the_project_config_resolves_as_config_flags_did(tmp_path):
    """The replaced absl parser (ml_collections.config_flags) and this one give the same config JSON (what the
    run directory's config.json holds) for the README's kinds of command line, on the real config file."""
    from absl import flags
    from ml_collections import config_flags

    spec = os.path.join(REPO, "configs", "vit_effnet.py") + ":smoke"
    argv = ["--config.train.steps=20", "--config.data.cache_dir", "/tmp/x", "--config.model.patch=(4,16,16)",
            "--config.augment.scale=(0.9,1.1)", "--config.fold=0", "--config.mesh.num_devices=4",
            "--config.model.share_encoders=false", "--config.train.lr=1e-3", "--config.model.dtype=bfloat16",
            "--config.distributed.coordinator_address=node1:1234", "--noconfig.augment.enabled"]
    rest, overrides = config_overrides.split_overrides(argv)
    ours = config_overrides.load_config(spec)
    config_overrides.apply_overrides(ours, overrides)

    values = flags.FlagValues()
    full_argv = ["main", "--config", spec, *argv]
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=full_argv)
    values(full_argv)
    assert json.loads(ours.to_json_best_effort()) == json.loads(values.config.to_json_best_effort())
    assert ours.to_json_best_effort(indent=2) == values.config.to_json_best_effort(indent=2)
    assert ours.cv.fold == 0 and ours.model.patch == (4, 16, 16)
