"""The run config's one validation (`lumbar_jax.train.config.validate`): every field it can refuse is refused
with a ConfigError naming it (`config.<section>.<field>: problem`), before anything is built; a restored
run's config (config.json) goes through the same checks."""

import json
import re

import ml_collections
import numpy as np
import pytest

from lumbar_jax.train import config as config_lib


def _config(name="vit_effnet", **overrides):
    """The default config with `model.name` and dotted overrides ('model.patch': ...). A section is rebuilt
    from a dict, so that a value of the wrong type gets through ml_collections' own type check to `validate`
    (as from a hand-edited config.json)."""
    config = config_lib.default_config()
    config.model.name = name
    for key, value in overrides.items():
        section, field = key.split(".")
        values = config[section].to_dict()
        values[field] = value
        config[section] = ml_collections.ConfigDict(values)
    return config


def _refused(config, field, check_paths=False):
    with pytest.raises(config_lib.ConfigError, match="^" + re.escape(f"config.{field}: ")):
        config_lib.validate(config, check_paths=check_paths)


REFUSED = [  # (model name, overrides, the field the error names)
    ("vit_effnet", {"data.config": "r512"}, "data.config"),
    ("vit_effnet", {"data.synthetic_studies": 9}, "data.synthetic_studies"),
    ("vit_effnet", {"cv.num_folds": 1}, "cv.num_folds"),
    ("vit_effnet", {"train.loss": "focal"}, "train.loss"),
    ("vit_effnet", {"train.batch_size": 0}, "train.batch_size"),
    ("vit_effnet", {"train.eval_batch_size": -8}, "train.eval_batch_size"),
    ("vit_effnet", {"train.steps": 0}, "train.steps"),
    ("vit_effnet", {"train.eval_every": 0}, "train.eval_every"),
    ("vit_effnet", {"train.checkpoint_every": 0}, "train.checkpoint_every"),
    ("vit_effnet", {"train.log_every": 0}, "train.log_every"),
    ("vit_effnet", {"train.lr": 0.0}, "train.lr"),
    ("vit_effnet", {"train.warmup_steps": 10**6}, "train.warmup_steps"),
    ("vit_effnet", {"train.ema_decay": 1.0}, "train.ema_decay"),
    ("vit_effnet", {"train.label_smoothing": 1.0}, "train.label_smoothing"),
    ("vit_effnet", {"train.label_smoothing": -0.1}, "train.label_smoothing"),
    ("vit_effnet", {"train.coord_loss_weight": -0.5}, "train.coord_loss_weight"),
    ("vit_effnet", {"train.coord_sigma": 0.0}, "train.coord_sigma"),
    ("vit_effnet", {"augment.enabled": "yes"}, "augment.enabled"),
    ("vit_effnet", {"augment.flip_lr_prob": 1.5}, "augment.flip_lr_prob"),
    ("vit_effnet", {"augment.scale": (1.1, 0.9)}, "augment.scale"),
    ("vit_effnet", {"augment.scale": (0.0, 1.0)}, "augment.scale"),
    ("vit_effnet", {"augment.intensity_scale": (1.0,)}, "augment.intensity_scale"),
    ("vit_effnet", {"augment.shift": -0.1}, "augment.shift"),
    ("vit_effnet", {"augment.intensity_shift": -0.1}, "augment.intensity_shift"),
    ("vit_effnet", {"augment.noise_std": -1.0}, "augment.noise_std"),
    ("vit_effnet", {"augment.flip_prob": 0.5}, "augment.flip_prob"),  # unknown field
    ("resnet", {}, "model.name"),
    ("vit_effnet", {"model.volume_shape": (16, 64)}, "model.volume_shape"),
    ("vit_effnet", {"model.vit": "vit_xl"}, "model.vit"),
    ("vit_effnet", {"model.patch": (4, 16, 12)}, "model.patch"),  # does not divide 16x64x64
    ("vit_effnet", {"model.vit_depth": -1}, "model.vit_depth"),
    ("vit_effnet", {"model.pool": "max"}, "model.pool"),
    ("vit_effnet", {"model.encoder_dropout": 1.0}, "model.encoder_dropout"),
    ("vit_effnet", {"model.effnet": "effnet_b9"}, "model.effnet"),
    ("vit_effnet", {"model.effnet_padding": "reflect"}, "model.effnet_padding"),
    ("vit_effnet", {"model.effnet_pool": (3, 2, 2)}, "model.effnet_pool"),  # does not divide 16x64x64
    ("vit_effnet", {"model.kernels": "cudnn"}, "model.kernels"),
    ("vit_effnet", {"model.share_encoders": "yes"}, "model.share_encoders"),
    ("vit_effnet", {"model.fusion": "sum"}, "model.fusion"),
    ("vit_effnet", {"model.head_hidden": 0}, "model.head_hidden"),
    ("vit_effnet", {"model.head_hidden": 250}, "model.head_heads"),  # 4 heads do not divide 250
    ("vit_effnet", {"model.head_depth": 0}, "model.head_depth"),
    ("vit_effnet", {"model.dropout": 1.0}, "model.dropout"),
    ("vit_effnet", {"model.drop_path": -0.1}, "model.drop_path"),
    ("vit_effnet", {"model.dtype": "float16"}, "model.dtype"),
    ("vit_effnet", {"model.param_dtype": "int8"}, "model.param_dtype"),
    ("vit_effnet", {"model.drop_pth": 0.1}, "model.drop_pth"),  # typo: unknown field
    ("vit_effnet", {"model.volume_shape": (32, 128, 128), "model.patch": (4, 16, 16)}, "model.volume_shape"),
    ("vit2d", {"model.image_size": (224, 0), "model.patch": (1, 16, 16)}, "model.image_size"),
    ("vit2d", {"model.patch": (2, 16, 16)}, "model.patch"),  # vit2d sees one slice
    # Pretrained weights (models/pretrained.py).
    ("vit", {"model.inflation": "middle"}, "model.inflation"),
    ("effnet", {"model.pretrained_vit": "w.safetensors"}, "model.pretrained_vit"),  # no ViT to load into
    ("vit", {"model.pretrained_vit": "w.safetensors"}, "model.vit"),  # vit_cpu: no timm weights
    ("vit", {"model.vit": "vit_s", "model.pretrained_vit": "w.safetensors"}, "model.patch"),  # needs [d, 16, 16]
    ("effnet", {"model.effnet": "effnet_cpu", "model.pretrained_effnet": "w.pth"}, "model.effnet"),
    ("effnet", {"model.effnet": "effnet_b0", "model.pretrained_effnet": "hub/tf_efficientnet_b0/model.safetensors"},
     "model.effnet_padding"),
    ("effnet", {"model.effnet": "effnet_b0", "model.effnet_padding": "same",
                "model.pretrained_effnet": "efficientnet_b0.safetensors"}, "model.effnet_padding"),
    ("vit", {"model.pretrained_vit": 3}, "model.pretrained_vit"),
    # Fields that are fine alone but not together.
    ("vit_effnet", {"model.fusion": "concat_mlp"}, "train.coord_loss_weight"),  # coordinate loss needs queries
    ("vit2d", {"model.patch": (1, 8, 8)}, "train.coord_loss_weight"),  # a baseline has no target queries
    ("vit_effnet", {"train.loss": "cross_entropy"}, "train.coord_loss_weight"),
    ("vit3d_grid", {"train.coord_loss_weight": 0.0}, "data.config"),  # needs a grid dataset
]


