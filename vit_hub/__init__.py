"""vit_hub: the Kaggle / TF-Hub Vision Transformers as native Keras 3 models."""

__version__ = "0.1.0"

from vit_hub.layers import (
    MLP,
    ClassToken,
    PatchEmbedding,
    PositionEmbedding,
    TokenPooling,
    TransformerBlock,
)
from vit_hub.attention import (
    attention_maps,
    attention_rollout,
    intermediate_outputs,
    save_attention_overlay,
)
from vit_hub.manifest import list_models
from vit_hub.model import FACTORIES, VisionTransformer, create_vit
from vit_hub.preprocessing import decode_predictions, preprocess
from vit_hub.pretrained import load_pretrained, load_weights
from vit_hub.variants import list_variants, variant_config

# create_vit_ti16(...), create_vit_s16(...), ..., create_vit_h16(...)
globals().update(FACTORIES)

__all__ = [
    "load_pretrained",
    "load_weights",
    "list_models",
    "preprocess",
    "decode_predictions",
    "attention_maps",
    "attention_rollout",
    "intermediate_outputs",
    "save_attention_overlay",
    "VisionTransformer",
    "create_vit",
    "list_variants",
    "variant_config",
    "PatchEmbedding",
    "ClassToken",
    "PositionEmbedding",
    "MLP",
    "TransformerBlock",
    "TokenPooling",
    *FACTORIES,
]
