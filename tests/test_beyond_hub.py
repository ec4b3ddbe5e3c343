"""What hub.KerasLayer cannot do: preprocessing, class names, other resolutions, new heads,
attention maps and rollout, intermediate outputs, mixed precision."""

import io
import warnings

import keras
import numpy as np
import pytest

import vit_hub
from tests.conftest import TINY, TINY_IMAGE, needs_training, numpy
from tests.numpy_reference import vit_forward
from tests.test_model import tiny_model, tiny_params
from vit_hub.conversion.name_map import assign_linen
from vit_hub.weights import flatten, resample_position_embeddings, save_weights_file

pytestmark = pytest.mark.backends  # runs on TensorFlow, JAX, PyTorch and OpenVINO


@pytest.fixture
def tiny_weights(tmp_path):
    """Converted-weights files of a tiny fe and classification model (1000 classes)."""
    paths = {}
    for kind, top in (("fe", False), ("classification", True)):
        model = tiny_model(include_top=top, pooling=None if top else "token")
        assign_linen(model, flatten(tiny_params(seed=1, num_classes=1000 if top else None)))
        paths[kind] = str(save_weights_file(model, tmp_path / f"{kind}.h5"))
        paths[f"{kind}_model"] = model
    return paths


# === preprocess ===


def test_preprocess_scales_uint8_and_floats_to_minus_one_one():
    pixels = np.array([[[0, 127, 255]]], np.uint8).repeat(4, 0).repeat(4, 1)
    out = vit_hub.preprocess(pixels, image_size=4)
    assert out.shape == (1, 4, 4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, (127 - 127.5) / 127.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(vit_hub.preprocess(pixels / 255.0, image_size=4), out, atol=1e-6)


def test_preprocess_files_pil_lists_and_crop(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    from_file = vit_hub.preprocess(str(path), image_size=32)
    from_pil = vit_hub.preprocess(Image.fromarray(image), image_size=32)
    from_array = vit_hub.preprocess(image, image_size=32)
    np.testing.assert_allclose(from_file, from_array, atol=1e-6)
    np.testing.assert_allclose(from_pil, from_array, atol=1e-6)
    mixed = vit_hub.preprocess([str(path), image[:20, :30]], image_size=(16, 24))
    assert mixed.shape == (2, 16, 24, 3)
    cropped = vit_hub.preprocess(image, image_size=(20, 30), crop_fraction=0.5)
    np.testing.assert_allclose(cropped[0], image[10:30, 15:45] / 127.5 - 1, atol=1e-5)


def test_preprocess_turns_photos_upright_as_their_exif_says(tmp_path):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show rotated 90 degrees clockwise
    Image.fromarray(image).save(tmp_path / "turned.png", exif=exif)
    upright = np.rot90(image, k=-1)  # (60, 40, 3)
    np.testing.assert_allclose(vit_hub.preprocess(str(tmp_path / "turned.png"), image_size=(60, 40)),
                               vit_hub.preprocess(upright, image_size=(60, 40)), atol=1e-6)


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (np.zeros((4, 4), np.uint8), ValueError, r"shape \(4, 4\): expected \(height, width, 3\)"),
        (np.zeros((1, 2, 4, 4, 3), np.uint8), ValueError, "expected \\(height, width, 3\\)"),
        (np.zeros((4, 4, 1), np.uint8), ValueError, "1 channels, expected 3 .*np.repeat"),
        (np.zeros((4, 4, 4), np.uint8), ValueError, "4 channels.*image\\[..., :3\\]"),
        (np.zeros((4, 4, 3), np.int32), TypeError, "dtype int32: pass uint8"),
        (np.full((4, 4, 3), 200.0), ValueError, "float images must be in \\[0, 1\\]"),
        (np.full((4, 4, 3), np.nan), ValueError, "NaN or infinite"),
        ("no/such/image.jpg", FileNotFoundError, "No image file"),
        ([], ValueError, "got no images"),
    ],
)
def test_preprocess_rejects_bad_input(bad, error, match):
    with pytest.raises(error, match=match):
        vit_hub.preprocess(bad, image_size=8)


