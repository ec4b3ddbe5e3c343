"""`load_pretrained`: a published ViT as a native Keras model, from the local cache.

A cache hit reads one HDF5 file, each tensor once, after checking its sha256 (computed
while the model is built): no network, and neither
tensorflow_hub nor kagglehub is imported. A miss downloads through kagglehub, converts,
checks parity against the hub model and caches, under a file lock (see vit_hub.conversion).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import os
from typing import TYPE_CHECKING, Any, Literal

from vit_hub.architecture import check_flag, check_kwargs, image_hw
from vit_hub.cache import CacheEntry, is_offline
from vit_hub.catalogue import get_entry
from vit_hub.errors import CacheError, WeightsError, warn
from vit_hub.files import checksum_problem
from vit_hub.runtime.options import check_runtime
from vit_hub.weights import build_model, empty_model, fill, open_weights_file

if TYPE_CHECKING:
    from vit_hub.model import VisionTransformer
    from vit_hub.runtime.openvino_model import OpenVINOModel


def load_pretrained(name: str, *, cache_dir: str | os.PathLike | None = None,
                    offline: bool | None = None, verify: bool = False,
                    weights: str | os.PathLike | None = None,
                    runtime: Literal["keras", "openvino"] = "keras",
                    precision: Literal["fp32", "bf16", "int8"] | None = None,
                    calibration: Any = None, min_cosine: float | None = None,
                    threads: int | None = None,
                    **model_kwargs: Any) -> VisionTransformer | OpenVINOModel:
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
        runtime: 'keras' (a `VisionTransformer`) or 'openvino': an `OpenVINOModel`
            compiled at `precision` ('fp32', exact, the default; 'bf16'; 'int8',
            calibrated on `calibration`; `min_cosine`: the agreement with fp32 below
            which bf16/int8 is refused; see `vit_hub.to_openvino`), its IR cached
            beside the weights (a cache hit imports neither TensorFlow nor Keras).
            `threads` limits its CPU threads. It takes the keywords that shape the
            outputs: image_size, include_top, num_classes, pooling,
            classifier_activation.
        **model_kwargs: `VisionTransformer` arguments, e.g. `dropout`, `dtype`,
            `trainable` (any other keyword is an ArgumentError, a TypeError, raised
            before the cache is looked at), and those that reshape the model:
            `image_size` (int or (height, width), multiples of the patch size): the
                position embeddings are resampled bicubically (class token kept); a
                warning says that accuracy at the new size needs fine-tuning.
            `num_classes`: a classification model gets a new, zero-initialised head.
            `include_top=True, num_classes=N` on an fe model: a new head on the
                class token. `include_top=False` on a classification model drops it.
    """
    check_flag(offline, "offline", allow_none=True)
    check_flag(verify, "verify")
    precision = check_runtime(runtime, precision, calibration=calibration,
                              min_cosine=min_cosine, threads=threads)
    if runtime == "openvino":
        return _load_openvino(name, precision, calibration, min_cosine, threads, cache_dir,
                              offline, verify, weights, model_kwargs)
    _check_model_kwargs("load_pretrained", model_kwargs, _keyword_only(load_pretrained),
                        positional=("name",))
    entry = get_entry(name)
    name = entry.name  # the catalogue's name, whatever form the caller used
    published = entry.architecture  # no converter: fails here, before any download
    model_kwargs = {"name": name, **model_kwargs}
    if weights is not None:
        path = os.fspath(weights)
        _check_sidecar_checksum(path)  # before a byte of it is parsed
        model = None
    else:
        # The sha256 of the cached file is computed while the empty model is built (the
        # two take turns on the GIL: hashing releases it), and checked before a byte of
        # the file is parsed.
        cache = CacheEntry(name, cache_dir)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            hashing = pool.submit(cache.problem)
            model = empty_model(published, **model_kwargs)
            intact = hashing.result() is None
        if intact:
            cache.tidy()  # a killed writer's staged copy, which no one else would remove
        # A miss or a corrupt entry: the full path (convert, or say why not).
        path = cache.weights_path if intact else cached_weights(name, cache_dir, offline)
    with open_weights_file(path) as (tensors, architecture):  # each tensor read once
        _check_architecture(entry, published, architecture, path)
        if model is None or architecture != published:  # a file of another size or head
            model = empty_model(architecture, **model_kwargs)
        fill(model, tensors, architecture, f"weights file {path}")
    if verify:
        _verify(model, entry)
    return model


# What the OpenVINO runtime can honour: the keywords that shape a model's outputs. The
# others are about training (dropout, trainable) or Keras (dtype: precision= says it).
RUNTIME_KWARGS = ("image_size", "include_top", "num_classes", "pooling",
                  "classifier_activation")


