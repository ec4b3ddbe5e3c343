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

import numpy as np

from vit_hub.cluster import load_in_worker, register_in_worker
from vit_hub.embed.output import record_run, write_part
from vit_hub.embed.sources import read_bytes
from vit_hub.errors import VitHubError


class ShardEmbedder:
    def __init__(self, model, entry, variant, cache_dir, folder, batch_size, threads,
                 runtime="keras", precision="fp32", min_cosine=None, runs=None,
                 retries=None):
        """`runs`: the run's folder of shard runs (`output.record_run`); with `retries`,
        a shard is run at most `retries` + 1 times."""
        from vit_hub.catalogue import get_entry

        register_in_worker(model, entry, variant)  # workers are fresh processes
        self.name, self.folder, self.batch_size = model, folder, batch_size
        self.runs, self.retries = runs, retries
        self.entry = get_entry(model)
        self.predict, self.output_shape, accuracy = load_in_worker(
            model, cache_dir, runtime, precision, min_cosine, threads)
        self.computed = dict(runtime=runtime, precision=precision, accuracy=accuracy)
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
