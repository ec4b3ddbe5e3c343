"""What each vit-embed worker runs: one Ray actor per worker loads the model once, from
the cache and offline (the Keras model, or the OpenVINO IR the driver built), then takes
whole shards: it reads and decodes a shard's images (the next batch on a thread while the
model runs the current one), embeds them and writes the shard's Parquet file itself.
Unreadable images are recorded, never raised.

Ray Data restarts a worker that died and runs its shard again, without a bound; each run of
a shard is recorded in the run's folder, and the run after the last retry allowed is
refused: its counts say why, and the driver stops the job (a shard whose images crash the
decoder ends the job instead of running forever)."""

import concurrent.futures
import os

import numpy as np

from vit_hub.embed.output import record_run, write_part
from vit_hub.embed.sources import read_bytes
from vit_hub.errors import VitHubError


class ShardEmbedder:
    def __init__(self, model, entry, variant, cache_dir, folder, batch_size, threads,
                 runtime="keras", precision="fp32", min_cosine=None, runs=None,
                 retries=None):
        """`runs`: the run's folder of shard runs (`output.record_run`); with `retries`,
        a shard is run at most `retries` + 1 times."""
        _limit_threads(threads, keras=runtime == "keras")
        from vit_hub.architecture import list_variants, register_variant
        from vit_hub.catalogue import get_entry, list_models, register_model
        from vit_hub.pretrained import load_pretrained

        # A model registered in the caller's process (register_variant / register_model)
        # is registered here too: workers are fresh processes.
        if entry["variant"] not in list_variants():
            register_variant(entry["variant"], **variant)
        if model not in list_models():
            register_model(model, entry)
        self.name, self.folder, self.batch_size = model, folder, batch_size
        self.runs, self.retries = runs, retries
        self.entry = get_entry(model)
        self.computed = dict(runtime=runtime, precision=precision, accuracy=None)
        if runtime == "openvino":  # numpy in, numpy out; no TensorFlow or Keras loaded
            fast = load_pretrained(model, cache_dir=cache_dir, offline=True,
                                   runtime="openvino", precision=precision,
                                   min_cosine=min_cosine, threads=threads)
            self.predict, self.output_shape = fast, fast.output_shape
            self.computed["accuracy"] = fast.accuracy
        else:
            keras_model = load_pretrained(model, cache_dir=cache_dir, offline=True)
            self.predict = keras_model.predict_on_batch  # one call per batch, as `fast`
            self.output_shape = keras_model.output_shape
        self.top5 = self.entry.classification and self.output_shape[-1] == 1000

    def __call__(self, batch):
        """One or more shards {"shard", "paths"} -> {"shard", "images", "errors",
        "refused"}: counts, and why a shard was refused ("" if it was not)."""
        counts = [self.embed_shard(int(k), list(paths))
                  for k, paths in zip(batch["shard"], batch["paths"])]
        return {"shard": np.asarray(batch["shard"]),
                "images": np.asarray([c[0] for c in counts]),
                "errors": np.asarray([c[1] for c in counts]),
                "refused": np.asarray([c[2] for c in counts], dtype=object)}

    def embed_shard(self, index, paths):
        if self.runs is not None:
            run = record_run(self.runs, index)
            if run > self.retries + 1:  # the workers of all runs before died on it
                return 0, 0, (f"shard {index} ({paths[0]} ...): its worker died on each of "
                              f"its {run - 1} runs")
        located, outputs, errors = [], [], []
        chunks = [paths[i:i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        with concurrent.futures.ThreadPoolExecutor(1) as reader:
            pending = reader.submit(self.decode, chunks[0])
            for i in range(len(chunks)):
                ok, images, failed = pending.result()
                if i + 1 < len(chunks):  # decode the next batch while this one runs
                    pending = reader.submit(self.decode, chunks[i + 1])
                errors += failed
                if ok:
                    located += ok
                    outputs.append(np.asarray(self.predict(images)))
        rows = np.concatenate(outputs) if outputs else np.zeros((0, *self.output_shape[1:]))
        write_part(self.folder, index, self.table(located, rows), self.name, errors,
                   **self.computed)
        return len(located), len(errors), ""

    def decode(self, paths):
        """Preprocessed images of the readable paths; [path, reason] of the others."""
        from vit_hub.preprocessing import decode_image, preprocess

        ok, images, failed = [], [], []
        for path in paths:
            try:
                image = decode_image(read_bytes(path), path)
                images.append(preprocess(image, self.entry.image_size)[0])
                ok.append(path)
            except (VitHubError, OSError) as err:
                failed.append([path, str(err) or type(err).__name__])
        return ok, (np.stack(images) if images else None), failed

    def table(self, paths, rows):
        import pyarrow as pa

        from vit_hub.preprocessing import decode_predictions

        rows = rows.astype(np.float32)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[-1])
        if not self.entry.classification:
            return pa.table({"path": pa.array(paths, pa.string()), "features": vectors})
        columns = {"path": pa.array(paths, pa.string()), "logits": vectors}
        if self.top5:
            top = decode_predictions(rows, top=5) if len(rows) else []
            columns["top5_labels"] = pa.array([[c[1] for c in t] for t in top],
                                              pa.list_(pa.string()))
            columns["top5_scores"] = pa.array([[c[2] for c in t] for t in top],
                                              pa.list_(pa.float32()))
        return pa.table(columns)


def _limit_threads(threads, keras=True):
    """Keeps a worker's math on the CPUs Ray gave it (its frameworks would take all the
    machine's cores, and workers sharing a machine would fight over them). OpenVINO
    takes its threads= itself, and its workers import no Keras backend."""
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if not keras:
        return
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
