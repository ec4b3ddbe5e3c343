"""LoRA (low-rank adaptation, Hu et al. 2021) for a `VisionTransformer`, on Keras' own.

Keras 3's `Dense` and `EinsumDense` (the layers of vit_hub's attention and MLP) carry LoRA
themselves: `layer.enable_lora(rank)` freezes the kernel, adds two float32 factors A
(the kernel's shape with its last axis replaced by `rank`) and B (rank, last axis; zeros
at first, so outputs are unchanged) and computes with kernel + (alpha / rank) A @ B.
This module picks which of a ViT's layers to adapt (by target name, in every encoder
block), freezes the rest of the backbone as keras-hub's backbones do, saves and loads the
factors alone, and folds them into the kernels.

A model's own head (`include_top`) stays trainable: fine-tuning puts a new one there. The
hybrids' ResNet stem, the patch embedding and the norms stay frozen.
"""

import os

import keras
import numpy as np

from vit_hub import tensor_file
from vit_hub.architecture import Architecture, is_int, suggest
from vit_hub.errors import ConfigError, WeightsError

# Target name -> (the sublayer of a TransformerBlock, its layer): Keras' MultiHeadAttention
# names its projections 'query', 'key', 'value' and 'attention_output'.
TARGETS = {
    "query": ("attention", lambda attention: attention.query_dense),
    "key": ("attention", lambda attention: attention.key_dense),
    "value": ("attention", lambda attention: attention.value_dense),
    "attention_output": ("attention", lambda attention: attention.output_dense),
    "mlp_dense_1": ("mlp", lambda mlp: mlp.dense_1),
    "mlp_dense_2": ("mlp", lambda mlp: mlp.dense_2),
}
# As in the LoRA paper and keras-hub's backbones: the attention's query and value.
DEFAULT_TARGET = ("query", "value")
# Format 2 carries a checksum (format 1, without one, is refused: saved by a vit_hub
# that could not tell a corrupt file).
FORMAT, FORMAT_VERSION = "vit_hub.lora", 2
LORA_FILE = tensor_file.Kind("a vit_hub LoRA weights file",
                             "Save the adapters again with model.save_lora_weights().")
SUFFIX = ".lora.h5"
FACTORS = ("lora_kernel_a", "lora_kernel_b")


class LoraMethods:
    """Mixin for a `VisionTransformer`: its LoRA methods (the work is this module's)."""

    def enable_lora(self, rank, target=DEFAULT_TARGET, alpha=None):
        """Low-rank adaptation: freezes the backbone and adds trainable rank-`rank`
        factors to the `target` layers of every encoder block (default the attention's
        query and value; also 'key', 'attention_output', 'mlp_dense_1', 'mlp_dense_2'),
        scaled by `alpha / rank` (default alpha = rank). The model's own head stays
        trainable; outputs are unchanged until training. Compile again after it."""
        enable(self, rank, target, alpha)

    def save_lora_weights(self, path):
        """Saves the adapters (and the model's own head) alone to `path` (`*.lora.h5`)."""
        return save(self, path)

    def load_lora_weights(self, path):
        """Loads adapters saved by `save_lora_weights`, enabling LoRA with their settings
        if it is not enabled; refused if saved for another architecture, rank or target."""
        load(self, path)

    def merge_lora(self):
        """Folds the adapters into the kernels and removes them: the model computes the
        same with plain layers (nothing extra for export or inference)."""
        merge(self)


def check_rank(rank):
    if not is_int(rank) or rank < 1:
        raise ConfigError(f"LoRA rank must be an int >= 1, got {rank!r}: ranks 4 to 16 are "
                          "usual (the adapters' size grows with it).")
    return int(rank)


def check_target(target):
    """The target names as a tuple, or a ConfigError naming the unknown ones."""
    names = (target,) if isinstance(target, str) else tuple(target)
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        hint = suggest(unknown[0], TARGETS) if unknown else ""
        raise ConfigError(f"unknown LoRA target {unknown or names!r}. {hint}Targets are the "
                          f"layers of each encoder block: {', '.join(TARGETS)} (default "
                          f"{DEFAULT_TARGET}).")
    return tuple(dict.fromkeys(names))