def test_preprocess_rejects_a_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable JPEG, PNG, GIF, BMP, TIFF or WebP image"):
        vit_hub.preprocess(str(path))


def test_decode_predictions():
    logits = np.full((2, 1000), -5.0)
    logits[0, 281], logits[0, 0], logits[1, 999] = 9.0, 8.0, 7.0
    top = vit_hub.decode_predictions(logits, top=3)
    assert [t[:2] for t in top[0][:2]] == [("n02123045", "tabby, tabby cat"),
                                          ("n01440764", "tench, Tinca tinca")]
    assert top[1][0][0] == "n15075141"
    assert abs(sum(p for *_, p in vit_hub.decode_predictions(logits, top=1000)[0]) - 1) < 1e-9
    with pytest.raises(ValueError, match="shape \\(batch, 1000\\)"):
        vit_hub.decode_predictions(np.zeros((1, 10)))


# === resizing: numpy, the same on every backend ===


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape,size", [((50, 70, 3), (24, 24)), ((50, 70, 3), (96, 128)),
                                        ((7, 7, 16), (12, 10)), ((7, 7, 16), (4, 5))])
def test_resize_matches_jax_and_tensorflow(shape, size, method):
    """Against two independent implementations of the same sampling: jax.image.resize
    and tf.image.resize(antialias=True). float32 sums over up to ~30 taps: 1e-5."""
    import jax
    import tensorflow as tf

    from vit_hub.resize import resize

    x = np.random.default_rng(0).random(shape).astype(np.float32)
    for antialias in (True, False):
        ours = resize(x, size, method, antialias)
        want = np.asarray(jax.image.resize(x, (*size, shape[-1]), method, antialias=antialias))
        np.testing.assert_allclose(ours, want, atol=1e-5)
    want = tf.image.resize(x, size, method, antialias=True).numpy()
    np.testing.assert_allclose(resize(x, size, method), want, atol=1e-5)


def test_resize_rejects_an_unknown_method():
    from vit_hub.resize import resize

    with pytest.raises(ValueError, match=r"method must be one of \['bicubic', 'bilinear'\]"):
        resize(np.zeros((4, 4, 3)), (2, 2), "nearest")


# === other resolutions, new heads ===


def test_resample_position_embeddings():
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 4)[:, None, None] + np.linspace(0, 2, 4)[None, :, None]  # a ramp
    embeddings = np.concatenate([rng.normal(size=(1, 1, 3)).astype(np.float32),
                                 (grid * np.ones(3)).reshape(1, 16, 3)], 1)
    same = resample_position_embeddings(embeddings, (4, 4), (4, 4))
    np.testing.assert_allclose(same, embeddings, atol=1e-6)
    bigger = resample_position_embeddings(embeddings, (4, 4), (8, 6))
    assert bigger.shape == (1, 49, 3)
    np.testing.assert_array_equal(bigger[:, 0], embeddings[:, 0])  # class token kept
    patches = bigger[0, 1:, 0].reshape(8, 6)
    assert np.all(np.diff(patches, axis=0) > 0) and np.all(np.diff(patches, axis=1) > 0)


