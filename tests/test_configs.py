"""Every config file and variant loads and passes validation (no data, no model built); the schema
(`default_config()`) documents every field."""

import importlib.util
import inspect
import os
import re

import pytest

from lumbar_jax.train import config as config_lib

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
FILES = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHARED_VARIANTS = (None, "smoke", "r128", "r256")  # train.config.apply_variant's; a config may list its own
CASES = [(name, variant) for name in FILES for variant in getattr(_load(name), "VARIANTS", SHARED_VARIANTS)]


@pytest.mark.parametrize("name,variant", CASES)
def test_config_variants_validate(name, variant):
    config = _load(name).get_config(variant)
    config_lib.validate(config)
    assert config.model.name in name


@pytest.mark.parametrize("name", FILES)
def test_unknown_variant_is_refused(name):
    with pytest.raises(config_lib.ConfigError, match="variant"):
        _load(name).get_config("r512")


@pytest.mark.parametrize("overrides,field", [
    ({"train.coord_loss_weight": 1.0, "model.fusion": "concat_mlp"}, "train.coord_loss_weight"),
    ({"train.coord_loss_weight": -0.5}, "train.coord_loss_weight"),
    ({"train.coord_sigma": 0.0}, "train.coord_sigma"),
    ({"model.effnet_pool": (1, 3, 2)}, "model.effnet_pool"),
])
def test_bad_coordinate_and_head_settings_are_refused_naming_the_field(overrides, field):
    config = _load("vit_effnet_one_stage.py").get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
        config_lib.validate(config)


def test_pooled_heads_train_without_coordinate_supervision():
    config = _load("vit_effnet_one_stage.py").get_config()
    config.model.fusion, config.train.coord_loss_weight = "attention", 0.0
    config_lib.validate(config)


def test_fold_and_cv_fold_are_one_setting():
    config = _load("vit_effnet_one_stage.py").get_config()
    config.fold = 2
    assert config.cv.fold == 2
    config.cv.fold = 4
    assert config.fold == 4
    config_lib.validate(config)
    config.fold = 5
    with pytest.raises(config_lib.ConfigError, match=r"^config\.fold: 5 is not a fold of this run"):
        config_lib.validate(config)


@pytest.mark.parametrize("name,overrides,field", [
    ("vit_effnet_one_stage.py", {"train.loss": "focal"}, "train.loss"),
    ("vit_effnet_one_stage.py", {"train.loss": "cross_entropy"}, "train.coord_loss_weight"),  # coordinate loss still on
    ("baseline_vit2d.py", {"train.coord_loss_weight": 1.0}, "train.coord_loss_weight"),  # no target queries
    ("baseline_vit3d_grid.py", {"data.config": "r64"}, "data.config"),  # needs the aligned grid channels
    ("baseline_vit3d_grid.py", {"augment.flip_lr_prob": 0.5}, "augment"),  # per-series flips break the grid
])
def test_loss_and_grid_settings_are_refused_naming_the_field(name, overrides, field):
    config = _load(name).get_config()
    for key, value in overrides.items():
        section, field_name = key.split(".")
        config[section][field_name] = value
    with pytest.raises(config_lib.ConfigError, match=r"config\." + field.replace(".", r"\.")):
        config_lib.validate(config)


def test_baseline_configs_train_as_the_earlier_systems_did():
    a, b = _load("baseline_vit2d.py").get_config(), _load("baseline_vit3d_grid.py").get_config()
    assert (a.train.loss, a.train.lr, a.model.name, a.data.config) == ("cross_entropy", 1e-4, "vit2d", "r64")
    assert (b.train.loss, b.model.name, b.data.config) == ("metric", "vit3d_grid", "grid32")
    for c in (a, b):  # the CPU defaults keep vit_effnet's budget
        assert (c.train.steps, c.train.batch_size, c.cv.num_folds, c.seed) == (320, 12, 5, 0)
    full_a, full_b = _load("baseline_vit2d.py").get_config("full"), _load("baseline_vit3d_grid.py").get_config("full")
    assert (full_a.model.vit, full_a.model.image_size, full_a.model.patch) == ("vit_b", (224, 224), (1, 16, 16))
    assert (full_b.model.vit, full_b.data.config, full_b.model.patch) == ("vit_b", "grid128", (16, 16, 16))


def _leaves(d, prefix=""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def test_every_field_of_the_schema_has_a_one_line_comment():
    """Each field is assigned once in train/config.py, on a line that ends with its `# meaning` comment."""
    source = inspect.getsource(config_lib)
    commented = re.findall(r"^\s+(?:\w+\.)+(\w+) = .*\S  # \S.*$", source, flags=re.MULTILINE)
    fields = [leaf.rpartition(".")[2] for leaf in _leaves(config_lib.default_config().to_dict())]
    missing = [field for field in fields if field not in commented]
    assert not missing, f"fields without a comment on their line: {missing}"
    assert {"kernels", "flip_lr_prob", "effnet_pool", "loss"} <= set(commented)