def adapted_layers(model, target):
    """{'block_3/attention/query': layer} for every block and target (the paths of the
    model's weights), in a fixed order."""
    layers = {}
    for block in model.blocks:
        for name in target:
            parent, find = TARGETS[name]
            layer = find(getattr(block, parent))
            layers[f"{block.name}/{parent}/{layer.name}"] = layer
    return layers


def enable(model, rank, target=DEFAULT_TARGET, alpha=None):
    """Freezes `model`'s backbone and enables LoRA on its `target` layers; `model.lora`
    records what was done ({'rank', 'alpha', 'target'})."""
    if model.lora is not None:
        raise ConfigError(f"LoRA is already enabled on {model.name!r} ({describe(model.lora)}"
                          "). Enable it once; to start again with other settings, call "
                          "merge_lora() first or build the model afresh.")
    rank, target = check_rank(rank), check_target(target)
    layers = adapted_layers(model, target)
    full = min(min(_kernel_dims(layer)) for layer in layers.values())
    if rank > full:
        raise ConfigError(f"LoRA rank {rank} is above the full rank {full} of the adapted "
                          f"kernels of {model.name!r}: the adapters would hold more than the "
                          "layers they adapt. Ranks 4 to 16 are usual; at most "
                          f"{full} here.")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or alpha <= 0):
        raise ConfigError(f"LoRA alpha must be a positive number, got {alpha!r} (the update "
                          "is scaled by alpha / rank; default alpha = rank).")
    # Frozen variable by variable, every layer's own flag left True: then
    # `model.trainable = False` (or a frozen KerasLayer around it) reaches every layer and
    # freezes the adapters too. (A layer flagged False above a trainable one would stop
    # it on TensorFlow, whose attribute setting returns early when the value is the same.)
    model.trainable = True
    for variable in model.weights:
        variable.trainable = False
    for layer in layers.values():
        layer.enable_lora(rank, lora_alpha=alpha)  # (adds trainable A and B)
    for variable in (model.head.weights if model.head is not None else ()):
        variable.trainable = True
    model.lora = {"rank": rank, "alpha": alpha if alpha is not None else rank,
                  "target": list(target)}


def _same_settings(a, b):
    # The targets as a set: the same layers adapted in another order are the same.
    return (a["rank"] == b["rank"] and float(a["alpha"]) == float(b["alpha"])
            and sorted(a["target"]) == sorted(b["target"]))


def _kernel_dims(layer):
    """(inputs, outputs) of a Dense or EinsumDense kernel: A is (*in, rank), B (rank, out)."""
    shape = tuple(layer.kernel.shape)
    return int(np.prod(shape[:-1])), int(shape[-1])


def describe(record):
    return f"rank {record['rank']}, alpha {record['alpha']}, on {', '.join(record['target'])}"


def _require(model, what):
    if model.lora is None:
        raise ConfigError(f"{what}: {model.name!r} has no LoRA enabled; call "
                          "model.enable_lora(rank) first.")


def _factors(model):
    """{'block_0/attention/query/lora_kernel_a': variable, ...} of the enabled adapters."""
    return {f"{path}/{variable.name}": variable
            for path, layer in adapted_layers(model, model.lora["target"]).items()
            for variable in layer.weights if variable.name in FACTORS}


def _head(model):
    return {f"head/{v.name}": v for v in model.head.weights} if model.head is not None else {}


def save(model, path):
    """Writes the adapters (and the model's own head, trained with them) to `path`, a
    vit_hub tensor file ending in `.lora.h5`, atomically, with the architecture and LoRA
    settings, and the checksum that loading verifies."""
    _require(model, "save_lora_weights")
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        raise ConfigError(f"LoRA weights files end in {SUFFIX!r} (they hold the adapters "
                          f"only, not a model): got {path!r}.")
    tensors = {name: keras.ops.convert_to_numpy(variable)
               for name, variable in {**_factors(model), **_head(model)}.items()}
    records = {"architecture": Architecture.of(model).to_dict(), "lora": model.lora}
    return tensor_file.write(path, FORMAT, FORMAT_VERSION, records, tensors)


