"""Every published-size variant: exact parameter counts and output shapes."""

import pytest

import vit_hub
from vit_hub.layers import weights_to_be_loaded

pytestmark = pytest.mark.backends  # runs on TensorFlow, JAX, PyTorch and OpenVINO

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


@pytest.mark.parametrize("name", SHIPPED)
def test_parameter_counts_and_shapes(name):
    last = name.rsplit("_", 1)[-1]  # 'b16'; 's32' of 'vit_r26_s32'
    size, patch = last.rstrip("0123456789"), int(last.lstrip("tislbh"))
    width, tokens = WIDTH[size], (224 // patch) ** 2 + 1
    factory = getattr(vit_hub, f"create_{name}")
    counts = []
    for build, shape in ((lambda: factory(include_top=True, num_classes=1000), (None, 1000)),
                         (lambda: vit_hub.create_vit(name, include_top=False),
                          (None, tokens, width))):
        with weights_to_be_loaded():  # shapes and counts only: no random initialisation
            model = build()
        assert model.output_shape == shape
        counts.append(model.count_params())
        del model  # ViT-H is 2.5 GB a model
    if name in PARAMS:
        assert tuple(counts) == PARAMS[name]


@pytest.mark.parametrize("size,tokens", [(256, 257), (384, 577), ((224, 320), 281)])
def test_published_patch_grid_at_other_sizes(size, tokens):
    tokens_model = vit_hub.create_vit("vit_ti16", image_size=size, include_top=False)
    assert tokens_model.output_shape == (None, tokens, 192)
    pooled = vit_hub.create_vit("vit_ti16", image_size=size, include_top=False, pooling="gap")
    assert pooled.output_shape == (None, 192)
