"""Embeddings of a whole image collection on Ray Data: `embed_images` and `vit-embed`.

The driver lists the images, skips those a previous run finished, cuts the rest into
shards and hands them to a pool of Ray actors (`worker.ShardEmbedder`), each of which
loads the model once from the cache and writes each shard's Parquet file whole
(`output.EmbedOutput`). Ray retries a shard whose worker died; a shard's file is replaced
whole, so every image is in the output exactly once. The same code runs on this machine
(`ray.init()`) and on a cluster (`address=`).
"""

import dataclasses
import logging
import os
import sys
import time

from vit_hub.embed.output import EmbedOutput
from vit_hub.embed.sources import list_images
from vit_hub.errors import ConfigError, EmbedError, MissingDependencyError
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

    @property
    def images_per_second(self):
        return (self.images + self.errors) / self.seconds if self.seconds else 0.0


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
        progress: a progress bar on stderr.
        runtime, precision, min_cosine: 'keras', or 'openvino' at precision 'fp32'
            (default), 'bf16' or 'int8' with its gate (see `load_pretrained`). The
            OpenVINO IR is built and checked once, before any worker starts; workers
            load it offline. The Parquet metadata records runtime, precision and the
            measured agreement with fp32; an OUT of another runtime or precision is
            refused.

    Returns an `EmbedSummary`. Unreadable images are listed with their reason in
    `output/_errors.csv`; they never stop the job.
    """
    from vit_hub.catalogue import get_entry
    from vit_hub.pretrained import cached_weights, load_pretrained

    _check_positive(workers=workers, batch_size=batch_size, shard_size=shard_size)
    _check_retries(retries)
    _check_address(address)
    entry = get_entry(model)
    precision = check_runtime(runtime, precision, min_cosine=min_cosine)
    out = EmbedOutput(output, entry.name, runtime, precision)
    out.check()  # another model's (or runtime's) rows: refused before anything is read
    locations = list_images(source)  # nothing to embed: refused here too
    cached_weights(entry.name, cache_dir, offline)  # offline and not cached: refused here
    if runtime == "openvino":  # built (or found) once here, checked against its gate
        load_pretrained(entry.name, cache_dir=cache_dir, offline=offline,
                        runtime="openvino", precision=precision, min_cosine=min_cosine)
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
                images, errors = _counted(
                    _run(shards, entry, out, workers, address, batch_size, cache_dir,
                         cpus_per_worker, gpus_per_worker, retries,
                         dict(runtime=runtime, precision=precision, min_cosine=min_cosine)),
                    len(pending), progress, entry.name)
        except Exception as err:
            if not _worker_died(err):
                raise
            stopped = _stopped(err, out, shards, retries)
        finally:  # the finished shards' unreadable images, also when the job stopped
            out.write_errors_file()
    if stopped:  # raised without Ray's error, whose frames hold the job's actor handles
        raise stopped
    return EmbedSummary(out.folder, images, errors, len(locations) - len(pending),
                        len(shards), time.perf_counter() - start)


def _shards(pending, first, size):
    """Consecutive runs of `size` images, numbered on from the finished shards."""
    return [{"shard": first + i, "paths": pending[j:j + size]}
            for i, j in enumerate(range(0, len(pending), size))]


def _run(shards, entry, out, workers, address, batch_size, cache_dir, cpus, gpus, retries,
         computed):
    """The Ray Data job: shards -> a pool of `workers` ShardEmbedder actors -> counts.
    `computed`: the runtime keywords of the workers' model."""
    ray = _ray(address)
    from vit_hub.architecture import variant_config
    from vit_hub.embed.worker import ShardEmbedder

    if cpus is None:  # fractions too: more workers than CPUs still all start
        cpus = ray.cluster_resources().get("CPU", 1) / workers
    dataset = ray.data.from_items(shards, override_num_blocks=len(shards))
    # Ray Data's actor pools restart an actor that dies (killed, out of memory, its machine
    # lost) and run its shard again; the shard's file is written whole, once. Ray Data's
    # own default retries a shard forever: one whose images crash the decoder would never
    # end, so a shard gets `retries` more runs and an actor as many restarts (with more
    # restarts than runs, the actor that died last would come back after the job stopped
    # and hold its CPUs from the next job of this process: measured on Ray 2.60).
    return dataset.map_batches(
        ShardEmbedder,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs=dict(
            model=entry.name, entry=entry.to_dict(), variant=variant_config(entry.variant),
            cache_dir=cache_dir and os.path.abspath(cache_dir), folder=out.folder,
            batch_size=batch_size, threads=max(1, round(cpus)), **computed),
        num_cpus=cpus,
        num_gpus=gpus,
        max_task_retries=retries,
        max_restarts=retries,
    ).iter_rows()


def _ray(address):
    """Ray, started on this machine or joined to `address`, with Ray Data's own
    progress bars and logs off (ours says what matters)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependencyError("vit-embed runs on Ray Data: pip install "
                                     "'vit_hub[embed]'.") from None
    if not ray.is_initialized():
        env = {"TF_CPP_MIN_LOG_LEVEL": "2",
               "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, runtime_env={"env_vars": env})
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def _check_address(address):
    """`address` on a process already connected to Ray would be ignored: refused."""
    ray = sys.modules.get("ray")
    if address is None or ray is None or not ray.is_initialized():
        return
    current = ray.get_runtime_context().gcs_address
    if address not in ("auto", current):
        raise ConfigError(
            f"This process is already connected to the Ray cluster at {current}, so "
            f"address={address!r} cannot be joined: leave address out to run there, or "
            "call ray.shutdown() first.")


def _worker_died(err):
    """Whether a Ray Data job failed because a worker died (more often than retried)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    while err is not None:
        if isinstance(err, (ActorDiedError, ActorUnavailableError)):
            return True
        err = err.__cause__ or err.__context__
    return False


def _stopped(err, out, shards, retries):
    """The EmbedError of a job whose worker kept dying: which shards are left, and why."""
    finished = out.parts()
    left = [s for s in shards if s["shard"] not in finished]
    named = ", ".join(f"{s['shard']} ({s['paths'][0]} ...)" for s in left[:3])
    return EmbedError(
        f"A vit-embed worker died {retries + 1} times (retries={retries}), so the job "
        f"stopped ({type(err).__name__}). Kept: the {len(finished)} finished shards in "
        f"{out.folder}; a rerun resumes from there. Not finished: {len(left)} shards, "
        f"{sum(len(s['paths']) for s in left)} images (shards {named}). A worker that "
        "dies on one shard each time is killed by that shard's data (an image that "
        "crashes the decoder: move it away and run again) or by memory (a smaller "
        "batch size, fewer workers a machine).")


def _counted(results, total, progress, name):
    """Images embedded and found unreadable, from the workers' counts, with a progress
    bar."""
    from tqdm import tqdm

    images = errors = 0
    with tqdm(total=total, desc=f"vit-embed {name}", unit="img", disable=not progress,
              smoothing=0.1) as bar:
        for row in results:
            images, errors = images + int(row["images"]), errors + int(row["errors"])
            bar.update(int(row["images"]) + int(row["errors"]))
    return images, errors


def _check_retries(retries):
    if not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be a whole number >= 0, got {retries!r}.")


def _check_positive(**values):
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}.")
