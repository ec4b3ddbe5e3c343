"""Writing files so that a reader never sees half of one: temporary file, then rename."""

import contextlib
import errno
import hashlib
import json
import os
import tempfile

TEMPORARY_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block
    succeeds, and removes it otherwise (also on KeyboardInterrupt). Before the rename
    the temporary file is flushed to disk (fsync), so that after a crash or power cut
    `path` is the old file or the complete new one, never an empty or short one.
    `os.replace` is atomic on POSIX and Windows when both are on one file system, as
    here. A process killed inside the block (SIGKILL) leaves its `.tmp-*` file behind:
    see `remove_temporaries`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX,
                               suffix=os.path.basename(path))
    os.close(fd)
    # mkstemp makes the file private (0600); give it the mode a plain open() would, so
    # that a cache shared by a group stays readable to the group.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(folder)  # the rename itself
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync(path):
    """fsync of a file or folder; errors of the disk (EIO, ENOSPC) are raised, a file
    system or platform that cannot fsync this (a folder on Windows) is ignored."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def remove_temporaries(folder, prefix=TEMPORARY_PREFIX):
    """Removes the temporary files and folders (names starting with `prefix`) that
    writers killed mid-write left in `folder`. Call it only while no other process can
    be writing them (under the lock). Returns the names removed."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        try:
            os.remove(os.path.join(folder, name))
            removed.append(name)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            import shutil

            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            removed.append(name)
    return removed


def is_disk_full(err):
    """Whether an OSError (also h5py's, which keeps errno 28 but rewords the text) says
    the disk or the user's quota is full."""
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
        "No space left on device" in str(err) or "Disk quota exceeded" in str(err))


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path):
    """The JSON object in `path`; None if there is no such file; {} if it is unreadable
    or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (FileNotFoundError, NotADirectoryError):  # (a file in the way: none there)
        return None
    except (OSError, ValueError):
        return {}


def checksum_problem(weights_path, metadata_path):
    """None when the weights file matches the sha256 recorded in its metadata JSON;
    otherwise why not, as a phrase. The one integrity check of every load, for cache
    entries and for files given by path alike."""
    metadata = read_json(metadata_path)
    if metadata is None:
        return f"its metadata {metadata_path} is missing"
    if not isinstance(metadata.get("sha256"), str):
        return (f"its metadata {metadata_path} is unreadable or has no sha256 (not valid "
                "JSON, or edited)")
    try:
        actual = sha256(weights_path)
    except FileNotFoundError:
        return f"its weights file {weights_path} is missing"
    except OSError as err:
        return f"its weights file {weights_path} cannot be read ({err})"
    if actual != metadata["sha256"]:
        return (f"the weights {weights_path} fail their sha256 check against "
                f"{metadata_path} (corrupt, truncated or changed)")
    return None
