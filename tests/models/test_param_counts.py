"""Every encoder variant builds (abstractly: nnx.eval_shape) with a pinned parameter count.

3D = our use (1 input channel, pooled features, 16x64x64 volumes, ViT patch 4x16x16, CLS pooling).
2D = ImageNet layout (3 channels, 1000 classes, 224x224, ViT patch 16x16): timm's counts (efficientnet_b0..b7 =
tf_efficientnet_b0..b7, vit_{tiny,small,base,large}_patch16_224), which the 2D models must keep so that
pretrained weights map 1:1.

Abstract builds of EfficientNet-B1..B7 take seconds each on a small CPU (nnx.eval_shape re-walks the whole
trace on every RNG draw, so the cost grows with the square of the number of layers); they run anyway: a
count that CI never checks is not pinned.
"""

import pytest

from lumbar_jax.models.efficientnet import EFFNET_VARIANTS
from lumbar_jax.models.vit import VIT_VARIANTS
from tests.models.helpers import abstract_encoder, num_params

# variant: (3D count, 2D count)
PARAM_COUNTS = {
    "effnet_b0": (4_688_380, 5_288_548),
    "effnet_b1": (7_446_496, 7_794_184),
    "effnet_b2": (8_714_946, 9_109_994),
    "effnet_b3": (12_058_472, 12_233_232),
    "effnet_b4": (19_612_760, 19_341_616),
    "effnet_b5": (31_048_464, 30_389_784),
    "effnet_b6": (44_391_528, 43_040_704),
    "effnet_b7": (68_758_992, 66_347_960),
    "effnet_cpu": (29_886, 82_406),
    "vit_ti": (5_548_224, 5_717_416),
    "vit_s": (21_713_280, 22_050_664),
    "vit_b": (85_893_888, 86_567_656),
    "vit_l": (303_428_608, 304_326_632),
    "vit_cpu": (60_384, 89_416),
}
def test_table_covers_every_variant():
    assert set(PARAM_COUNTS) == set(EFFNET_VARIANTS) | set(VIT_VARIANTS)


@pytest.mark.parametrize("variant", list(PARAM_COUNTS))
def test_param_count_3d(variant):
    assert num_params(abstract_encoder(variant, 3)) == PARAM_COUNTS[variant][0]


@pytest.mark.parametrize("variant", list(PARAM_COUNTS))
def test_param_count_2d_imagenet(variant):
    assert num_params(abstract_encoder(variant, 2)) == PARAM_COUNTS[variant][1]
