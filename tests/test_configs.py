"""Every config file and variant loads and passes validation (no data, no model built)."""

import importlib.util
import os

import pytest

from lumbar_jax.train import config as config_lib

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
FILES = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("variant", [None, "smoke", "r128", "r256"])
def test_config_variants_validate(name, variant):
    config = _load(name).get_config(variant)
    config_lib.validate(config)
    assert config.model.name in name


def test_unknown_variant_is_refused():
    with pytest.raises(config_lib.ConfigError, match="variant"):
        _load(FILES[0]).get_config("r512")


@pytest.mark.parametrize("overrides,field", [
    ({"train.coord_loss_weight": 1.0, "model.fusion": "concat_mlp"}, "train.coord_loss_weight"),
    ({"train.coord_loss_weight": -0.5}, "train.coord_loss_weight"),
    ({"train.coord_sigma": 0.0}, "train.coord_sigma"),
    ({"model.effnet_pool": (1, 3, 2)}, "model.effnet_pool"),
])
def test_bad_coordinate_and_head_settings_are_refused_naming_the_field(overrides, field):
    config = _load("vit_effnet.py").get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
        config_lib.validate(config)


def test_pooled_heads_train_without_coordinate_supervision():
    config = _load("vit_effnet.py").get_config()
    config.model.fusion, config.train.coord_loss_weight = "attention", 0.0
    config_lib.validate(config)


def test_fold_and_cv_fold_are_one_setting():
    config = _load("vit_effnet.py").get_config()
    config.fold = 2
    assert config.cv.fold == 2
    config.cv.fold = 4
    assert config.fold == 4
    config_lib.validate(config)
    config.fold = 5
    with pytest.raises(config_lib.ConfigError, match=r"cv\.fold"):
        config_lib.validate(config)
