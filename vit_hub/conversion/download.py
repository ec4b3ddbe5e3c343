"""Downloads a published model through kagglehub, bounded in time, leaving no debris.

kagglehub 1.0 has no timeout of its own (a server that accepts and never answers hangs it
forever), surfaces network failures as raw `requests` exceptions, and on failure can
leave a partial `VERSION/` folder or `VERSION.archive` that a later call trusts. So the
call runs under a deadline, and on any failure the partial download is deleted.
"""

import os
import re
import threading

from vit_hub.catalogue import is_handle
from vit_hub.errors import ConfigError, DownloadError

ENV_TIMEOUT = "VIT_HUB_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0  # a full-size model is ~0.3-1.2 GB


def download(handle, timeout=None):
    """`kagglehub.model_download(handle)` (a pinned, versioned handle: a cached one then
    resolves with no network call), returning the local SavedModel folder."""
    if not is_handle(handle):
        raise DownloadError(
            f"{handle!r} is not a pinned Kaggle model handle (owner/model/framework/"
            "variation/version, plain names, no '..'); nothing was downloaded."
        )
    timeout = timeout or _timeout_from_environment()
    import kagglehub

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
        f"Downloading {handle} from Kaggle failed: {_describe(err)}. Check the "
        "network and try again; on a machine without network, convert a local copy "
        "with `convert-weights NAME --source DIR`."
    ) from err


def _timeout_from_environment():
    text = os.environ.get(ENV_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{ENV_TIMEOUT}={text!r} is not a number of seconds > 0 (e.g. "
                         f"{ENV_TIMEOUT}=7200); unset it for the default, "
                         f"{DEFAULT_TIMEOUT_S:.0f} s.")
    return value


def _describe(err):
    """One line for a kagglehub / requests failure: requests' connection errors nest
    the cause three deep ("HTTPConnectionPool(...): Max retries exceeded ... (Caused by
    ...)"), so those are said plainly, with the innermost reason."""
    import requests

    if isinstance(err, requests.ConnectionError):
        errors = re.findall(r"\[Errno -?\d+\] [^\"')]+", str(err))
        reason = errors[-1].strip() if errors else str(err).splitlines()[0][:200]
        return (f"Kaggle could not be reached ({type(err).__name__}: {reason}; no network, "
                "or a proxy or firewall in the way)")
    if isinstance(err, requests.Timeout):
        return "Kaggle stopped answering (Timeout)"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:300]}"


def discard(handle):
    """Deletes kagglehub's copy of `handle`, complete or partial (folder, marker, archive)."""
    from kagglehub import cache
    from kagglehub.handle import parse_model_handle

    parsed = parse_model_handle(handle)
    cache.delete_from_cache(parsed)
    archive = cache.get_cached_archive_path(parsed)
    if os.path.exists(archive):
        os.remove(archive)
