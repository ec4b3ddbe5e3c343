"""Writing files so that a reader never sees half of one: a temporary file or folder
beside the target, flushed to disk, then renamed onto it. The one atomic mechanism of
vit_hub: `atomic_path` (a file), `atomic_folder` (a folder), `atomic_files` (files read
together, published after their record's removal and with the record last)."""

import contextlib
import errno
import hashlib
import json
import os
import shutil
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


@contextlib.contextmanager
def atomic_folder(path):
    """Yields an empty temporary folder beside `path`; when the block succeeds, its
    files are flushed to disk and it is renamed onto `path`. What was at `path` is moved
    aside first and deleted only once the new folder is in (put back if that rename
    fails). On any failure, also KeyboardInterrupt, the temporary folder is removed and
    `path` is as it was; a killed process leaves a `.tmp-*` folder (`remove_temporaries`)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    with temporary_folder(parent, suffix="-" + os.path.basename(path)) as tmp:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700, as for atomic_path's files
        _fsync_tree(tmp)
        _replace_folder(tmp, path)
        fsync(parent)  # the renames


@contextlib.contextmanager
def atomic_files(targets, stage_in=None, prefix=TEMPORARY_PREFIX):
    """Publishes files that are read together, in one folder; the last of `targets` is
    the record that vouches for the others (their metadata and checksums). Yields
    {target: staged path}: the block writes each file there, in a temporary folder in
    `stage_in` (default: the targets' folder; one file system either way) named with
    `prefix`. When the block succeeds, the staged files are flushed to disk, the old
    record is removed, the files are moved onto their targets in order, the record last.
    So a failure or a kill before the moves leaves the old set as it was, one during
    them leaves no record, never an old record over new files; if a move fails, the
    targets are removed (no half set). The staging folder is always removed; a killed
    process leaves it behind for `remove_temporaries`."""
    given = list(targets)  # the caller looks its staged paths up by these
    targets = [os.path.abspath(os.fspath(target)) for target in given]
    folder = os.path.dirname(targets[-1])
    with temporary_folder(stage_in or folder, prefix) as stage:
        staged = {target: os.path.join(stage, os.path.basename(target)) for target in targets}
        yield {key: staged[target] for key, target in zip(given, targets, strict=True)}
        for path in staged.values():
            fsync(path)
        os.makedirs(folder, exist_ok=True)
        _remove(targets[-1])  # from here until the record is in, the set reads as missing
        try:
            for target in targets:
                os.replace(staged[target], target)
        except BaseException:
            for target in targets:
                _remove(target)
            raise
        fsync(folder)  # the renames


@contextlib.contextmanager
def temporary_folder(parent, prefix=TEMPORARY_PREFIX, suffix=""):
    """A fresh folder in `parent` (created if need be), removed with all it holds when
    the block ends, however it ends. Beside a target it is on the target's file system,
    so renames out of it are atomic."""
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(tmp, path):
    """Renames the folder `tmp` onto `path`; an empty folder there is taken over, anything
    else is moved aside, and deleted once `tmp` is in (put back if the rename fails)."""
    if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
        os.rmdir(path)
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    with temporary_folder(os.path.dirname(path)) as old:
        aside = os.path.join(old, "previous")
        os.replace(path, aside)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(aside, path)
            raise


def _fsync_tree(folder):
    for parent, _, names in os.walk(folder):
        for name in names:
            fsync(os.path.join(parent, name))
        fsync(parent)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


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


def temporaries(folder, prefix=TEMPORARY_PREFIX):
    """The names in `folder` that start with `prefix` (none if there is no such folder)."""
    try:
        return [n for n in os.listdir(folder) if n.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def remove_temporaries(folder, prefix=TEMPORARY_PREFIX):
    """Removes the temporary files and folders (names starting with `prefix`) that
    writers killed mid-write left in `folder`. Call it only while no other process can
    be writing them (under the lock). Returns the names removed."""
    removed = []
    for name in temporaries(folder, prefix):
        try:
            os.remove(os.path.join(folder, name))
            removed.append(name)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
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


def verify_checksums(expected, record):
    """None when every file of `expected` ({path: sha256 hex digest}) has its digest;
    otherwise why not, as a phrase about the first that fails. `record`: the file the
    digests come from, named in the phrase. The one file check of vit_hub: weights
    files (`checksum_problem`) and OpenVINO IRs alike."""
    for path, digest in expected.items():
        try:
            actual = sha256(path)
        except FileNotFoundError:
            return f"{path} is missing"
        except OSError as err:
            return f"{path} cannot be read ({err.strerror or err})"
        if actual != digest:
            return (f"{path} fails its sha256 check against {record} (corrupt, truncated "
                    "or changed)")
    return None


def checksum_problem(weights_path, metadata_path):
    """None when the weights file matches the sha256 recorded in its metadata JSON;
    otherwise why not, as a phrase. The integrity check of every load, for cache
    entries and for files given by path alike."""
    metadata = read_json(metadata_path)
    if metadata is None:
        return f"its metadata {metadata_path} is missing"
    if not isinstance(metadata.get("sha256"), str):
        return (f"its metadata {metadata_path} is unreadable or has no sha256 (not valid "
                "JSON, or edited)")
    return verify_checksums({weights_path: metadata["sha256"]}, metadata_path)
