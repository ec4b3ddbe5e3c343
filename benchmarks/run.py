"""vit_hub against hub.KerasLayer, and against the machine's limit.

    python benchmarks/run.py --models vit_b32_fe --json out/bench.json
    python benchmarks/run.py compare --json out/compare.json     # every variant
    python benchmarks/run.py embed --json out/embed.json         # vit-embed vs predict
    python benchmarks/run.py finetune --json out/finetune.json   # fit vs the hub layer
    python benchmarks/run.py --smoke                             # tiny, seconds (CI)

Checkpoints are full-size models in the published format with random weights, built
by `vit_hub.conversion.published_format` into out/bench/, and reused. Figures:
- first prediction from a warm cache, in fresh processes, alternating: `load_pretrained`
  + first call versus `hub.KerasLayer(saved_model_dir)` + first call (imports excluded);
- steady throughput (images/s, median of repeats after warm-up, contenders interleaved)
  at each batch size: the hub layer; `model(x)` (compiled, the natural call) in fp32 and
  bf16; `predict_on_batch`; XLA fp32; at the smallest batch also Keras int8 and the
  op-by-op eager path;
- bf16 and int8 accuracy: the least cosine of their outputs to fp32's;
- the OpenVINO runtime (`vit_hub.to_openvino` of the same native model) at fp32, int8
  and, where the CPU computes in it, bf16, each with its measured accuracy; its first
  prediction from a filled IR cache (fresh process, no TensorFlow); and ONNX Runtime
  fp32 and dynamic int8 (measured only: offered where it beats OpenVINO);
- per Keras backend (TensorFlow, JAX, PyTorch; fresh processes, same cache), for the
  first model named: load + first call, and images/s of `model(x)`, `predict_on_batch` and bf16 `model(x)` at each
  batch size;
- conversion (`convert_into_cache` from the SavedModel, fresh process): time and peak
  RSS, next to the raw I/O floor (read the source bytes, write as many bytes);
- the machine's matmul GFLOP/s and the model's FLOPs, giving % of roofline.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

from vit_hub.architecture import (
    RESNET_EXPANSION,
    RESNET_WIDTH,
    needs_projection,
    resnet_out_channels,
    resnet_plan,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(REPO, "out", "bench")
# The issues' targets, ratios measured in one run (ViT-B/32 fe on this machine).
TARGETS = {"call_batch1_vs_hub": 1.0, "first_prediction_vs_hub": 0.5,
           "load_rss_vs_weights": 1.3, "bf16_large_batch_vs_hub_fp32": 1.8,
           "bf16_batch1_vs_own_fp32": 1.2, "bf16_cosine_to_fp32": 0.999,
           "conversion_vs_io_floor": 3.0, "conversion_rss_vs_weights": 2.0,
           # The OpenVINO runtime's, set on an AVX-512 + BF16 + VNNI machine; "batch32" and
           # "batch1" are the largest and smallest batch measured.
           "openvino_bf16_batch32_vs_hub": 1.9, "openvino_int8_batch32_vs_hub": 3.0,
           "openvino_int8_batch1_vs_hub": 2.5, "openvino_first_prediction_vs_hub": 0.35,
           "openvino_fp32_max_abs_vs_tolerance": 1.0}
LOWER_IS_BETTER = {"first_prediction_vs_hub", "load_rss_vs_weights", "conversion_vs_io_floor",
                   "conversion_rss_vs_weights", "openvino_first_prediction_vs_hub",
                   "openvino_fp32_max_abs_vs_tolerance"}
# The /proc/cpuinfo flags that decide OpenVINO's bf16 and int8 speed.
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")
FP32_NATIVE = ("native_call", "native_eager", "native_predict_on_batch", "native_xla")
# Measured at the smallest batch only, to keep a two-model run under 20 minutes: Keras
# int8 is several times slower than fp32 here, and the eager path is there to show what
# compiled calls save at batch 1.
SMALLEST_BATCH_ONLY = ("native_int8_call", "native_eager")


# === What a model costs ===


def flops_per_image(arch):
    """Multiply-adds x 2 of one forward pass of an Architecture (matmuls and attention;
    norms ignored)."""
    d, mlp, tokens = arch.hidden_dim, arch.mlp_dim, arch.num_tokens
    patches = tokens - 1
    if arch.resnet_units:  # the stem, then a 1x1 conv on its output channels
        embed = resnet_flops(arch) + 2 * patches * resnet_out_channels() * d
    else:
        embed = 2 * patches * arch.patch_size ** 2 * 3 * d
    block = 2 * tokens * d * (4 * d + 2 * mlp) + 4 * tokens * tokens * d
    head = 2 * d * arch.num_classes if arch.include_top else 0
    return embed + arch.num_layers * block + head


def resnet_flops(arch):
    """Multiply-adds x 2 of a hybrid's ResNet stem: the convolutions (norms ignored)."""
    height, width = arch.image_size
    flops = 2 * (height // 2) * (width // 2) * 7 * 7 * 3 * RESNET_WIDTH  # conv_root
    pixels, channels = (height // 4) * (width // 4), RESNET_WIDTH  # after the max pool
    for _, _, filters, strides in resnet_plan(arch.resnet_units):
        out, expanded = pixels // strides ** 2, RESNET_EXPANSION * filters
        flops += 2 * (pixels * channels * filters + out * 9 * filters * filters
                      + out * filters * expanded)
        if needs_projection(channels, filters, strides):  # the projection shortcut
            flops += 2 * out * channels * expanded
        pixels, channels = out, expanded
    return flops


def matmul_gflops(dtype="float32", n=2048, repeats=10):
    """Best sustained GFLOP/s of an n x n matmul on this machine, the better of a TF graph
    (oneDNN: the one path here that runs bf16 on the CPU's bf16 instructions) and XLA."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n), dtype=tf.float32), dtype)
    best = float("inf")
    for jit in (False, True):
        step = tf.function(lambda x: tf.matmul(x, x), jit_compile=jit)
        step(a).numpy()
        for _ in range(repeats):
            start = time.perf_counter()
            step(a).numpy()
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# === Checkpoints ===


def checkpoint(name):
    """(SavedModel dir, cache dir, entry) for `name`, the checkpoint built once."""
    import vit_hub
    from vit_hub.conversion import published_format

    entry = vit_hub.get_entry(name)
    arch = entry.architecture
    config = published_format.HubConfig(arch.patch_size, arch.hidden_dim, arch.num_layers,
                                        arch.num_heads, arch.mlp_dim, 1000,
                                        arch.image_size[0])
    folder = os.path.join(WORK, "hub", name)
    if not os.path.exists(os.path.join(folder, "saved_model.pb")):
        params = published_format.init_params(config, entry.kind, seed=0)
        published_format.export_saved_model(params, config, entry.kind, folder + ".tmp")
        os.replace(folder + ".tmp", folder)
    return folder, os.path.join(WORK, "cache", name), entry


# In smoke mode each model is replaced by a tiny stand-in of its kind, registered (in
# this process and in every child) as NAME_smoke through the public catalogue API.
SMOKE_VARIANT = ("vit_smoke8", dict(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4,
                                    mlp_dim=64))


def smoke_fields(name):
    """The catalogue fields of `name`'s tiny stand-in."""
    import vit_hub

    entry = vit_hub.get_entry(name)
    owner, model, framework, variation, version = entry.handle.split("/")
    return {**entry.to_dict(), "variant": SMOKE_VARIANT[0], "image_size": 32,
            "handle": f"{owner}/{model}/{framework}/{variation}-smoke/{version}"}


def register_smoke(name, fields):
    import vit_hub

    vit_hub.register_variant(SMOKE_VARIANT[0], **SMOKE_VARIANT[1])
    vit_hub.register_model(name, fields)


# === Fresh-process measurements ===

CHILD = r"""
import json, os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
task, name, source, cache, size, smoke = {args!r}
import numpy as np
if smoke:
    import vit_hub
    vit_hub.register_variant({variant!r}, **{shape!r})
    vit_hub.register_model(name, smoke)
result = {{}}


def peak_rss():
    # This process's own high-water mark (getrusage's ru_maxrss survives exec: it would
    # report the parent's peak).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


if task == "native":
    import keras, vit_hub, vit_hub.model
    keras.ops.zeros((1,))  # the backend initialised: the baseline is what a load adds to
    base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    x = np.zeros((1, size, size, 3), np.float32)
    start = time.perf_counter()
    model = vit_hub.load_pretrained(name, cache_dir=cache, offline=True)
    result["load_s"] = time.perf_counter() - start
    result["load_rss_bytes"] = peak_rss() - base
    keras.ops.convert_to_numpy(model(x))
    result["seconds"] = time.perf_counter() - start
elif task == "hub":
    import tensorflow_hub as hub
    x = np.zeros((1, size, size, 3), np.float32)
    start = time.perf_counter()
    layer = hub.KerasLayer(source)
    result["load_s"] = time.perf_counter() - start
    np.asarray(layer(x))
    result["seconds"] = time.perf_counter() - start
elif task == "backend":  # KERAS_BACKEND is set by the parent
    import keras, vit_hub
    batches = size  # this task gets the batch sizes in the size slot
    size = vit_hub.get_entry(name).architecture.image_size[0]
    x = np.zeros((1, size, size, 3), np.float32)
    start = time.perf_counter()
    model = vit_hub.load_pretrained(name, cache_dir=cache, offline=True)
    keras.ops.convert_to_numpy(model(x))
    result["first_prediction_s"] = time.perf_counter() - start
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    calls = {{"call": lambda x: keras.ops.convert_to_numpy(model(x)),
              "predict_on_batch": model.predict_on_batch}}
    if keras.backend.backend() != "torch":  # (PyTorch's CPU bf16 is not a contender)
        bf16 = vit_hub.load_pretrained(name, cache_dir=cache, offline=True,
                                       dtype="mixed_bfloat16")
        calls["bf16_call"] = lambda x: keras.ops.convert_to_numpy(bf16(x))
    for batch in batches:
        x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
        for key, call in calls.items():
            call(x); call(x)  # warm-up: trace, compile, allocate
            rates = []
            for _ in range(3 if smoke is None else 1):
                count, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < (0.2 if smoke else 1.0) or count < 2:
                    call(x)
                    count += 1
                rates.append(count * batch / elapsed)
            result[f"{{key}}_batch{{batch}}_images_per_s"] = sorted(rates)[len(rates) // 2]
elif task == "openvino":  # from a filled IR cache: neither TensorFlow nor Keras
    start = time.perf_counter()
    import openvino, vit_hub  # imports excluded from the time, as above, but recorded
    result["import_s"] = time.perf_counter() - start
    x = np.zeros((1, size, size, 3), np.float32)
    start = time.perf_counter()
    fast = vit_hub.load_pretrained(name, cache_dir=cache, offline=True, runtime="openvino",
                                   precision="fp32")
    result["load_s"] = time.perf_counter() - start
    fast(x)
    result["seconds"] = time.perf_counter() - start
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    result["keras_imported"] = "keras" in sys.modules
elif task == "onnx":  # KERAS_BACKEND=torch: see onnxruntime_contenders
    import keras, vit_hub
    batches, folder = size  # this task gets (batch sizes, output folder) in the size slot
    model = vit_hub.load_pretrained(name, cache_dir=cache, offline=True)
    start = time.perf_counter()
    for batch in batches:  # static shapes: the TorchScript exporter fails on a free batch
        spec = keras.InputSpec(shape=(batch, *model.image_size, 3), dtype="float32")
        model.export(os.path.join(folder, f"batch{{batch}}.onnx"), format="onnx", verbose=False,
                     input_signature=[spec])
    result["seconds"] = time.perf_counter() - start
elif task == "convert":
    import tensorflow  # imported lazily by the conversion: excluded from its time, as above
    from vit_hub.conversion.pipeline import convert_into_cache
    result["rss_after_imports_bytes"] = peak_rss()
    start = time.perf_counter()
    convert_into_cache(name, cache_dir=cache, source=source, verify=False, force=True)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_bytes"] = peak_rss()
print("RESULT " + json.dumps(result))
"""


def child(task, name, source, cache, size, smoke, backend="tensorflow"):
    code = CHILD.format(args=(task, name, source, cache, size, smoke), variant=SMOKE_VARIANT[0],
                        shape=SMOKE_VARIANT[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "VIT_HUB_OFFLINE": "1", "KERAS_BACKEND": backend})
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"benchmark child {task} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


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


def first_prediction(name, source, cache, size, repeats, smoke):
    import vit_hub

    # The fp32 IR cached once, online (the weights are in the cache since the conversion:
    # nothing is downloaded); a hit on later runs.
    start = time.perf_counter()
    vit_hub.load_pretrained(name, cache_dir=cache, offline=False, runtime="openvino",
                            precision="fp32")
    ir_fill = time.perf_counter() - start
    native, hub, fast = [], [], []
    for _ in range(repeats):  # alternate, so that drifts hit all alike
        native.append(child("native", name, source, cache, size, smoke))
        hub.append(child("hub", name, source, cache, size, smoke))
        fast.append(child("openvino", name, source, cache, size, smoke))
    med = lambda rows, key: statistics.median(r[key] for r in rows)
    return {"native_s": med(native, "seconds"), "native_load_s": med(native, "load_s"),
            "native_load_rss_bytes": max(r["load_rss_bytes"] for r in native),
            "hub_s": med(hub, "seconds"), "hub_load_s": med(hub, "load_s"),
            "ratio": med(native, "seconds") / med(hub, "seconds"),
            "openvino_s": med(fast, "seconds"), "openvino_load_s": med(fast, "load_s"),
            "openvino_import_s": med(fast, "import_s"), "openvino_ir_fill_s": ir_fill,
            "openvino_tensorflow_imported": any(r["tensorflow_imported"] for r in fast),
            "openvino_keras_imported": any(r["keras_imported"] for r in fast),
            "openvino_ratio": med(fast, "seconds") / med(hub, "seconds")}


BACKENDS = ("tensorflow", "jax", "torch")


def backends(name, source, cache, batches, smoke):
    """Per Keras backend, in fresh processes: load + first call from the cache, and steady
    images/s of `model(x)` (eager) and `predict_on_batch` (each backend's compiled path)."""
    results = {}
    for backend in BACKENDS:
        try:
            results[backend] = child("backend", name, source, cache, batches, smoke, backend)
        except RuntimeError as err:  # a backend that is not installed is reported, not fatal
            results[backend] = {"error": str(err).splitlines()[-1]}
    return results


def conversion(name, source, cache, repeats, smoke):
    runs = [child("convert", name, source, cache, 0, smoke) for _ in range(repeats)]
    floors = [io_floor(source) for _ in range(repeats)]
    durable = statistics.median(io_floor(source, fsync=True)[0] for _ in range(repeats))
    weights = os.path.getsize(os.path.join(cache, "v1", name, f"{name}.h5"))
    seconds = statistics.median(r["seconds"] for r in runs)
    floor = statistics.median(f[0] for f in floors)
    rss = max(r["peak_rss_bytes"] for r in runs)
    return {"seconds": seconds, "io_floor_s": floor, "io_floor_fsync_s": durable,
            "rss_after_imports_bytes": max(r["rss_after_imports_bytes"] for r in runs),
            "ratio_to_fsync_floor": seconds / durable, "source_bytes": floors[0][1],
            "weights_bytes": weights, "peak_rss_bytes": rss,
            "ratio_to_floor": seconds / floor, "rss_to_weights": rss / weights}


# === In-process throughput ===


def contenders(name, source, cache):
    """name -> a function images -> outputs, each warmed up by the caller. `native_call`
    is what users write, `model(x)`; `native_eager` the same model op by op (the plain
    Keras path, `compiled_calls = False`)."""
    import tensorflow as tf
    import tensorflow_hub as hub

    import vit_hub

    load = lambda **kw: vit_hub.load_pretrained(name, cache_dir=cache, offline=True, **kw)
    native = load()
    bf16 = load(dtype="mixed_bfloat16")
    int8 = load()
    with warnings.catch_warnings():  # one "has no quantize method" per norm/embedding layer
        warnings.simplefilter("ignore", UserWarning)
        int8.quantize("int8")  # Keras' own int8 (weights int8, activations quantised per call)
    eager = load()
    eager.compiled_calls = False
    return {
        "hub_layer": hub.KerasLayer(source),
        "native_call": native,
        "native_eager": eager,
        "native_predict_on_batch": native.predict_on_batch,
        "native_xla": tf.function(native, jit_compile=True),
        "native_bf16_call": bf16,
        "native_int8_call": int8,
    }


def cpu_flags():
    """Which of CPU_FLAGS /proc/cpuinfo lists."""
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo")
                  if l.startswith("flags")), [])
    return {flag: flag in flags for flag in CPU_FLAGS}