@pytest.mark.parametrize("size", [48, (32, 48)])
def test_load_at_another_resolution(tiny_weights, size):
    with pytest.warns(UserWarning, match="fine-tune at the new size"):
        model = vit_hub.load_weights(tiny_weights["fe"], image_size=size)
    h, w = (size, size) if isinstance(size, int) else size
    assert model.output_shape == (None, TINY["hidden_dim"])
    assert model(np.zeros((2, h, w, 3), np.float32)).shape == (2, TINY["hidden_dim"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at the trained size
        vit_hub.load_weights(tiny_weights["fe"])


def test_new_head_for_fine_tuning(tiny_weights, images):
    base = vit_hub.load_weights(tiny_weights["classification"])
    assert base.output_shape == (None, 1000)
    np.testing.assert_allclose(numpy(base(images)),
                               numpy(tiny_weights["classification_model"](images)), atol=1e-6)
    ten = vit_hub.load_weights(tiny_weights["classification"],
                                  num_classes=10)
    assert ten.output_shape == (None, 10)
    np.testing.assert_array_equal(ten.head.kernel.numpy(), 0)  # fresh head ...
    np.testing.assert_allclose(numpy(ten.extract_features(images)),
                               numpy(base.extract_features(images)), atol=1e-6)
    on_fe = vit_hub.load_weights(tiny_weights["fe"], include_top=True,
                                    num_classes=3)
    assert on_fe.output_shape == (None, 3)
    tokens = vit_hub.load_weights(tiny_weights["classification"],
                                     include_top=False)
    assert tokens.output_shape == (None, (TINY_IMAGE // TINY["patch_size"]) ** 2 + 1, TINY["hidden_dim"])


@needs_training
def test_pretrained_backbone_inside_a_keras3_model(tiny_weights, images):
    """The tutorial flow that needs hub.KerasLayer + tf_keras today, natively."""
    backbone = vit_hub.load_weights(tiny_weights["fe"])
    backbone.trainable = False
    inputs = keras.Input((TINY_IMAGE, TINY_IMAGE, 3))
    outputs = keras.layers.Dense(2)(backbone(inputs, training=False))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    frozen = [w.copy() for w in backbone.get_weights()]
    model.fit(images, np.array([0, 1, 0]), epochs=2, verbose=0)
    for old, new in zip(frozen, backbone.get_weights()):
        np.testing.assert_array_equal(old, new)
    backbone.trainable = True
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, np.array([0, 1, 0]), epochs=1, verbose=0)
    assert any(np.any(old != new) for old, new in zip(frozen, backbone.get_weights()))


# === attention and intermediates ===


def test_attention_maps_match_the_numpy_reference(images):
    params = tiny_params()
    model = tiny_model(include_top=False, pooling="token")
    assign_linen(model, flatten(params))
    _, _, _, expected = vit_forward(params, images, TINY["patch_size"])
    maps = vit_hub.attention_maps(model, images)
    assert len(maps) == TINY["num_layers"]
    tokens = (TINY_IMAGE // TINY["patch_size"]) ** 2 + 1
    for got, want in zip(maps, expected):
        assert got.shape == (len(images), TINY["num_heads"], tokens, tokens)
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    outputs = vit_hub.intermediate_outputs(model, images)
    assert [o.shape for o in outputs] == [(len(images), tokens, TINY["hidden_dim"])] * TINY["num_layers"]
    np.testing.assert_allclose(numpy(model.encoder_norm(outputs[-1])), numpy(model.encode(images)),
                               atol=1e-6)


def test_attention_rollout_and_overlay(tmp_path, images):
    model = tiny_model(include_top=False, pooling="token")
    assign_linen(model, flatten(tiny_params()))
    maps = vit_hub.attention_maps(model, images)
    rollout = vit_hub.attention_rollout(maps, model.grid_size)
    assert rollout.shape == (len(images), *model.grid_size)
    assert rollout.min() == 0.0 and np.allclose(rollout.max(axis=(1, 2)), 1.0)
    # A block whose class token attends only to patch 5 makes patch 5 the brightest.
    focused = np.zeros_like(maps[0])
    focused[..., :, :] = np.eye(maps[0].shape[-1])
    focused[:, :, 0, :] = 0
    focused[:, :, 0, 6] = 1.0
    assert np.argmax(vit_hub.attention_rollout([focused], model.grid_size)[0]) == 5
    path = vit_hub.save_attention_overlay(images[-1], rollout[-1], tmp_path / "rollout.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 500
    # What preprocess reads, attention_maps reads: a path, its bytes, a binary file.
    from_path = vit_hub.attention_maps(model, [str(path)])
    for given in (data, io.BytesIO(data)):
        np.testing.assert_array_equal(vit_hub.attention_maps(model, [given])[0], from_path[0])
    with pytest.raises(ValueError, match="head_fusion"):
        vit_hub.attention_rollout(maps, model.grid_size, head_fusion="min")


# === mixed precision ===


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_agrees_with_float32(tiny_weights, images, policy):
    fp32 = vit_hub.load_weights(tiny_weights["fe"])
    low = vit_hub.load_weights(tiny_weights["fe"], dtype=policy)
    assert low.dtype_policy.name == policy
    assert vit_hub.VisionTransformer.from_config(low.get_config()).dtype_policy.name == policy
    assert low.blocks[0].attention.compute_dtype == policy.split("_")[1]
    assert all(w.dtype == "float32" for w in low.weights)  # variables stay float32
    a = numpy(fp32(images)).astype(np.float64)
    b = numpy(low(images)).astype(np.float64)
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() >= 0.999, cosine
    assert np.abs(a - b).max() > 1e-6  # it really ran in lower precision


@needs_training
def test_bf16_training_follows_the_float32_loss_curve():
    """The same model, data and optimizer in float32 and mixed_bfloat16: 10 epochs of 4
    steps on a learnable task. bf16 rounds each op's result to 8 significant bits
    (2^-9 relative); measured here, the curves differ by at most 0.17% of the first
    epoch's loss (TensorFlow; 0.05% JAX, 0.08% PyTorch): 2% leaves a 10x margin."""
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 4
    images = rng.uniform(-1, 1, (32, TINY_IMAGE, TINY_IMAGE, 3)).astype(np.float32)
    images[..., 0] += (labels[:, None, None] - 1.5) * 0.3  # the class is in the red
    keras.utils.set_random_seed(0)
    start = vit_hub.VisionTransformer(image_size=TINY_IMAGE, num_classes=4, **TINY)
    start.head.kernel.assign(rng.normal(0, 0.1, start.head.kernel.shape).astype("float32"))

    def curve(policy):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vit_hub.PerformanceWarning)
            model = vit_hub.VisionTransformer(image_size=TINY_IMAGE, num_classes=4,
                                              dtype=policy, **TINY)
        model.set_weights(start.get_weights())
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(images, labels, batch_size=8, epochs=10, shuffle=False,
                            verbose=0)
        return model, np.array(history.history["loss"])

    fp32, fp32_loss = curve("float32")
    bf16, bf16_loss = curve("mixed_bfloat16")
    assert bf16.blocks[0].mlp.dense_1.compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in bf16.weights)
    assert fp32_loss[-1] < 0.2 * fp32_loss[0]  # it learns
    assert np.abs(bf16_loss - fp32_loss).max() <= 0.02 * fp32_loss[0], (fp32_loss, bf16_loss)
    assert np.abs(bf16_loss - fp32_loss).max() > 0  # and really ran in bf16


def test_bf16_where_it_is_emulated_warns_with_the_measured_speed():
    from vit_hub import precision

    speedup = precision.bf16_speedup()  # measured once a process, as the warning uses
    precision._warn_if_emulated.cache_clear()  # (an earlier test may have asked for bf16)
    vit_hub.register_variant("vit_tiny_bf16_check", **TINY, overwrite=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vit_hub.create_vit("vit_tiny_bf16_check", image_size=TINY_IMAGE, dtype="mixed_bfloat16")
        vit_hub.create_vit("vit_tiny_bf16_check", image_size=TINY_IMAGE, dtype="mixed_bfloat16")
        # The constructor (and so from_config, clones, .keras loads) measures nothing.
        vit_hub.VisionTransformer(image_size=TINY_IMAGE, dtype="mixed_bfloat16", **TINY)
    slow = [str(w.message) for w in caught
            if issubclass(w.category, vit_hub.PerformanceWarning)]
    if keras.backend.backend() == "openvino" or speedup >= precision.MIN_SPEEDUP:
        assert slow == []
    else:  # this project's CI: AVX2 CPUs, no bf16 instructions
        assert len(slow) == 1  # once a process
        assert f"ran at {speedup:.2f}x the float32 rate" in slow[0]
