"""The one name map: checkpoint (Flax Linen) parameter paths -> native Keras variable paths.

Every weight source (hub SavedModel, original npz) is first brought to Linen paths, then
this map names the native variable. Tensor shapes are identical on both sides (HWIO conv
kernel, (hidden, heads, head_dim) attention kernels), so conversion is renaming only.
"""

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
    return names


def original_to_linen(path):
    """Renames an original-npz key (e.g. `.../MlpBlock_3/...`) to its Linen path."""
    return "/".join(ORIGINAL_TO_LINEN.get(part, part) for part in path.split("/"))


def assign_linen(model, tensors, source="checkpoint"):
    """Fills a built `model` from `{Linen path: array}`, all or nothing (see
    `vit_hub.weights.assign`)."""
    from vit_hub.architecture import Architecture
    from vit_hub.weights import assign

    assign(model, tensors, source, linen_to_native(Architecture.of(model)))


def to_native(tensors, architecture):
    """`{Linen path: tensor}` renamed to native variable paths."""
    names = linen_to_native(architecture)
    return {names[linen]: tensor for linen, tensor in tensors.items()}


def linen_shapes(architecture):
    """{Linen path: shape} of a checkpoint for an `Architecture`, computed without
    building a model (tests check it against the model's variables)."""
    d, mlp, heads = architecture.hidden_dim, architecture.mlp_dim, architecture.num_heads
    patch, tokens = architecture.patch_size, architecture.num_tokens
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
        "embedding/kernel": (patch, patch, 3, d),
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
    return shapes