@pytest.mark.parametrize("name,overrides,field", REFUSED)
def test_bad_field_is_refused_naming_it(name, overrides, field):
    _refused(_config(name, **overrides), field)


@pytest.mark.parametrize("field,value", [("flip_lr_prob", 0.5), ("shift", 0.1), ("scale", (0.9, 1.1))])
def test_grid_data_refuses_each_per_series_spatial_augmentation(field, value):
    config = _config("vit3d_grid", **{"data.config": "grid32", "model.volume_shape": (32, 32, 32),
                                      "model.patch": (8, 8, 8), "train.coord_loss_weight": 0.0,
                                      "augment.flip_lr_prob": 0.0})
    config_lib.validate(config)
    config.augment[field] = value
    _refused(config, f"augment.{field}")


def test_seed_and_fold_are_refused_naming_them():
    config = _config()
    config.seed = -1
    _refused(config, "seed")
    config = _config()
    config.fold = 5  # = cv.fold; named as typed on the command line, with the valid range of this run
    _refused(config, "fold")
    with pytest.raises(config_lib.ConfigError, match=r"^config.fold: 5 is not a fold of this run: with "
                                                     r"cv.num_folds=5 use one of 0..4, or -1 for every fold$"):
        config_lib.validate(config, check_paths=False)


def test_a_two_stage_config_offers_only_the_dataset_configs_it_reads():
    config = config_lib.two_stage_config()
    config.data.config = "r256"
    with pytest.raises(config_lib.ConfigError, match=r"^config.data.config: 'r256': pipeline='two_stage' cuts "
                                                     r"crops .*: needs one of \('r64_native', 'r128_native'\)$"):
        config_lib.validate(config, check_paths=False)


def test_missing_field_and_section_are_refused():
    config = _config()
    del config.model["kernels"]
    _refused(config, "model.kernels")
    config = _config()
    del config["augment"]
    _refused(config, "augment")


def test_fields_of_an_unused_encoder_are_not_checked():
    config_lib.validate(_config("effnet", **{"model.patch": (5, 5, 5), "model.vit": "vit_xl"}))
    config_lib.validate(_config("vit", **{"model.effnet": "anything", "model.effnet_pool": (3, 3, 3)}))


