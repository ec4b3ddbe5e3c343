"""vit-embed (Keras and OpenVINO fp32 workers) against a plain `model.predict` loop over
the same image files.

    python -m benchmarks.run embed --models vit_b32_fe --json out/embed.json

Both are whole commands in fresh processes, as a user runs them (imports, Ray start, model
load and every image's read, decode and resize included), timed alternately; then the
rows are compared with the loop's outputs. The images are JPEGs of a photo's statistics
(smooth gradients plus noise), 320x240, written once into out/bench/embed_images.

The commands are tasks of this module (`python -m benchmarks.embed <task> '<json>'`):
`predict_loop`, and `command`, which runs a vit_hub command-line tool's `main`.
"""

import glob
import importlib
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks import child

# (key, workers, runtime) of each vit-embed command timed.
EMBEDS = [("vit_embed_1_worker", 1, "keras"), ("vit_embed_2_workers", 2, "keras"),
          ("vit_embed_openvino_1_worker", 1, "openvino"),
          ("vit_embed_openvino_2_workers", 2, "openvino")]


# === Tasks (each runs in a child) ===


def predict_loop(name, folder, cache, batch, out):
    """What a user writes without vit-embed: preprocess and `model.predict` batch by
    batch; the outputs saved to `out` (.npy)."""
    import vit_hub

    paths = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    model = vit_hub.load_pretrained(name, cache_dir=cache, offline=True)
    size = vit_hub.get_entry(name).image_size
    outputs = [model.predict(vit_hub.preprocess(paths[i:i + batch], image_size=size),
                             verbose=0) for i in range(0, len(paths), batch)]
    np.save(out, np.concatenate(outputs))
    return {"rows": sum(len(o) for o in outputs)}


def command(module, argv):
    """`vit_hub.cli.<module>.main(argv)`, as its console script runs it."""
    code = importlib.import_module(f"vit_hub.cli.{module}").main(argv)
    if code:
        raise SystemExit(code)
    return {"exit": 0}


TASKS = {"predict_loop": predict_loop, "command": command}


def write_images(folder, count):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320] / 320
    for i in range(count):
        path = os.path.join(folder, f"photo{i:05d}.jpg")
        if not os.path.exists(path):
            base = np.stack([np.sin((3 + i % 7) * xx), np.cos((2 + i % 5) * yy), xx * yy], -1)
            pixels = np.clip((base * 0.5 + 0.5) * 255 + rng.normal(0, 12, base.shape), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))[:count]


def timed(task, kwargs, smoke):
    """Seconds of the whole child process that runs `task`."""
    start = time.perf_counter()
    child.run("embed", task, kwargs, smoke=smoke)
    return time.perf_counter() - start


def bench_embed(name, cache, images_folder, smoke=None, count=512, batch=32, repeats=2):
    """Images/s of the predict loop and of vit-embed with 1 and 2 workers, Keras and
    OpenVINO fp32, and the largest difference between each runtime's rows and the loop's
    outputs. `smoke`: the stand-in the commands' processes register ({"name", "fields"})."""
    folder = os.path.join(images_folder, str(count))
    paths = write_images(folder, count)
    # The IR is built once, untimed, as a user would before going offline.
    child.run("embed", "command", {"module": "convert_weights", "argv": [
        name, "--cache-dir", cache, "--runtime", "openvino"]}, smoke=smoke)
    seconds = {"predict_loop": [], **{key: [] for key, _, _ in EMBEDS}}
    difference = {}
    with tempfile.TemporaryDirectory() as tmp:
        expected = os.path.join(tmp, "expected.npy")
        for round_ in range(repeats):  # alternating, so drift hits every contender alike
            seconds["predict_loop"].append(timed("predict_loop", {
                "name": name, "folder": folder, "cache": cache, "batch": batch,
                "out": expected}, smoke))
            for key, workers, runtime in EMBEDS:
                out = os.path.join(tmp, f"{key}-{round_}")
                seconds[key].append(timed("command", {"module": "vit_embed", "argv": [
                    name, folder, "--output", out, "--cache-dir", cache, "--offline",
                    "--workers", str(workers), "--batch-size", str(batch),
                    "--runtime", runtime]}, smoke))
                found, rows = max_difference(out, paths, np.load(expected))
                difference[runtime] = max(difference.get(runtime, 0.0), found)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "model": name, "images": count, "batch_size": batch, "seconds": seconds,
        "images_per_s": {k: count / v for k, v in median.items()},
        "overhead_vs_predict_loop": {k: v / median["predict_loop"] for k, v in median.items()},
        "max_abs_diff_vs_predict": difference["keras"],
        "max_abs_diff_openvino_vs_predict": difference["openvino"],
        "rows": rows,
    }


def max_difference(out, paths, expected):
    """(largest difference of vit-embed's rows in `out` to `expected`, rows)."""
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    index = {p: i for i, p in enumerate(table.column("path").to_pylist())}
    column = "features" if "features" in table.column_names else "logits"
    rows = np.stack(table.column(column).to_numpy(zero_copy_only=False))
    return float(np.abs(rows[[index[p] for p in paths]] - expected).max()), table.num_rows


if __name__ == "__main__":
    child.main(TASKS)
