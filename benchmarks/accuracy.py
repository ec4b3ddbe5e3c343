"""Agreement with fp32, and the files the throughput children load.

Not a timing, so one process may hold every model: `agreement` (KERAS_BACKEND=tensorflow)
loads the Keras fp32, bf16 and int8 models, builds the OpenVINO models with
`vit_hub.to_openvino` at each precision this CPU computes in and saves each as an IR
(`OpenVINOModel.save`) for its throughput child, and runs the ONNX files; it returns each
one's least cosine to fp32 `model(x)` and largest absolute difference. `export_onnx`
(KERAS_BACKEND=torch) writes the ONNX files: Keras' own export on the PyTorch backend
(TorchScript exporter, needs only the `onnx` package), not tf2onnx, which takes ~2.5 min
and ~7 GB on ViT-B/32; its files have a static batch, so one per batch size; and
`quantize_dynamic` of each (int8 weights, activations quantised per call).
"""

import json
import os
import sys
import time
import warnings

from benchmarks import child
from benchmarks.machine import cpu_flags

ONNX_ROUTE = "Keras export (PyTorch backend, TorchScript) + quantize_dynamic"
# The least gate to_openvino takes (min_cosine is in (0, 1]): bf16 and int8 are built
# all but ungated, and the default gate applied after (see `openvino_models`).
UNGATED = sys.float_info.min

# === Tasks (each runs in a child) ===


def export_onnx(name, cache, batches, folder):
    """{"files": {"onnxruntime_fp32"/"onnxruntime_int8": {batch: path}}, export and
    quantization seconds, ONNX Runtime's version}, or {"not_measured": why}."""
    try:
        import onnx  # noqa: F401  (the export and onnxruntime.quantization need it)
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:
        return {"not_measured": f"not measured: {err}; the ONNX export and "
                "onnxruntime.quantization need the onnx package (pip install onnx)"}
    import keras

    import vit_hub

    model = vit_hub.load_pretrained(name, cache_dir=cache, offline=True)
    files = {"onnxruntime_fp32": {}, "onnxruntime_int8": {}}
    start = time.perf_counter()
    for batch in batches:  # static shapes: the TorchScript exporter fails on a free batch
        path = os.path.join(folder, f"batch{batch}.onnx")
        spec = keras.InputSpec(shape=(batch, *model.image_size, 3), dtype="float32")
        model.export(path, format="onnx", verbose=False, input_signature=[spec])
        files["onnxruntime_fp32"][str(batch)] = path
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    for batch, path in files["onnxruntime_fp32"].items():
        quantized = path.replace(".onnx", "-int8.onnx")
        quantize_dynamic(path, quantized, weight_type=QuantType.QInt8)
        files["onnxruntime_int8"][batch] = quantized
    return {"files": files, "onnxruntime": onnxruntime.__version__, "export_s": export_s,
            "quantize_s": time.perf_counter() - start, "route": ONNX_ROUTE}


def agreement(name, cache, size, folder, onnx_files=None):
    """{"cosine_to_fp32", "max_abs_to_fp32"}: per reduced precision or other runtime, on
    8 random images; "openvino": each OpenVINO precision's record (accuracy, or why it is
    absent); "ir": {contender: the .xml it was saved to in `folder`}."""
    import numpy as np

    import vit_hub

    load = lambda **kw: vit_hub.load_pretrained(name, cache_dir=cache, offline=True, **kw)
    native = load()
    int8 = load()
    with warnings.catch_warnings():  # one "has no quantize method" per norm/embedding layer
        warnings.simplefilter("ignore", UserWarning)
        int8.quantize("int8")  # Keras' own int8 (weights int8, activations quantised per call)
    functions = {"native_bf16_call": load(dtype="mixed_bfloat16"), "native_int8_call": int8}
    fast, info = openvino_models(native)
    ir = {key: model.save(os.path.join(folder, f"{key}.xml")) for key, model in fast.items()}
    functions.update(fast)
    for key, files in (onnx_files or {}).items():
        functions[key] = onnx_batch1(files["1"])
    x = np.random.default_rng(1).uniform(-1, 1, (8, size, size, 3)).astype(np.float32)
    reference = np.asarray(native(x), np.float64)
    cosine, max_abs = {}, {}
    for key, function in functions.items():
        y = np.asarray(function(x), np.float64)
        cosine[key] = float(((y * reference).sum(-1) / np.linalg.norm(y, axis=-1)
                             / np.linalg.norm(reference, axis=-1)).min())
        max_abs[key] = float(np.abs(y - reference).max())
    return {"cosine_to_fp32": cosine, "max_abs_to_fp32": max_abs, "openvino": info, "ir": ir}


TASKS = {"export_onnx": export_onnx, "agreement": agreement}


def openvino_models(native):
    """({contender: `OpenVINOModel` built by `to_openvino` from the native fp32 model},
    a record of each precision: its measured accuracy (to the Keras fp32 model on
    held-out photographs), or why it is absent)."""
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
            # Random weights are not what the bf16/int8 gate is set for: built (all but)
            # ungated and the default gate applied after (what to_openvino would raise),
            # so that a failing int8 is measured without quantizing twice.
            fast = vit_hub.to_openvino(native, precision,
                                       min_cosine=None if precision == "fp32" else UNGATED)
        except AccuracyError as err:  # fp32 off the Keras model (a wrong trace), or <= 0
            info[key] = f"failed: {err}"
            continue
        try:
            check_gate(precision, dict(fast.accuracy), None, native.name)
        except AccuracyError as err:
            note = f"failed its accuracy gate ({err}); measured with min_cosine={UNGATED:.0e}"
        models[key] = fast
        info[key] = {"build_s": time.perf_counter() - start, "gate_note": note,
                     "accuracy": json.loads(json.dumps(fast.accuracy, default=float))}
    return models, info


def onnx_batch1(path):
    """A function images -> outputs that runs the batch-1 ONNX file image by image."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    return lambda x: np.concatenate([session.run(None, {feed: x[i:i + 1]})[0]
                                     for i in range(len(x))])


# === The parent's side ===


def measure(name, cache, size, batches, folder, smoke):
    """(the ONNX Runtime record, {contender: ONNX files by batch}, the agreement result):
    the export (a PyTorch child) then the agreement (a TensorFlow child)."""
    batches = sorted(set(batches) | {1})  # batch 1 serves any other size, image by image
    try:
        exported = child.run("accuracy", "export_onnx", {"name": name, "cache": cache,
                             "batches": batches, "folder": folder}, backend="torch",
                             smoke=smoke)
    except child.ChildError as err:
        exported = {"not_measured": f"not measured: the ONNX export failed: {err.last_line}"}
    files = exported.pop("files", {})
    record = ({"onnxruntime": exported["not_measured"]} if "not_measured" in exported
              else exported)
    agreed = child.run("accuracy", "agreement", {"name": name, "cache": cache, "size": size,
                       "folder": folder, "onnx_files": files}, smoke=smoke)
    return record, files, agreed


if __name__ == "__main__":
    child.main(TASKS)