def openvino_contenders(native):
    """name -> `OpenVINOModel` built by `to_openvino` from the native fp32 model, at each
    precision this CPU computes in, and a record of each: its measured accuracy (to the
    Keras fp32 model on held-out photographs), or why it is absent."""
    import vit_hub
    from vit_hub.errors import AccuracyError
    from vit_hub.runtime.convert import check_gate
    from vit_hub.runtime.engine import cpu_capabilities

    info = {"capabilities": cpu_capabilities(), "cpu_flags": cpu_flags()}
    models = {}
    for precision in ("fp32", "int8", "bf16"):
        key, start, note = f"openvino_{precision}", time.perf_counter(), None
        if precision == "bf16" and "BF16" not in info["capabilities"]:
            info[key] = (f"not available: this CPU offers {', '.join(info['capabilities'])} "
                         "(no AVX512_BF16 or AMX), so to_openvino refuses bf16")
            continue
        try:
            # Random weights are not what the bf16/int8 gate is set for: built ungated and
            # the default gate applied after (what to_openvino would raise), so that a
            # failing int8 is measured without quantizing twice.
            fast = vit_hub.to_openvino(native, precision,
                                       min_cosine=None if precision == "fp32" else 0)
        except AccuracyError as err:  # fp32 off the Keras model: the trace is wrong
            info[key] = f"failed: {err}"
            continue
        try:
            check_gate(precision, dict(fast.accuracy), None, native.name)
        except AccuracyError as err:
            note = f"failed its accuracy gate ({err}); measured with min_cosine=0"
        models[key] = fast
        info[key] = {"build_s": time.perf_counter() - start, "gate_note": note,
                     "accuracy": json.loads(json.dumps(fast.accuracy, default=float))}
    return models, info


