"""The local cache of converted weights.

Layout: `<root>/v<format>/<name>/{<name>.h5, <name>.json}` plus `<root>/v<format>/<name>.lock`.
The format version is part of the path, so a future format never reads stale files. An
entry is complete when its metadata JSON exists (written last, atomically) and the sha256
recorded there matches the weights file. Writers hold the entry's lock; readers need no
lock and no write access (a read-only shared cache works).
"""

import os

from vit_hub.catalogue import is_name
from vit_hub.errors import CacheError, CatalogueError  # noqa: F401  (CacheError: its old home)
from vit_hub.files import TEMPORARY_PREFIX, checksum_problem, read_json, remove_temporaries
from vit_hub.weights import FORMAT_VERSION

ENV_CACHE = "VIT_HUB_CACHE"
ENV_OFFLINE = "VIT_HUB_OFFLINE"


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


def check_name(name):
    """Raises CatalogueError (a ValueError) unless `name` can be a cache folder name (lower-case letters,
    digits, '_'): no path separators, no '..', so no path outside the cache is built."""
    if not is_name(name):
        raise CatalogueError(
            f"{name!r} is not a model name: names are lower-case letters, digits and '_' "
            "(no '/', '\\' or '..'), e.g. 'vit_b32_fe'; see vit_hub.list_models()."
        )
    return name


class CacheEntry:
    """The files of one converted model in the cache."""

    def __init__(self, name, cache_dir=None):
        self.name = check_name(name)
        self.root = cache_root(cache_dir)
        self.folder = os.path.join(self.root, f"v{FORMAT_VERSION}", name)
        self.weights_path = os.path.join(self.folder, f"{name}.h5")
        self.metadata_path = os.path.join(self.folder, f"{name}.json")
        self.lock_path = self.folder + ".lock"

    def lock(self, timeout=-1):
        """An inter-process lock for writing this entry (released by the kernel if its
        holder dies, so a killed writer never blocks the next one)."""
        import filelock

        os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
        return filelock.FileLock(self.lock_path, timeout=timeout)

    def metadata(self):
        """The recorded metadata; None if there is none; {} if it is unreadable."""
        return read_json(self.metadata_path)

    def problem(self):
        """None if the entry is complete and verified; otherwise why it is not, as a
        sentence."""
        if self.metadata() is None:
            return f"there is no cache entry (no {self.metadata_path})"
        return checksum_problem(self.weights_path, self.metadata_path)

    def state(self):
        """'missing', 'corrupt' (metadata unreadable, weights gone or checksum wrong) or
        'ok'. Weights without metadata are a conversion that never finished: 'missing'."""
        problem = self.problem()
        if problem is None:
            return "ok"
        return "missing" if self.metadata() is None else "corrupt"

    def invalidate(self):
        """Makes the entry 'missing' before it is rewritten (writers only, under the
        lock): with the metadata gone first, a writer killed half-way leaves an entry
        that reads as missing, never as the old metadata over new weights."""
        try:
            os.remove(self.metadata_path)
        except FileNotFoundError:
            pass

    def remove(self):
        """Deletes the weights and metadata (writers only, under the lock)."""
        self.invalidate()
        try:
            os.remove(self.weights_path)
        except FileNotFoundError:
            pass

    @property
    def staging_prefix(self):
        """Writers stage a new entry in `<root>/v<format>/.tmp-<name>.*` ('.' is never
        in a name, so one entry's prefix is never another's)."""
        return f"{TEMPORARY_PREFIX}{self.name}."

    def remove_temporaries(self):
        """Deletes what writers of this entry killed mid-write left: staging folders
        and `.tmp-*` files (under the lock). Returns the names removed."""
        return (remove_temporaries(os.path.dirname(self.folder), self.staging_prefix)
                + remove_temporaries(self.folder))
