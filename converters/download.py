"""Downloads a published model through kagglehub, bounded in time, leaving no debris.

kagglehub 1.0 has no timeout of its own (a server that accepts and never answers hangs it
forever), surfaces network failures as raw `requests` exceptions, and on failure can
leave a partial `VERSION/` folder or `VERSION.archive` that a later call trusts. So the
call runs under a deadline, and on any failure the partial download is deleted.
"""

import os
import threading

ENV_TIMEOUT = "VIT_HUB_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0  # a full-size model is ~0.3-1.2 GB


class DownloadError(RuntimeError):
    """A model could not be downloaded; nothing partial is left in kagglehub's cache."""


def download(handle, timeout=None):
    """`kagglehub.model_download(handle)` (a pinned, versioned handle: a cached one then
    resolves with no network call), returning the local SavedModel folder."""
    import kagglehub

    timeout = timeout or float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))
    outcome = {}

    def run():
        try:
            outcome["path"] = kagglehub.model_download(handle)
        except BaseException as err:  # handed to the caller's thread below
            outcome["error"] = err

    worker = threading.Thread(target=run, name=f"kagglehub:{handle}", daemon=True)
    worker.start()
    worker.join(timeout)
    if "path" in outcome:
        return outcome["path"]
    discard(handle)
    if worker.is_alive():
        raise DownloadError(
            f"Downloading {handle} from Kaggle did not finish within {timeout:.0f} s "
            "(the server stopped answering). Check the network and try again, or set "
            "VIT_HUB_DOWNLOAD_TIMEOUT to allow longer."
        )
    err = outcome["error"]
    raise DownloadError(
        f"Downloading {handle} from Kaggle failed: {type(err).__name__}: {err}. Check the "
        "network and try again; on a machine without network, convert a local copy "
        "with `convert-weights NAME --source DIR`."
    ) from err


def discard(handle):
    """Deletes kagglehub's copy of `handle`, complete or partial (folder, marker, archive)."""
    from kagglehub import cache
    from kagglehub.handle import parse_model_handle

    parsed = parse_model_handle(handle)
    cache.delete_from_cache(parsed)
    archive = cache.get_cached_archive_path(parsed)
    if os.path.exists(archive):
        os.remove(archive)