def onnxruntime_contenders(name, source, cache, batches, smoke):
    """ONNX Runtime fp32 and dynamic int8 (`quantize_dynamic`: int8 weights, activations
    quantised per call), measured only. The ONNX file comes from Keras' own export on the
    PyTorch backend (TorchScript exporter, needs only the `onnx` package; a child process,
    from the same cache), not tf2onnx: that takes ~2.5 min and ~7 GB on ViT-B/32. Its
    exports have a static batch, so one file per batch size."""
    try:
        import onnx  # noqa: F401  (the export and onnxruntime.quantization need it)
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:
        return {}, {"onnxruntime": f"not measured: {err}; the ONNX export and "
                    "onnxruntime.quantization need the onnx package (pip install onnx)"}
    batches = sorted(set(batches) | {1})  # batch 1 serves any other size, image by image
    sessions = {"onnxruntime_fp32": {}, "onnxruntime_int8": {}}
    # The files (~0.5 GB per batch size for ViT-B) are gone once the sessions hold them.
    with tempfile.TemporaryDirectory(dir=WORK) as folder:
        try:
            exported = child("onnx", name, source, cache, (batches, folder), smoke, "torch")
        except RuntimeError as err:
            return {}, {"onnxruntime": f"not measured: the ONNX export failed: "
                        f"{str(err).splitlines()[-1]}"}
        start = time.perf_counter()
        for batch in batches:
            path = os.path.join(folder, f"batch{batch}.onnx")
            quantized = path.replace(".onnx", "-int8.onnx")
            quantize_dynamic(path, quantized, weight_type=QuantType.QInt8)
            for key, file in (("onnxruntime_fp32", path), ("onnxruntime_int8", quantized)):
                sessions[key][batch] = ort.InferenceSession(
                    file, providers=["CPUExecutionProvider"])
    info = {"onnxruntime": ort.__version__, "export_s": exported["seconds"],
            "quantize_s": time.perf_counter() - start,
            "route": "Keras export (PyTorch backend, TorchScript) + quantize_dynamic"}
    return {key: functools.partial(run_onnx, s) for key, s in sessions.items()}, info


