"""Steady throughput: each engine measured in a fresh process of its own, where only
that engine is loaded, one child after another (thread pools that spin after a call,
ONNX Runtime's and TensorFlow's, would otherwise take the CPU from the next contender).

A child warms up (two calls: tracing, compilation, allocation), then runs `rounds` rounds
of at least `min_seconds` each per batch size and returns every round's images/s; the
parent records each contender's median, min, max and rounds (`common.spread`), and its
share of the machine's matmul peak (fp32's, bf16's for bf16 paths).

Tasks (`python -m benchmarks.throughput <task> '<json>'`):
- `keras_model`: one of KERAS_CONTENDERS (TensorFlow backend);
- `hub_layer`: `hub.KerasLayer(saved_model_dir)` (TensorFlow, no Keras 3 model);
- `openvino`: an IR saved by `OpenVINOModel.save`, read by `vit_hub.load_openvino` (no
  TensorFlow, no Keras);
- `onnxruntime`: the .onnx files only (default session options, recorded);
- `backend`: on the child's KERAS_BACKEND, load + first call, then `model(x)`,
  `predict_on_batch` and bf16 `model(x)` (one backend per process; the calls of one
  backend one after another, not interleaved).
"""

import sys
import time

from benchmarks import child
from benchmarks.common import spread

# `native_call` is what users write, `model(x)`; `native_eager` the same model op by op
# (the plain Keras path, `compiled_calls = False`).
KERAS_CONTENDERS = ("native_call", "native_eager", "native_predict_on_batch", "native_xla",
                    "native_bf16_call", "native_int8_call")
FP32_NATIVE = ("native_call", "native_eager", "native_predict_on_batch", "native_xla")
# Measured at the smallest batch only, to keep a two-model run short: Keras int8 is
# several times slower than fp32 here, and the eager path is there to show what
# compiled calls save at batch 1.
SMALLEST_BATCH_ONLY = ("native_int8_call", "native_eager")
BACKENDS = ("tensorflow", "jax", "torch")
ORT_SPINNING = "session.intra_op.allow_spinning"


# === Tasks (each runs in a child) ===


def keras_model(name, cache, size, contender, batches, rounds, min_seconds):
    """One Keras contender (KERAS_CONTENDERS) of `name` from the cache."""
    import vit_hub

    load = lambda **kw: vit_hub.load_pretrained(name, cache_dir=cache, offline=True, **kw)
    model = load(dtype="mixed_bfloat16") if contender == "native_bf16_call" else load()
    function = model
    if contender == "native_int8_call":
        import warnings

        with warnings.catch_warnings():  # one "has no quantize method" per norm/embedding
            warnings.simplefilter("ignore", UserWarning)
            model.quantize("int8")  # Keras' int8 (weights int8, activations quantised per call)
    elif contender == "native_eager":
        model.compiled_calls = False
    elif contender == "native_predict_on_batch":
        function = model.predict_on_batch
    elif contender == "native_xla":
        import tensorflow as tf

        function = tf.function(model, jit_compile=True)
    return _measure(lambda batch: function, size, batches, rounds, min_seconds)


def hub_layer(source, size, batches, rounds, min_seconds):
    import tensorflow_hub as hub

    layer = hub.KerasLayer(source)
    return _measure(lambda batch: layer, size, batches, rounds, min_seconds)


def openvino(xml, size, batches, rounds, min_seconds):
    """The IR at `xml`, compiled at the precision its record says."""
    import vit_hub

    fast = vit_hub.load_openvino(xml)
    result = _measure(lambda batch: fast, size, batches, rounds, min_seconds)
    result["compiled"] = {}
    for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT",
                "NUM_STREAMS"):
        try:
            value = fast.compiled.get_property(key)  # (a precision is an ov.Type)
            result["compiled"][key] = value.to_string() if hasattr(value, "to_string") \
                else str(value)
        except RuntimeError:  # (a property this OpenVINO does not report)
            pass
    return result


def onnxruntime(files, size, batches, rounds, min_seconds):
    """`files`: {batch: .onnx path}, static batch sizes (batch 1 serves any other size,
    image by image)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    sessions = {int(batch): ort.InferenceSession(path, options,
                                                 providers=["CPUExecutionProvider"])
                for batch, path in files.items()}

    def function(batch):
        if batch in sessions:
            session = sessions[batch]
            feed = session.get_inputs()[0].name
            return lambda x: session.run(None, {feed: x})[0]
        one = function(1)
        return lambda x: np.concatenate([one(x[i:i + 1]) for i in range(len(x))])

    result = _measure(function, size, batches, rounds, min_seconds)
    try:
        spinning = options.get_session_config_entry(ORT_SPINNING)
    except Exception:  # not set: ONNX Runtime's default, spinning on
        spinning = "default (1: spin-wait on)"
    result["session_options"] = {
        "providers": next(iter(sessions.values())).get_providers(),
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "execution_mode": str(options.execution_mode),
        "graph_optimization_level": str(options.graph_optimization_level),
        ORT_SPINNING: spinning}
    return result


def backend(name, cache, size, batches, rounds, min_seconds):
    """On this process's KERAS_BACKEND: load + first call from the cache, then each call's
    rounds per batch. PyTorch's CPU bf16 is not a contender."""
    import keras
    import numpy as np

    import vit_hub

    x = np.zeros((1, size, size, 3), np.float32)
    start = time.perf_counter()
    model = vit_hub.load_pretrained(name, cache_dir=cache, offline=True)
    keras.ops.convert_to_numpy(model(x))
    result = {"first_prediction_s": time.perf_counter() - start,
              "tensorflow_imported": "tensorflow" in sys.modules}
    calls = {"call": lambda x: keras.ops.convert_to_numpy(model(x)),
             "predict_on_batch": model.predict_on_batch}
    if keras.backend.backend() != "torch":
        bf16 = vit_hub.load_pretrained(name, cache_dir=cache, offline=True,
                                       dtype="mixed_bfloat16")
        calls["bf16_call"] = lambda x: keras.ops.convert_to_numpy(bf16(x))
    result["rounds"] = {key: _measure(lambda batch, f=f: f, size, batches, rounds,
                                      min_seconds)["rounds"] for key, f in calls.items()}
    result["engine_modules_imported"] = child.engine_modules_imported()
    return result


