"""vit_hub: the Kaggle / TF-Hub Vision Transformers as native Keras 3 models.

`import vit_hub` is light: the catalogue, the variant table and the errors load at once;
everything that needs Keras (models, layers, loading) is imported on first use, so that
`convert-weights --help` or a look at the catalogue never starts a deep-learning framework.
"""

import importlib
import importlib.metadata
import importlib.util
import sys
from typing import TYPE_CHECKING

from vit_hub.architecture import Architecture, list_variants, register_variant, variant_config
from vit_hub.catalogue import ModelEntry, get_entry, list_models, register_model
from vit_hub.errors import (
    AccuracyError,
    CacheError,
    CatalogueError,
    ConfigError,
    ConversionError,
    DownloadError,
    ImageError,
    ParityError,
    UnsupportedModelError,
    VitHubError,
    WeightsError,
)
from vit_hub.precision import PerformanceWarning

__version__ = importlib.metadata.version("vit_hub")  # pyproject.toml's, as installed

# Public names defined in modules that import Keras: name -> module.
_LAZY = {
    "load_pretrained": "vit_hub.pretrained",
    "load_weights": "vit_hub.pretrained",
    "preprocess": "vit_hub.preprocessing",
    "decode_predictions": "vit_hub.preprocessing",
    "attention_maps": "vit_hub.attention",
    "attention_rollout": "vit_hub.attention",
    "intermediate_outputs": "vit_hub.attention",
    "save_attention_overlay": "vit_hub.attention",
    "VisionTransformer": "vit_hub.model",
    "create_vit": "vit_hub.model",
    "create_vit_ti16": "vit_hub.model",
    "create_vit_s16": "vit_hub.model",
    "create_vit_s32": "vit_hub.model",
    "create_vit_b8": "vit_hub.model",
    "create_vit_b16": "vit_hub.model",
    "create_vit_b32": "vit_hub.model",
    "create_vit_l16": "vit_hub.model",
    "create_vit_l32": "vit_hub.model",
    "create_vit_h14": "vit_hub.model",
    "create_vit_h16": "vit_hub.model",
    "create_vit_r26_s32": "vit_hub.model",
    "create_vit_r50_l32": "vit_hub.model",
    "PatchEmbedding": "vit_hub.layers",
    "ClassToken": "vit_hub.layers",
    "PositionEmbedding": "vit_hub.layers",
    "MLP": "vit_hub.layers",
    "TransformerBlock": "vit_hub.layers",
    "TokenPooling": "vit_hub.layers",
    "ResNetStem": "vit_hub.resnet_stem",
    "BottleneckUnit": "vit_hub.resnet_stem",
    "StandardizedConv2D": "vit_hub.resnet_stem",
    "KerasLayer": "vit_hub.keras_layer",
    "layout_map": "vit_hub.distribution",
    "embed_images": "vit_hub.embed",
    "to_openvino": "vit_hub.runtime",
    "load_openvino": "vit_hub.runtime",
    "OpenVINOModel": "vit_hub.runtime",
    "start_tensorflow_quietly": "vit_hub.terminal",
}

if TYPE_CHECKING:  # what IDEs and static checkers see; at run time see __getattr__
    from vit_hub.attention import (
        attention_maps,
        attention_rollout,
        intermediate_outputs,
        save_attention_overlay,
    )
    from vit_hub.distribution import layout_map
    from vit_hub.embed import embed_images
    from vit_hub.keras_layer import KerasLayer
    from vit_hub.layers import (
        MLP,
        ClassToken,
        PatchEmbedding,
        PositionEmbedding,
        TokenPooling,
        TransformerBlock,
    )
    from vit_hub.model import (
        VisionTransformer,
        create_vit,
        create_vit_b8,
        create_vit_b16,
        create_vit_b32,
        create_vit_h14,
        create_vit_h16,
        create_vit_l16,
        create_vit_l32,
        create_vit_r26_s32,
        create_vit_r50_l32,
        create_vit_s16,
        create_vit_s32,
        create_vit_ti16,
    )
    from vit_hub.preprocessing import decode_predictions, preprocess
    from vit_hub.pretrained import load_pretrained, load_weights
    from vit_hub.resnet_stem import BottleneckUnit, ResNetStem, StandardizedConv2D
    from vit_hub.runtime import OpenVINOModel, load_openvino, to_openvino
    from vit_hub.terminal import start_tensorflow_quietly

__all__ = [
    "Architecture",
    "ModelEntry",
    "list_models",
    "get_entry",
    "register_model",
    "list_variants",
    "register_variant",
    "variant_config",
    "VitHubError",
    "ConfigError",
    "ImageError",
    "CatalogueError",
    "UnsupportedModelError",
    "WeightsError",
    "ConversionError",
    "ParityError",
    "CacheError",
    "DownloadError",
    "AccuracyError",
    "PerformanceWarning",
    *_LAZY,
]


def __getattr__(name):
    """Imports a Keras-backed public name, or a submodule (`vit_hub.weights`), on first
    use."""
    from vit_hub.terminal import tensorflow_start_up_filtered

    if name in _LAZY:
        with tensorflow_start_up_filtered():  # (Keras on TensorFlow imports it)
            if _LAZY[name] in _KERAS_MODULES:
                _register_all()
            value = getattr(importlib.import_module(_LAZY[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        with tensorflow_start_up_filtered():
            value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'vit_hub' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})


# Where every Keras class that a vit_hub `.keras` file can name is defined (and registered
# with Keras, by its decorator): they import Keras first thing.
_KERAS_MODULES = ("vit_hub.layers", "vit_hub.resnet_stem", "vit_hub.model",
                  "vit_hub.keras_layer")


def _register_all():
    for module in _KERAS_MODULES:
        importlib.import_module(module)


# Keras finds the classes of a `.keras` file by their registered names, and a class is
# registered when the module defining it runs its decorator. Importing Keras here would
# make `import vit_hub` heavy, so: registered now if Keras is already imported; otherwise
# on first use of any Keras-backed name (`vit_hub.VisionTransformer`, `load_pretrained`,
# ...), or by `import vit_hub.model` before `keras.saving.load_model`.
if "keras" in sys.modules:
    _register_all()