def run_onnx(sessions, x):
    """The session exported at x's batch size; other sizes one image at a time."""
    import numpy as np

    if len(x) not in sessions:
        return np.concatenate([run_onnx(sessions, x[i:i + 1]) for i in range(len(x))])
    session = sessions[len(x)]
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def agreement(functions, size):
    """Per low-precision or other-runtime contender: the least cosine of its outputs to
    fp32 `model(x)`'s, and their largest absolute difference."""
    import numpy as np

    x = np.random.default_rng(1).uniform(-1, 1, (8, size, size, 3)).astype(np.float32)
    reference = np.asarray(functions["native_call"](x), np.float64)
    cosine, max_abs = {}, {}
    for key in ("native_bf16_call", "native_int8_call",
                *(k for k in functions if k.startswith(("openvino_", "onnxruntime_")))):
        y = np.asarray(functions[key](x), np.float64)
        cosine[key] = float(((y * reference).sum(-1) / np.linalg.norm(y, axis=-1)
                             / np.linalg.norm(reference, axis=-1)).min())
        max_abs[key] = float(np.abs(y - reference).max())
    return cosine, max_abs


def throughput(functions, size, batch, repeats, min_seconds=1.0):
    """images/s of each function: median over `repeats` rounds, contenders interleaved;
    each round runs a function until `min_seconds` have passed."""
    import numpy as np

    x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    for f in functions.values():  # warm-up: compile, allocate
        np.asarray(f(x))
        np.asarray(f(x))
    rates = {key: [] for key in functions}
    for _ in range(repeats):
        for key, f in functions.items():
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < min_seconds or count < 2:
                np.asarray(f(x))
                count += 1
            rates[key].append(count * batch / elapsed)
    return {key: statistics.median(values) for key, values in rates.items()}


# === Reports ===


def machine():
    import tensorflow as tf

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "matmul_gflops_fp32": matmul_gflops("float32"),
            "matmul_gflops_bf16": matmul_gflops("bfloat16")}


