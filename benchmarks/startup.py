"""Fresh-process costs: the test-built checkpoint, its conversion into the cache, and the
first prediction from a warm cache (vit_hub, the hub layer, OpenVINO from its IR cache).

Tasks (children, `python -m benchmarks.startup <task> '<json>'`): `build_checkpoint`,
`convert`, `fill_ir_cache`, `first_native`, `first_hub`, `first_openvino`. The parent's
side: `prepare`, `conversion`, `first_prediction`, `io_floor`.
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

from benchmarks import child
from benchmarks.common import WORK, checkpoint_paths

# === Tasks (each runs in a child) ===


def build_checkpoint(name, folder):
    """A full-size checkpoint of `name` in the published format (random weights)."""
    import vit_hub
    from vit_hub.conversion import published_format

    entry = vit_hub.get_entry(name)
    arch = entry.architecture
    config = published_format.HubConfig(arch.patch_size, arch.hidden_dim, arch.num_layers,
                                        arch.num_heads, arch.mlp_dim, 1000,
                                        arch.image_size[0])
    params = published_format.init_params(config, entry.kind, seed=0)
    published_format.export_saved_model(params, config, entry.kind, folder + ".tmp")
    os.replace(folder + ".tmp", folder)
    return {"folder": folder}


def convert(name, source, cache, force=True):
    """`convert_into_cache` from the SavedModel: seconds (TensorFlow's import excluded)
    and peak RSS."""
    import tensorflow  # noqa: F401  (imported lazily by the conversion: excluded, as below)

    from vit_hub.conversion.pipeline import convert_into_cache

    after_imports = child.peak_rss()
    start = time.perf_counter()
    convert_into_cache(name, cache_dir=cache, source=source, verify=False, force=force)
    return {"seconds": time.perf_counter() - start, "rss_after_imports_bytes": after_imports,
            "peak_rss_bytes": child.peak_rss()}


def fill_ir_cache(name, cache):
    """The fp32 IR cached once, online (the weights are in the cache since the
    conversion: nothing is downloaded); a hit on later runs."""
    import vit_hub

    start = time.perf_counter()
    vit_hub.load_pretrained(name, cache_dir=cache, offline=False, runtime="openvino",
                            precision="fp32")
    return {"seconds": time.perf_counter() - start}


def first_native(name, cache, size):
    """load_pretrained + first call, imports excluded; the load's RSS above the
    initialised backend."""
    import keras
    import numpy as np

    import vit_hub
    import vit_hub.model  # noqa: F401

    keras.ops.zeros((1,))  # the backend initialised: the baseline is what a load adds to
    with open("/proc/self/statm") as statm:
        base = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    x = np.zeros((1, size, size, 3), np.float32)
    start = time.perf_counter()
    model = vit_hub.load_pretrained(name, cache_dir=cache, offline=True)
    load_s = time.perf_counter() - start
    load_rss = child.peak_rss() - base
    keras.ops.convert_to_numpy(model(x))
    return {"seconds": time.perf_counter() - start, "load_s": load_s,
            "load_rss_bytes": load_rss}


def first_hub(source, size):
    """hub.KerasLayer(saved_model_dir) + first call, imports excluded."""
    import numpy as np
    import tensorflow_hub as hub

    x = np.zeros((1, size, size, 3), np.float32)
    start = time.perf_counter()
    layer = hub.KerasLayer(source)
    load_s = time.perf_counter() - start
    np.asarray(layer(x))
    return {"seconds": time.perf_counter() - start, "load_s": load_s}


def first_openvino(name, cache, size):
    """From a filled IR cache: neither TensorFlow nor Keras. Imports excluded from the
    time, as above, but recorded."""
    start = time.perf_counter()
    import numpy as np
    import openvino  # noqa: F401

    import vit_hub

    import_s = time.perf_counter() - start
    x = np.zeros((1, size, size, 3), np.float32)
    start = time.perf_counter()
    fast = vit_hub.load_pretrained(name, cache_dir=cache, offline=True, runtime="openvino",
                                   precision="fp32")
    load_s = time.perf_counter() - start
    fast(x)
    return {"seconds": time.perf_counter() - start, "load_s": load_s, "import_s": import_s,
            "tensorflow_imported": "tensorflow" in sys.modules,
            "keras_imported": "keras" in sys.modules}


TASKS = {task.__name__: task for task in (build_checkpoint, convert, fill_ir_cache,
                                           first_native, first_hub, first_openvino)}


# === The parent's side ===


def prepare(name, smoke, convert=True):
    """(SavedModel folder, cache folder) of `name`, the checkpoint built once and (with
    `convert`) converted into the cache once, both in children."""
    import filelock

    source, cache = checkpoint_paths(name)
    os.makedirs(os.path.dirname(source), exist_ok=True)
    with filelock.FileLock(source + ".lock"):  # two runs at once (the tests' workers)
        if not os.path.exists(os.path.join(source, "saved_model.pb")):
            shutil.rmtree(source + ".tmp", ignore_errors=True)  # a killed run's
            child.run("startup", "build_checkpoint", {"name": name, "folder": source},
                      smoke=smoke)
        if convert and not os.path.exists(os.path.join(cache, "v1", name, f"{name}.h5")):
            child.run("startup", "convert", {"name": name, "source": source, "cache": cache,
                                             "force": False}, smoke=smoke)
    return source, cache


def io_floor(source, fsync=False):
    """Seconds to read the checkpoint's bytes and write as many: the least any
    conversion can take on this disk (with `fsync`: and make them durable, as the
    cache's atomic writes do)."""
    data_files = [os.path.join(source, "variables", f)
                  for f in os.listdir(os.path.join(source, "variables"))]
    start = time.perf_counter()
    total = 0
    with tempfile.NamedTemporaryFile(dir=WORK) as out:
        for path in data_files:
            with open(path, "rb") as f:
                while block := f.read(1 << 24):
                    out.write(block)
                    total += len(block)
        out.flush()
        if fsync:
            os.fsync(out.fileno())
    return time.perf_counter() - start, total


def conversion(name, source, cache, repeats, smoke):
    runs = [child.run("startup", "convert", {"name": name, "source": source, "cache": cache},
                      smoke=smoke) for _ in range(repeats)]
    floors = [io_floor(source) for _ in range(repeats)]
    durable = statistics.median(io_floor(source, fsync=True)[0] for _ in range(repeats))
    weights = os.path.getsize(os.path.join(cache, "v1", name, f"{name}.h5"))
    seconds = statistics.median(r["seconds"] for r in runs)
    floor = statistics.median(f[0] for f in floors)
    rss = max(r["peak_rss_bytes"] for r in runs)
    return {"seconds": seconds, "seconds_runs": [r["seconds"] for r in runs],
            "io_floor_s": floor, "io_floor_fsync_s": durable,
            "rss_after_imports_bytes": max(r["rss_after_imports_bytes"] for r in runs),
            "ratio_to_fsync_floor": seconds / durable, "source_bytes": floors[0][1],
            "weights_bytes": weights, "peak_rss_bytes": rss,
            "ratio_to_floor": seconds / floor, "rss_to_weights": rss / weights}


def first_prediction(name, source, cache, size, repeats, smoke):
    """Medians over `repeats` rounds of fresh processes, the three contenders alternating
    so that drifts hit all alike."""
    ir_fill = child.run("startup", "fill_ir_cache", {"name": name, "cache": cache},
                        smoke=smoke)["seconds"]
    native, hub, fast = [], [], []
    for _ in range(repeats):
        native.append(child.run("startup", "first_native",
                                {"name": name, "cache": cache, "size": size}, smoke=smoke))
        hub.append(child.run("startup", "first_hub", {"source": source, "size": size}))
        fast.append(child.run("startup", "first_openvino",
                              {"name": name, "cache": cache, "size": size}, smoke=smoke))
    med = lambda rows, key: statistics.median(r[key] for r in rows)
    return {"native_s": med(native, "seconds"), "native_load_s": med(native, "load_s"),
            "native_load_rss_bytes": max(r["load_rss_bytes"] for r in native),
            "hub_s": med(hub, "seconds"), "hub_load_s": med(hub, "load_s"),
            "ratio": med(native, "seconds") / med(hub, "seconds"),
            "openvino_s": med(fast, "seconds"), "openvino_load_s": med(fast, "load_s"),
            "openvino_import_s": med(fast, "import_s"), "openvino_ir_fill_s": ir_fill,
            "openvino_tensorflow_imported": any(r["tensorflow_imported"] for r in fast),
            "openvino_keras_imported": any(r["keras_imported"] for r in fast),
            "openvino_ratio": med(fast, "seconds") / med(hub, "seconds"),
            "runs": {"native_s": [r["seconds"] for r in native],
                     "hub_s": [r["seconds"] for r in hub],
                     "openvino_s": [r["seconds"] for r in fast]}}


if __name__ == "__main__":
    child.main(TASKS)
