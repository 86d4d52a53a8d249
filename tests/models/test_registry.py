"""create_model: every model name builds (abstractly, pinned parameter counts) from a run config's `model`
section; the one kernel switch (`model.kernels`) reaches every layer. The section's validation is tested in
tests/test_config_validation.py."""

import jax
import pytest
from flax import nnx

from lumbar_jax.models import MODEL_NAMES, create_model, resolve_kernels
from lumbar_jax.models.efficientnet import EfficientNet
from lumbar_jax.models.layers import CONV
from lumbar_jax.models.registry import BASELINE_MODELS, MODEL_ENCODERS
from lumbar_jax.models.transformer import Attention
from tests.models.helpers import model_config, num_params

# The sizes the counts below were pinned with: the default fusion head 256 wide, ViT patch 4x16x16 and the
# EfficientNet on the full 16x64x64 volume (its feature-map cells are target-query keys).
PINNED = dict(patch=(4, 16, 16), head_hidden=256, effnet_pool=(1, 1, 1))
# (name, share_encoders, fusion) -> parameters, with the tiny encoders.
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
    config = model_config(name, share_encoders=share, fusion=fusion, **PINNED)
    model = nnx.eval_shape(lambda: create_model(config, nnx.Rngs(0)))
    assert num_params(model) == MODEL_PARAM_COUNTS[(name, share, fusion)]
    assert len(model.encoders) == (1 if share else 3)
    encoder = model.encoders[0]
    assert (encoder.vit is not None, encoder.effnet is not None) == ("vit" in name, "effnet" in name)


def test_fields_of_an_unused_encoder_are_not_read():
    nnx.eval_shape(lambda: create_model(model_config("effnet", vit="no such vit"), nnx.Rngs(0)))
    nnx.eval_shape(lambda: create_model(model_config("vit", effnet="no such effnet"), nnx.Rngs(0)))


def test_resolve_kernels_is_the_one_place_the_backend_decides():
    assert resolve_kernels("auto") == ("cpu" if jax.default_backend() == "cpu" else "xla")
    assert (resolve_kernels("cpu"), resolve_kernels("xla")) == ("cpu", "xla")


@pytest.mark.parametrize("setting", ["auto", "cpu", "xla"])
def test_model_kernels_reach_every_convolution_and_attention(setting):
    """`model.kernels` is resolved once in create_model and handed to every layer explicitly."""
    model = nnx.eval_shape(lambda: create_model(model_config("vit_effnet", kernels=setting, fusion="attention"),
                                                nnx.Rngs(0)))
    kernels = resolve_kernels(setting)
    effnet = model.encoders[0].effnet
    convs = [m for _, m in nnx.iter_modules(effnet) if isinstance(m, nnx.Conv)]
    assert isinstance(effnet, EfficientNet) and convs
    assert all(m.conv_general_dilated is CONV[kernels] for m in convs)
    attentions = [m for _, m in nnx.iter_modules(model) if isinstance(m, Attention)]
    assert len(attentions) == 2 + 1  # the ViT's 2 blocks and the attention head's block
    assert all(m.kernels == kernels for m in attentions)
