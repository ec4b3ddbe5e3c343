"""Embeddings of a whole image collection on Ray Data: `embed_images` and `vit-embed`.

The driver lists the images, skips those a previous run finished, cuts the rest into
shards and hands them to a pool of Ray actors (`worker.ShardEmbedder`), each of which
loads the model once from the cache and writes each shard's Parquet file whole
(`output.EmbedOutput`). Ray retries a shard whose worker died (up to `retries` times, a
bound kept by the workers: `ShardRunsExhausted`); a shard's file is replaced whole,
so every image is in the output exactly once. The same code runs on this machine
(`ray.init()`) and on a cluster (`address=`, checked to answer before anything starts).
An interrupted job (Ctrl-C) stops its workers and keeps the finished shards
(`EmbedStopped`); a rerun resumes.
"""

import dataclasses
import logging
import os
import time

from vit_hub.cluster import check_address, connect, engine, prepare_model, registration
from vit_hub.embed.output import RUNS_PREFIX, EmbedOutput
from vit_hub.embed.sources import list_images
from vit_hub.errors import ConfigError, EmbedError, MissingDependencyError
from vit_hub.files import temporary_folder
from vit_hub.runtime.engine import describe_cpu_class
from vit_hub.runtime.options import check_runtime

MAX_SHARD = 1024  # images per shard: the unit of progress, retry and resume


@dataclasses.dataclass(frozen=True)
class EmbedSummary:
    output: str  # the Parquet dataset folder
    images: int  # rows written by this run
    errors: int  # unreadable images recorded by this run
    skipped: int  # images a previous run had finished
    shards: int  # shards run by this run
    seconds: float
    engine: str = ""  # what computed the rows, e.g. 'OpenVINO int8 (the rest in f32)'
    cpu: str = ""  # the driver's CPU class (`runtime.engine.describe_cpu_class`)

    @property
    def images_per_second(self):
        return (self.images + self.errors) / self.seconds if self.seconds else 0.0


class ShardRunsExhausted(Exception):
    """A shard whose worker died on each of its runs, `retries` + 1 of them: the worker
    refuses one more (its counts say so) and the driver stops the job."""


class EmbedStopped(KeyboardInterrupt):
    """An `embed_images` job interrupted (Ctrl-C, SIGINT): its workers are stopped, the
    shards finished by then are kept in `folder` (`kept` of them, with earlier runs'),
    and a rerun resumes. A KeyboardInterrupt, so `except KeyboardInterrupt` catches it."""

    def __init__(self, folder, kept):
        shards = "shard" if kept == 1 else "shards"
        super().__init__(f"stopped (interrupted): {kept} finished {shards} kept in {folder}; "
                         "run the same command again to resume.")
        self.folder, self.kept = folder, kept

    @classmethod
    def at(cls, folder):
        """The stop of a job writing `folder`, from what is in it."""
        folder = os.path.abspath(os.fspath(folder))
        return cls(folder, len(EmbedOutput(folder, None).parts()))


