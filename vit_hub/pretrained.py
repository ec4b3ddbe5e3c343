"""`load_pretrained`: a published ViT as a native Keras model, from the local cache.

A cache hit reads one HDF5 file after checking its sha256: no network, and neither
tensorflow_hub nor kagglehub is imported. A miss downloads through kagglehub, converts,
checks parity against the hub model and caches, under a file lock (see converters).
"""

import os
import warnings

from vit_hub.cache import CacheEntry, CacheError, is_offline
from vit_hub.files import sha256
from vit_hub.manifest import architecture_for, get_entry
from vit_hub.layers import weights_to_be_loaded
from vit_hub.model import VisionTransformer
from vit_hub.weights import (
    WeightsError,
    assign,
    native_variables,
    read_weights_file,
    resample_position_embeddings,
)


def load_pretrained(name, *, cache_dir=None, offline=None, verify=False, weights=None,
                    **model_kwargs):
    """Returns the native Keras model of a published ViT (see `vit_hub.list_models()`).

    Called with no extra kwargs, the model computes what the hub model computes: `_fe`
    models give the class-token features (B, width), `_classification` models logits
    (B, 1000), for RGB images in [-1, 1] at 224x224.

    Args:
        name: e.g. 'vit_b32_fe', 'vit_b16_classification'.
        cache_dir: cache root; default $VIT_HUB_CACHE, else the user cache folder.
        offline: never touch the network (default: $VIT_HUB_OFFLINE=1).
        verify: also re-run the parity check against the hub model (needs its download).
        weights: path of a converted weights file to load instead of the cache.
        **model_kwargs: `VisionTransformer` arguments, e.g. `dropout`, `dtype`, `name`,
            and those that reshape the model:
            `image_size` (int or (height, width), multiples of the patch size): the
                position embeddings are resampled bicubically (class token kept); a
                warning says that accuracy at the new size needs fine-tuning.
            `num_classes`: a classification model gets a new, zero-initialised head.
            `include_top=True, num_classes=N` on an fe model: a new head on the
                class token. `include_top=False` on a classification model drops it.
    """
    entry = get_entry(name)
    published = architecture_for(entry)  # no converter: fails here, before any download
    if weights is not None:
        path = os.fspath(weights)
        _check_sidecar_checksum(path)  # before a byte of it is parsed
    else:
        path = cached_weights(name, entry, cache_dir, offline)  # sha256 checked
    tensors, architecture = read_weights_file(path)
    _check_architecture(name, entry, published, architecture, path)
    model = _assemble(tensors, architecture, path, {"name": name, **model_kwargs})
    if verify:
        _verify(model, entry)
    return model


def load_weights(path, **model_kwargs):
    """A model from any vit_hub weights file, built with the architecture recorded in it:
    a file written by `convert-weights --output`, or by
    `vit_hub.weights.save_weights_file` for a custom config. As with `load_pretrained`, a
    model without head returns the class token, and `model_kwargs` may resize it or give
    it a new head. The file is checked against the sha256 of its `.json`, if it has one.
    """
    path = os.fspath(path)
    _check_sidecar_checksum(path)
    tensors, architecture = read_weights_file(path)
    return _assemble(tensors, architecture, path, model_kwargs)


def cached_weights(name, entry, cache_dir=None, offline=None):
    """The path of `name`'s verified weights in the cache, converting on a miss."""
    cache = CacheEntry(name, cache_dir)
    problem = cache.problem()  # hashes the weights: once per load
    if problem is None:
        return cache.weights_path
    offline = is_offline(offline)
    if cache.metadata() is not None:  # an entry, but corrupt ('corrupt' in state())
        message = (f"The cache entry of {name} in {cache.folder} is not valid: "
                   f"{problem}; it is not loaded.")
        if offline:
            raise CacheError(message + f" Offline, they cannot be converted again: run "
                             f"`convert-weights {name} --force` with network, or with "
                             f"--source DIR.")
        warnings.warn(message + " Converting again.", stacklevel=3)
    if offline:
        from converters.pipeline import offline_message

        raise CacheError(offline_message(name, cache))
    from converters.pipeline import convert_into_cache

    # Not forced: the pipeline re-checks the entry under the lock, so an entry that a
    # concurrent process has just written is reused, and a corrupt one is replaced.
    convert_into_cache(name, cache_dir=cache_dir)
    if cache.state() != "ok":
        raise CacheError(f"The cache entry of {name} in {cache.folder} is still not valid "
                         "after converting; delete that folder and try again.")
    return cache.weights_path


