"""The one HDF5 file format of vit_hub: named float32 tensors and JSON records.

Converted weights (`weights.py`) and LoRA adapters (`lora.py`) are both such files: one
dataset per tensor at its canonical path (`block_0/attention/query/kernel`), a `format`
mark and `format_version`, and records as JSON attributes (the architecture; the LoRA
settings). Unlike Keras' own `.weights.h5`, whose layout follows the object graph of one
Keras version, it is readable without Keras, and a loader can take a subset (a new head)
or reshape a tensor (position embeddings at another image size).

Each file carries the sha256 of its content (records, then every tensor's name, shape
and bytes in name order), so a file that is one file, with no metadata beside it (LoRA
adapters), is checked on reading as the cache's weights are against their metadata.
"""

import contextlib
import hashlib
import json
import os
from typing import NamedTuple

import numpy as np

from vit_hub.errors import WeightsError
from vit_hub.files import atomic_path

DIGEST = "sha256"


def write(path, mark, version, records, tensors):
    """Writes `tensors` ({name: array-like}) and `records` ({name: JSON-able}) to `path`
    atomically, with its content digest. Tensors are materialised one at a time
    (`np.asarray`), so a lazy source streams through with one tensor in memory."""
    import h5py

    digest = _Digest(records)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"], f.attrs["format_version"] = mark, version
            for name, record in records.items():
                f.attrs[name] = json.dumps(record)
            for name in sorted(tensors):
                array = np.asarray(tensors[name], np.float32)
                digest.add(name, array)
                f.create_dataset(name, data=array)
            f.attrs[DIGEST] = digest.hexdigest()
    return os.fspath(path)


@contextlib.contextmanager
def open_file(path, mark, version, what):
    """Yields ({name: h5py dataset}, {record name: parsed JSON}) of a file of this format,
    its tensors read when used, one at a time (loading reads each once, straight into
    its variable). A WeightsError names what is wrong and the fix (`what` says what the
    file should be and how one is made again)."""
    with _open(path, mark, version, what) as (datasets, records, _):
        yield datasets, records


@contextlib.contextmanager
def _open(path, mark, version, what):
    """As `open_file`, also yielding the digest the file records (None if it has none)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != mark:
                raise WeightsError(f"{path} is not {what.kind} (no '{mark}' mark). {what.fix}")
            found = int(f.attrs["format_version"])
            if found != version:
                raise WeightsError(f"{path} has {what.kind} format {found}; this vit_hub reads "
                                   f"format {version}. {what.fix}")
            datasets = {}
            f.visititems(lambda name, item: datasets.__setitem__(name, item)
                         if isinstance(item, h5py.Dataset) else None)
            records = {name: _record(f, name, path, what)
                       for name in f.attrs if name not in ("format", "format_version", DIGEST)}
            yield datasets, records, f.attrs.get(DIGEST)
    except (OSError, KeyError) as err:
        if isinstance(err, FileNotFoundError) or not os.path.exists(path):
            raise WeightsError(f"{path} does not exist: give the path of {what.kind}.") from None
        raise WeightsError(f"Cannot read {path}: {err}. It is truncated or not {what.kind}. "
                           f"{what.fix}") from None


def read_verified(path, mark, version, what):
    """({name: array}, records) of a whole file, checked against its content digest."""
    with _open(path, mark, version, what) as (datasets, records, expected):
        arrays = {name: datasets[name][()] for name in sorted(datasets)}
    digest = _Digest(records)
    for name, array in arrays.items():
        digest.add(name, array)
    if expected is None or digest.hexdigest() != expected:
        problem = "has no checksum" if expected is None else "fails its sha256 check"
        raise WeightsError(f"{path} {problem} (corrupt, edited or not written by this "
                           f"vit_hub): it is not used. {what.fix}")
    return arrays, records


class Kind(NamedTuple):
    """What a file of the format should be (`kind`, e.g. 'a vit_hub LoRA weights file') and
    how a good one is made (`fix`), for the reader's errors."""

    kind: str
    fix: str


class _Digest:
    def __init__(self, records):
        self.hash = hashlib.sha256(json.dumps(records, sort_keys=True).encode())

    def add(self, name, array):
        array = np.ascontiguousarray(array, np.float32)
        self.hash.update(f"\n{name}{array.shape}\n".encode())
        self.hash.update(array.tobytes())

    def hexdigest(self):
        return self.hash.hexdigest()


def _record(f, name, path, what):
    try:
        return json.loads(f.attrs[name])
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path} has an unreadable {name} record ({err}). "
                           f"{what.fix}") from None
