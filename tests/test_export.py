"""Exports without XLA: SavedModel, TFLite (and ONNX where tf2onnx is installed), each
checked against the Keras model it came from; atomic writes and overwrite refusal."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import vit_hub
from tests.conftest import TINY, TINY_IMAGE
from vit_hub import export

# The SavedModel runs the same TF kernels as the Keras model (same graph, maybe fused
# differently): ~1e-7 here. TFLite has its own kernels (XNNPACK) that block and reorder
# the float32 sums of every matmul, conv and mean, so results differ by accumulated
# rounding: ~2e-7 measured at this size, more with width and depth; 1e-4 is the bound
# the project uses for "same computation, other summation order" (as for hub parity),
# while any wrong op or weight moves outputs by >1e-2.
SAVED_MODEL_ATOL = 1e-5
TFLITE_ATOL = 1e-4


def random_model(seed=0, **kwargs):
    """A tiny ViT with every weight random: the default init has a zero head kernel and
    zero class token, which would make a classifier's logits all equal to the bias."""
    keras.utils.set_random_seed(seed)
    config = dict(image_size=TINY_IMAGE, **TINY, include_top=True, num_classes=10)
    model = vit_hub.VisionTransformer(**{**config, **kwargs})
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.2, variable.shape).astype(np.float32))
    return model


def inputs(batch, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, TINY_IMAGE, TINY_IMAGE, 3)).astype(
        np.float32
    )


def serving_signature(path):
    return tf.saved_model.load(path).signatures[export.SIGNATURE_KEY]


def tflite_runner(path):
    """LiteRT's interpreter where installed (ai-edge-litert), else the deprecated
    tf.lite.Interpreter that TF 2.21 still ships."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        interpreter = Interpreter(model_path=os.fspath(path))
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["output_0"]}
    }
    return interpreter.get_signature_runner("serving_default")


def all_op_types(path):
    """Every op type in the SavedModel's graph and function library, read from the
    protobuf (not through TF's loader)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    ops, jit = set(), []
    for meta_graph in saved_model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
            if function.attr["_XlaMustCompile"].b:
                jit.append(function.signature.name)
            jit += [node.name for node in function.node_def if node.attr["_XlaMustCompile"].b]
    return ops, jit


@pytest.fixture(scope="module")
def classifier():
    return random_model()


@pytest.fixture(scope="module")
def saved_model(classifier, tmp_path_factory):
    return export.export_saved_model(classifier, tmp_path_factory.mktemp("sm") / "vit")


@pytest.fixture(scope="module")
def tflite_file(classifier, tmp_path_factory):
    return export.export_tflite(classifier, tmp_path_factory.mktemp("tfl") / "vit.tflite")


@pytest.mark.parametrize("batch", [1, 3])
def test_saved_model_matches_keras(classifier, saved_model, batch):
    signature = serving_signature(saved_model)
    _, specs = signature.structured_input_signature
    assert list(specs) == ["images"]
    assert specs["images"].dtype == tf.float32
    assert specs["images"].shape.as_list() == [None, TINY_IMAGE, TINY_IMAGE, 3]
    assert list(signature.structured_outputs) == ["output_0"]
    x = inputs(batch)
    out = signature(images=tf.constant(x))["output_0"].numpy()
    expected = np.asarray(classifier(x))
    assert out.shape == expected.shape == (batch, 10)
    assert np.abs(expected).max() > 0.1  # a real signal, not all zeros
    np.testing.assert_allclose(out, expected, atol=SAVED_MODEL_ATOL, rtol=0)


def test_saved_model_has_no_xla_ops(saved_model):
    ops, jit_compiled = all_op_types(saved_model)
    assert {"Conv2D", "Softmax", "Tanh"} <= ops  # the real computation is there
    assert [op for op in ops if op.startswith("Xla")] == []
    assert jit_compiled == []
    assert export.find_xla_ops(saved_model) == []


def test_xla_check_detects_xla(tmp_path):
    """Negative controls: a jit-compiled tf.function, and jax2tf's XlaCallModule (what the
    hub SavedModels contain) are both found."""
    module = tf.Module()
    module.f = tf.function(lambda x: 2.0 * x, jit_compile=True,
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "jit"))
    assert all_op_types(str(tmp_path / "jit"))[1]  # this file's own walk sees it too
    assert any("_XlaMustCompile" in p for p in export.find_xla_ops(tmp_path / "jit"))

    jax2tf = pytest.importorskip("jax.experimental.jax2tf")
    module = tf.Module()
    module.f = tf.function(jax2tf.convert(lambda x: 2.0 * x, polymorphic_shapes=["(b,)"]),
                           autograph=False, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "jax2tf"))
    assert "XlaCallModule" in all_op_types(str(tmp_path / "jax2tf"))[0]
    assert any("XlaCallModule" in p for p in export.find_xla_ops(tmp_path / "jax2tf"))


