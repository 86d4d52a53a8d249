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
