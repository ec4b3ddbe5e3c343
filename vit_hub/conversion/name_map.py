"""The one name map: checkpoint (Flax Linen) parameter paths -> native Keras variable paths.

Every weight source (hub SavedModel, original npz) is first brought to Linen paths, then
this map names the native variable. Tensor shapes are identical on both sides (HWIO conv
kernels, (hidden, heads, head_dim) attention kernels) but for one: GroupNorm scale and
bias of the hybrids' ResNet stem are (1, 1, 1, C) in the published checkpoints (flax
0.3.3) and (C,) in Keras and in later npz files; `to_native` and `canonical` reshape them.
"""

import numpy as np

from vit_hub.architecture import (
    RESNET_EXPANSION,
    RESNET_WIDTH,
    needs_projection,
    resnet_out_channels,
    resnet_plan,
)

_TOP = {
    "embedding/kernel": "patch_embedding/projection/kernel",
    "embedding/bias": "patch_embedding/projection/bias",
    "cls": "class_token/token",
    "Transformer/posembed_input/pos_embedding": "position_embedding/embeddings",
    "Transformer/encoder_norm/scale": "encoder_norm/gamma",
    "Transformer/encoder_norm/bias": "encoder_norm/beta",
}
_HEAD = {"head/kernel": "head/kernel", "head/bias": "head/bias"}

_MODULES_IN_BLOCK = {
    # Linen module -> native sublayer
    "LayerNorm_0": "layer_norm_1",
    "LayerNorm_1": "layer_norm_2",
    "MultiHeadDotProductAttention_0/query": "attention/query",
    "MultiHeadDotProductAttention_0/key": "attention/key",
    "MultiHeadDotProductAttention_0/value": "attention/value",
    "MultiHeadDotProductAttention_0/out": "attention/attention_output",
    "MlpBlock_0/Dense_0": "mlp/dense_1",
    "MlpBlock_0/Dense_1": "mlp/dense_2",
}
_DENSE_PARAMS = {"kernel": "kernel", "bias": "bias"}
_NORM_PARAMS = {"scale": "gamma", "bias": "beta"}
# A bottleneck unit's convolutions (HWIO kernels, no bias) and their GroupNorms; a unit
# that changes the channel count or the stride also has the projection pair.
_UNIT = ("conv1", "gn1", "conv2", "gn2", "conv3", "gn3")
_PROJECTION = ("conv_proj", "gn_proj")

# The original google-research npz files predate Linen's auto-naming of submodules.
ORIGINAL_TO_LINEN = {
    "LayerNorm_2": "LayerNorm_1",
    "MlpBlock_3": "MlpBlock_0",
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
}


def linen_to_native(architecture):
    """{Linen path: native variable path} for a ViT `Architecture`."""
    names = dict(_TOP)
    for i in range(architecture.num_layers):
        for module, sublayer in _MODULES_IN_BLOCK.items():
            params = _NORM_PARAMS if module.startswith("LayerNorm") else _DENSE_PARAMS
            for param, native in params.items():
                linen = f"Transformer/encoderblock_{i}/{module}/{param}"
                names[linen] = f"block_{i}/{sublayer}/{native}"
    if architecture.include_top:
        names.update(_HEAD)
    for linen, native in stem_names(architecture.resnet_units).items():
        names[linen] = f"stem/{native}"
    return names


def stem_names(units):
    """{Linen path: native path inside the stem layer} of a ResNet stem."""
    return {linen: native for linen, (native, _) in _stem(units).items()}


def _stem(units):
    """{Linen path: (native path in the stem layer, checkpoint shape)} of a ResNet stem
    with `units` per stage (empty for a plain ViT)."""
    if not units:
        return {}
    modules = [("", "", "conv_root", (7, 7, 3, RESNET_WIDTH)), ("", "", "gn_root", RESNET_WIDTH)]
    channels = RESNET_WIDTH
    for stage, unit, filters, strides in resnet_plan(units):
        out = RESNET_EXPANSION * filters
        shapes = {"conv1": (1, 1, channels, filters), "gn1": filters,
                  "conv2": (3, 3, filters, filters), "gn2": filters,
                  "conv3": (1, 1, filters, out), "gn3": out,
                  "conv_proj": (1, 1, channels, out), "gn_proj": out}
        projected = needs_projection(channels, filters, strides)
        for module in _UNIT + (_PROJECTION if projected else ()):
            modules.append((f"block{stage}/unit{unit}/", f"block{stage}_unit{unit}/", module,
                            shapes[module]))
        channels = out
    stem = {}
    for linen, native, module, shape in modules:
        if module.startswith("conv"):
            stem[f"{linen}{module}/kernel"] = (f"{native}{module}/kernel", shape)
        else:
            for param, keras_name in _NORM_PARAMS.items():
                stem[f"{linen}{module}/{param}"] = (f"{native}{module}/{keras_name}",
                                                    (1, 1, 1, shape))
    return stem


