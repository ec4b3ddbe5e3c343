"""Export (published recipe, Flax + jax2tf) -> convert -> native model == hub.KerasLayer.

Checkpoints are built by vit_hub.conversion.published_format in the published format; the parity
reference is the hub model itself run through `hub.KerasLayer`.
"""

import json
import os
import shutil

import numpy as np
import pytest

from vit_hub.errors import ConversionError
from vit_hub.conversion.convert import convert, metadata_path, write_converted
from vit_hub.conversion.hub_saved_model import flatten_order, read_hub_saved_model
from vit_hub.conversion.name_map import linen_to_native
from vit_hub.conversion.parity import TOLERANCE, ParityError, parity_inputs
from vit_hub.conversion import published_format as hub_export
import vit_hub
from vit_hub import Architecture, VisionTransformer

# Tiny stand-ins for the published archs: same patch sizes, same layer kinds, few blocks.
TINY = {
    "b8": hub_export.HubConfig(8, 32, 2, 4, 64, num_classes=10, image_size=32),
    "b16": hub_export.HubConfig(16, 32, 2, 4, 64, num_classes=10, image_size=64),
    "b32": hub_export.HubConfig(32, 32, 2, 4, 64, num_classes=10, image_size=64),
    "s16": hub_export.HubConfig(16, 24, 2, 3, 48, num_classes=10, image_size=48),
    "l16": hub_export.HubConfig(16, 48, 3, 4, 96, num_classes=10, image_size=48),
}
KINDS = ("fe", "classification")
REPORTS = {}


def architecture(config, include_top):
    return Architecture(
        image_size=config.image_size, patch_size=config.patch_size,
        hidden_dim=config.hidden_dim, num_layers=config.num_layers,
        num_heads=config.num_heads, mlp_dim=config.mlp_dim, num_classes=config.num_classes,
        include_top=include_top,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(arch, kind) -> (config, params, SavedModel dir, npz path), built once each."""
    cache = {}

    def get(arch, kind, config=None):
        key = (arch, kind)
        if key not in cache:
            config = config or TINY[arch]
            folder = tmp_path_factory.mktemp(f"{arch}-{kind}")
            params = hub_export.init_params(config, kind, seed=hash(key) % 1000)
            saved_model = hub_export.export_saved_model(params, config, kind, str(folder / "hub"))
            npz = folder / "original.npz"
            hub_export.write_npz(params, str(npz))
            cache[key] = (config, params, saved_model, str(npz))
        return cache[key]

    return get


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", list(TINY))
def test_saved_model_route_matches_hub(exported, arch, kind):
    config, _, saved_model, _ = exported(arch, kind)
    result = convert(saved_model, architecture(config, kind == "classification"))
    REPORTS[f"{arch}-{kind}-saved_model"] = result.parity.summary()
    assert result.parity.max_abs <= TOLERANCE
    assert result.parity.cosine > 0.99999
    if kind == "classification":
        assert result.parity.top1_agreement == 1.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["b8", "b16", "b32"])
def test_npz_route_matches_hub(exported, arch, kind):
    config, _, saved_model, npz = exported(arch, kind)
    result = convert(npz, architecture(config, kind == "classification"),
                     reference=saved_model)
    REPORTS[f"{arch}-{kind}-npz"] = result.parity.summary()
    assert result.parity.max_abs <= TOLERANCE


def test_classification_npz_converts_as_fe(exported, tmp_path):
    """The published fe models are the classification checkpoints minus the head: the
    classification npz, converted as fe, equals an fe export of the same weights."""
    config, params, _, npz = exported("b16", "classification")
    fe_params = {k: v for k, v in params.items() if k != "head"}
    fe_saved_model = hub_export.export_saved_model(fe_params, config, "fe", str(tmp_path / "fe"))
    result = convert(npz, architecture(config, False), reference=fe_saved_model)
    assert result.parity.max_abs <= TOLERANCE


def test_weights_file_round_trip(exported, tmp_path):
    config, _, saved_model, _ = exported("b32", "classification")
    result = convert(saved_model, architecture(config, True))
    path = tmp_path / "out" / "vit_tiny_classification.h5"
    metadata = write_converted(result, path, "vit_tiny_classification")
    on_disk = json.loads(open(metadata_path(path)).read())
    assert on_disk == metadata
    assert metadata["parity"]["max_abs"] <= TOLERANCE
    assert metadata["architecture"]["patch_size"] == 32
    from vit_hub.files import sha256

    assert metadata["sha256"] == sha256(path)
    assert sorted(os.listdir(path.parent)) == ["vit_tiny_classification.h5",
                                               "vit_tiny_classification.json"]
    fresh = vit_hub.load_weights(path)  # the architecture recorded in the file
    inputs = parity_inputs(config.image_size)
    np.testing.assert_array_equal(fresh.predict(inputs, verbose=0),
                                  result.model.predict(inputs, verbose=0))


@pytest.mark.parametrize("include_top", [True, False])
def test_linen_shapes_are_the_model_shapes(include_top):
    """The shapes a conversion checks without building a model are the model's own."""
    from vit_hub.conversion.name_map import linen_shapes
    from vit_hub.weights import native_variables

    arch = Architecture(image_size=(32, 48), patch_size=8, hidden_dim=24, num_layers=3,
                        num_heads=3, mlp_dim=40, num_classes=7, include_top=include_top)
    variables = native_variables(VisionTransformer(**arch.to_dict()))
    names = linen_to_native(arch)
    assert linen_shapes(arch) == {k: tuple(variables[n].shape) for k, n in names.items()}


def test_unverified_conversion_streams_without_a_model(exported, tmp_path):
    config, _, saved_model, _ = exported("b16", "fe")
    result = convert(saved_model, architecture(config, False), verify=False)
    assert result.model is None and result.parity is None
    path = tmp_path / "fe.h5"
    write_converted(result, path, "fe")
    loaded = vit_hub.load_weights(path)
    inputs = parity_inputs(config.image_size)
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0),
                               _hub_layer(saved_model)(inputs), atol=TOLERANCE)


