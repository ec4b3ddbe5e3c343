"""The catalogue and its records, the one error base, the installed package's shape, and
what stays light (no deep-learning framework imported)."""

import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import vit_hub
from tests.conftest import TINY, TINY_ENTRY
from vit_hub import errors
from vit_hub.architecture import Architecture, image_hw
from vit_hub.catalogue import ModelEntry
from vit_hub.conversion.name_map import linen_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHED = ("s16", "b8", "b16", "b32", "l16", "r26_s32_lightaug", "r26_s32_medaug", "r50_l32")


# === The shipped catalogue ===


def test_the_16_published_models():
    assert vit_hub.list_models()[:16] == [  # registered models follow the shipped ones
        f"vit_{arch}_{kind}" for arch in PUBLISHED for kind in ("fe", "classification")]
    for arch in PUBLISHED:
        for kind in ("fe", "classification"):
            entry = vit_hub.get_entry(f"vit_{arch}_{kind}")
            assert isinstance(entry, ModelEntry) and entry.kind == kind
            assert entry.handle == (
                f"spsayakpaul/vision-transformer/tensorFlow2/vit-{arch.replace('_', '-')}-{kind}/1")
            assert entry.image_size == (224, 224) and entry.input_range == (-1.0, 1.0)


def test_every_published_model_has_a_converter():
    for name in vit_hub.list_models()[:16]:
        assert vit_hub.get_entry(name).converter == "vit", name
        _ = vit_hub.get_entry(name).architecture  # raises UnsupportedModelError otherwise
    assert vit_hub.get_entry("vit_r50_l32_fe").top1 == 83.784
    assert vit_hub.get_entry("vit_b32_classification").top1 == 79.436
    assert "medaug" in vit_hub.get_entry("vit_r26_s32_lightaug_fe").note


PUBLISHED_VARIANTS = [
    ("vit_b8", "vit_b8"), ("vit_b16", "vit_b16"), ("vit_b32", "vit_b32"), ("vit_s16", "vit_s16"),
    ("vit_l16", "vit_l16"), ("vit_r26_s32_lightaug", "vit_r26_s32"),
    ("vit_r26_s32_medaug", "vit_r26_s32"), ("vit_r50_l32", "vit_r50_l32")]


@pytest.mark.parametrize("name,variant", PUBLISHED_VARIANTS)
def test_counts_of_every_model_are_its_architectures(name, variant):
    """The manifest's counts, by arithmetic (the name map's shape of every weight, which
    tests/test_converters.py holds against built models)."""
    for kind, top in (("fe", False), ("classification", True)):
        entry = vit_hub.get_entry(f"{name}_{kind}")
        architecture = Architecture(**vit_hub.variant_config(variant), image_size=224,
                                    include_top=top, num_classes=1000)
        shapes = linen_shapes(architecture)
        assert entry.num_params == sum(math.prod(shape) for shape in shapes.values())
        assert entry.num_tensors == len(shapes)
        assert entry.architecture == architecture
        assert entry.output["shape"][1:] == [1000 if top else architecture.hidden_dim]


@pytest.mark.slow
@pytest.mark.parametrize("name,variant", PUBLISHED_VARIANTS)
def test_counts_of_every_model_are_the_built_models(name, variant):
    from vit_hub.layers import weights_to_be_loaded

    for kind, top in (("fe", False), ("classification", True)):
        entry = vit_hub.get_entry(f"{name}_{kind}")
        with weights_to_be_loaded():  # shapes only: no random initialisation
            model = vit_hub.create_vit(variant, include_top=top, pooling="token")
        assert entry.num_params == model.count_params()
        assert entry.num_tensors == len(model.weights)
        assert entry.output["shape"][1:] == list(model.output_shape[1:])
        assert entry.architecture == Architecture.of(model)


def test_entries_round_trip_through_their_json_form():
    manifest = json.load(open(os.path.join(REPO, "vit_hub", "weights_manifest.json")))["models"]
    for name, fields in manifest.items():
        entry = vit_hub.get_entry(name)
        assert entry.to_dict() == fields
        assert ModelEntry.from_dict(name, entry.to_dict()) == entry


