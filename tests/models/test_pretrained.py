"""Pretrained weights (models/pretrained.py): randomly initialised timm models converted to lumbar_jax give timm's
logits in 2D; the inflated 3D models reproduce them on volumes of identical slices as the inflation rule says;
checkpoint files are read safely; mismatches are refused with the keys named (bad `model.pretrained_*`
fields: tests/test_config_validation.py).

timm (with torch) is the reference: `pip install -e ".[test]"` installs it. Our models are built abstractly and
filled from the checkpoint (tests/models/timm_reference.py), which skips their slow eager initialisation.
"""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks.peers import import_timm
from lumbar_jax.models import pretrained, registry
from lumbar_jax.models.efficientnet import EfficientNet, EfficientNetConfig
from lumbar_jax.models.vit import ViTConfig, VisionTransformer
from tests.models.helpers import KERNELS, cheap_rngs, jit_fast_compile, model_config
from tests.models.timm_reference import loaded, numpy_state, randomized, torch_forward

ATOL = 1e-4  # logits / features; measured differences are ~1e-6


@pytest.fixture(scope="module")
def timm():
    return import_timm()


@pytest.fixture(scope="module")
def timm_b0(timm):
    return randomized(timm.create_model("efficientnet_b0", pretrained=False), seed=1)


@pytest.fixture(scope="module")
def timm_vit(timm):
    """vit_tiny_patch16_224: class token, final norm (our pool='cls'), 14x14 position grid."""
    return randomized(timm.create_model("vit_tiny_patch16_224", pretrained=False), seed=4)


@pytest.fixture(scope="module")
def timm_vit_gap(timm):
    """vit_tiny_patch16_224 without class token, mean pooling + fc_norm (our pool='mean')."""
    return randomized(timm.create_model("vit_tiny_patch16_224", pretrained=False, class_token=False,
                                        global_pool="avg"), seed=3)


def _effnet(ndim, num_classes=1000, padding="symmetric", in_channels=None):
    """EfficientNet-B0 without dropout / drop path (no RNG state, so it can be built abstractly and loaded)."""
    config = EfficientNetConfig.preset("effnet_b0", dropout=0.0, ndim=ndim,
                                       in_channels=in_channels or (3 if ndim == 2 else 1),
                                       num_classes=num_classes, drop_path=0.0, padding=padding)
    return lambda: EfficientNet(config, kernels=KERNELS, rngs=nnx.Rngs(0))


