"""vit-embed's output: a Parquet dataset folder, one file per finished shard.

    OUT/part-00000.parquet    rows of shard 0: path, features (or logits + top-5)
    OUT/part-00001.parquet    ...
    OUT/_errors.csv           path,reason of every image that could not be read

A shard's file is written through `files.atomic_path` (a hidden temporary file, fsync,
rename), so it is there whole or not at all: a rerun keeps the finished shards and embeds only what is
missing, and a shard retried after a killed worker replaces nothing but itself. Each
file's Parquet metadata records the model, the runtime and precision that computed the
rows (with OpenVINO's measured agreement with fp32) and the shard's unreadable images, so
the folder alone says what was done; `_errors.csv` is regenerated from it at the end of a
run. Readers of Parquet datasets (pyarrow, pandas, Ray, Spark) skip `_` and `.` files, and
fail on any other file in the folder: OUT holds vit-embed's files only (`check`), never the
user's images. While a run goes, a hidden `.tmp-runs-*` folder records each run of each
shard (`record_run`: the retry bound of `embed_images`); it goes with the run.
"""

import contextlib
import csv
import json
import os
import re

from vit_hub.embed.sources import IMAGE_EXTENSIONS
from vit_hub.errors import OutputExistsError
from vit_hub.files import TEMPORARY_PREFIX, atomic_path, remove_temporaries

MODEL_KEY = b"vit_hub.model"
ERRORS_KEY = b"vit_hub.errors"
RUNTIME_KEY = b"vit_hub.runtime"
PRECISION_KEY = b"vit_hub.precision"
ACCURACY_KEY = b"vit_hub.accuracy"
ERRORS_FILE = "_errors.csv"
LOCK_FILE = ".vit-embed.lock"
RUNS_PREFIX = f"{TEMPORARY_PREFIX}runs-"
_PART = re.compile(r"part-(\d+)\.parquet")


def part_name(index):
    return f"part-{index:05d}.parquet"