def test_export_refuses_xla_and_leaves_nothing(classifier, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "find_xla_ops", lambda path: ["f: XlaCallModule (x)"])
    with pytest.raises(export.ExportError, match="XlaCallModule"):
        export.export_saved_model(classifier, tmp_path / "vit")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("batch", [1, 3])
def test_tflite_matches_keras(classifier, tflite_file, batch):
    x = inputs(batch)
    out = tflite_runner(tflite_file)(images=x)["output_0"]
    expected = np.asarray(classifier(x))
    assert out.shape == expected.shape == (batch, 10)
    np.testing.assert_allclose(out, expected, atol=TFLITE_ATOL, rtol=0)


def test_feature_extractor_exports(tmp_path):
    """An fe-style model (class token after the final norm, as the `_fe` hub models),
    exported with a fixed batch size into an existing empty folder, from a model
    compiled with jit_compile=True."""
    model = random_model(seed=2, include_top=False, pooling="token")
    model.compile(jit_compile=True)  # XLA for fit/predict only: the export has none
    x = inputs(2, seed=3)
    expected = np.asarray(model(x))
    assert expected.shape == (2, TINY["hidden_dim"])

    (tmp_path / "fe").mkdir()  # an empty folder is taken over
    path = export.export_saved_model(model, tmp_path / "fe", batch_size=2)
    signature = serving_signature(path)
    assert signature.structured_input_signature[1]["images"].shape.as_list() == [2, 32, 32, 3]
    out = signature(images=tf.constant(x))["output_0"].numpy()
    np.testing.assert_allclose(out, expected, atol=SAVED_MODEL_ATOL, rtol=0)
    assert export.find_xla_ops(path) == []

    tflite = export.export_tflite(model, tmp_path / "fe.tflite")
    out = tflite_runner(tflite)(images=x)["output_0"]
    np.testing.assert_allclose(out, expected, atol=TFLITE_ATOL, rtol=0)
    assert sorted(os.listdir(tmp_path)) == ["fe", "fe.tflite"]  # no temporary left


def test_overwrite_is_refused_unless_asked(classifier, tmp_path):
    target = tmp_path / "vit"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export_saved_model(classifier, target)
    assert os.listdir(target) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["vit"]

    export.export_saved_model(classifier, target, overwrite=True)
    assert "saved_model.pb" in os.listdir(target) and "keep.txt" not in os.listdir(target)
    assert sorted(os.listdir(tmp_path)) == ["vit"]


def test_failed_export_leaves_nothing(classifier, tmp_path, monkeypatch):
    def broken_save(obj, export_dir, *args, **kwargs):
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"half")  # a partial write, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(classifier, tmp_path / "vit")
    assert os.listdir(tmp_path) == []

    # Replacing an existing export: on failure the old one stays as it was.
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "old.txt").write_text("old export")
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(classifier, tmp_path / "vit", overwrite=True)
    assert os.listdir(tmp_path) == ["vit"]
    assert os.listdir(tmp_path / "vit") == ["old.txt"]

    with pytest.raises(OSError, match="disk full"):
        export.export_tflite(classifier, tmp_path / "vit.tflite")
    assert os.listdir(tmp_path) == ["vit"]


def test_failed_tflite_conversion_leaves_nothing(classifier, tmp_path, monkeypatch):
    from_saved_model = tf.lite.TFLiteConverter.from_saved_model

    def broken_converter(*args, **kwargs):
        converter = from_saved_model(*args, **kwargs)

        def convert():
            raise RuntimeError("converter failed")

        converter.convert = convert
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", broken_converter)
    (tmp_path / "vit.tflite").write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="converter failed"):
        export.export_tflite(classifier, tmp_path / "vit.tflite")
    assert os.listdir(tmp_path) == ["vit.tflite"]
    assert (tmp_path / "vit.tflite").read_bytes() == b"previous"


def test_onnx_matches_keras(classifier, tmp_path):
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    path = export.export_onnx(classifier, tmp_path / "vit.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["output_0"]
    for batch in (1, 3):
        x = inputs(batch)
        (out,) = session.run(["output_0"], {"images": x})
        # onnxruntime has its own kernels too: same bound as TFLite.
        np.testing.assert_allclose(out, np.asarray(classifier(x)), atol=TFLITE_ATOL, rtol=0)
    assert os.listdir(tmp_path) == ["vit.onnx"]
