"""OpenVINO IRs in the vit_hub cache, beside the weights they were built from.

`<root>/v1/<name>/openvino/<precision>-<H>x<W>-<key>/model.{xml,bin,json}`: the key is a
digest of everything the IR depends on (the weights' sha256, the precision, image size
and head, the calibration images, the OpenVINO and NNCF versions), so an IR is never used
for anything else: a reconverted model or another OpenVINO is another key, a miss. Written
by `ir.write_ir` under a file lock (processes starting together build once); read only
when its checksums hold. A cache hit reads the IR and compiles it: no TensorFlow, no
Keras, no model build.
"""

import hashlib
import json
import os
import shlex

from vit_hub.cache import CacheEntry
from vit_hub.errors import CacheError, warn
from vit_hub.files import remove_temporaries
from vit_hub.runtime.engine import openvino_version
from vit_hub.runtime.ir import write_ir
from vit_hub.runtime.openvino_model import read_verified

IR_FORMAT = 1


class IRCacheEntry:
    def __init__(self, name, cache_dir, key):
        """`key`: what the IR depends on besides the weights (see `ir_key`)."""
        self.weights = CacheEntry(name, cache_dir)
        self.name, self.key = name, key
        height, width = key["image_size"]
        self.label = f"{key['precision']}-{height}x{width}"
        self.root = os.path.join(self.weights.folder, "openvino")
        self.refresh()

    def refresh(self):
        """Names the IR folder after the weights now in the cache: the IR's key holds
        their recorded sha256 (the weights themselves are not read on a hit)."""
        weights = (self.weights.metadata() or {}).get("sha256")
        self.folder = os.path.join(self.root, f"{self.label}-{_digest(self.key, weights)}")
        self.xml_path = os.path.join(self.folder, "model.xml")

    def read(self, threads=None):
        """(the cached `OpenVINOModel`, None), or (None, why there is none to use)."""
        if self.weights.metadata() is None:
            return None, "the weights it is built from are not in the cache"
        if not os.path.exists(self.xml_path):
            return None, "there is no cached IR"
        return read_verified(self.xml_path, threads)

    def lock(self):
        """Builders of one IR take one lock, whatever weights they find."""
        return self.weights.lock(label=f"openvino-{self.label}-{_digest(self.key)}")


def ir_key(precision, image_size, head, calibration):
    """`head`: the model keywords that shape the outputs; `calibration`: a digest of the
    int8 calibration images (None otherwise)."""
    return {"format": IR_FORMAT, "precision": precision, "image_size": list(image_size),
            "head": head, "calibration": calibration, "openvino": openvino_version(),
            "nncf": _nncf_version() if precision == "int8" else None}


def cached_openvino(name, cache_dir, offline, key, build, threads=None):
    """The cached `OpenVINOModel` of `name` for `key`; on a miss `build()` (->
    OpenVINOModel; it converts the weights too if they are missing) and cache it.
    Offline, a missing or unusable IR is a CacheError saying how to build it."""
    entry = IRCacheEntry(name, cache_dir, key)
    model, problem = entry.read(threads)
    if model is not None:
        return model
    if offline:
        raise CacheError(
            f"No usable OpenVINO {key['precision']} IR of {name} in the cache ({problem}), "
            f"and offline nothing is built. Build it once without VIT_HUB_OFFLINE: "
            f"{build_command(name, key['precision'], cache_dir)}.")
    with entry.lock():
        entry.refresh()
        model, problem = entry.read(threads)
        if model is not None:  # another process built it meanwhile
            return model
        if os.path.exists(entry.xml_path):
            warn(f"The cached OpenVINO IR of {name} in {entry.folder} is not used: "
                 f"{problem}. Building it again.")
        model = build()
        entry.refresh()  # the weights may have been converted by build()
        remove_temporaries(entry.folder)
        write_ir(model.ov_model, entry.xml_path, model.record())
        return model


def build_command(name, precision, cache_dir=None):
    """The command that builds the IR of `name` at `precision` in `cache_dir` (None: the
    default cache)."""
    where = f" --cache-dir {shlex.quote(os.fspath(cache_dir))}" if cache_dir else ""
    return f"convert-weights {name} --runtime openvino --precision {precision}{where}"


def _digest(key, weights=None):
    text = json.dumps({**key, "weights": weights}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _nncf_version():
    import nncf

    return nncf.__version__