def bench_model(name, args, host):
    source, cache, entry = checkpoint(name)
    arch = entry.architecture
    size = arch.image_size[0]
    repeats = 1 if args.smoke else args.repeats
    smoke = args.smoke_fields.get(name)  # children register the stand-in too
    result = {"model": name, "checkpoint": "test-built, published format, random weights",
              "conversion": conversion(name, source, cache, repeats, smoke),
              "first_prediction": first_prediction(name, source, cache, size, repeats, smoke)}
    if name == args.backends_model:  # one model: ~1 min for B/32, ~7 for B/16
        result["backends"] = backends(name, source, cache, args.batch, smoke)
    functions = contenders(name, source, cache)
    fast, result["openvino"] = openvino_contenders(functions["native_call"])
    ort, result["onnxruntime"] = onnxruntime_contenders(name, source, cache, args.batch, smoke)
    functions.update(fast)
    functions.update(ort)
    result["cosine_to_fp32"], result["max_abs_to_fp32"] = agreement(functions, size)
    flops = flops_per_image(arch)
    result["flops_per_image"] = flops
    result["tokens"] = (size // arch.patch_size) ** 2 + 1  # with the class token
    result["width"] = arch.hidden_dim
    result["machine_matmul_gflops_fp32"] = host["matmul_gflops_fp32"]
    result["machine_matmul_gflops_bf16"] = host["matmul_gflops_bf16"]
    result["throughput"] = {}
    for batch in args.batch:
        measured = {k: f for k, f in functions.items()
                    if k not in SMALLEST_BATCH_ONLY or batch == min(args.batch)}
        rates = throughput(measured, size, batch, repeats, 0.2 if args.smoke else 1.0)
        best_fp32 = max(v for k, v in rates.items() if k in FP32_NATIVE)
        best_bf16 = max(v for k, v in rates.items() if "bf16" in k)
        result["throughput"][str(batch)] = {
            "images_per_s": rates,
            "vs_hub": {k: v / rates["hub_layer"] for k, v in rates.items()},
            "bf16_call_vs_own_fp32_call": rates["native_bf16_call"] / rates["native_call"],
            "roofline_pct_fp32": 100 * best_fp32 * flops / 1e9 / host["matmul_gflops_fp32"],
            "roofline_pct_bf16": 100 * best_bf16 * flops / 1e9 / host["matmul_gflops_bf16"],
        }
    result["targets"] = verdicts(result)
    result["onnxruntime_vs_openvino"] = runtime_choice(result)
    return result


def verdicts(result):
    """Each target of the issues: met or missed, by how much, and the measured why."""
    per_batch = result["throughput"]
    small, large = per_batch[min(per_batch, key=int)], per_batch[max(per_batch, key=int)]
    c, f = result["conversion"], result["first_prediction"]
    measured = {
        "call_batch1_vs_hub": small["vs_hub"]["native_call"],
        "first_prediction_vs_hub": f["ratio"],
        "load_rss_vs_weights": f["native_load_rss_bytes"] / c["weights_bytes"],
        "bf16_large_batch_vs_hub_fp32": large["vs_hub"]["native_bf16_call"],
        "bf16_batch1_vs_own_fp32": small["bf16_call_vs_own_fp32_call"],
        "bf16_cosine_to_fp32": result["cosine_to_fp32"]["native_bf16_call"],
        "conversion_vs_io_floor": c["ratio_to_floor"],
        "conversion_rss_vs_weights": c["rss_to_weights"],
        # None where the contender is absent (bf16 on a CPU without it): missed, and why.
        "openvino_bf16_batch32_vs_hub": large["vs_hub"].get("openvino_bf16"),
        "openvino_int8_batch32_vs_hub": large["vs_hub"].get("openvino_int8"),
        "openvino_int8_batch1_vs_hub": small["vs_hub"].get("openvino_int8"),
        "openvino_first_prediction_vs_hub": f["openvino_ratio"],
        "openvino_fp32_max_abs_vs_tolerance": (
            fp32["accuracy"]["max_abs"] / fp32["accuracy"]["tolerance"]
            if isinstance(fp32 := result["openvino"]["openvino_fp32"], dict) else None),
    }
    why = reasons(result)
    met = lambda key, value: value is not None and (
        value <= TARGETS[key] if key in LOWER_IS_BETTER else value >= TARGETS[key])
    return {key: {"measured": None if value is None else round(value, 4),
                  "target": TARGETS[key], "met": met(key, value), "why": why[key]}
            for key, value in measured.items()}


def runtime_choice(result):
    """ONNX Runtime is offered to users only where it beats OpenVINO: per batch, the
    fastest of each (and fp32 to fp32, int8 to int8), and which is faster."""
    if "export_s" not in result["onnxruntime"]:  # not measured: it says why
        return {"offer_onnxruntime": False, "verdict": result["onnxruntime"]["onnxruntime"]}
    rows = {}
    for batch, t in result["throughput"].items():
        rates = t["images_per_s"]
        ort, ov = (max((k for k in rates if k.startswith(prefix)), key=rates.get, default=None)
                   for prefix in ("onnxruntime_", "openvino_"))
        if ort is None or ov is None:  # (OpenVINO fp32 failed its gate: its record says why)
            continue
        rows[batch] = {"fastest_onnxruntime": ort, "fastest_openvino": ov,
                       "ratio": rates[ort] / rates[ov],
                       "faster": "onnxruntime" if rates[ort] > rates[ov] else "openvino",
                       **{p: rates[f"onnxruntime_{p}"] / rates[f"openvino_{p}"]
                          for p in ("fp32", "int8") if f"openvino_{p}" in rates}}
    cos = result["cosine_to_fp32"]
    verdict = "; ".join(
        f"batch {b}: {r['faster']} is faster ({r['fastest_onnxruntime']} at {r['ratio']:.2f}x "
        f"{r['fastest_openvino']}; ONNX Runtime/OpenVINO fp32 {r.get('fp32', 0):.2f}x, int8 "
        f"{r.get('int8', 0):.2f}x)" for b, r in rows.items())
    verdict += (f"; int8 cosine to fp32: onnxruntime {cos['onnxruntime_int8']:.5f}, openvino "
                f"{cos.get('openvino_int8', float('nan')):.5f}")
    return {"by_batch": rows, "verdict": verdict,
            "offer_onnxruntime": any(r["faster"] == "onnxruntime" for r in rows.values())}


def reasons(result):
    """The measured facts behind each figure, for the report of a missed target."""
    c, f = result["conversion"], result["first_prediction"]
    per_batch = result["throughput"]
    flops = result["flops_per_image"]
    peak = result["machine_matmul_gflops_fp32"]
    small = per_batch[min(per_batch, key=int)]["images_per_s"]
    rate = lambda key: ", ".join(f"{t['images_per_s'][key]:.1f} (batch {b})"
                                 for b, t in per_batch.items() if key in t["images_per_s"])
    hub_pct = ", ".join(f"{100 * t['images_per_s']['hub_layer'] * flops / 1e9 / peak:.0f}% "
                        f"(batch {b})" for b, t in per_batch.items())
    return {
        "call_batch1_vs_hub": f"model(x) runs a compiled graph: {small['native_call']:.1f} "
        f"img/s against the hub layer's {small['hub_layer']:.1f} and the op-by-op eager path's "
        f"{small['native_eager']:.1f}; the hub graph (XLA) runs at {hub_pct} of the fp32 "
        "matmul peak",
        "first_prediction_vs_hub": f"native load {f['native_load_s']:.2f} s (model build, "
        f"sha256 alongside, HDF5 read into the variables) + first call "
        f"{f['native_s'] - f['native_load_s']:.2f} s (tracing the graph); hub load "
        f"{f['hub_load_s']:.2f} s + first call {f['hub_s'] - f['hub_load_s']:.2f} s",
        "load_rss_vs_weights": f"{f['native_load_rss_bytes'] / 2**20:.0f} MiB over the "
        f"initialised backend for {c['weights_bytes'] / 2**20:.0f} MiB of weights: the "
        "variables, one tensor in flight, and the Keras model's own objects",
        "bf16_large_batch_vs_hub_fp32": "bf16 model(x): " + rate("native_bf16_call")
        + f"; hub fp32: {rate('hub_layer')}; at batch {max(per_batch, key=int)} bf16 runs at "
        f"{per_batch[max(per_batch, key=int)]['roofline_pct_bf16']:.0f}% of the bf16 matmul "
        f"peak ({result['machine_matmul_gflops_bf16'] / peak:.2f}x the fp32 peak); softmax, "
        "GELU, LayerNorm and the casts run in float32 around the matmuls",
        "bf16_batch1_vs_own_fp32": "bf16 vs fp32 model(x) by batch: "
        + ", ".join(f"{t['bf16_call_vs_own_fp32_call']:.2f}x (batch {b})"
                    for b, t in per_batch.items())
        + f"; at batch 1 the matmuls are {result['tokens']} x {result['width']} and the "
        "casts and float32 parts take a larger share",
        "bf16_cosine_to_fp32": f"int8 (Keras quantize) for comparison: cosine "
        f"{result['cosine_to_fp32']['native_int8_call']:.5f}, " + rate("native_int8_call")
        + " img/s",
        "conversion_vs_io_floor": f"{c['ratio_to_fsync_floor']:.1f}x the floor with fsync "
        f"({c['io_floor_fsync_s']:.2f} s): the cache's writes are fsynced for durability",
        "conversion_rss_vs_weights": f"{c['rss_after_imports_bytes'] / 2**20:.0f} MiB are "
        f"taken by importing TensorFlow before any tensor is read "
        f"({c['rss_after_imports_bytes'] / c['weights_bytes']:.2f}x the weights); the "
        "conversion streams one tensor at a time on top of that",
        **openvino_reasons(result, rate),
    }


def openvino_reasons(result, rate):
    """The OpenVINO targets' measured why: the CPU's capabilities and flags, and the
    OpenVINO fp32 rate, the ceiling reference for bf16 and int8 here."""
    ov, f, per_batch = result["openvino"], result["first_prediction"], result["throughput"]
    flags = lambda names: ", ".join(f"{n} {'yes' if ov['cpu_flags'][n] else 'no'}" for n in names)
    cpu = f"CPU plugin capabilities {ov['capabilities']}"
    ceiling = (f"OpenVINO fp32 (the ceiling reference) {rate('openvino_fp32')}; "
               f"hub {rate('hub_layer')}")
    vs_fp32 = lambda key: ", ".join(
        f"{t['images_per_s'][key] / t['images_per_s']['openvino_fp32']:.2f}x (batch {b})"
        for b, t in per_batch.items() if {key, "openvino_fp32"} <= set(t["images_per_s"]))
    def built(key):  # its rates and accuracy, or why it is absent
        entry = ov[key]
        if isinstance(entry, str):
            return entry
        acc = entry["accuracy"]
        note = f" ({entry['gate_note']})" if entry["gate_note"] else ""
        return (f"{rate(key)} img/s = {vs_fp32(key)} OpenVINO fp32, cosine min "
                f"{acc['cosine_min']:.5f}{note}")
    fp32 = ov["openvino_fp32"]
    exact = fp32 if isinstance(fp32, str) else (
        f"max abs {fp32['accuracy']['max_abs']:.2e} against the gate "
        f"{fp32['accuracy']['tolerance']:.1e} (1e-4 x the output scale "
        f"{fp32['accuracy']['scale']:.2f}); cosine min {fp32['accuracy']['cosine_min']:.6f}, "
        f"top-1 agreement {fp32['accuracy']['top1_agreement']}")
    int8 = (f"int8 (NNCF): {built('openvino_int8')}; {cpu}; /proc/cpuinfo: "
            f"{flags(('avx512_vnni', 'avx_vnni', 'amx_int8'))} (without VNNI an int8 "
            f"multiply-add takes several instructions); {ceiling}")
    return {
        "openvino_bf16_batch32_vs_hub": f"bf16: {built('openvino_bf16')}; {cpu}; /proc/cpuinfo: "
        f"{flags(('avx512f', 'avx512_bf16', 'amx_bf16'))}; {ceiling}",
        "openvino_int8_batch32_vs_hub": int8,
        "openvino_int8_batch1_vs_hub": int8,
        "openvino_first_prediction_vs_hub": f"OpenVINO from its IR cache: read + compile "
        f"{f['openvino_load_s']:.2f} s + first call {f['openvino_s'] - f['openvino_load_s']:.2f} s "
        f"(imports {f['openvino_import_s']:.2f} s excluded; TensorFlow imported: "
        f"{f['openvino_tensorflow_imported']}, Keras: {f['openvino_keras_imported']}); hub load "
        f"{f['hub_load_s']:.2f} s + first call {f['hub_s'] - f['hub_load_s']:.2f} s",
        "openvino_fp32_max_abs_vs_tolerance": exact,
    }


def print_model(result):
    print(f"\n{result['model']} ({result['checkpoint']})")
    c, f = result["conversion"], result["first_prediction"]
    print(f"  conversion {c['seconds']:.1f} s (I/O floor {c['io_floor_s']:.2f} s, "
          f"x{c['ratio_to_floor']:.1f}; with fsync {c['io_floor_fsync_s']:.2f} s, "
          f"x{c['ratio_to_fsync_floor']:.1f}); peak RSS {c['peak_rss_bytes'] / 2**20:.0f} MiB = "
          f"x{c['rss_to_weights']:.2f} the weights")
    print(f"  first prediction: native {f['native_s']:.2f} s, hub layer {f['hub_s']:.2f} s "
          f"(x{f['ratio']:.2f}); load peak RSS {f['native_load_rss_bytes'] / 2**20:.0f} MiB")
    print(f"  first prediction: OpenVINO from its IR cache {f['openvino_s']:.2f} s "
          f"(x{f['openvino_ratio']:.2f} the hub layer's; TensorFlow imported: "
          f"{f['openvino_tensorflow_imported']}, Keras: {f['openvino_keras_imported']})")
    print("  cosine to fp32: " + ", ".join(f"{k} {v:.5f}" for k, v in result["cosine_to_fp32"].items()))
    ov = result["openvino"]
    print(f"  OpenVINO: capabilities {ov['capabilities']}; /proc/cpuinfo: "
          + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in ov["cpu_flags"].items()))
    for key, entry in ov.items():
        if key.startswith("openvino_"):  # accuracy against the Keras fp32 model, or why absent
            print(f"  {key}: " + (entry if isinstance(entry, str) else
                  f"built {entry['build_s']:.1f} s; " + accuracy_line(key, entry)))
    ort = result["onnxruntime"]
    print("  onnxruntime: " + (ort["onnxruntime"] if "export_s" not in ort else
          f"{ort['onnxruntime']}, export {ort['export_s']:.1f} s, "
          f"quantize {ort['quantize_s']:.1f} s")
          + f"; {result['onnxruntime_vs_openvino']['verdict']}")
    for batch, t in result["throughput"].items():
        row = ", ".join(f"{k} {v:.1f}" for k, v in t["images_per_s"].items())
        print(f"  batch {batch} images/s: {row}; roofline fp32 {t['roofline_pct_fp32']:.0f}%, "
              f"bf16 {t['roofline_pct_bf16']:.0f}%")
        print(f"  batch {batch} vs hub: " + ", ".join(
            f"{k} x{v:.2f}" for k, v in t["vs_hub"].items() if k.startswith(("openvino", "onnx"))))
    for backend, b in result.get("backends", {}).items():
        if "error" in b:
            print(f"  {backend}: {b['error']}")
            continue
        rates = ", ".join(f"{k.replace('_images_per_s', '')} {v:.1f}" for k, v in b.items()
                          if k.endswith("_images_per_s"))
        print(f"  {backend:10} first prediction {b['first_prediction_s']:.2f} s; images/s: {rates}")
    for key, v in result["targets"].items():
        print(f"  target {key}: {v['measured']} (target {v['target']}) "
              f"{'met' if v['met'] else 'MISSED: ' + v['why']}")


