"""The local cache of converted weights.

Layout: `<root>/v<format>/<name>/{<name>.h5, <name>.json}` plus `<root>/v<format>/<name>.lock`.
The format version is part of the path, so a future format never reads stale files. An
entry is complete when its metadata JSON exists (written last, atomically) and the sha256
recorded there matches the weights file.
"""

import json
import os

from vit_hub.files import sha256
from vit_hub.weights import FORMAT_VERSION

ENV_CACHE = "VIT_HUB_CACHE"
ENV_OFFLINE = "VIT_HUB_OFFLINE"


class CacheError(RuntimeError):
    """The cache cannot give a usable entry (missing, corrupt, or not writable)."""


def cache_root(cache_dir=None):
    if cache_dir:
        return os.fspath(cache_dir)
    if os.environ.get(ENV_CACHE):
        return os.environ[ENV_CACHE]
    import platformdirs

    return platformdirs.user_cache_dir("vit_hub", appauthor=False)


def is_offline(offline=None):
    if offline is not None:
        return bool(offline)
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


class CacheEntry:
    """The files of one converted model in the cache."""

    def __init__(self, name, cache_dir=None):
        self.name = name
        self.root = cache_root(cache_dir)
        self.folder = os.path.join(self.root, f"v{FORMAT_VERSION}", name)
        self.weights_path = os.path.join(self.folder, f"{name}.h5")
        self.metadata_path = os.path.join(self.folder, f"{name}.json")
        self.lock_path = self.folder + ".lock"

    def lock(self, timeout=-1):
        """An inter-process lock for writing this entry."""
        import filelock

        os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
        return filelock.FileLock(self.lock_path, timeout=timeout)

    def metadata(self):
        """The recorded metadata; None if there is none; {} if it is unreadable."""
        try:
            with open(self.metadata_path, encoding="utf-8") as f:
                metadata = json.load(f)
            return metadata if isinstance(metadata, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def state(self):
        """'missing', 'corrupt' (metadata unreadable, weights gone or checksum wrong) or
        'ok'. Weights without metadata are a conversion that never finished: 'missing'."""
        metadata = self.metadata()
        if metadata is None:
            return "missing"
        if not os.path.exists(self.weights_path) or metadata.get("sha256") != sha256(
            self.weights_path
        ):
            return "corrupt"
        return "ok"