def _grey(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------- 2D parity


@pytest.mark.parametrize("timm_name,padding", [("efficientnet_b0", "symmetric"), ("tf_efficientnet_b0", "same")])
def test_effnet_b0_2d_logits_match_timm(timm, timm_name, padding):
    """ImageNet layout (3 channels, 1000 classes) on 64x64 inputs; tf_ = TF 'same' padding and BN eps 1e-3."""
    reference = randomized(timm.create_model(timm_name, pretrained=False), seed=2)
    model = loaded(_effnet(2, padding=padding), numpy_state(reference))
    x = _grey((2, 64, 64, 3))
    expected = torch_forward(reference, x)
    logits = np.asarray(jit_fast_compile(lambda v: model(v))(x))
    assert np.abs(logits - expected).max() < ATOL
    assert np.abs(expected).max() > 0.1  # not a vacuous comparison


def test_vit_ti_2d_logits_match_timm(timm_vit):
    """vit_tiny_patch16_224 at 224 px (its 14x14 position-embedding grid, class token). (The 1-channel
    adaptation of the first conv is checked by the 3D tests, whose models have one input channel.)"""
    config = ViTConfig.preset("vit_ti", input_shape=(224, 224), patch=(16, 16), in_channels=3, num_classes=1000)
    model = loaded(lambda: VisionTransformer(config, kernels=KERNELS, rngs=nnx.Rngs(0)), numpy_state(timm_vit))
    x = _grey((2, 224, 224, 3))
    logits = np.asarray(jit_fast_compile(lambda v: model(v))(x))
    expected = torch_forward(timm_vit, x)
    assert np.abs(logits - expected).max() < ATOL
    assert np.abs(expected).max() > 0.1


# ---------------------------------------------------------------------------------------------- 3D inflation


def test_effnet_b0_3d_centre_inflation_gives_2d_logits_on_identical_slices(timm_b0):
    """'centre': every 3D conv reads only its own depth slice, so on a volume of D copies of one image the 3D
    B0 (1 channel) gives timm's logits for that image (repeated over RGB) exactly, padding included."""
    model = loaded(_effnet(3), numpy_state(timm_b0), inflation="centre")
    image = _grey((2, 32, 32, 1), seed=5)
    volume = np.repeat(image[:, None], 8, axis=1)  # [2, 8, 32, 32, 1]
    logits = np.asarray(jit_fast_compile(lambda v: model(v))(volume))
    assert np.abs(logits - torch_forward(timm_b0, np.repeat(image, 3, axis=-1))).max() < ATOL


def test_effnet_b0_3d_average_inflation_matches_2d_stem_inside_the_volume(timm_b0):
    """'average' (I3D): a 3x3x3 conv of a depth-constant volume is the 2D conv wherever its depth window lies
    inside the volume. The stem (stride 2, padding 1) output at depth o reads slices 2o-1..2o+1: exact for
    o >= 1, scaled down by the zero padding at o = 0 (the boundary effect)."""
    model = loaded(_effnet(3), numpy_state(timm_b0), inflation="average")
    image = _grey((1, 32, 32, 1), seed=6)
    volume = np.repeat(image[:, None], 8, axis=1)
    stem = np.asarray(jax.nn.silu(model.bn1(model.conv_stem(jnp.asarray(volume)))))  # [1, 4, 16, 16, 32]
    expected = torch_forward(lambda t: timm_b0.bn1(timm_b0.conv_stem(t)), np.repeat(image, 3, axis=-1))
    expected = expected.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    for o in range(1, stem.shape[1]):
        assert np.abs(stem[:, o] - expected).max() < ATOL
    assert np.abs(stem[:, 0] - expected).max() > 1e-2


@pytest.mark.parametrize("inflation", pretrained.INFLATIONS)
def test_vit_3d_mean_pool_gives_2d_logits_on_identical_slices(timm_vit_gap, inflation):
    """Tubelet embedding (no padding): both rules give the 2D patch embedding of a depth-constant volume;
    the position embeddings are tiled over depth, so the 3D tokens are the 2D tokens repeated D' times, which
    attention and mean pooling cannot tell apart: the 3D ViT gives timm's logits exactly."""
    config = ViTConfig.preset("vit_ti", input_shape=(8, 224, 224), patch=(4, 16, 16), pool="mean", num_classes=1000)
    model = loaded(lambda: VisionTransformer(config, kernels=KERNELS, rngs=nnx.Rngs(0)), numpy_state(timm_vit_gap),
                   inflation=inflation)
    image = _grey((1, 224, 224, 1), seed=7)
    volume = np.repeat(image[:, None], 8, axis=1)
    logits = np.asarray(jit_fast_compile(lambda v: model(v))(volume))
    assert np.abs(logits - torch_forward(timm_vit_gap, np.repeat(image, 3, axis=-1))).max() < ATOL


def test_vit_3d_cls_tokens_and_position_embeddings(timm_vit):
    """Class-token ViT into a 3D grid: the embedded tokens (+ position) of a depth-constant volume are timm's
    2D tokens at every depth; a 14x14 grid is resized to the model's 4x4 and tiled over the 4 depth tokens."""
    reference = timm_vit
    state = numpy_state(reference)
    model = loaded(lambda: _vit_ti_3d((8, 224, 224)), state, inflation="centre")
    image = _grey((1, 224, 224, 1), seed=9)
    volume = np.repeat(image[:, None], 8, axis=1)
    embedded = model.patch_embed(jnp.asarray(volume)).reshape(1, -1, 192)  # [1, 2 * 196, 192], depth-major
    tokens = np.asarray(embedded + model.pos_embed_for((2, 14, 14))[:, 1:])
    expected = torch_forward(lambda t: reference._pos_embed(reference.patch_embed(t)), np.repeat(image, 3, axis=-1))
    for d in range(2):
        assert np.abs(tokens[:, d * 196:(d + 1) * 196] - expected[:, 1:]).max() < ATOL
    np.testing.assert_allclose(np.asarray(model.pos_embed[...])[:, 0], state["pos_embed"][:, 0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(model.cls_token[...]), state["cls_token"], atol=1e-7)

    small = loaded(lambda: _vit_ti_3d((16, 64, 64)), state)
    grid = np.asarray(small.pos_embed[...])[0, 1:].reshape(4, 4, 4, 192)
    resized = np.asarray(jax.image.resize(state["pos_embed"][0, 1:].reshape(14, 14, 192), (4, 4, 192), "linear",
                                          antialias=True))
    for d in range(4):
        np.testing.assert_allclose(grid[d], resized, atol=1e-6)


def _vit_ti_3d(input_shape) -> VisionTransformer:
    """vit_ti over volumes of `input_shape`, 4x16x16 tubelets, 1 channel, class token."""
    config = ViTConfig.preset("vit_ti", input_shape=input_shape, patch=(4, 16, 16))
    return VisionTransformer(config, kernels=KERNELS, rngs=nnx.Rngs(0))


def test_inflation_and_channel_rules():
    k2 = np.arange(2 * 3 * 3 * 1 * 4, dtype=np.float32).reshape(3, 3, 2, 4)[..., :1, :]  # [3, 3, 1, 4]
    centre = pretrained.inflate_kernel(k2, 4, "centre")
    assert centre.shape == (4, 3, 3, 1, 4) and np.array_equal(centre[2], k2) and not centre[[0, 1, 3]].any()
    average = pretrained.inflate_kernel(k2, 3, "average")
    np.testing.assert_allclose(average.sum(axis=0), k2, rtol=1e-6)
    assert np.array_equal(average[0], average[2])
    with pytest.raises(ValueError, match="inflation 'mean'"):
        pretrained.inflate_kernel(k2, 3, "mean")
    rgb = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(pretrained.adapt_input_channels(rgb, 1), rgb.sum(1, keepdims=True), rtol=1e-6)
    two = pretrained.adapt_input_channels(rgb, 2)  # timm: repeat, cut, scale by 3 / 2
    np.testing.assert_allclose(two, rgb[:, :2] * 1.5, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- errors


def _tiny_vit_2d(seed=0, **kw):
    kw = dict(input_shape=(32, 32), patch=(16, 16), in_channels=3, num_classes=10) | kw
    return VisionTransformer(ViTConfig.preset("vit_cpu", **kw), kernels=KERNELS, rngs=cheap_rngs(seed))


def test_mismatch_lists_missing_unexpected_and_shapes_and_writes_nothing(timm):
    state = numpy_state(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    config = ViTConfig.preset("vit_s", input_shape=(224, 224), patch=(16, 16), in_channels=3, num_classes=1000)
    vit_s = nnx.eval_shape(lambda: VisionTransformer(config, kernels=KERNELS, rngs=nnx.Rngs(0)))
    with pytest.raises(pretrained.PretrainedMismatchError) as err:
        pretrained.load_timm_weights(vit_s, state, source="vit_tiny.safetensors")
    message = str(err.value)
    assert message.startswith("vit_tiny.safetensors does not match the VisionTransformer 2D")
    assert "blocks.0.attn.qkv.weight: checkpoint (576, 192) vs model (1152, 384)" in message
    assert "patch_embed.proj.weight: checkpoint (192, 3, 16, 16) vs model (384, 3, 16, 16)" in message

    model = _tiny_vit_2d()
    state = pretrained.timm_state_dict(_tiny_vit_2d(seed=1))
    del state["norm.weight"]
    state["blocks.7.ls1.gamma"] = np.zeros(32, np.float32)
    state["blocks.0.mlp.fc1.bias"] = np.zeros(64, np.float32)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    with pytest.raises(pretrained.PretrainedMismatchError) as err:
        pretrained.load_timm_weights(model, state)
    message = str(err.value)
    assert "missing keys (1): norm.weight" in message
    assert "unexpected keys (1): blocks.7.ls1.gamma" in message
    assert "blocks.0.mlp.fc1.bias: checkpoint (64,) vs model (128,)" in message
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_heads_round_trip_and_headless_encoders():
    source = _tiny_vit_2d(seed=1)
    state = pretrained.timm_state_dict(source)
    target = _tiny_vit_2d(seed=2)
    own_head = np.asarray(target.head.kernel[...])
    report = pretrained.load_timm_weights(target, state, head=False)  # keeps its own classifier
    assert np.array_equal(np.asarray(target.head.kernel[...]), own_head) and "head.weight" in report.ignored
    pretrained.load_timm_weights(target, state)
    for a, b in zip(jax.tree.leaves(nnx.state(source, nnx.Param)), jax.tree.leaves(nnx.state(target, nnx.Param))):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    headless = _tiny_vit_2d(num_classes=0)  # an encoder: the checkpoint's classifier is ignored
    report = pretrained.load_timm_weights(headless, state)
    assert set(report.ignored) == {"head.weight", "head.bias"}


def test_shallower_vit_takes_the_first_blocks(tmp_path):
    """model.vit_depth < the variant's depth: the checkpoint's first blocks (apply_pretrained, baseline layout:
    a model with one `vit`)."""
    from safetensors.numpy import save_file

    state = pretrained.timm_state_dict(_tiny_vit_2d(seed=5))
    save_file(state, str(tmp_path / "vit.safetensors"))
    shallow = _tiny_vit_2d(seed=6, depth=1)
    cfg = {"pretrained_vit": str(tmp_path / "vit.safetensors"), "pretrained_effnet": "", "inflation": "centre",
           "vit_depth": 1}
    reports = pretrained.apply_pretrained(types.SimpleNamespace(vit=shallow), cfg)
    assert "blocks.0.attn.qkv.weight" in reports["pretrained_vit"].loaded
    np.testing.assert_array_equal(np.asarray(shallow.blocks[0].attn.qkv.kernel[...]),
                                  state["blocks.0.attn.qkv.weight"].T)


# ---------------------------------------------------------------------------------------------- files


class _NotATensor:
    pass


def test_read_state_dict_formats(tmp_path, monkeypatch):
    import torch
    from safetensors.numpy import save_file

    state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.ones(3, np.float32)}

    def same(read):
        assert set(read) == set(state) and all(np.array_equal(read[k], state[k]) for k in state)

    save_file(state, str(tmp_path / "model.safetensors"))
    same(pretrained.read_state_dict(tmp_path / "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "model.pth")
    same(pretrained.read_state_dict(tmp_path / "model.pth"))
    # A timm training checkpoint: the `state_dict` entry, DataParallel prefix dropped; a name does not matter.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}},
               tmp_path / "checkpoint.bin")
    same(pretrained.read_state_dict(tmp_path / "checkpoint.bin"))

    # Without the safetensors package: the built-in reader, which also reads bfloat16.
    from safetensors.torch import save_file as save_torch

    save_torch({"w": torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16)}, str(tmp_path / "bf16.safetensors"))
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    same(pretrained.read_state_dict(tmp_path / "model.safetensors"))
    bf16 = pretrained.read_state_dict(tmp_path / "bf16.safetensors")["w"]
    assert bf16.shape == (1, 2) and np.array_equal(bf16.astype(np.float32), [[1.5, -2.0]])

    # Arbitrary pickled objects are never run.
    torch.save({"a.weight": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil.pth: refused: .*weights_only=True"):
        pretrained.read_state_dict(tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        pretrained.read_state_dict(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------- models


def test_create_model_loads_every_encoder_and_keeps_the_head_fresh(tmp_path, monkeypatch):
    """The build path of training (`create_model(..., load_pretrained=True)`, called by the training's build_state
    for a fresh fold): 3 unshared encoder sets get the checkpoints (3D, inflated), the fusion head is the
    same as without weights. Tiny variants stand in for the ImageNet ones (no timm checkpoint exists for them)."""
    from safetensors.numpy import save_file

    vit_state = pretrained.timm_state_dict(_tiny_vit_2d(seed=3, num_classes=1000))
    effnet_state = pretrained.timm_state_dict(
        EfficientNet(EfficientNetConfig.preset("effnet_cpu", ndim=2, in_channels=3, num_classes=1000), kernels=KERNELS,
                     rngs=cheap_rngs(4)))
    save_file(vit_state, str(tmp_path / "vit.safetensors"))
    save_file(effnet_state, str(tmp_path / "effnet.safetensors"))
    config = model_config("vit_effnet", share_encoders=False, fusion="concat_mlp", head_hidden=32, patch=(4, 16, 16),
                          inflation="average", pretrained_vit=str(tmp_path / "vit.safetensors"),
                          pretrained_effnet=str(tmp_path / "effnet.safetensors"))
    snapshots = []
    real_apply = pretrained.apply_pretrained

    def apply(model, cfg):  # record the initialised parameters just before the weights are loaded
        snapshots.append(jax.tree.map(np.array, nnx.state(model, nnx.Param)))
        return real_apply(model, cfg)

    monkeypatch.setattr(pretrained, "apply_pretrained", apply)
    model = registry.create_model(config, cheap_rngs(0), load_pretrained=True)
    (initial,) = snapshots

    assert len(model.encoders) == 3
    for encoder in model.encoders:
        np.testing.assert_array_equal(np.asarray(encoder.vit.blocks[1].mlp.fc2.kernel[...]),
                                      vit_state["blocks.1.mlp.fc2.weight"].T)
        stem = np.asarray(encoder.effnet.conv_stem.kernel[...])  # [3, 3, 3, 1, C]: summed over RGB, averaged
        expected = effnet_state["conv_stem.weight"].sum(1, keepdims=True).transpose(2, 3, 1, 0) / 3
        np.testing.assert_allclose(stem, np.broadcast_to(expected, stem.shape), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(encoder.effnet.blocks[0][0].bn1.var[...]),
                                      effnet_state["blocks.0.0.bn1.running_var"])
    head_now = jax.tree.leaves(nnx.state(model.head, nnx.Param))
    head_initial = jax.tree.leaves(initial["head"])
    assert head_now and all(np.array_equal(a, np.asarray(b)) for a, b in zip(head_initial, head_now))
    assert not np.array_equal(initial["encoders"][0]["vit"]["blocks"][1]["mlp"]["fc2"]["kernel"][...],
                              vit_state["blocks.1.mlp.fc2.weight"].T)
