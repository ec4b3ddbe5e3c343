"""The test exporter really writes the published Kaggle / TF-Hub ViT format.

Tiny configs keep every test to a few seconds; full-size ones are marked slow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow.core.protobuf import trackable_object_graph_pb2  # noqa: E402

from tests.numpy_reference import vit_forward  # noqa: E402
from vit_hub.conversion import published_format as he  # noqa: E402
from vit_hub.weights import flatten  # noqa: E402

TINY = he.HubConfig(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4,
                    mlp_dim=64, num_classes=10, image_size=32)
# 11 blocks, so that string order puts encoderblock_10 before encoderblock_2.
DEEP = he.HubConfig(patch_size=8, hidden_dim=8, num_layers=11, num_heads=2,
                    mlp_dim=16, num_classes=5, image_size=16)
TOL = 1e-5
GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def expected_paths(num_layers, kind):
    """The index order of the published SavedModels, written out by hand.

    This is the table of hub-format.md: Python string order of the Linen
    names at every level. It is an oracle independent of tf.nest.
    """
    block = ["LayerNorm_0/bias", "LayerNorm_0/scale",
             "LayerNorm_1/bias", "LayerNorm_1/scale",
             "MlpBlock_0/Dense_0/bias", "MlpBlock_0/Dense_0/kernel",
             "MlpBlock_0/Dense_1/bias", "MlpBlock_0/Dense_1/kernel"]
    block += [f"MultiHeadDotProductAttention_0/{m}/{p}"
              for m in ("key", "out", "query", "value")
              for p in ("bias", "kernel")]
    paths = ["Transformer/encoder_norm/bias", "Transformer/encoder_norm/scale"]
    for k in sorted(str(i) for i in range(num_layers)):  # "10" < "2"
        paths += [f"Transformer/encoderblock_{k}/{p}" for p in block]
    paths += ["Transformer/posembed_input/pos_embedding", "cls",
              "embedding/bias", "embedding/kernel"]
    if kind == "classification":
        paths += ["head/bias", "head/kernel"]
    return paths


def get(params, path):
    for part in path.split("/"):
        params = params[part]
    return params


def images(n, config, seed=1):
    # The published models take RGB in [-1, 1].
    rng = np.random.default_rng(seed)
    shape = (n, config.image_size, config.image_size, 3)
    return rng.uniform(-1, 1, shape).astype(np.float32)


def ckpt_prefix(out_dir):
    # list_variables wants the checkpoint prefix, not the SavedModel root.
    return os.path.join(out_dir, "variables", "variables")


def object_graph(out_dir):
    reader = tf.train.load_checkpoint(ckpt_prefix(out_dir))
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(GRAPH_KEY))
    return graph


def child_ids(graph, node_id, name):
    """Node ids of the children of ``name`` under node ``node_id``."""
    by_name = {c.local_name: c.node_id for c in graph.nodes[node_id].children}
    return [c.node_id for c in graph.nodes[by_name[name]].children]


@pytest.fixture(scope="module", params=["fe", "classification"])
def exported(request, tmp_path_factory):
    """(kind, config, params, out_dir) for a tiny exported model."""
    kind = request.param
    params = he.init_params(TINY, kind, seed=3)
    out_dir = str(tmp_path_factory.mktemp(f"tiny_{kind}"))
    he.export_saved_model(params, TINY, kind, out_dir)
    return kind, TINY, params, out_dir


@pytest.fixture(scope="module")
def deep_export(tmp_path_factory):
    params = he.init_params(DEEP, "classification", seed=5)
    out_dir = str(tmp_path_factory.mktemp("deep"))
    he.export_saved_model(params, DEEP, "classification", out_dir)
    return params, out_dir


# ---------------------------------------------------------------- params


@pytest.mark.parametrize("kind", ["fe", "classification"])
@pytest.mark.parametrize("num_layers", [2, 11])
def test_param_tree_has_linen_names_in_sorted_order(kind, num_layers):
    config = he.HubConfig(8, 16, num_layers, 2, 32, num_classes=7, image_size=16)
    params = he.init_params(config, kind)
    flat = tf.nest.flatten(params)
    want = expected_paths(num_layers, kind)
    assert len(flat) == len(want)
    for i, path in enumerate(want):
        assert flat[i] is get(params, path), (i, path)


def test_param_shapes():
    p = he.init_params(TINY, "classification")
    tokens = (32 // 8) ** 2 + 1
    blk = p["Transformer"]["encoderblock_0"]
    mha = blk["MultiHeadDotProductAttention_0"]
    assert p["embedding"]["kernel"].shape == (8, 8, 3, 32)  # HWIO
    assert p["cls"].shape == (1, 1, 32)
    assert p["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, tokens, 32)
    for m in ("query", "key", "value"):
        assert mha[m]["kernel"].shape == (32, 4, 8)
        assert mha[m]["bias"].shape == (4, 8)
    assert mha["out"]["kernel"].shape == (4, 8, 32)
    assert mha["out"]["bias"].shape == (32,)
    assert blk["MlpBlock_0"]["Dense_0"]["kernel"].shape == (32, 64)
    assert blk["MlpBlock_0"]["Dense_1"]["kernel"].shape == (64, 32)
    assert p["head"]["kernel"].shape == (32, 10)
    assert "head" not in he.init_params(TINY, "fe")
    assert "pre_logits" not in p


def test_init_params_random_and_deterministic():
    a = tf.nest.flatten(he.init_params(TINY, "classification", seed=0))
    b = tf.nest.flatten(he.init_params(TINY, "classification", seed=0))
    c = tf.nest.flatten(he.init_params(TINY, "classification", seed=1))
    for x, y, z in zip(a, b, c):
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)
        # No constant tensors: a mis-mapped one must change the output.
        assert np.std(x) > 0.01 and np.all(x != 0)


@pytest.mark.parametrize("name,kind,count,size", [
    ("b16", "classification", 200, 86_567_656),
    ("b16", "fe", 198, 85_798_656),
])
def test_published_param_counts(name, kind, count, size):
    # Numbers from hub-format.md for ViT-B/16.
    shapes = tf.nest.flatten(he.param_shapes(he.ARCHS[name], kind))
    assert len(shapes) == count
    assert sum(int(np.prod(s.shape)) for s in shapes) == size


def test_archs():
    want = {"s16": (16, 384, 12, 6, 1536), "b8": (8, 768, 12, 12, 3072),
            "b16": (16, 768, 12, 12, 3072), "b32": (32, 768, 12, 12, 3072),
            "l16": (16, 1024, 24, 16, 4096)}
    for name, (p, d, n, h, m) in want.items():
        c = he.ARCHS[name]
        assert (c.patch_size, c.hidden_dim, c.num_layers, c.num_heads,
                c.mlp_dim, c.num_classes, c.image_size) == (p, d, n, h, m, 1000, 224)
    assert he.ARCHS["b32"].num_tokens == 50


# ---------------------------------------------------------------- checkpoint


def test_checkpoint_keys_shapes_values(exported):
    kind, _, params, out_dir = exported
    flat = tf.nest.flatten(params)
    listed = dict(tf.train.list_variables(ckpt_prefix(out_dir)))
    # _CHECKPOINTABLE_OBJECT_GRAPH is the serialized object graph, not a
    # variable. fe's trainable_variables alias the same objects, so a
    # variable is stored once, under variables/<i> (see the next test).
    listed.pop(GRAPH_KEY)
    want = {f"variables/{i}/.ATTRIBUTES/VARIABLE_VALUE" for i in range(len(flat))}
    assert set(listed) == want | {"save_counter/.ATTRIBUTES/VARIABLE_VALUE"}
    reader = tf.train.load_checkpoint(ckpt_prefix(out_dir))
    for i, value in enumerate(flat):
        key = f"variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"
        assert tuple(listed[key]) == value.shape, i
        np.testing.assert_array_equal(reader.get_tensor(key), value)
    # Index 0 and 1: Transformer/encoder_norm/{bias,scale}.
    enc_norm = params["Transformer"]["encoder_norm"]
    np.testing.assert_array_equal(reader.get_tensor(
        "variables/0/.ATTRIBUTES/VARIABLE_VALUE"), enc_norm["bias"])
    np.testing.assert_array_equal(reader.get_tensor(
        "variables/1/.ATTRIBUTES/VARIABLE_VALUE"), enc_norm["scale"])


def test_object_graph_layout(exported):
    kind, _, params, out_dir = exported
    graph = object_graph(out_dir)
    root_children = [c.local_name for c in graph.nodes[0].children]
    # Wrapper attributes in the notebook's order, then the saver's own.
    assert root_children[:4] == ["variables", "trainable_variables",
                                 "regularization_losses", "save_counter"]
    variables = child_ids(graph, 0, "variables")
    trainable = child_ids(graph, 0, "trainable_variables")
    assert len(variables) == len(tf.nest.flatten(params))
    # fe: trainable_variables/<i> is the same object as variables/<i>.
    assert trainable == (variables if kind == "fe" else [])
    assert child_ids(graph, 0, "regularization_losses") == []


def test_deep_order_block_10_before_block_2(deep_export):
    params, out_dir = deep_export
    reader = tf.train.load_checkpoint(ckpt_prefix(out_dir))
    paths = expected_paths(DEEP.num_layers, "classification")
    assert paths.index("Transformer/encoderblock_10/LayerNorm_0/bias") == 2 + 16 * 2
    assert paths.index("Transformer/encoderblock_2/LayerNorm_0/bias") == 2 + 16 * 3
    assert len(dict(tf.train.list_variables(ckpt_prefix(out_dir)))) == len(paths) + 2
    for i, path in enumerate(paths):
        got = reader.get_tensor(f"variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(got, get(params, path), err_msg=path)


# ---------------------------------------------------------------- signature


def test_serving_signature(exported):
    kind, config, params, out_dir = exported
    sig = tf.saved_model.load(out_dir).signatures["serving_default"]
    args, kwargs = sig.structured_input_signature
    size = config.image_size
    assert args == ()
    assert kwargs == {"inputs": tf.TensorSpec([None, size, size, 3], tf.float32,
                                              name="inputs")}
    width = config.num_classes if kind == "classification" else config.hidden_dim
    assert set(sig.structured_outputs) == {"output_0"}
    assert sig.structured_outputs["output_0"].shape.as_list() == [None, width]
    x = images(3, config)
    got = sig(inputs=tf.constant(x))["output_0"].numpy()
    np.testing.assert_allclose(got, he.flax_apply(params, config, x), atol=TOL, rtol=0)


def test_signature_batch_one_variant(tmp_path):
    # The stored notebook literally traces the signature at batch 1. Then
    # only Keras' symbolic (None) call works for other batch sizes.
    params = he.init_params(TINY, "fe")
    he.export_saved_model(params, TINY, "fe", str(tmp_path), signature_batch=1)
    sig = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    assert sig.structured_input_signature[1]["inputs"].shape.as_list() == [1, 32, 32, 3]
    model = tf_keras.Sequential([tf_keras.layers.InputLayer((32, 32, 3)),
                                 hub.KerasLayer(str(tmp_path))])
    x = images(3, TINY)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               he.flax_apply(params, TINY, x), atol=TOL, rtol=0)


# ---------------------------------------------------------------- hub layer


@pytest.mark.parametrize("batch", [2, 3])
def test_hub_layer_matches_flax(exported, batch):
    kind, config, params, out_dir = exported
    layer = hub.KerasLayer(out_dir, trainable=(kind == "fe"))
    x = images(batch, config, seed=batch)
    want = he.flax_apply(params, config, x)
    width = config.num_classes if kind == "classification" else config.hidden_dim
    assert want.shape == (batch, width)
    np.testing.assert_allclose(layer(x).numpy(), want, atol=TOL, rtol=0)


def test_hub_layer_in_keras_model(exported):
    kind, config, params, out_dir = exported
    size = config.image_size
    model = tf_keras.Sequential([tf_keras.layers.InputLayer((size, size, 3)),
                                 hub.KerasLayer(out_dir)])
    x = images(3, config, seed=7)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               he.flax_apply(params, config, x), atol=TOL, rtol=0)


def test_fe_trainable_with_gradients(exported):
    kind, config, params, out_dir = exported
    layer = hub.KerasLayer(out_dir, trainable=True)
    n = len(tf.nest.flatten(params))
    assert len(layer.weights) == n
    if kind == "classification":
        # Non-trainable variables: nothing to fine-tune through the layer.
        assert layer.trainable_weights == []
        return
    assert layer.trainable and len(layer.trainable_weights) == n
    x = tf.constant(images(2, config))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None for g in grads)
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    assert any(np.abs(g.numpy()).max() > 0 for g in grads)


def numpy_vit(params, config, x):
    """hub-format.md's numerics in float64 numpy (tests/numpy_reference.py): the fe
    features or the logits, as the hub model returns them."""
    _, features, logits, _ = vit_forward(params, x, config.patch_size)
    return features if logits is None else logits


# A hybrid: the published stem widths, one bottleneck unit per stage.
HYBRID = he.HubConfig(patch_size=32, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                      num_classes=10, image_size=64, resnet_units=(1, 1, 1, 1))


@pytest.mark.parametrize("kind", ["fe", "classification"])
@pytest.mark.parametrize("config", [TINY, HYBRID], ids=["plain", "hybrid"])
def test_flax_model_matches_equations(kind, config):
    params = he.init_params(config, kind, seed=6)
    x = images(2, config)
    # float32 through the stem: ~1e-5 per bottleneck unit (see tests/test_resnet_stem.py)
    np.testing.assert_allclose(he.flax_apply(params, config, x),
                               numpy_vit(params, config, x), atol=TOL * 4, rtol=0)


def test_hybrid_export_has_the_published_r26_layout(tmp_path):
    """hub-format.md's sorted flatten of R26+S/32 classification: 0-1 encoder_norm, 2-193
    the blocks, 194 posembed_input, 195-278 block1..block4, 279 cls, 280 conv_root,
    281-282 embedding, 283-284 gn_root (flax 0.3.3: (1, 1, 1, C)), 285-286 head."""
    shapes = he.param_shapes(he.ARCHS["r26_s32"], "classification")
    order = sorted(flatten(shapes), key=lambda path: path.split("/"))
    assert len(order) == 287
    assert order[194] == "Transformer/posembed_input/pos_embedding"
    assert order[195].startswith("block1/unit1/") and order[278].startswith("block4/unit2/")
    assert order[279:] == ["cls", "conv_root/kernel", "embedding/bias", "embedding/kernel",
                           "gn_root/bias", "gn_root/scale", "head/bias", "head/kernel"]
    params = he.init_params(HYBRID, "fe", seed=2)
    assert params["gn_root"]["scale"].shape == (1, 1, 1, 64)
    assert params["block4"]["unit1"]["gn3"]["bias"].shape == (1, 1, 1, 2048)
    saved = he.export_saved_model(params, HYBRID, "fe", str(tmp_path / "hybrid"))
    listed = dict(tf.train.list_variables(ckpt_prefix(saved)))
    assert [1, 1, 1, 64] in listed.values() and [7, 7, 3, 64] in listed.values()


def test_mapping_sensitivity():
    # Swapping two same-shaped tensors must change the reference output, or
    # the comparisons above could not catch a mis-mapped converter.
    params = he.init_params(TINY, "fe")
    x = images(2, TINY)
    base = he.flax_apply(params, TINY, x)
    blocks = params["Transformer"]
    for a, b in [("LayerNorm_0", "LayerNorm_1")]:
        swapped = {**params, "Transformer": {**blocks, "encoderblock_0": {
            **blocks["encoderblock_0"], a: blocks["encoderblock_0"][b],
            b: blocks["encoderblock_0"][a]}}}
        assert np.abs(he.flax_apply(swapped, TINY, x) - base).max() > 1e-3
    swapped = {**params, "Transformer": {**blocks,
                                         "encoderblock_0": blocks["encoderblock_1"],
                                         "encoderblock_1": blocks["encoderblock_0"]}}
    assert np.abs(he.flax_apply(swapped, TINY, x) - base).max() > 1e-3


# ---------------------------------------------------------------- npz


def test_npz_round_trip(tmp_path):
    params = he.init_params(TINY, "classification", seed=2)
    path = str(tmp_path / "ckpt.npz")
    he.write_npz(params, path)
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
    blk = "Transformer/encoderblock_0"
    assert {f"{blk}/LayerNorm_0/scale", f"{blk}/LayerNorm_2/scale",
            f"{blk}/MlpBlock_3/Dense_0/kernel",
            f"{blk}/MultiHeadDotProductAttention_1/query/kernel",
            "cls", "embedding/kernel", "head/kernel",
            "Transformer/posembed_input/pos_embedding",
            "Transformer/encoder_norm/bias"} <= keys
    assert not any(s in k for k in keys
                   for s in ("LayerNorm_1", "MlpBlock_0", "Attention_0"))
    assert len(keys) == len(tf.nest.flatten(params))
    back = he.read_npz(path)
    assert tf.nest.flatten(back) and set(_paths(back)) == set(_paths(params))
    for x, y in zip(tf.nest.flatten(back), tf.nest.flatten(params)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def _paths(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _paths(v, f"{prefix}{k}/")
        else:
            yield prefix + k


BUILD_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "converters", "build_hub_checkpoint.py")


def build_checkpoint(*args):
    """converters/build_hub_checkpoint.py, as a user runs it; its exit status."""
    return subprocess.run([sys.executable, BUILD_SCRIPT, *args], timeout=300).returncode


def test_cli_npz_then_export_from_npz(tmp_path):
    tiny = ["--hidden-dim", "32", "--num-layers", "2", "--num-heads", "4",
            "--mlp-dim", "64", "--patch-size", "8", "--num-classes", "10",
            "--image-size", "32"]
    npz = str(tmp_path / "w.npz")
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    assert build_checkpoint("--kind", "classification", "--out", first, "--npz", npz,
                            "--seed", "4", *tiny) == 0
    # fe from a classification npz drops the head, as the notebook does.
    assert build_checkpoint("--kind", "fe", "--out", second, "--from-npz", npz,
                            "--image-size", "32") == 0
    params = he.init_params(TINY, "classification", seed=4)
    params.pop("head")
    x = images(2, TINY)
    np.testing.assert_allclose(hub.KerasLayer(second)(x).numpy(),
                               he.flax_apply(params, TINY, x), atol=TOL, rtol=0)
    listed = tf.train.list_variables(ckpt_prefix(first))
    assert len(listed) == len(expected_paths(2, "classification")) + 2


def test_export_rejects_mismatched_kind(tmp_path):
    with pytest.raises(ValueError):
        he.export_saved_model(he.init_params(TINY, "fe"), TINY,
                              "classification", str(tmp_path))


# ---------------------------------------------------------------- full size


@pytest.mark.slow
def test_full_size_b32_fe_cli(tmp_path):
    out = str(tmp_path / "b32_fe")
    assert build_checkpoint("--arch", "b32", "--kind", "fe", "--out", out) == 0
    listed = dict(tf.train.list_variables(ckpt_prefix(out)))
    assert len(listed) == 198 + 2
    assert listed["variables/195/.ATTRIBUTES/VARIABLE_VALUE"] == [1, 1, 768]
    assert listed["variables/194/.ATTRIBUTES/VARIABLE_VALUE"] == [1, 50, 768]
    assert listed["variables/197/.ATTRIBUTES/VARIABLE_VALUE"] == [32, 32, 3, 768]
    params = he.init_params(he.ARCHS["b32"], "fe", seed=0)
    x = images(2, he.ARCHS["b32"])
    np.testing.assert_allclose(hub.KerasLayer(out)(x).numpy(),
                               he.flax_apply(params, he.ARCHS["b32"], x),
                               atol=1e-4, rtol=0)


def test_importing_the_reference_changes_no_environment():
    """published_format is a library module: TensorFlow's log level is the entry points'
    to set (conftest, the CLIs, converters/build_hub_checkpoint.py), not an import's."""
    import ast

    tree = ast.parse(open(he.__file__).read())
    top_level = [node for node in tree.body if not isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert "environ" not in {n.attr for node in top_level for n in ast.walk(node)
                             if isinstance(n, ast.Attribute)}