def _hub_layer(path):
    import tensorflow_hub as hub

    return hub.KerasLayer(path)


def test_flatten_order_is_the_published_b16_layout():
    """Index -> name of the published ViT-B/16 classification export (hub-format.md)."""
    order = flatten_order(linen_to_native(vit_hub.architecture.get_variant("vit_b16")))
    assert len(order) == 200
    assert order[:2] == ["Transformer/encoder_norm/bias", "Transformer/encoder_norm/scale"]
    block_order = [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    for position, k in enumerate(block_order):
        b = 2 + 16 * position
        prefix = f"Transformer/encoderblock_{k}/"
        assert order[b:b + 4] == [prefix + p for p in (
            "LayerNorm_0/bias", "LayerNorm_0/scale", "LayerNorm_1/bias", "LayerNorm_1/scale")]
        assert order[b + 4] == prefix + "MlpBlock_0/Dense_0/bias"
        assert order[b + 8] == prefix + "MultiHeadDotProductAttention_0/key/bias"
        assert order[b + 11] == prefix + "MultiHeadDotProductAttention_0/out/kernel"
    assert order[194:] == ["Transformer/posembed_input/pos_embedding", "cls",
                           "embedding/bias", "embedding/kernel", "head/bias", "head/kernel"]


def test_flatten_order_matches_tf_nest_on_the_exported_params(exported):
    import tensorflow as tf

    config, params, _, _ = exported("b16", "classification")
    # tf.nest.flatten of the params with each leaf replaced by its own path.
    from vit_hub.weights import flatten

    named = _replace_leaves(params, "")
    arch = architecture(config, include_top=True)
    assert flatten_order(linen_to_native(arch)) == tf.nest.flatten(named)
    assert sorted(flatten(params)) == sorted(tf.nest.flatten(named))


def _replace_leaves(tree, prefix):
    if not isinstance(tree, dict):
        return prefix
    return {k: _replace_leaves(v, f"{prefix}/{k}" if prefix else k) for k, v in tree.items()}


# === What must fail, and how ===


def test_b16_checkpoint_into_b32_config(exported):
    _, _, saved_model, _ = exported("b16", "fe")
    with pytest.raises(ConversionError) as err:
        convert(saved_model, architecture(TINY["b32"], False))
    text = str(err.value)
    assert "(embedding/kernel) has shape (16, 16, 3, 32), expected (32, 32, 3, 32)" in text
    assert "pos_embedding) has shape (1, 17, 32), expected (1, 5, 32)" in text


def test_truncated_variables_file(exported, tmp_path):
    _, _, saved_model, _ = exported("b32", "fe")
    broken = shutil.copytree(saved_model, tmp_path / "broken")
    data = next((broken / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ConversionError, match="probably truncated or corrupt"):
        convert(broken, architecture(TINY["b32"], False))


def test_classification_checkpoint_asked_as_fe(exported):
    config, _, saved_model, _ = exported("b32", "classification")
    with pytest.raises(ConversionError) as err:
        convert(saved_model, architecture(config, False))
    assert "holds 40 tensors, the model needs 38" in str(err.value)
    assert "a classification checkpoint, with head, asked for as fe?" in str(err.value)


def test_fe_checkpoint_asked_as_classification(exported):
    config, _, saved_model, _ = exported("b32", "fe")
    with pytest.raises(ConversionError, match="an fe checkpoint, without head, asked for"):
        convert(saved_model, architecture(config, True))


def test_swapped_equal_shapes_pass_the_shape_check_but_fail_parity(exported, tmp_path):
    """query and key kernels have equal shapes: only parity can tell them apart."""
    config, params, _, _ = exported("b32", "fe")
    order = flatten_order(linen_to_native(architecture(config, False)))
    q = order.index("Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel")
    k = order.index("Transformer/encoderblock_1/MultiHeadDotProductAttention_0/key/kernel")
    permutation = list(range(len(order)))
    permutation[q], permutation[k] = k, q
    swapped = hub_export.export_saved_model(params, config, "fe", str(tmp_path / "swapped"),
                                            variable_order=permutation)
    read_hub_saved_model(swapped, architecture(config, False))  # shapes all fit
    with pytest.raises(ParityError, match="exceeds the tolerance 1e-04"):
        convert(swapped, architecture(config, False))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, cls=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConversionError, match="pickled Python objects"):
        convert(path, architecture(TINY["b32"], False), verify=False)


def test_npz_needs_a_reference_to_verify(exported):
    config, _, _, npz = exported("b32", "fe")
    with pytest.raises(ConversionError, match="Pass the hub SavedModel as reference"):
        convert(npz, architecture(config, False))


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="is not a SavedModel directory"):
        convert(tmp_path / "empty", architecture(TINY["b32"], False))
    with pytest.raises(ConversionError, match="neither a SavedModel directory nor an .npz"):
        convert(tmp_path / "missing.h5", architecture(TINY["b32"], False))


def test_failed_conversion_writes_nothing(exported, tmp_path):
    config, _, saved_model, _ = exported("b32", "classification")
    out = tmp_path / "out"
    with pytest.raises(ConversionError):
        result = convert(saved_model, architecture(config, False))
        write_converted(result, out / "x.h5", "x")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_full_size_b32(exported, kind):
    config = hub_export.ARCHS["b32"]
    _, _, saved_model, npz = exported("b32-full", kind, config=config)
    arch = architecture(config, kind == "classification")
    result = convert(saved_model, arch)
    REPORTS[f"b32-full-{kind}-saved_model"] = result.parity.summary()
    assert result.parity.max_abs <= TOLERANCE
    via_npz = convert(npz, arch, reference=saved_model)
    REPORTS[f"b32-full-{kind}-npz"] = via_npz.parity.summary()
    assert via_npz.parity.max_abs <= TOLERANCE


def teardown_module():
    """Prints the measured parity figures (pytest -s shows them)."""
    for key, summary in sorted(REPORTS.items()):
        print(f"parity {key}: {summary}")