class EmbedOutput:
    """The output folder of one model's embeddings, computed by one runtime at one
    precision (rows of fp32 and int8 mixed in one dataset would differ silently)."""

    def __init__(self, folder, model, runtime="keras", precision="fp32"):
        self.folder = os.path.abspath(os.fspath(folder))
        self.model = model
        self.computed = (runtime, precision)

    def parts(self):
        """{shard index: path} of the finished shards."""
        if not os.path.isdir(self.folder):
            return {}
        found = (_PART.fullmatch(name) for name in os.listdir(self.folder))
        return {int(m.group(1)): os.path.join(self.folder, m.group(0)) for m in found if m}

    def check(self):
        """OutputExistsError, before any work, for an OUT that is a file, that holds files
        vit-embed did not write (the user's images: OUT given as the SOURCE folder), or
        rows of another model, of another runtime or precision."""
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise OutputExistsError(f"--output {self.folder} is a file; give a folder for "
                                    "the Parquet dataset.")
        self._check_only_ours()
        for path in self.parts().values():
            metadata = _metadata(path)
            model = metadata.get(MODEL_KEY, b"").decode()
            if model != self.model:
                found = f"rows of {model}" if model else "a Parquet file vit-embed did not write"
                raise OutputExistsError(
                    f"--output {self.folder} already holds {found} ({os.path.basename(path)}),"
                    f" not of {self.model}: give another folder, or delete it to start over.")
            # Files written before runtimes were recorded are Keras fp32.
            computed = (metadata.get(RUNTIME_KEY, b"keras").decode(),
                        metadata.get(PRECISION_KEY, b"fp32").decode())
            if computed != self.computed:
                flags = f"--runtime {computed[0]}" + (
                    f" --precision {computed[1]}" if computed[0] == "openvino" else "")
                raise OutputExistsError(
                    f"--output {self.folder} holds rows of {model} computed by "
                    f"{' '.join(computed)} ({os.path.basename(path)}), not by "
                    f"{' '.join(self.computed)}: resume it with {flags}, or give another "
                    "folder.")

    def _check_only_ours(self):
        """OUT may be new, empty, or a vit-embed output folder (being resumed): its
        Parquet files, `_errors.csv` and hidden files (the lock, a killed run's temporary
        files, a file manager's). Anything else is the user's (images, a SOURCE folder
        given as OUT, a folder holding one): vit-embed's files would be mixed into it, and
        no Parquet reader could read the folder as a dataset."""
        if not os.path.isdir(self.folder):
            return
        foreign = sorted(name for name in os.listdir(self.folder) if not (
            name.startswith(".") or name == ERRORS_FILE or _PART.fullmatch(name)))
        if not foreign:
            return
        images = [n for n in foreign if n.lower().endswith(IMAGE_EXTENSIONS)]
        named = ", ".join((images or foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
        what = "images" if images else "files or folders"
        raise OutputExistsError(
            f"--output {self.folder} holds {what} vit-embed did not write ({named}; "
            f"{len(foreign)} {'entry' if len(foreign) == 1 else 'entries'} in all): "
            "vit-embed would write its Parquet files among them. Give --output a new or "
            f"empty folder, e.g. {self.folder.rstrip(os.sep)}-embeddings (a folder of "
            "vit-embed's own is resumed).")

    @contextlib.contextmanager
    def lock(self):
        """Held for a whole run: two runs writing one OUT would number shards alike."""
        from filelock import FileLock, Timeout

        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, LOCK_FILE)
        try:
            with FileLock(path, timeout=0):
                yield
        except Timeout:
            raise OutputExistsError(f"--output {self.folder} is being written by another "
                                    "vit-embed run; wait for it to finish, or give another "
                                    "folder.") from None

    def finished(self):
        """Locations already done (embedded, or recorded as unreadable) in finished shards."""
        import pyarrow.parquet as pq

        done = set()
        for path in self.parts().values():
            done.update(pq.read_table(path, columns=["path"]).column("path").to_pylist())
            done.update(location for location, _ in _errors(path))
        return done

    def remove_temporaries(self):
        """Half-written files of a run that was killed (hidden, never read)."""
        remove_temporaries(self.folder)

    def write_errors_file(self):
        """`_errors.csv` from every finished shard's record; the number of errors."""
        rows = sorted(row for path in self.parts().values() for row in _errors(path))
        target = os.path.join(self.folder, ERRORS_FILE)
        if not rows:
            if os.path.exists(target):
                os.remove(target)
            return 0
        with atomic_path(target) as temporary, open(temporary, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "reason"])
            writer.writerows(rows)
        return len(rows)


def record_run(runs, index):
    """Records one more run of shard `index` in the run's folder `runs` (a file each,
    created exclusively: two runs never take one number); returns how many runs it has
    had, this one included."""
    count = 1
    while True:
        try:
            os.close(os.open(os.path.join(runs, f"shard-{index:05d}.{count}"),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return count
        except FileExistsError:
            count += 1


def write_part(folder, index, table, model, errors, runtime="keras", precision="fp32",
               accuracy=None):
    """Writes one shard's rows whole or not at all; `accuracy`: the OpenVINO model's
    measured agreement with fp32 (None for Keras, the reference)."""
    import pyarrow.parquet as pq

    metadata = {**(table.schema.metadata or {}), MODEL_KEY: model.encode(),
                ERRORS_KEY: json.dumps(errors).encode(), RUNTIME_KEY: runtime.encode(),
                PRECISION_KEY: precision.encode(), ACCURACY_KEY: json.dumps(accuracy).encode()}
    with atomic_path(os.path.join(folder, part_name(index))) as temporary:
        pq.write_table(table.replace_schema_metadata(metadata), temporary)


def _metadata(path):
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).metadata or {}
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise OutputExistsError(f"{path} is not a readable Parquet file ({err}); delete it "
                                "or give another --output folder.") from None


def _errors(path):
    return [tuple(row) for row in json.loads(_metadata(path).get(ERRORS_KEY, b"[]"))]