def is_group_norm(linen_path):
    """GroupNorm scale or bias of a ResNet stem (`gn_root/scale`, `.../gn2/bias`)."""
    *_, module, param = ("/" + linen_path).split("/")
    return module.startswith("gn") and param in _NORM_PARAMS


def canonical(linen_path, array):
    """A checkpoint tensor in the published layout: GroupNorm parameters stored as (C,)
    (npz files written after flax 0.3.3) become (1, 1, 1, C)."""
    if is_group_norm(linen_path) and np.ndim(array) == 1:
        return np.reshape(array, (1, 1, 1, -1))
    return array


def original_to_linen(path):
    """Renames an original-npz key (e.g. `.../MlpBlock_3/...`) to its Linen path."""
    return "/".join(ORIGINAL_TO_LINEN.get(part, part) for part in path.split("/"))


_LINEN_TO_ORIGINAL = {linen: original for original, linen in ORIGINAL_TO_LINEN.items()}


def linen_to_original(path):
    """The inverse of `original_to_linen`: a Linen path as an original-npz key."""
    return "/".join(_LINEN_TO_ORIGINAL.get(part, part) for part in path.split("/"))


def assign_linen(model, tensors, source="checkpoint"):
    """Fills a built `model` from `{Linen path: array}`, all or nothing (see
    `vit_hub.weights.assign`)."""
    from vit_hub.architecture import Architecture
    from vit_hub.weights import assign

    tensors = {k: _Flat(v) if is_group_norm(k) else v for k, v in tensors.items()}
    assign(model, tensors, source, linen_to_native(Architecture.of(model)))


def to_native(tensors, architecture):
    """`{Linen path: tensor}` renamed to native variable paths, GroupNorm parameters
    flattened to Keras' (C,). Lazy tensors stay lazy."""
    names = linen_to_native(architecture)
    return {names[linen]: _Flat(tensor) if is_group_norm(linen) else tensor
            for linen, tensor in tensors.items()}  # (readers checked every name)


class _Flat:
    """A tensor read as 1-D when it is converted to an array (a lazy source stays lazy)."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.shape = (int(np.prod(np.shape(tensor))),)

    def __array__(self, dtype=None, copy=None):
        return np.reshape(np.asarray(self.tensor, dtype), self.shape)


def linen_shapes(architecture):
    """{Linen path: shape} of a checkpoint for an `Architecture`, computed without
    building a model (tests check it against the model's variables)."""
    d, mlp, heads = architecture.hidden_dim, architecture.mlp_dim, architecture.num_heads
    tokens = architecture.num_tokens
    # A hybrid embeds each cell of its stem's output (2048 channels) with a 1x1 conv.
    stem = _stem(architecture.resnet_units)
    patch, channels = ((1, resnet_out_channels()) if stem else (architecture.patch_size, 3))
    attention = "MultiHeadDotProductAttention_0"
    block = {
        **{f"LayerNorm_{k}/{p}": (d,) for k in (0, 1) for p in ("scale", "bias")},
        **{f"{attention}/{n}/kernel": (d, heads, d // heads) for n in ("query", "key", "value")},
        **{f"{attention}/{n}/bias": (heads, d // heads) for n in ("query", "key", "value")},
        f"{attention}/out/kernel": (heads, d // heads, d),
        f"{attention}/out/bias": (d,),
        "MlpBlock_0/Dense_0/kernel": (d, mlp),
        "MlpBlock_0/Dense_0/bias": (mlp,),
        "MlpBlock_0/Dense_1/kernel": (mlp, d),
        "MlpBlock_0/Dense_1/bias": (d,),
    }
    shapes = {
        "embedding/kernel": (patch, patch, channels, d),
        "embedding/bias": (d,),
        "cls": (1, 1, d),
        "Transformer/posembed_input/pos_embedding": (1, tokens, d),
        "Transformer/encoder_norm/scale": (d,),
        "Transformer/encoder_norm/bias": (d,),
    }
    for i in range(architecture.num_layers):
        shapes.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in block.items()})
    if architecture.include_top:
        classes = architecture.num_classes
        shapes.update({"head/kernel": (d, classes), "head/bias": (classes,)})
    shapes.update({linen: shape for linen, (_, shape) in stem.items()})
    return shapes
