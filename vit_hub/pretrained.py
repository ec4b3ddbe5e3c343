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
    architecture_for(entry)  # a model without converter fails here, before any download
    path = weights or cached_weights(name, entry, cache_dir, offline)
    tensors, architecture = read_weights_file(path)
    _check_sidecar_checksum(path)
    model = _build(name, entry, architecture, model_kwargs)
    tensors, names = _fit(tensors, architecture, model)
    assign(model, tensors, source=f"weights file {path}", names=names)
    if verify:
        _verify(model, entry)
    return model


def cached_weights(name, entry, cache_dir=None, offline=None):
    """The path of `name`'s verified weights in the cache, converting on a miss."""
    cache = CacheEntry(name, cache_dir)
    state = cache.state()
    if state == "ok":
        return cache.weights_path
    offline = is_offline(offline)
    if state == "corrupt":
        message = (f"The cached weights of {name} in {cache.folder} fail their sha256 check "
                   "(corrupt or truncated); they are not loaded.")
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

    metadata_path = os.path.splitext(os.fspath(path))[0] + ".json"
    if os.path.exists(metadata_path):
        with open(metadata_path, encoding="utf-8") as f:
            expected = json.load(f).get("sha256")
        if expected and expected != sha256(path):
            raise WeightsError(f"{path} does not match the sha256 in {metadata_path}: it is "
                               "corrupt or was changed. Convert it again.")


def _build(name, entry, architecture, model_kwargs):
    config = dict(architecture)
    if entry["kind"] == "fe":
        config["pooling"] = "token"  # the fe models return the class token
    config.setdefault("name", name)
    config.update(model_kwargs)
    return VisionTransformer(**config)


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