def _check_sidecar_checksum(path):
    """A weights file given by path is checked against its metadata, if it has one."""
    import json

    if not os.path.isfile(path):
        raise WeightsError(f"No weights file at {path}"
                           + (" (it is a folder)" if os.path.isdir(path) else "")
                           + ": pass the .h5 file that convert-weights wrote (--output FILE, "
                           "or the cache's v1/NAME/NAME.h5).")
    metadata_path = os.path.splitext(path)[0] + ".json"
    if not os.path.exists(metadata_path):
        return
    try:
        with open(metadata_path, encoding="utf-8") as f:
            metadata = json.load(f)
        expected = metadata.get("sha256") if isinstance(metadata, dict) else None
        if not isinstance(expected, str):
            raise ValueError("no sha256 field")
    except (OSError, ValueError) as err:
        raise WeightsError(
            f"The metadata {metadata_path} beside {path} is unreadable ({err}), so the "
            "weights cannot be verified; they are not loaded. Convert them again, or "
            "remove the .json to load the file unchecked."
        ) from None
    if expected != sha256(path):
        raise WeightsError(f"{path} does not match the sha256 in {metadata_path}: it is "
                           "corrupt or was changed. Convert it again.")


_SHAPE_KEYS = ("patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim")


def _check_architecture(name, entry, published, architecture, path):
    """The weights file must hold `name`'s network (a file of another model would
    otherwise build that other model under this name)."""
    def sketch(arch):
        return ", ".join(f"{k} {arch.get(k)}" for k in _SHAPE_KEYS)

    if not isinstance(architecture, dict):
        raise WeightsError(f"{path} has no readable architecture record: it is not a "
                           f"vit_hub weights file of this version. Convert it again.")
    found = {k: architecture.get(k) for k in _SHAPE_KEYS}
    wanted = {k: published[k] for k in _SHAPE_KEYS}
    head = bool(architecture.get("include_top"))
    if found != wanted or head != (entry["kind"] == "classification"):
        raise WeightsError(
            f"{path} holds another network than {name}: {sketch(found)}, "
            f"{'with' if head else 'without'} head; {name} is {sketch(wanted)}, "
            f"{'with' if entry['kind'] == 'classification' else 'without'} head. Pass the "
            f"weights converted for {name} (convert-weights {name})."
        )


def _assemble(tensors, architecture, path, model_kwargs):
    """The model of `architecture` (changed by `model_kwargs`) filled from `tensors`."""
    config = dict(architecture)
    if not config["include_top"]:
        config["pooling"] = "token"  # as the fe hub models: the class token
    config.update(model_kwargs)
    with weights_to_be_loaded():  # every weight is assigned below, or a fresh head's zeros
        model = VisionTransformer(**config)
    tensors, names = _fit(tensors, architecture, model)
    assign(model, tensors, source=f"weights file {path}", names=names)
    return model


def _fit(tensors, architecture, model):
    """Adapts the stored tensors to `model`: position embeddings resampled to its grid,
    the head dropped or left fresh where the model's differs. Returns the tensors and the
    {key: native path} of those to assign."""
    tensors = dict(tensors)
    key = "position_embedding/embeddings"
    height, width = architecture["image_size"]
    old_grid = (height // architecture["patch_size"], width // architecture["patch_size"])
    if old_grid != model.grid_size:
        tensors[key] = resample_position_embeddings(tensors[key], old_grid, model.grid_size)
        warnings.warn(
            f"{model.name}: position embeddings resampled from a {old_grid[0]}x{old_grid[1]} "
            f"to a {model.grid_size[0]}x{model.grid_size[1]} patch grid (image size "
            f"{model.image_size[0]}x{model.image_size[1]}). The weights were trained at "
            f"{height}x{width}: fine-tune at the new size for full accuracy.",
            stacklevel=3,
        )
    new_head = model.include_top and (
        not architecture["include_top"] or model.num_classes != architecture["num_classes"]
    )
    if new_head or not model.include_top:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("head/")}
    names = {k: k for k in native_variables(model) if not (new_head and k.startswith("head/"))}
    return tensors, names


def _verify(model, entry):
    from converters.download import download
    from converters.parity import check_parity

    check_parity(model, download(entry["handle"]))