def _load_openvino(name, precision, calibration, min_cosine, threads, cache_dir, offline,
                   verify, weights, model_kwargs):
    """`precision`: checked by `check_runtime`."""
    from vit_hub.runtime.convert import calibration_digest, check_gate, to_openvino
    from vit_hub.runtime.ir_cache import cached_openvino, ir_key

    # Keras-only keywords (dtype, dropout, trainable) are refused like misspelt ones,
    # without importing Keras to tell them apart.
    check_kwargs("load_pretrained", model_kwargs, RUNTIME_KWARGS,
                 f"runtime='openvino' runs inference only, at the precision= it is given "
                 f"(fp32, bf16 or int8), and takes the keywords that shape the outputs: "
                 f"{', '.join(RUNTIME_KWARGS)}. For training or a Keras dtype policy use "
                 f"runtime='keras'.")
    entry = get_entry(name)
    offline = is_offline(offline)

    def build():
        model = load_pretrained(entry.name, cache_dir=cache_dir, offline=offline,
                                verify=verify, weights=weights, **model_kwargs)
        return to_openvino(model, precision, calibration, min_cosine=min_cosine,
                           threads=threads)

    if weights is not None or verify:  # a file given by path, or a check asked for
        return build()
    size = image_hw(model_kwargs.get("image_size", entry.architecture.image_size))
    head = {key: model_kwargs[key] for key in sorted(model_kwargs) if key != "image_size"}
    digest = calibration_digest(calibration, size) if precision == "int8" else None
    fast = cached_openvino(entry.name, cache_dir, offline, ir_key(precision, size, head, digest),
                           build, threads)
    check_gate(precision, fast.accuracy, min_cosine, entry.name)  # (cached under another?)
    return fast


def load_weights(path: str | os.PathLike, **model_kwargs: Any) -> VisionTransformer:
    """A model from any vit_hub weights file, built with the architecture recorded in it:
    a file written by `convert-weights --output`, or by
    `vit_hub.weights.save_weights_file` for a custom config. As with `load_pretrained`, a
    model without head returns the class token, and `model_kwargs` may resize it or give
    it a new head. The file is checked against the sha256 of its `.json`, if it has one.
    """
    _check_model_kwargs("load_weights", model_kwargs)
    path = os.fspath(path)
    _check_sidecar_checksum(path)
    with open_weights_file(path) as (tensors, architecture):
        return build_model(tensors, architecture, f"weights file {path}", **model_kwargs)


def cached_weights(name, cache_dir=None, offline=None):
    """The path of `name`'s verified weights in the cache, converting on a miss."""
    cache = CacheEntry(name, cache_dir)
    offline = is_offline(offline)  # a bad VIT_HUB_OFFLINE is an error, hit or miss
    problem = cache.problem()  # hashes the weights: once per load
    if problem is None:
        return cache.weights_path
    # A file where a cache folder should be, or a folder that cannot be entered, said as
    # such (not as a missing entry), online as offline, before anything is downloaded.
    cache.check_folders()
    if cache.metadata() is not None:  # an entry, but corrupt ('corrupt' in state())
        message = (f"The cache entry of {name} in {cache.folder} is not valid: "
                   f"{problem}; it is not loaded.")
        if offline:
            raise CacheError(message + f" Offline, they cannot be converted again: run "
                             f"`convert-weights {name} --force` with network, or with "
                             f"--source DIR.")
        warn(message + " Converting again.")
    if offline:
        from vit_hub.conversion.pipeline import offline_message

        raise CacheError(offline_message(name, cache))
    from vit_hub.conversion.pipeline import convert_into_cache

    # Not forced: the pipeline re-checks the entry under the lock, so an entry that a
    # concurrent process has just written is reused, and a corrupt one is replaced.
    convert_into_cache(name, cache_dir=cache_dir)
    if cache.state() != "ok":
        raise CacheError(f"The cache entry of {name} in {cache.folder} is still not valid "
                         "after converting; delete that folder and try again.")
    return cache.weights_path


def _check_model_kwargs(function, model_kwargs, own=(), positional=()):
    """ArgumentError (a TypeError) for a keyword that is neither one of `function`'s own
    (`own`) nor a `VisionTransformer` one, naming the closest and all valid ones. Model
    keywords that are `function`'s `positional` parameters cannot be passed: not listed."""
    from vit_hub.model import check_kwargs
    from vit_hub.model import model_kwargs as valid_model_kwargs

    model = tuple(k for k in valid_model_kwargs() if k not in positional)
    takes = f"It takes {', '.join(own)} and" if own else "It takes"
    check_kwargs(function, model_kwargs, own + model,
                 f"{takes} the model's keyword arguments: {', '.join(model)}.")


def _keyword_only(function):
    return tuple(p.name for p in inspect.signature(function).parameters.values()
                 if p.kind is p.KEYWORD_ONLY)


def _check_sidecar_checksum(path):
    """A weights file given by path is checked against its metadata, if it has one."""
    if not os.path.isfile(path):
        raise WeightsError(f"No weights file at {path}"
                           + (" (it is a folder)" if os.path.isdir(path) else "")
                           + ": pass the .h5 file that convert-weights wrote (--output FILE, "
                           "or the cache's v1/NAME/NAME.h5).")
    metadata_path = os.path.splitext(path)[0] + ".json"
    if not os.path.exists(metadata_path):
        return
    problem = checksum_problem(path, metadata_path)
    if problem:
        raise WeightsError(f"{path} cannot be verified: {problem}; it is not loaded. "
                           "Convert it again, or remove the .json to load the file "
                           "unchecked.")


def _check_architecture(entry, published, architecture, path):
    """The weights file must hold the entry's network (a file of another model would
    otherwise build that other model under this name)."""
    found = architecture.replace(image_size=published.image_size)  # any size loads
    if found.replace(num_classes=published.num_classes) != published:
        raise WeightsError(
            f"{path} holds another network than {entry.name}: "
            f"{found.describe('it')}; {entry.name} is {published.describe('it')}. Pass the "
            f"weights converted for {entry.name} (convert-weights {entry.name})."
        )


def _verify(model, entry):
    from vit_hub.conversion.download import download
    from vit_hub.conversion.parity import check_parity

    check_parity(model, download(entry.handle))
