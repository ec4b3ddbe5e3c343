"""Fill the cache for one published model: download (or a local source), convert, verify,
write. Used by `vit_hub.load_pretrained` on a cache miss and by `convert-weights`.

What a reader can see of an entry is all or nothing: the weights and the metadata are
written complete into a staging folder beside the entry, then renamed in: the old
metadata out, the weights in, the metadata in, last. So a writer that fails or is killed
at any point leaves the old entry as it was, or (only between those renames) 'missing';
the next writer, holding the entry's lock, removes the staging folder it left.
"""

import errno
import math
import os
import shutil

import numpy as np

from vit_hub.cache import CacheEntry
from vit_hub.catalogue import get_entry
from vit_hub.conversion.convert import convert, metadata_path, write_converted
from vit_hub.errors import CacheError, ConversionError, ParityError
from vit_hub.files import atomic_files, atomic_path, is_disk_full

STEPS = ("download", "convert", "verify", "write")


def offline_message(name, cache):
    return (
        f"{name} is not in the vit_hub cache ({cache.folder}) and offline mode is on "
        f"(VIT_HUB_OFFLINE=1 or offline=True), so nothing is downloaded. Fill the cache "
        f"first: on a machine with network run `convert-weights {name} --cache-dir "
        f"{cache.root}`, or convert a local copy of the Kaggle SavedModel with "
        f"`convert-weights {name} --source DIR --cache-dir {cache.root}`."
    )


def write_error(err, where, what="the vit_hub cache"):
    """A CacheError for an OSError while writing `where`: a full disk said as such."""
    if is_disk_full(err):
        detail = f"; {err.strerror}" if getattr(err, "strerror", None) and not is_disk_full(
            err.strerror) else ""
        return CacheError(
            f"Cannot write {what} at {where}: the disk is full (No space left on "
            f"device{detail}). Nothing partial was left there. Free some space, or choose "
            "a folder on another disk with --cache-dir or VIT_HUB_CACHE."
        )
    return CacheError(
        f"Cannot write {what} at {where}: {err}. Choose a writable folder with "
        "--cache-dir or VIT_HUB_CACHE."
    )


def check_space(folder, conversion, where=None):
    """Raises the disk-full CacheError (naming `where`, default `folder`) before writing
    when the file system holding `folder` has less free space than the weights file
    needs. HDF5 (1.14, h5py 3.14) can crash the process (segfault) instead of raising when the disk fills up in the
    middle of a file, so a full disk is better caught here, before the first byte."""
    tensors = conversion.tensors
    needed = sum(4 * math.prod(np.shape(t)) for t in tensors.values())
    needed += 64 * 1024 + 2048 * len(tensors)  # HDF5 headers, the metadata JSON
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise write_error(OSError(errno.ENOSPC, f"the weights need {_size(needed)}, "
                                  f"{_size(free)} is free", folder), where or folder)


def _size(n):
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def convert_into_cache(name, *, cache_dir=None, source=None, reference=None, verify=True,
                       force=False, offline=False, output=None, progress=None):
    """Makes the cache entry of `name` complete and returns its metadata.

    A complete entry is returned as it is, without taking the lock (so a read-only
    cache works). Otherwise the work happens under the entry's file lock, so that
    concurrent processes download and convert once: a process that waited finds the
    entry complete and returns it. A local `source` is read and verified before the
    lock is taken, so a bad source file changes nothing in the cache. `progress(step)`
    is called with each of STEPS as it starts; not at all when the entry was complete.
    """
    entry = get_entry(name)
    _ = entry.architecture  # no converter: UnsupportedModelError here, before any download
    cache = CacheEntry(entry.name, cache_dir)
    step = progress or (lambda _: None)
    if not force and cache.state() == "ok":
        metadata = cache.metadata()
        cache.tidy()
    else:
        check_writable(cache)  # before minutes of download and conversion
        conversion = None
        if source is not None:
            step("download")
            conversion = _conversion(entry, source, reference, verify, step)
        with _locked(cache):
            if not force and cache.state() == "ok":  # converted while we waited
                metadata = cache.metadata()
            else:
                cache.remove_temporaries()  # left by writers killed mid-write
                if conversion is None:
                    conversion = _download_and_convert(entry, cache, reference, verify,
                                                       offline, step)
                step("write")
                metadata = _write(entry, cache, conversion)
    if output:
        _copy_out(cache, output)
    return metadata


def check_writable(cache):
    """CacheError unless the entry's folder can be created and written (the nearest
    existing folder on its path is writable)."""
    folder = os.path.abspath(cache.folder)  # (a relative one climbs to "")
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if not os.path.isdir(folder):
        raise write_error(OSError(errno.ENOTDIR, "a file is in the way of the cache folder",
                                  folder), cache.root)
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY
        code = errno.EROFS if read_only else errno.EACCES
        raise write_error(OSError(code, os.strerror(code), folder), cache.root)


class _locked:
    def __init__(self, cache):
        self.cache = cache

    def __enter__(self):
        try:
            self.lock = self.cache.lock()
            self.lock.acquire()
        except OSError as err:
            raise write_error(err, self.cache.root) from None

    def __exit__(self, *exc):
        self.lock.release()


def _download_and_convert(entry, cache, reference, verify, offline, step):
    step("download")
    if offline:
        raise CacheError(offline_message(entry.name, cache))
    from vit_hub.conversion.download import discard, download

    source = download(entry.handle)
    try:
        return _conversion(entry, source, reference, verify, step)
    except ConversionError as err:
        if not isinstance(err, ParityError):
            discard(entry.handle)  # unreadable download: fetch it afresh next time
        raise


def _conversion(entry, source, reference, verify, step):
    try:
        return convert(source, entry.architecture, verify=verify, reference=reference,
                       progress=step)
    except ParityError:
        raise
    except ConversionError as err:
        raise _naming_source(err, source) from None


def _write(entry, cache, conversion):
    """Writes the weights and metadata into a staging folder beside the entry
    (`.tmp-<name>.*`), then moves them in: old metadata out, weights in, metadata in
    (`files.atomic_files`). A failure or a kill while writing leaves the old entry as it
    was; one during the two renames leaves it 'missing'. Either way no half is ever 'ok'."""
    extra = {"handle": entry.handle, "kind": entry.kind, "variant": entry.variant}
    entry_files = [cache.weights_path, cache.metadata_path]  # the metadata is the record
    try:
        with atomic_files(entry_files, stage_in=os.path.dirname(cache.folder),
                          prefix=cache.staging_prefix) as staged:
            weights = staged[cache.weights_path]
            check_space(os.path.dirname(weights), conversion, cache.folder)
            # (its metadata goes beside it: staged[cache.metadata_path])
            metadata = write_converted(conversion, weights, entry.name, extra)
    except CacheError:  # not enough space
        raise
    except ConversionError as err:  # a lazily read tensor that cannot be read
        raise _naming_source(err, conversion.source) from None
    except (OSError, RuntimeError) as err:  # h5py: some write failures are RuntimeError
        if isinstance(err, OSError) or is_disk_full(err):
            raise write_error(err, cache.folder) from None
        raise
    return metadata


def _naming_source(err, source):
    """The same error, saying which source it is about if it does not already."""
    source = os.fspath(source)
    if source in str(err):
        return err
    return type(err)(f"{source}: {err}")


def _copy_out(cache, output):
    try:
        for src, dst in ((cache.weights_path, output),
                         (cache.metadata_path, metadata_path(output))):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    except OSError as err:
        raise write_error(err, os.fspath(output), "the --output copy") from None
    return os.fspath(output)