def accuracy_line(key, entry):
    """An OpenVINO contender's accuracy record as its `summary()` says it."""
    from vit_hub.runtime.openvino_model import describe_accuracy

    note = f" ({entry['gate_note']})" if entry["gate_note"] else ""
    return describe_accuracy(key.split("_")[1], entry["accuracy"]) + note


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r["model"], batch, t["images_per_s"]) for r in results
            for batch, t in r["throughput"].items()]
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4), squeeze=False)
    for ax, (model, batch, rates) in zip(axes[0], rows):
        ax.barh(list(rates), list(rates.values()), color=["grey"] + ["tab:blue"] * (len(rates) - 1))
        ax.set_title(f"{model}, batch {batch}")
        ax.set_xlabel("images / s (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# === compare: every variant ===

COMPARE_CHILD = r"""
import json, os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, vit_hub
variant, size, repeats = {args!r}
model = vit_hub.create_vit(variant, image_size=size, include_top=False, pooling="token")
run = tf.function(model, jit_compile=True)
x = np.zeros((1, size, size, 3), np.float32)
np.asarray(run(x))
times = []
for _ in range(repeats):
    start = time.perf_counter(); np.asarray(run(x)); times.append(time.perf_counter() - start)
print("RESULT " + json.dumps({{"params": model.count_params(), "tokens": model.num_patches + 1,
      "output_shape": list(model.output_shape), "seconds_per_image": sorted(times)[len(times) // 2],
      "peak_rss_bytes": int(next(l for l in open("/proc/self/status")
                                 if l.startswith("VmHWM:")).split()[1]) * 1024}}))
"""


def compare(args):
    import vit_hub
    from vit_hub.architecture import get_variant

    rows = []
    for variant in args.variants or vit_hub.list_variants():
        size = 32 if args.smoke else 224
        code = COMPARE_CHILD.format(args=(variant, size, 1 if args.smoke else 3))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
        row = {"variant": variant, **json.loads(line[7:])}
        arch = get_variant(variant).replace(image_size=size, include_top=False)
        row["gflops_per_image"] = flops_per_image(arch) / 1e9
        row["images_per_s"] = 1 / row["seconds_per_image"]
        rows.append(row)
        print(f"{variant:9} params {row['params']:>12,}  tokens {row['tokens']:>4}  "
              f"GFLOPs {row['gflops_per_image']:7.1f}  {row['images_per_s']:6.2f} img/s (batch 1, XLA)  "
              f"peak RSS {row['peak_rss_bytes'] / 2**30:5.2f} GiB  output {tuple(row['output_shape'])}")
    return rows


def first_model(args):
    """(name, code registering it in a child process) of the first model named: in smoke
    mode its tiny stand-in, registered here too; no code for a catalogue model."""
    name = args.models.split(",")[0]
    if not args.smoke:
        return name, ""
    fields, name = smoke_fields(name), f"{name}_smoke"
    register_smoke(name, fields)
    return name, (f"import vit_hub; vit_hub.register_variant({SMOKE_VARIANT[0]!r}, "
                  f"**{SMOKE_VARIANT[1]!r}); vit_hub.register_model({name!r}, {fields!r})")


def embed(args):
    """vit-embed (1 and 2 workers) against a plain predict loop: benchmarks/embed.py."""
    from embed import bench_embed  # beside this script

    from vit_hub.conversion.pipeline import convert_into_cache

    name, register = first_model(args)
    source, cache, _ = checkpoint(name)
    convert_into_cache(name, cache_dir=cache, source=source, verify=False)  # once
    result = bench_embed(name, cache, os.path.join(WORK, "embed_images"), register,
                         count=12 if args.smoke else 512, batch=4 if args.smoke else 32,
                         repeats=1 if args.smoke else 2)
    rates, overhead = result["images_per_s"], result["overhead_vs_predict_loop"]
    for key in rates:
        print(f"{key:20} {rates[key]:7.2f} img/s  {overhead[key]:5.2f}x the predict loop's time")
    print(f"rows {result['rows']}, max abs difference to predict "
          f"{result['max_abs_diff_vs_predict']:.1e}")
    return result


def finetune(args, host):
    """The hub trainable layer against vit_hub's fit per backend and precision, and full
    fine-tuning against LoRA: benchmarks/finetune.py."""
    from finetune import bench_finetune, print_finetune  # beside this script

    from vit_hub.conversion.pipeline import convert_into_cache

    name, register = first_model(args)
    source, cache, entry = checkpoint(name)
    convert_into_cache(name, cache_dir=cache, source=source, verify=False)  # once
    arch = entry.architecture
    result = bench_finetune(name, source, cache, arch.image_size[0], flops_per_image(arch),
                            host["matmul_gflops_fp32"], register,
                            rounds=1 if args.smoke else args.repeats,
                            steps=1 if args.smoke else 5)
    print_finetune(result)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description="vit_hub benchmarks")
    parser.add_argument("mode", nargs="?", choices=["models", "compare", "embed", "finetune"],
                        default="models")
    parser.add_argument("--models", default="vit_b32_fe", help="comma-separated names")
    parser.add_argument("--variants", default=None, help="compare: comma-separated variants")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=os.path.join(REPO, "out", "bench.json"))
    parser.add_argument("--png", default=None, help="chart (default: beside the JSON)")
    parser.add_argument("--smoke", action="store_true", help="tiny models, one repeat (CI)")
    args = parser.parse_args(argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    args.variants = args.variants.split(",") if args.variants else None
    os.makedirs(WORK, exist_ok=True)
    started = time.perf_counter()
    if args.mode == "compare":
        report = {"compare": compare(args)}
    elif args.mode == "embed":
        report = {"embed": embed(args)}
    elif args.mode == "finetune":
        host = machine()
        report = {"machine": host, "finetune": finetune(args, host)}
    else:
        host = machine()
        print(f"{host['cpu']}, {host['cores']} cores: matmul {host['matmul_gflops_fp32']:.0f} "
              f"GFLOP/s fp32, {host['matmul_gflops_bf16']:.0f} GFLOP/s bf16")
        names = args.models.split(",")
        if args.smoke:
            smoke = {f"{name}_smoke": smoke_fields(name) for name in names}
            for name, fields in smoke.items():
                register_smoke(name, fields)
            names = list(smoke)
        args.smoke_fields = smoke if args.smoke else {}  # name -> fields, for the children
        args.backends_model = names[0]  # the per-backend figures: the first model's
        results = [bench_model(name, args, host) for name in names]
        for result in results:
            print_model(result)
        report = {"machine": host, "models": results}
        chart(results, args.png or os.path.splitext(args.json)[0] + ".png")
    report["wall_s"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.json} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