TASKS = {task.__name__: task for task in (keras_model, hub_layer, openvino, onnxruntime,
                                           backend)}


def _measure(function_for, size, batches, rounds, min_seconds):
    """{"rounds": {batch: [images/s of each round]}, "engine_modules_imported"}:
    `function_for(batch)` is the function images -> outputs for a batch of that size."""
    import numpy as np

    measured = {}
    for batch in batches:
        x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
        measured[str(batch)] = child.timed_rounds(function_for(batch), x, rounds, min_seconds)
    return {"rounds": measured, "engine_modules_imported": child.engine_modules_imported()}


# === The parent's side ===


def contenders(name, source, cache, ir, onnx_files):
    """{contender: (task, its own arguments, KERAS_BACKEND)}: the child that measures it."""
    found = {"hub_layer": ("hub_layer", {"source": source}, "tensorflow")}
    for key in KERAS_CONTENDERS:
        found[key] = ("keras_model", {"name": name, "cache": cache, "contender": key},
                      "tensorflow")
    for key, xml in ir.items():  # (no Keras in these children: the backend is unused)
        found[key] = ("openvino", {"xml": xml}, "tensorflow")
    for key, files in onnx_files.items():
        found[key] = ("onnxruntime", {"files": files}, "tensorflow")
    return found


def measure(found, size, batches, rounds, min_seconds, smoke):
    """{contender: its child's result, with the seconds its process took}: one child per
    contender, one after another."""
    measured = {}
    for key, (task, kwargs, keras_backend) in found.items():
        wanted = [min(batches)] if key in SMALLEST_BATCH_ONLY else list(batches)
        start = time.perf_counter()
        measured[key] = child.run(
            "throughput", task, {**kwargs, "size": size, "batches": wanted, "rounds": rounds,
                                 "min_seconds": min_seconds},
            backend=keras_backend, smoke=smoke if task == "keras_model" else None)
        measured[key]["process_s"] = time.perf_counter() - start
    return measured


def tabulate(measured, batches, flops, host):
    """(per batch: each contender's spread and share of the matmul peak, the medians, the
    ratios to the hub layer and the roofline shares; per contender: its process record)."""
    per_batch = {}
    for batch in map(str, batches):
        records = {key: spread(m["rounds"][batch]) for key, m in measured.items()
                   if batch in m["rounds"]}
        for key, record in records.items():
            basis = "bf16" if "bf16" in key else "fp32"  # (int8 paths: the fp32 peak)
            record["peak"] = basis
            record["peak_pct"] = (100 * record["images_per_s"] * flops / 1e9
                                  / host[f"matmul_gflops_{basis}"])
        rates = {key: record["images_per_s"] for key, record in records.items()}
        best_fp32 = max(v for k, v in rates.items() if k in FP32_NATIVE)
        best_bf16 = max(v for k, v in rates.items() if "bf16" in k)
        per_batch[batch] = {
            "contenders": records,
            "images_per_s": rates,  # the medians, for the ratios
            "vs_hub": {k: v / rates["hub_layer"] for k, v in rates.items()},
            "bf16_call_vs_own_fp32_call": rates["native_bf16_call"] / rates["native_call"],
            "roofline_pct_fp32": 100 * best_fp32 * flops / 1e9 / host["matmul_gflops_fp32"],
            "roofline_pct_bf16": 100 * best_bf16 * flops / 1e9 / host["matmul_gflops_bf16"],
        }
    processes = {key: {k: v for k, v in m.items() if k != "rounds"}
                 for key, m in measured.items()}
    return per_batch, processes


def backends(name, cache, size, batches, rounds, min_seconds, smoke):
    """Per Keras backend, a fresh process each, same cache: load + first call, and the
    spread of `model(x)`, `predict_on_batch` and bf16 `model(x)` at each batch size
    ("<call>_batch<b>_images_per_s": the median)."""
    results = {}
    for name_of_backend in BACKENDS:
        try:
            measured = child.run("throughput", "backend", {
                "name": name, "cache": cache, "size": size, "batches": list(batches),
                "rounds": rounds, "min_seconds": min_seconds},
                backend=name_of_backend, smoke=smoke)
        except child.ChildError as err:  # a backend that is not installed is reported
            results[name_of_backend] = {"error": err.last_line}
            continue
        figures = {key: measured[key] for key in ("first_prediction_s", "tensorflow_imported",
                                                  "engine_modules_imported")}
        figures["spread"] = {}
        for call, by_batch in measured["rounds"].items():
            for batch, rates in by_batch.items():
                record = spread(rates)
                figures[f"{call}_batch{batch}_images_per_s"] = record["images_per_s"]
                figures["spread"][f"{call}_batch{batch}"] = record
        results[name_of_backend] = figures
    return results


if __name__ == "__main__":
    child.main(TASKS)
