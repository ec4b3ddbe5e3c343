"""The local cache of converted weights.

Layout: `<root>/v<format>/<name>/{<name>.h5, <name>.json}`, the writers' lock files in
`<root>/v<format>/.locks/`. Lock files stay after use, empty, on purpose: deleting one
while another process waits on it would let two writers in (filelock's documented race).
The format version is part of the path, so a future format never reads stale files. An
entry is complete when its metadata JSON exists (written last, atomically) and the sha256
recorded there matches the weights file. Writers hold the entry's lock; readers need no
lock and no write access (a read-only shared cache works).
"""

import os
import stat

from vit_hub.architecture import check_flag
from vit_hub.catalogue import is_name
from vit_hub.errors import CacheError, CatalogueError, ConfigError
from vit_hub.files import (
    TEMPORARY_PREFIX,
    checksum_problem,
    read_json,
    remove_temporaries,
    temporaries,
)
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


# The values of VIT_HUB_OFFLINE (any case, surrounding blanks ignored).
OFFLINE_VALUES = ("1", "true", "yes", "on")
ONLINE_VALUES = ("0", "false", "no", "off", "")


def is_offline(offline=None):
    """`offline` if given, else what VIT_HUB_OFFLINE says: 1/true/yes/on is offline,
    0/false/no/off or unset/empty online, anything else a ConfigError (a ValueError), so
    a typo never silently means online."""
    if offline is not None:
        return check_flag(offline, "offline", allow_none=True)
    value = os.environ.get(ENV_OFFLINE, "")
    word = value.strip().lower()
    if word in OFFLINE_VALUES:
        return True
    if word in ONLINE_VALUES:
        return False
    raise ConfigError(
        f"{ENV_OFFLINE}={value!r} is not a valid value: use 1, true, yes or on for offline "
        f"mode; 0, false, no, off or empty (or leave it unset) for online."
    )


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
        self.locks_folder = os.path.join(self.root, f"v{FORMAT_VERSION}", ".locks")
        self.lock_path = os.path.join(self.locks_folder, f"{name}.lock")

    def lock(self, timeout=-1, label=None):
        """An inter-process lock for writing this entry, or, with a `label`, one of its
        derived files (its OpenVINO IRs). Released by the kernel if its holder dies, so a
        killed writer never blocks the next one."""
        import filelock

        os.makedirs(self.locks_folder, exist_ok=True)
        path = self.lock_path if label is None else os.path.join(
            self.locks_folder, f"{self.name}.{label}.lock")
        return filelock.FileLock(path, timeout=timeout)

    def folder_problem(self):
        """None when each folder on the way to this entry (the root, `v<format>/`, the
        entry's own) is a folder that can be entered, or is not there yet. Otherwise
        (path, what): `what` is 'file' for a file where that folder should be, else the
        OSError of looking into it (EACCES for a folder without permissions: this tries
        the access itself, so it is exact for root too, whom permissions do not stop)."""
        version = os.path.dirname(self.folder)
        paths = (self.root, version, self.folder, self.metadata_path)
        for i, path in enumerate(paths):
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                return None  # not there yet, nor anything below it
            except OSError as err:
                # Looking up `path` failed: its folder cannot be entered (for the root,
                # a folder above it).
                return (paths[i - 1] if i else path), err
            if i < 3 and not stat.S_ISDIR(mode):
                return path, "file"
        return None

    def check_folders(self):
        """CacheError when `folder_problem` finds one: it names the folder, what is wrong
        and the way out (another cache folder, or the folder fixed)."""
        found = self.folder_problem()
        if found is None:
            return
        path, what = found
        elsewhere = ("pass another folder as cache_dir (--cache-dir for convert-weights) or "
                     f"in {ENV_CACHE}")
        if what == "file":
            where = ("it is a file, not a folder" if path == self.root else
                     f"{path} is a file where the cache needs a folder")
            raise CacheError(
                f"Cannot use the vit_hub cache at {self.root}: {where}, so {self.name} can "
                f"be neither read from it nor converted into it. Move the file away, or "
                f"{elsewhere}."
            )
        detail = what.strerror or str(what)
        raise CacheError(
            f"Cannot use the vit_hub cache at {self.root}: the folder {path} cannot be "
            f"read ({detail}), so {self.name} cannot be looked up in it. Make it readable "
            f"(chmod u+rwx {path}, or ask its owner), or {elsewhere}."
        )

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

    def tidy(self):
        """For readers, on a hit: removes what writers killed mid-write left, if any and
        if no writer is at work now (the lock is taken without waiting; a live writer's
        files are its own). Does nothing in a cache it cannot write. Returns the names
        removed."""
        import filelock

        if not (temporaries(os.path.dirname(self.folder), self.staging_prefix)
                or temporaries(self.folder)):
            return []
        try:
            with self.lock(timeout=0):
                return self.remove_temporaries()
        except (filelock.Timeout, OSError):
            return []

    def remove_temporaries(self):
        """Deletes what writers of this entry killed mid-write left: staging folders
        and `.tmp-*` files (under the lock). Returns the names removed."""
        return (remove_temporaries(os.path.dirname(self.folder), self.staging_prefix)
                + remove_temporaries(self.folder))
