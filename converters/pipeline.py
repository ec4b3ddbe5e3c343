"""Fill the cache for one published model: download (or a local source), convert, verify,
write. Used by `vit_hub.load_pretrained` on a cache miss and by `convert-weights`."""

import os
import shutil

from converters import ConversionError
from converters.convert import convert, metadata_path, write_converted
from converters.parity import ParityError
from vit_hub.cache import CacheEntry, CacheError
from vit_hub.manifest import architecture_for, get_entry

STEPS = ("download", "convert", "verify", "write")


def offline_message(name, entry):
    return (
        f"{name} is not in the vit_hub cache ({entry.folder}) and offline mode is on "
        f"(VIT_HUB_OFFLINE=1 or offline=True), so nothing is downloaded. Fill the cache "
        f"first: on a machine with network run `convert-weights {name} --cache-dir "
        f"{entry.root}`, or convert a local copy of the Kaggle SavedModel with "
        f"`convert-weights {name} --source DIR --cache-dir {entry.root}`."
    )


def convert_into_cache(name, *, cache_dir=None, source=None, reference=None, verify=True,
                       force=False, offline=False, output=None, progress=None):
    """Makes the cache entry of `name` complete and returns its metadata.

    Under the entry's file lock, so that concurrent processes convert once: a process
    that waited finds the entry complete and returns it. `progress(step)` is called with
    each of STEPS as it starts.
    """
    entry = get_entry(name)
    architecture = architecture_for(entry)
    cache = CacheEntry(name, cache_dir)
    step = progress or (lambda _: None)
    try:
        lock = cache.lock()
        lock.acquire()
    except OSError as err:
        raise CacheError(f"Cannot write the vit_hub cache at {cache.root}: {err}. Choose a "
                         "writable folder with --cache-dir or VIT_HUB_CACHE.") from None
    try:
        if not force and cache.state() == "ok":
            metadata = cache.metadata()
        else:
            metadata = _convert(name, entry, architecture, cache, source, reference, verify,
                                offline, step)
        if output:
            _copy_out(cache, output)
        return metadata
    finally:
        lock.release()


def _convert(name, entry, architecture, cache, source, reference, verify, offline, step):
    step("download")
    downloaded = source is None
    if downloaded:
        if offline:
            raise CacheError(offline_message(name, cache))
        from converters.download import download

        source = download(entry["handle"])
    try:
        conversion = convert(source, architecture, entry["kind"] == "classification",
                             verify=verify, reference=reference, progress=step)
    except ConversionError as err:
        if downloaded and not isinstance(err, ParityError):
            from converters.download import discard

            discard(entry["handle"])  # unreadable download: fetch it afresh next time
        raise
    step("write")
    extra = {"handle": entry["handle"], "kind": entry["kind"], "variant": entry["variant"]}
    return write_converted(conversion, cache.weights_path, name, extra)


def _copy_out(cache, output):
    from vit_hub.files import atomic_path

    for src, dst in ((cache.weights_path, output), (cache.metadata_path, metadata_path(output))):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return os.fspath(output)
