"""The ViT variant table: architecture hyperparameters as data.

Widths, depths, heads and MLP sizes are those of the ViT paper (Dosovitskiy et al., 2020,
table 1) and of the AugReg checkpoints (Steiner et al., 2021) published on Kaggle Models.
"""

import difflib

_WIDTHS = {
    # size: (hidden_dim, num_layers, num_heads, mlp_dim)
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
    "h": (1280, 32, 16, 5120),
}

# name -> (size, patch_size)
_VARIANTS = {
    "vit_ti16": ("ti", 16),
    "vit_s16": ("s", 16),
    "vit_s32": ("s", 32),
    "vit_b8": ("b", 8),
    "vit_b16": ("b", 16),
    "vit_b32": ("b", 32),
    "vit_l16": ("l", 16),
    "vit_l32": ("l", 32),
    "vit_h14": ("h", 14),
    "vit_h16": ("h", 16),
}


def list_variants():
    """Names accepted by `create_vit`, smallest first."""
    return list(_VARIANTS)


def variant_config(name):
    """The architecture hyperparameters of a variant, as `VisionTransformer` kwargs."""
    if name not in _VARIANTS:
        raise ValueError(
            f"Unknown ViT variant {name!r}. {suggest(name, _VARIANTS)}"
            f"Known variants: {', '.join(_VARIANTS)}."
        )
    size, patch_size = _VARIANTS[name]
    hidden_dim, num_layers, num_heads, mlp_dim = _WIDTHS[size]
    return dict(
        patch_size=patch_size,
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
    )


def suggest(name, choices):
    """'Did you mean ...?' text for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.5)
    return f"Did you mean {' or '.join(map(repr, close))}? " if close else ""
