"""Exporting a model for serving without Keras, vit_hub or XLA: TF SavedModel, TFLite, ONNX.

The published hub SavedModels hold their computation in `XlaCallModule` ops (jax2tf), so
tools without XLA (TFLite, tf2onnx, TF-Serving builds without XLA) cannot read them. These
exports trace the native Keras model into plain TF ops instead, with no jit-compiled
function; `export_saved_model` checks that before it publishes the folder.

Every export has one signature, `serving_default`: `images` float32 (batch, H, W, 3) in
[-1, 1] -> `output_0` float32 (what the model returns: logits, features or tokens). The
hub models' signature names its input `inputs`; everything else is the same layout.
Writes are atomic: nothing appears at `path` unless the whole export succeeded.
Exports need Keras' TensorFlow backend (an `ExportError` names the fix on the others).
"""

import contextlib
import os

from vit_hub.errors import ConfigError, ExportError, MissingDependencyError, OutputExistsError
from vit_hub.files import atomic_folder, atomic_path, temporary_folder

SIGNATURE_KEY = "serving_default"
INPUT_KEY = "images"
OUTPUT_KEY = "output_0"


def export_saved_model(model, path, batch_size=None, overwrite=False):
    """Writes a TF SavedModel of `model` to the folder `path` and returns `path`.

    Its `serving_default` signature takes `images` (float32, [batch_size, H, W, 3];
    batch_size None = any) and returns `output_0` (float32), computed with plain TF ops:
    no XLA op and no jit-compiled function (checked; an `ExportError` otherwise).
    Load with `tf.saved_model.load(path).signatures["serving_default"]`.

    The SavedModel is written to a temporary folder beside `path` and renamed onto it
    when complete, so a failed export leaves nothing behind. An existing non-empty
    `path` is refused (`FileExistsError`) unless `overwrite=True`; it is then replaced
    only after the new export is complete.
    """
    path = os.path.abspath(os.fspath(path))
    _refuse_existing(path, overwrite)
    with atomic_folder(path) as tmp:
        _write_saved_model(model, tmp, batch_size)
        _refuse_existing(path, overwrite)  # written meanwhile by someone else?
    return path


def export_tflite(model, path, batch_size=None, quantize=False):
    """Writes a TFLite flatbuffer of `model` to the file `path` and returns `path`.

    Converted with `tf.lite.TFLiteConverter` from the SavedModel `export_saved_model`
    writes (TFLite builtin ops only, no Flex/TF ops), so it has the same `serving_default`
    signature: `images` -> `output_0`. float32 by default; `quantize=True` applies
    dynamic-range quantisation (int8 weights, float32 activations; smaller, less exact).
    The file is written to a temporary file beside `path`, then renamed onto it
    (an existing file is replaced).

    Run it with `ai_edge_litert.interpreter.Interpreter` (package `ai-edge-litert`) or
    the deprecated `tf.lite.Interpreter`. A flatbuffer holds at most 2 GB: float32
    ViT-H (632M parameters) does not fit; use `quantize=True` there.
    """
    from vit_hub.terminal import import_tensorflow

    tf = import_tensorflow()

    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    # The SavedModel it is converted from is scratch: beside `path`, removed in any case.
    with temporary_folder(parent, suffix=f"-{os.path.basename(path)}.saved_model") as saved:
        _write_saved_model(model, saved, batch_size)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved, signature_keys=[SIGNATURE_KEY]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
    return path


def export_onnx(model, path, batch_size=None, opset=None):
    """Writes an ONNX model of `model` to the file `path` and returns `path`.

    Needs the optional packages `tf2onnx` and `onnx` (checked with tf2onnx 1.17.0,
    onnx 1.23.2; onnxruntime 1.32.0 to run it). Converted through Keras' own ONNX export
    (`model.export(format="onnx")`, which patches tf2onnx for numpy 2); input `images`,
    output renamed to `output_0` as in the SavedModel. Written to a temporary file beside
    `path`, then renamed onto it (an existing file is replaced). A protobuf holds at
    most 2 GB: float32 ViT-H (632M parameters) does not fit in one ONNX file.

    tf2onnx is slow and memory-hungry: ViT-B/32 takes ~2.5 min and ~7 GB peak on 2 CPU
    cores (with the garbage collection below; over 14 GB without).
    """
    try:
        import onnx
        import tf2onnx  # noqa: F401  (Keras imports it; fail early with a clear message)
    except ImportError as err:
        raise MissingDependencyError(
            f"export_onnx needs the optional packages tf2onnx and onnx ({err}). Install "
            "them with `pip install tf2onnx onnx` (checked: tf2onnx 1.17.0, onnx 1.23.2)."
        ) from None
    path = os.fspath(path)
    with atomic_path(path) as tmp, _collecting_garbage():
        model.export(
            tmp,
            format="onnx",
            verbose=False,
            input_signature=[_input_spec(model, batch_size)],
            opset_version=opset,
        )
        proto = onnx.load(tmp)
        _rename_onnx_outputs(proto)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
    return path