def test_paths_are_checked_for_training_only(tmp_path):
    """Training refuses a data folder or weight file that is not there; a restored run (check_paths=False)
    reads neither."""
    weights = str(tmp_path / "absent.safetensors")
    config = _config("vit", **{"model.vit": "vit_s", "model.patch": (4, 16, 16), "model.pretrained_vit": weights})
    config_lib.validate(config, check_paths=False)
    with pytest.raises(config_lib.ConfigError, match=r"^config\.model\.pretrained_vit: .*absent\.safetensors is not"):
        config_lib.validate(config)
    (tmp_path / "absent.safetensors").write_bytes(b"")
    config_lib.validate(config)
    config.data.manual_dir = str(tmp_path / "kaggle")
    _refused(config, "data.manual_dir", check_paths=True)
    config_lib.validate(config, check_paths=False)


def test_check_dataset_names_the_volume_shape():
    config = config_lib.default_config()
    config_lib.check_dataset(config, [{"sagittal_t2": np.zeros((16, 64, 64), np.uint8)}])
    with pytest.raises(config_lib.ConfigError, match=r"^config\.model\.volume_shape: "):
        config_lib.check_dataset(config, [{"sagittal_t2": np.zeros((32, 128, 128), np.uint8)}])


def test_a_restored_run_config_is_the_schema_again(tmp_path):
    """config.json (tuples written as lists) restores onto the schema: same values, tuples again, valid."""
    config = _config()
    config.fold = 1
    stored = json.loads(config.to_json_best_effort())
    restored = config_lib.restore_config(stored)
    config_lib.validate(restored, check_paths=False)
    assert restored.to_dict() == config.to_dict()
    assert isinstance(restored.model.patch, tuple) and restored.cv.fold == 1


def test_a_restored_config_of_an_earlier_version_takes_defaults_and_the_new_field_names():
    stored = json.loads(_config().to_json_best_effort())
    del stored["train"]["loss"]  # runs before train.loss trained on the metric: its default
    del stored["model"]["kernels"]
    stored["model"]["conv_impl"] = "slices"  # the field before model.kernels
    del stored["crops"]["tta_shift_mm"]  # runs before it scored one crop per target: 0, not the default
    restored = config_lib.restore_config(stored)
    config_lib.validate(restored, check_paths=False)
    assert (restored.train.loss, restored.model.kernels, restored.crops.tta_shift_mm) == ("metric", "cpu", 0.0)
    assert "tta_shift_mm" not in stored["crops"]  # the caller's dict is left as it was
    stored["model"]["typo"] = 1
    _refused(config_lib.restore_config(stored), "model.typo")


def test_a_restored_config_with_the_earlier_cpu_encoder_names_takes_the_current_ones():
    stored = json.loads(_config().to_json_best_effort())
    stored["model"].update(vit="vit_tiny_test", effnet="effnet_tiny_test")  # the names before vit_cpu / effnet_cpu
    restored = config_lib.restore_config(stored)
    config_lib.validate(restored, check_paths=False)
    assert (restored.model.vit, restored.model.effnet) == ("vit_cpu", "effnet_cpu")
    assert stored["model"]["vit"] == "vit_tiny_test"  # the caller's dict is left as it was


TWO_STAGE_REFUSED = [  # (overrides of the two-stage default, the field the error names)
    ({"data.config": "r64"}, "data.config"),  # no native series to crop from
    ({"model.name": "vit2d", "model.patch": (1, 16, 16)}, "model.name"),  # a one-stage baseline
    ({"train.coord_loss_weight": 1.0}, "train.coord_loss_weight"),
    ({"localiser.variant": "loc_huge"}, "localiser.variant"),
    ({"localiser.steps": 0}, "localiser.steps"),
    ({"localiser.lr": 0.0}, "localiser.lr"),
    ({"localiser.warmup_steps": 10**6}, "localiser.warmup_steps"),
    ({"crops.slices": 0}, "crops.slices"),
    ({"crops.size_mm": -40.0}, "crops.size_mm"),
    ({"crops.jitter_scale": -1.0}, "crops.jitter_scale"),
    ({"crops.points": "oracle"}, "crops.points"),
    ({"crops.tta_shift_mm": -1.0}, "crops.tta_shift_mm"),
    ({"crops.tta_shift_mm": 20.0}, "crops.tta_shift_mm"),
    ({"model.slice_patch": (5, 5)}, "model.slice_patch"),  # does not divide crops.pixels 32
    ({"model.effnet_pool": (1, 2, 4)}, "model.effnet_pool"),  # a crop slice is pooled square
    ({"model.pretrained_vit": "vit.safetensors", "model.vit": "vit_s"}, "model.slice_patch"),  # patch-16 weights
]


@pytest.mark.parametrize("overrides,field", TWO_STAGE_REFUSED)
def test_two_stage_fields_are_checked_naming_the_field(overrides, field):
    config = config_lib.two_stage_config()
    config_lib.validate(config)
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    _refused(config, field)


def test_unknown_pipeline_is_refused_before_the_sections_it_selects():
    config = config_lib.two_stage_config()
    config.pipeline = "three_stage"
    _refused(config, "pipeline")
