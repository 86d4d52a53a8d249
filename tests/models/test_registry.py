"""create_model / validate_model_config: every model name builds (abstractly, pinned parameter counts); bad
configs are refused, naming the field, before anything is built."""

import ml_collections
import pytest
from flax import nnx

from lumbar_jax.models import MODEL_FIELDS, MODEL_NAMES, create_model, default_model_config, validate_model_config
from lumbar_jax.models.layers import num_params
from lumbar_jax.models.registry import BASELINE_MODELS, MODEL_ENCODERS

# (name, share_encoders, fusion) -> parameters, with the tiny encoders and the registry's default head (256 wide,
# ViT patch 4x16x16).
MODEL_PARAM_COUNTS = {
    ("vit_effnet", True, "target_query"): 931_564,
    ("vit_effnet", True, "attention"): 991_657,
    ("vit_effnet", True, "concat_mlp"): 184_777,
    ("vit_effnet", False, "target_query"): 1_112_104,
    ("vit_effnet", False, "concat_mlp"): 365_317,
    ("vit", True, "target_query"): 875_310,
    ("vit", True, "attention"): 945_259,
    ("vit", False, "concat_mlp"): 226_187,
    ("effnet", True, "target_query"): 857_868,
    ("effnet", True, "attention"): 923_017,
    ("effnet", False, "concat_mlp"): 159_429,
}


def test_every_model_name_is_covered():  # the baselines' builds are pinned in test_baselines.py
    assert set(MODEL_NAMES) - set(BASELINE_MODELS) == set(MODEL_ENCODERS) == {n for n, _, _ in MODEL_PARAM_COUNTS}


@pytest.mark.parametrize("name,share,fusion", MODEL_PARAM_COUNTS)
def test_create_model_builds_every_name(name, share, fusion):
    config = default_model_config(name)
    config.share_encoders, config.fusion = share, fusion
    model = nnx.eval_shape(lambda: create_model(config, nnx.Rngs(0)))
    assert num_params(model) == MODEL_PARAM_COUNTS[(name, share, fusion)]
    assert len(model.encoders) == (1 if share else 3)
    encoder = model.encoders[0]
    assert (encoder.vit is not None, encoder.effnet is not None) == ("vit" in name, "effnet" in name)


def test_default_config_documents_every_field():
    config = default_model_config()
    assert isinstance(config, ml_collections.ConfigDict)
    assert set(config) == set(MODEL_FIELDS)
    assert all(doc for _, doc in MODEL_FIELDS.values())
    resolved = validate_model_config(config)
    assert resolved["name"] == "vit_effnet" and resolved["volume_shape"] == (16, 64, 64)
    # A plain dict with only a name is complete (defaults filled in).
    assert validate_model_config({"name": "vit"})["patch"] == (4, 16, 16)


def test_unknown_model_name_names_the_field_and_the_valid_names():
    with pytest.raises(ValueError, match=r"model\.name: 'resnet' is not one of \('vit', 'effnet', 'vit_effnet', 'vit2d', "
                                         r"'vit3d_grid'\)"):
        create_model({"name": "resnet"}, nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"model\.name"):
        validate_model_config({"vit": "vit_s"})  # no name at all


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"patch": (4, 16, 12)}, "model.patch"),  # does not divide 16x64x64
        ({"volume_shape": (16, 64)}, "model.volume_shape"),
        ({"vit": "vit_xl"}, "model.vit"),
        ({"effnet": "effnet_b9"}, "model.effnet"),
        ({"pool": "max"}, "model.pool"),
        ({"fusion": "sum"}, "model.fusion"),
        ({"head_hidden": 250, "head_heads": 4}, "model.head_heads"),
        ({"head_hidden": 0}, "model.head_hidden"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"drop_path": -0.1}, "model.drop_path"),
        ({"dtype": "float16"}, "model.dtype"),
        ({"share_encoders": "yes"}, "model.share_encoders"),
        ({"conv_impl": "cudnn"}, "model.conv_impl"),
        ({"effnet_pool": (3, 2, 2)}, "model.effnet_pool"),  # does not divide 16x64x64
        ({"head_depth": 0}, "model.head_depth"),
        ({"drop_pth": 0.1}, "model.drop_pth"),  # typo: unknown field
    ],
)
def test_bad_config_is_refused_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate_model_config({"name": "vit_effnet", **overrides})


def test_fields_of_an_unused_encoder_are_not_checked():
    validate_model_config({"name": "effnet", "patch": (5, 5, 5)})  # no ViT: the patch does not matter
    validate_model_config({"name": "vit", "effnet": "anything"})