def read(path):
    """({name: array}, architecture record, lora record) of a LoRA weights file, checked
    against its checksum."""
    arrays, records = tensor_file.read_verified(os.fspath(path), FORMAT, FORMAT_VERSION,
                                                LORA_FILE)
    if "architecture" not in records or "lora" not in records:
        raise WeightsError(f"{path} has no architecture or LoRA record. {LORA_FILE.fix}")
    return arrays, records["architecture"], records["lora"]


def load(model, path):
    """Loads adapters saved by `save` into `model`, enabling LoRA with the file's settings
    if it has none. WeightsError if they were saved for another architecture, rank or
    targets (nothing is assigned then)."""
    arrays, architecture, record = read(path)
    mine = Architecture.of(model).to_dict()
    # Every field but the image size (adapters do not depend on it) and the head (its
    # tensors are checked by shape below): another patch size with the same widths
    # would load and compute something else.
    fields = [k for k in mine if k not in ("image_size", "include_top", "num_classes")]
    differ = [f"{k} {architecture.get(k)} (file) vs {mine[k]} (model)"
              for k in fields if architecture.get(k) != mine[k]]
    if differ:
        raise WeightsError(f"{path} holds LoRA weights for another architecture: "
                           f"{'; '.join(differ)}. Load them into the model they were trained "
                           "on.")
    if model.lora is not None and not _same_settings(model.lora, record):
        raise WeightsError(f"{path} holds LoRA weights of {describe(record)}; the model has "
                           f"{describe(model.lora)}. Load them into a model without LoRA "
                           "(they enable it with their settings), or enable the same.")
    enabled_here = model.lora is None
    if enabled_here:
        enable(model, record["rank"], record["target"], record["alpha"])
    variables = _factors(model)
    head = _head(model)
    if any(name.startswith("head/") for name in arrays):
        variables.update(head)
    problems = [f"{name}: missing" for name in variables if name not in arrays]
    problems += [f"{name}: {arrays[name].shape} in the file, {tuple(v.shape)} in the model"
                 for name, v in variables.items()
                 if name in arrays and arrays[name].shape != tuple(v.shape)]
    problems += [f"{name}: not in the model" for name in arrays if name not in variables]
    if problems:
        if enabled_here:
            merge(model, discard=True)
        raise WeightsError(f"{path} does not fit the model:\n  - " + "\n  - ".join(problems))
    for name, variable in variables.items():
        variable.assign(arrays[name])


def merge(model, discard=False):
    """Folds each adapter into its kernel (kernel += alpha / rank * A @ B, in float32)
    and removes the factors, leaving a plain model that computes the same at no extra
    cost; every layer is trainable again. `discard` drops the adapters instead. Functions
    compiled before (a model's predict) stay right; compile again to shed their cost."""
    _require(model, "merge_lora")
    scale = model.lora["alpha"] / model.lora["rank"]
    for layer in adapted_layers(model, model.lora["target"]).values():
        kernel = next(v for v in layer.weights if v.name == "kernel")
        if not discard:
            update = keras.ops.matmul(layer.lora_kernel_a, layer.lora_kernel_b)
            kernel.assign(keras.ops.cast(kernel, "float32") + scale * update)
        # A function traced before (a compiled predict or train step) still reads the
        # factors: zeroed, they add nothing there either.
        layer.lora_kernel_b.assign(keras.ops.zeros(layer.lora_kernel_b.shape))
        # `del` is how Keras itself removes a layer's variable (untracked everywhere).
        del layer.lora_kernel_a
        del layer.lora_kernel_b
        layer.lora_enabled, layer.lora_rank, layer.lora_alpha = False, None, None
    model.lora = None
    # Layer by layer and variable by variable: `layer.trainable = True` on a layer whose
    # flag is already True returns early on TensorFlow (its attribute short circuit),
    # leaving the variables frozen.
    for layer in model._flatten_layers(include_self=True):
        layer.trainable = True
    for variable in model.weights:
        variable.trainable = True