def embed_images(model, source, output, *, workers=1, address=None, batch_size=32,
                 cache_dir=None, offline=None, shard_size=None, cpus_per_worker=None,
                 gpus_per_worker=0, retries=3, progress=True, runtime="keras",
                 precision=None, min_cosine=None):
    """Embeds every image of `source` with `model` into the Parquet dataset `output`.

    Args:
        model: a catalogue name or handle (`vit_hub.list_models()`).
        source: a folder (recursive), a glob, an image, or a text file of paths/URLs.
        output: folder of the Parquet dataset; an existing one of the same model is
            resumed (only images not yet done are embedded).
        workers: Ray actors, each with its own copy of the model.
        address: a Ray cluster to join ('auto', 'ray://host:10001'); default: the Ray
            instance of this process, or a new one on this machine.
        batch_size: images per model call.
        cache_dir, offline: as for `load_pretrained`. The model is cached (converted on a
            miss unless offline) before any worker starts; workers load it offline.
            On a cluster, `cache_dir` must be a folder every node sees (or run
            `convert-weights` on each node).
        shard_size: images per shard (default: up to 1024, at least 4 shards a worker).
        cpus_per_worker, gpus_per_worker: Ray resources of each actor (default: this
            cluster's CPUs shared evenly, no GPU).
        retries: times a shard is run again after its worker died (killed, out of
            memory, its machine lost, a decoder crash) before the job stops with an
            `EmbedError`; the shards finished by then are kept for a rerun.
        address: refused (ConfigError) within seconds when nothing answers there
            (nor at $RAY_ADDRESS, which Ray uses when address is None or 'auto').
        progress: a progress bar on stderr.
        runtime, precision, min_cosine: 'keras', or 'openvino' at precision 'fp32'
            (default), 'bf16' or 'int8' with its gate (see `load_pretrained`). The
            OpenVINO IR is built and checked once, before any worker starts; workers
            load it offline. The Parquet metadata records runtime, precision and the
            measured agreement with fp32; an OUT of another runtime or precision is
            refused.

    Returns an `EmbedSummary`. Unreadable images are listed with their reason in
    `output/_errors.csv`; they never stop the job. `output` holds vit-embed's files only:
    one that holds others (the SOURCE's images) is refused. Interrupted (Ctrl-C), the job
    stops its workers and raises `EmbedStopped` (a KeyboardInterrupt); the finished
    shards are kept, and a rerun resumes.
    """
    from vit_hub.catalogue import get_entry

    _check_positive(workers=workers, batch_size=batch_size, shard_size=shard_size)
    _check_retries(retries)
    check_address(address)  # also: no cluster answers there, refused in seconds
    entry = get_entry(model)
    precision = check_runtime(runtime, precision, min_cosine=min_cosine)
    out = EmbedOutput(output, entry.name, runtime, precision)
    try:
        return _embed(entry, source, out, workers, address, batch_size, cache_dir, offline,
                      shard_size, cpus_per_worker, gpus_per_worker, retries, progress,
                      dict(runtime=runtime, precision=precision, min_cosine=min_cosine))
    except EmbedStopped:
        raise
    except KeyboardInterrupt:  # before the job ran: what a rerun would find
        raise EmbedStopped(out.folder, len(out.parts())) from None


