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
import time

from vit_hub.embed.output import EmbedOutput
from vit_hub.embed.sources import list_images
from vit_hub.errors import ConfigError, MissingDependencyError

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
                 gpus_per_worker=0, progress=True):
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
        progress: a progress bar on stderr.

    Returns an `EmbedSummary`. Unreadable images are listed with their reason in
    `output/_errors.csv`; they never stop the job.
    """
    from vit_hub.catalogue import get_entry
    from vit_hub.pretrained import cached_weights

    _check_positive(workers=workers, batch_size=batch_size, shard_size=shard_size)
    entry = get_entry(model)
    out = EmbedOutput(output, entry.name)
    out.check()  # another model's rows: refused before anything is read
    locations = list_images(source)  # nothing to embed: refused here too
    cached_weights(entry.name, cache_dir, offline)  # offline and not cached: refused here
    start = time.perf_counter()
    with out.lock():
        out.remove_temporaries()
        done = out.finished()
        pending = [p for p in locations if p not in done]
        size = shard_size or max(1, min(MAX_SHARD, -(-len(pending) // (4 * workers))))
        shards = _shards(pending, first=max(out.parts(), default=-1) + 1, size=size)
        images = errors = 0
        if shards:
            results = _run(shards, entry, out, workers, address, batch_size, cache_dir,
                           cpus_per_worker, gpus_per_worker)
            with _progress_bar(len(pending), progress, entry.name) as bar:
                for row in results:
                    images, errors = images + int(row["images"]), errors + int(row["errors"])
                    bar.update(int(row["images"]) + int(row["errors"]))
        out.write_errors_file()
    return EmbedSummary(out.folder, images, errors, len(locations) - len(pending),
                        len(shards), time.perf_counter() - start)


def _shards(pending, first, size):
    """Consecutive runs of `size` images, numbered on from the finished shards."""
    return [{"shard": first + i, "paths": pending[j:j + size]}
            for i, j in enumerate(range(0, len(pending), size))]


def _run(shards, entry, out, workers, address, batch_size, cache_dir, cpus, gpus):
    """The Ray Data job: shards -> a pool of `workers` ShardEmbedder actors -> counts."""
    ray = _ray(address)
    from vit_hub.architecture import variant_config
    from vit_hub.embed.worker import ShardEmbedder

    if cpus is None:  # fractions too: more workers than CPUs still all start
        cpus = ray.cluster_resources().get("CPU", 1) / workers
    dataset = ray.data.from_items(shards, override_num_blocks=len(shards))
    # Ray Data's actor pools restart an actor that dies (killed, out of memory, its machine
    # lost) and run its shard again; the shard's file is written whole, once.
    return dataset.map_batches(
        ShardEmbedder,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs=dict(
            model=entry.name, entry=entry.to_dict(), variant=variant_config(entry.variant),
            cache_dir=cache_dir and os.path.abspath(cache_dir), folder=out.folder,
            batch_size=batch_size, threads=max(1, round(cpus))),
        num_cpus=cpus,
        num_gpus=gpus,
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


def _progress_bar(total, enabled, name):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"vit-embed {name}", unit="img", disable=not enabled,
                smoothing=0.1)


def _check_positive(**values):
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}.")