def test_the_manifest_is_installed_and_the_wheel_holds_one_package(tmp_path):
    """`pip wheel .` gives one top-level folder, vit_hub (the manifest inside it, not a
    link); installed alone, it imports without the repository, and `converters` is not
    a package of it."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), REPO], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("vit_hub-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        shipped = archive.read("vit_hub/weights_manifest.json")
        entry_points = archive.read(next(n for n in archive.namelist()
                                         if n.endswith("entry_points.txt"))).decode()
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vit_hub"}
    assert json.loads(shipped) == json.load(open(os.path.join(REPO, "vit_hub", "weights_manifest.json")))
    assert "convert-weights = vit_hub.cli.convert_weights:main" in entry_points
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True)
    probe = ("import importlib.util, vit_hub, vit_hub.cli.convert_weights; "
             "print(vit_hub.__file__); print(importlib.util.find_spec('converters'))")
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                           f"{str(target)!r}); {probe}"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    location, converters = done.stdout.split()
    assert location.startswith(str(target)) and converters == "None"


# === Registering private models through the public API ===


def test_register_a_private_variant_and_model():
    vit_hub.register_variant("vit_private4", patch_size=4, hidden_dim=16, num_layers=1,
                             num_heads=2, mlp_dim=32)
    assert "vit_private4" in vit_hub.list_variants()
    model = vit_hub.create_vit("vit_private4", image_size=16, include_top=False)
    assert model.output_shape == (None, 17, 16)
    entry = vit_hub.register_model("vit_private4_fe", {
        **TINY_ENTRY, "variant": "vit_private4", "image_size": 16,
        "handle": "me/private/tensorFlow2/private4-fe/3"})
    assert vit_hub.get_entry("vit_private4_fe") is entry
    assert entry.architecture == Architecture(4, 16, 1, 2, 32, image_size=16, include_top=False)
    # The same registration again changes nothing; another one needs overwrite=True.
    vit_hub.register_variant("vit_private4", patch_size=4, hidden_dim=16, num_layers=1,
                             num_heads=2, mlp_dim=32)
    with pytest.raises(vit_hub.ConfigError, match="already registered.*overwrite=True"):
        vit_hub.register_variant("vit_private4", **{**TINY, "patch_size": 4})
    with pytest.raises(vit_hub.CatalogueError, match="already in the catalogue"):
        vit_hub.register_model("vit_b32_fe", {**TINY_ENTRY})
    assert vit_hub.get_entry("vit_b32_fe").variant == "vit_b32"  # untouched


def test_a_bad_entry_is_one_error_naming_each_bad_field():
    with pytest.raises(vit_hub.CatalogueError) as err:
        vit_hub.register_model("vit_bad_fe", {**TINY_ENTRY, "image_size": "224",
                                              "kind": "detector", "num_params": -1,
                                              "variant": "vit_nowhere", "colour": "red"})
    text = str(err.value)
    assert text.startswith("Catalogue entry 'vit_bad_fe' is invalid: ")
    for phrase in ("unknown field 'colour'", "'num_params' must be a non-negative int, got -1",
                   "'kind' must be 'fe' or 'classification', got 'detector'",
                   "'image_size' must be a positive int or [height, width], got '224'",
                   "'variant': Unknown ViT variant 'vit_nowhere'"):
        assert phrase in text
    assert "vit_bad_fe" not in vit_hub.list_models()
    with pytest.raises(vit_hub.ConfigError, match=r"missing \['mlp_dim'\], unknown \['width'\]"):
        vit_hub.register_variant("vit_bad", patch_size=8, hidden_dim=32, num_layers=1,
                                 num_heads=4, width=3)


# === Records ===


@pytest.mark.parametrize("size,expected", [(224, (224, 224)), ((224, 320), (224, 320)),
                                           ([96, 64], (96, 64)), (np.int64(32), (32, 32))])
def test_image_sizes_are_normalised_in_one_place(size, expected):
    assert image_hw(size) == expected
    assert Architecture(**TINY, image_size=size).image_size == expected


@pytest.mark.parametrize("size", [0, -32, True, "224", (224,), (224, 224, 3), 22.4, None])
def test_bad_image_sizes_are_refused(size):
    with pytest.raises(vit_hub.ConfigError, match="image_size must be a positive int or a "
                                                  r"\(height, width\) pair"):
        image_hw(size)


def test_architecture_records_round_trip():
    arch = Architecture(**TINY, image_size=(32, 48), include_top=False, num_classes=7)
    assert Architecture.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    assert arch.grid_size == (4, 6) and arch.num_tokens == 25
    model = vit_hub.VisionTransformer(**arch.to_dict())
    assert Architecture.of(model) == arch
    with pytest.raises(vit_hub.ConfigError, match=r"missing \['num_heads'\]"):
        Architecture.from_dict({k: v for k, v in arch.to_dict().items() if k != "num_heads"})
    with pytest.raises(vit_hub.ConfigError, match="divisible by num_heads"):
        Architecture(**{**TINY, "num_heads": 5})


def test_every_error_derives_from_vit_hub_error():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) >= 15
    assert all(issubclass(c, vit_hub.VitHubError) for c in classes)
    # ... and each kept the built-in base that older `except` clauses name.
    assert issubclass(vit_hub.CatalogueError, ValueError)
    assert issubclass(vit_hub.CacheError, RuntimeError)
    assert issubclass(vit_hub.UnsupportedModelError, NotImplementedError)
    assert issubclass(errors.ImageTypeError, TypeError)
    assert issubclass(errors.MissingFileError, FileNotFoundError)


# === The public API and what stays light ===


def test_public_names_are_explicit():
    import inspect

    from vit_hub import create_vit_b16  # a real, documented function of vit_hub.model

    assert inspect.getmodule(create_vit_b16).__name__ == "vit_hub.model"
    assert "ViT-B/16" in create_vit_b16.__doc__
    assert create_vit_b16(image_size=32, include_top=False).output_shape == (None, 5, 768)
    for name in vit_hub.__all__:
        assert getattr(vit_hub, name) is not None, name
    assert set(vit_hub.__all__) <= set(dir(vit_hub))
    assert {f"create_{v}" for v in vit_hub.list_variants() if "tiny" not in v
            and "private" not in v} <= set(vit_hub.__all__)


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}, timeout=300)


HEAVY = "sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch', 'openvino', 'nncf', 'kagglehub') if m in sys.modules)"
HEAVY_OR_RAY = HEAVY.replace("'kagglehub')", "'kagglehub', 'ray', 'pyarrow')")


@pytest.mark.parametrize("argv", [["--help"], ["--list"], [], ["vit_b32_fx"],
                                  ["vit_b32_fe", "--source", "/nonexistent"]])
def test_convert_weights_answers_help_list_and_usage_errors_without_a_framework(argv):
    done = run_python(f"import sys; from vit_hub.cli.convert_weights import main\n"
                      f"try:\n    code = main({argv!r})\nexcept SystemExit as exit:\n"
                      f"    code = exit.code\nprint('CODE', code, {HEAVY})")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"CODE {0 if argv in (['--help'], ['--list']) else 2} []"


@pytest.mark.parametrize("command, argv", [
    ("vit_embed", ["--help"]), ("vit_embed", []),
    ("vit_embed", ["vit_b32_fe", "photos", "-o", "out", "--workers", "0"]),
    ("vit_serve", ["--help"]), ("vit_serve", []), ("vit_serve", ["vit_b32_fe", "--replicas", "0"]),
    ("vit_serve", ["vit_b32_fe", "--precision", "int8"])])
def test_ray_commands_answer_help_and_usage_errors_without_a_framework_or_ray(command, argv):
    done = run_python(f"import sys; from vit_hub.cli.{command} import main\n"
                      f"try:\n    code = main({argv!r})\nexcept SystemExit as exit:\n"
                      f"    code = exit.code\n"
                      f"print('CODE', code, {HEAVY_OR_RAY})")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"CODE {0 if argv == ['--help'] else 2} []"


def test_import_vit_hub_serve_is_light():
    done = run_python(f"import sys, vit_hub.serve; print({HEAVY_OR_RAY})")
    assert done.stdout.strip() == "[]", done.stderr


def test_import_vit_hub_is_light():
    done = run_python(f"import sys, vit_hub; vit_hub.list_models(); print({HEAVY})")
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("imports", ["import keras, vit_hub", "import tensorflow, vit_hub",
                                     "import vit_hub, vit_hub.model"])
def test_keras_files_load_once_vit_hub_registered_its_classes(tmp_path, imports):
    """Keras finds the classes of a .keras file by registered name: `import vit_hub`
    registers them when Keras is already imported (it stays light otherwise), and
    importing the module that defines them registers them, as Keras documents."""
    path = tmp_path / "tiny.keras"
    vit_hub.VisionTransformer(image_size=16, **{**TINY, "num_layers": 1}, num_classes=3).save(path)
    done = run_python(f"{imports}; import keras, sys; "
                      f"model = keras.saving.load_model({str(path)!r}); "
                      f"print(type(model).__name__, 'vit_hub.model' in sys.modules)")
    assert done.stdout.strip() == "VisionTransformer True", done.stderr


def test_importing_vit_hub_changes_no_import_machinery():
    done = run_python("import sys; before = list(sys.meta_path); import vit_hub; "
                      "print(sys.meta_path == before, 'keras' in sys.modules)")
    assert done.stdout.strip() == "True False", done.stderr