def find_xla_ops(saved_model_dir):
    """What would make a SavedModel need XLA, as 'function: op' strings (empty = none):
    every op whose type starts with 'Xla' (XlaCallModule, XlaDot, ...) in the graph or
    any function of its library, and every function or call marked `_XlaMustCompile`
    (a `tf.function(jit_compile=True)`)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(os.fspath(saved_model_dir), "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    found = []

    def check(where, nodes):
        for node in nodes:
            if node.op.startswith("Xla"):
                found.append(f"{where}: {node.op} ({node.name})")
            if node.attr["_XlaMustCompile"].b:
                found.append(f"{where}: {node.op} ({node.name}) with _XlaMustCompile")

    for meta_graph in saved_model.meta_graphs:
        check("graph", meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            name = function.signature.name
            check(name, function.node_def)
            if function.attr["_XlaMustCompile"].b:
                found.append(f"{name}: the function has _XlaMustCompile")
    return found


# === Internals ===


def _input_spec(model, batch_size):
    import keras

    from vit_hub.terminal import import_tensorflow

    tf = import_tensorflow()
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ExportError(
            f"Exports trace the model into plain TensorFlow ops, which needs Keras' "
            f"TensorFlow backend; this process runs Keras on {backend!r} (whose exports "
            "hold XLA or framework ops that TF Serving, TFLite and tf2onnx cannot read). "
            "Export from a process with KERAS_BACKEND=tensorflow: the cache and .keras "
            "files load there unchanged.")
    if len(model.inputs) != 1:
        raise ExportError(f"{model.name} has {len(model.inputs)} inputs; the export "
                          "serves models with one image input.")
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or None in shape:
        raise ExportError(f"{model.name} takes inputs of shape {shape}; the export needs "
                          "a fixed (height, width, channels).")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive int or None, got {batch_size!r}.")
    return tf.TensorSpec((batch_size, *shape), tf.float32, name=INPUT_KEY)


def _write_saved_model(model, folder, batch_size):
    """Keras' ExportArchive: a plain `tf.function` (autograph off, no jit_compile) over
    `model(images, training=False)`, with the model's variables tracked."""
    import keras

    spec = _input_spec(model, batch_size)

    def serve(images):
        outputs = model(images, training=False)
        # Mixed-precision models compute in float16/bfloat16; serve float32 as the hub.
        return keras.tree.map_structure(lambda t: keras.ops.cast(t, "float32"), outputs)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_KEY, serve, input_signature=[spec])
    archive.write_out(folder, verbose=False)
    problems = find_xla_ops(folder)
    if problems:
        raise ExportError("The exported SavedModel would need XLA:\n  - "
                          + "\n  - ".join(problems))


@contextlib.contextmanager
def _collecting_garbage(interval=0.5):
    """Runs `gc.collect()` every `interval` seconds while the block runs.

    tf2onnx's optimizer loop deep-copies the whole graph, constants included, before each
    of its ~20 passes; the copies it drops are reference cycles that only the cyclic
    collector frees, and that collector counts objects, not bytes, so it rarely runs. For
    ViT-B/32 that piles up past 14 GB (measured; one encoder block alone: 3.5 GB, vs
    1.7 GB with this collection). Collecting on a timer keeps the peak near 7 GB.
    """
    import gc
    import threading

    stop = threading.Event()

    def collect():
        while not stop.wait(interval):
            gc.collect()

    thread = threading.Thread(target=collect, name="vit_hub-export-gc", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _rename_onnx_outputs(proto):
    """tf2onnx names outputs after the TF tensors ('Identity:0') and a free batch
    dimension 'unk__N'; use the SavedModel's keys (output_0, output_1, ...) and 'batch'."""
    graph = proto.graph
    for index, output in enumerate(graph.output):
        old, new = output.name, f"output_{index}"
        for node in graph.node:
            node.output[:] = [new if o == old else o for o in node.output]
            node.input[:] = [new if i == old else i for i in node.input]
        output.name = new
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = "batch"


def _refuse_existing(path, overwrite):
    if overwrite or not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.listdir(path):
        return  # an empty folder is taken over
    kind = "folder" if os.path.isdir(path) else "file"
    raise OutputExistsError(f"{path} exists and is a non-empty {kind}; export elsewhere, "
                          "remove it, or pass overwrite=True to replace it.")
