"""Every published-size variant: exact parameter counts and output shapes."""

import math

import pytest

import vit_hub
from vit_hub.architecture import Architecture
from vit_hub.conversion.name_map import linen_shapes
from vit_hub.layers import weights_to_be_loaded

# Parameter counts of the reference implementations (google-research / timm), at 224,
# with a 1000-class head / without head.
PARAMS = {
    "vit_s16": (22_050_664, 21_665_664),
    "vit_s32": (22_878_952, 22_493_952),
    "vit_b8": (86_576_872, 85_807_872),
    "vit_b16": (86_567_656, 85_798_656),
    "vit_b32": (88_224_232, 87_455_232),
    "vit_l16": (304_326_632, 303_301_632),
    "vit_l32": (306_535_400, 305_510_400),
    "vit_h14": (632_045_800, 630_764_800),
    # The hybrids (google-research / timm totals; the fe figure is what hub.KerasLayer
    # reports for the published R26+S/32 fe model).
    "vit_r26_s32": (36_431_912, 36_046_912),
    "vit_r50_l32": (328_994_856, 327_969_856),
}
WIDTH = {"ti": 192, "s": 384, "b": 768, "l": 1024, "h": 1280}
SHIPPED = ["vit_ti16", "vit_s16", "vit_s32", "vit_b8", "vit_b16", "vit_b32", "vit_l16",
           "vit_l32", "vit_h14", "vit_h16", "vit_r26_s32", "vit_r50_l32"]


def test_list_variants():
    assert vit_hub.list_variants()[:12] == SHIPPED  # variants registered later follow


def expected_shapes(name):
    """Output shapes of a variant at 224, with a 1000-class head and without head, from
    its name (width from the size letter, tokens from the patch)."""
    last = name.rsplit("_", 1)[-1]  # 'b16'; 's32' of 'vit_r26_s32'
    size, patch = last.rstrip("0123456789"), int(last.lstrip("tislbh"))
    return (None, 1000), (None, (224 // patch) ** 2 + 1, WIDTH[size])


def counted_params(name, include_top):
    """Parameters of a variant by arithmetic: the name map's shape of every weight
    (tests/test_converters.py checks those shapes against built models' variables)."""
    architecture = Architecture(**vit_hub.variant_config(name), image_size=224,
                                include_top=include_top, num_classes=1000)
    return sum(math.prod(shape) for shape in linen_shapes(architecture).values())


@pytest.mark.parametrize("name", [name for name in SHIPPED if name in PARAMS])
def test_parameter_counts(name):
    assert (counted_params(name, True), counted_params(name, False)) == PARAMS[name]


# Full-size models built to count their variables: the arithmetic above, proven on every
# layer once. ViT-H is 2.5 GB a model and seconds to build on each backend, so not in CI.
@pytest.mark.slow
@pytest.mark.backends
@pytest.mark.parametrize("name", SHIPPED)
def test_built_models_have_the_counted_parameters_and_shapes(name):
    factory = getattr(vit_hub, f"create_{name}")
    builds = (lambda: factory(include_top=True, num_classes=1000),
              lambda: vit_hub.create_vit(name, include_top=False))
    for top, build, shape in zip((True, False), builds, expected_shapes(name), strict=True):
        with weights_to_be_loaded():  # shapes and counts only: no random initialisation
            model = build()
        assert model.output_shape == shape
        assert model.count_params() == counted_params(name, top)
        del model


@pytest.mark.backends  # runs on TensorFlow, JAX, PyTorch and OpenVINO
@pytest.mark.parametrize("size,tokens", [(256, 257), (384, 577), ((224, 320), 281)])
def test_published_patch_grid_at_other_sizes(size, tokens):
    tokens_model = vit_hub.create_vit("vit_ti16", image_size=size, include_top=False)
    assert tokens_model.output_shape == (None, tokens, 192)
    pooled = vit_hub.create_vit("vit_ti16", image_size=size, include_top=False, pooling="gap")
    assert pooled.output_shape == (None, 192)