def _embed(entry, source, out, workers, address, batch_size, cache_dir, offline, shard_size,
           cpus, gpus, retries, progress, computed):
    out.check()  # another model's (or runtime's) rows, the user's files: refused before
    locations = list_images(source)  # anything is read; nothing to embed: refused here too
    # The weights (and an OpenVINO IR) cached once here, checked; not cached and offline:
    # refused here.
    computed_by = engine(prepare_model(entry.name, cache_dir, offline, computed, "vit-embed"))
    start = time.perf_counter()
    with out.lock():
        out.remove_temporaries()
        done = out.finished()
        pending = [p for p in locations if p not in done]
        size = shard_size or max(1, min(MAX_SHARD, -(-len(pending) // (4 * workers))))
        shards = _shards(pending, first=max(out.parts(), default=-1) + 1, size=size)
        images = errors = 0
        stopped = None
        try:
            if shards:
                with temporary_folder(out.folder, prefix=RUNS_PREFIX) as runs:
                    images, errors = _counted(
                        _run(shards, entry, out, workers, address, batch_size, cache_dir,
                             cpus, gpus, retries, runs, computed),
                        len(pending), progress, entry.name)
        except KeyboardInterrupt:  # the job's workers are stopped (see _counted)
            out.remove_temporaries()  # the file of a shard cut off mid-write
            raise EmbedStopped(out.folder, len(out.parts())) from None
        except Exception as err:
            reason = _worker_died(err)
            if reason is None:
                raise
            stopped = _stopped(reason, out, shards, retries)
        finally:  # the finished shards' unreadable images, also when the job stopped
            out.write_errors_file()
    if stopped:  # raised without Ray's error, whose frames hold the job's actor handles
        raise stopped
    return EmbedSummary(out.folder, images, errors, len(locations) - len(pending),
                        len(shards), time.perf_counter() - start, computed_by,
                        describe_cpu_class())


def _shards(pending, first, size):
    """Consecutive runs of `size` images, numbered on from the finished shards."""
    return [{"shard": first + i, "paths": pending[j:j + size]}
            for i, j in enumerate(range(0, len(pending), size))]


def _run(shards, entry, out, workers, address, batch_size, cache_dir, cpus, gpus, retries,
         runs, computed):
    """The Ray Data job: shards -> a pool of `workers` ShardEmbedder actors -> counts.
    `runs`: the folder where the workers record each run of a shard; `computed`: the
    runtime keywords of the workers' model."""
    ray = _ray(address)
    from vit_hub.embed.worker import ShardEmbedder

    if cpus is None:  # fractions too: more workers than CPUs still all start
        cpus = ray.cluster_resources().get("CPU", 1) / workers
    dataset = ray.data.from_items(shards, override_num_blocks=len(shards))
    # Ray Data's actor pools restart an actor that dies (killed, out of memory, its machine
    # lost) and run its shard again; the shard's file is written whole, once. Ray Data
    # retries without a bound (its map_batches has no named option for it: the
    # max_restarts / max_task_retries of **ray_remote_args are deprecated), so a shard
    # whose images crash the decoder would never end: the workers count each shard's runs
    # in `runs` and refuse the one after `retries` retries, and `_counted` stops the job.
    return dataset.map_batches(
        ShardEmbedder,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs=dict(
            **registration(entry), cache_dir=cache_dir and os.path.abspath(cache_dir),
            folder=out.folder, batch_size=batch_size, threads=max(1, round(cpus)), runs=runs,
            retries=retries,
            **computed),
        num_cpus=cpus,
        num_gpus=gpus,
    ).iter_rows()


def _ray(address):
    """Ray (`cluster.connect`), with Ray Data's own progress bars and logs off (ours says
    what matters)."""
    install = "vit-embed runs on Ray Data: pip install 'vit_hub[embed]'."
    ray = connect(address, install)
    try:
        import ray.data
    except ImportError:
        raise MissingDependencyError(install) from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def _worker_died(err):
    """Why a Ray Data job failed, if a worker died more often than retried: a shard
    refused after its retries (the workers' bound), or Ray's actor errors. Else None."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    if isinstance(err, ShardRunsExhausted):
        return str(err)
    while err is not None:
        if isinstance(err, (ActorDiedError, ActorUnavailableError)):
            return type(err).__name__
        err = err.__cause__ or err.__context__
    return None


def _stopped(reason, out, shards, retries):
    """The EmbedError of a job whose worker kept dying: which shards are left, and why."""
    finished = out.parts()
    left = [s for s in shards if s["shard"] not in finished]
    named = ", ".join(f"{s['shard']} ({s['paths'][0]} ...)" for s in left[:3])
    return EmbedError(
        f"A vit-embed worker died {retries + 1} times (retries={retries}), so the job "
        f"stopped ({reason}). Kept: the {len(finished)} finished shards in "
        f"{out.folder}; a rerun resumes from there. Not finished: {len(left)} shards, "
        f"{sum(len(s['paths']) for s in left)} images (shards {named}). A worker that "
        "dies on one shard each time is killed by that shard's data (an image that "
        "crashes the decoder: move it away and run again) or by memory (a smaller "
        "batch size, fewer workers a machine).")


def _counted(results, total, progress, name):
    """Images embedded and found unreadable, from the workers' counts, with a progress
    bar; ShardRunsExhausted when a worker refused a shard (the job is stopped)."""
    from tqdm import tqdm

    images = errors = 0
    rows = iter(results)
    try:
        with tqdm(total=total, desc=f"vit-embed {name}", unit="img", disable=not progress,
                  smoothing=0.1) as bar:
            for row in rows:
                if row["refused"]:
                    raise ShardRunsExhausted(str(row["refused"]))
                images, errors = images + int(row["images"]), errors + int(row["errors"])
                bar.update(int(row["images"]) + int(row["errors"]))
    finally:  # stopped or interrupted too: Ray Data stops the job, its workers with it
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    return images, errors


def _check_retries(retries):
    if not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be a whole number >= 0, got {retries!r}.")


def _check_positive(**values):
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}.")
