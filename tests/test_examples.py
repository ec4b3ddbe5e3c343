"""Smoke tests of the tutorial examples: each `main` runs end to end with tiny settings.

The fine-tune example gets a tiny converted weights file built here (random weights),
so it depends neither on the network nor on the demo's cache.
"""

import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the examples use scikit-learn's digits")
pytest.importorskip("matplotlib", reason="the examples plot with matplotlib")

from tests.conftest import TINY, TINY_IMAGE

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def examples_first_on_path(monkeypatch):
    """As `python examples/NAME.py` runs them: examples/ first on sys.path, where their
    shared helpers are."""
    monkeypatch.syspath_prepend(EXAMPLES)


def load_example(name):
    """examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png(path):
    assert os.path.isfile(path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert os.path.getsize(path) > 10_000  # two axes with curves, not an empty figure


@pytest.fixture
def tiny_weights(tmp_path):
    """A converted weights file of a tiny fe-style ViT (random weights)."""
    import vit_hub
    from vit_hub.weights import save_weights_file

    model = vit_hub.VisionTransformer(include_top=False, pooling="token",
                                      image_size=TINY_IMAGE, **TINY)
    return save_weights_file(model, tmp_path / "tiny_fe.h5")


def test_fine_tune_runs_and_saves_a_model_that_reloads(tmp_path, tiny_weights):
    output = tmp_path / "fine_tune.png"
    # 64 px resamples the tiny model's 4x4 position grid to 8x8, as 96 px does for B/32.
    with pytest.warns(UserWarning, match="resampled"):
        result = load_example("fine_tune").main([
            "--samples", "64", "--epochs", "1", "--fine-tune-epochs", "1",
            "--image-size", "64", "--weights", os.fspath(tiny_weights),
            "--output", os.fspath(output),
        ])
    assert_png(output)
    history = result["history"]
    assert len(history["loss"]) == len(history["val_accuracy"]) == 2  # both phases
    assert all(np.isfinite(history["loss"]))
    assert os.path.isfile(tmp_path / "fine_tuned.keras")
    assert result["reload_max_abs_diff"] < 1e-5
    lora = result["lora"]  # the second phase again, with LoRA
    assert len(lora["history"]["loss"]) == 1 and np.isfinite(lora["history"]["loss"]).all()
    assert 0 < lora["trainable"] < lora["total"] / 2
    assert os.path.getsize(lora["path"]) < os.path.getsize(tmp_path / "fine_tuned.keras") / 2
    assert lora["merge_max_abs_diff"] < 1e-5


def test_train_from_scratch_runs_and_the_loss_decreases(tmp_path):
    output = tmp_path / "scratch.png"
    result = load_example("train_from_scratch").main([
        "--samples", "128", "--epochs", "3", "--image-size", "8",
        "--output", os.fspath(output),
    ])
    assert_png(output)
    loss = result["history"]["loss"]
    assert len(loss) == 3
    assert loss[-1] < loss[0]


def test_migrate_from_hub_runs_both_phases_and_reloads(tmp_path, tiny_saved_model):
    from tests import checkpoints
    from tests.conftest import TINY_NAME

    checkpoints.cache_copy(tmp_path / "cache", TINY_NAME)
    output = tmp_path / "migrate.png"
    result = load_example("migrate_from_hub").main([
        "--handle", "spsayakpaul/vision-transformer/TensorFlow2/vit-tiny8-fe",
        "--cache-dir", os.fspath(tmp_path / "cache"), "--image-size", str(TINY_IMAGE),
        "--samples", "64", "--epochs", "1", "--fine-tune-epochs", "1",
        "--output", os.fspath(output),
    ])
    assert_png(output)
    assert len(result["history"]["loss"]) == 2  # frozen, then unfrozen
    assert result["reload_max_abs_diff"] < 1e-5


# === examples/demo.py: the main job, through the public API ===

DEMO = os.path.join(EXAMPLES, "demo.py")


def test_demo_uses_the_public_api_only():
    """The demo imports `vit_hub` and, to build a stand-in checkpoint, its
    `conversion.published_format`; every `vit_hub.NAME` it uses is in `vit_hub.__all__`
    (the conversion itself runs through the `convert-weights` command)."""
    import ast

    import vit_hub

    tree = ast.parse(open(DEMO, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names if a.name.startswith("vit_hub")}
        elif isinstance(node, ast.ImportFrom) and node.module.startswith("vit_hub"):
            imported |= {f"{node.module}.{a.name}" for a in node.names}
    assert imported == {"vit_hub", "vit_hub.conversion.published_format"}
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "vit_hub"}
    assert used and used <= set(vit_hub.__all__), used - set(vit_hub.__all__)


@pytest.mark.slow
def test_demo_prints_only_its_lines(tmp_path):
    """The whole demo on a full-size ViT-B/32 (about a minute). Offline (VIT_HUB_OFFLINE,
    an empty user cache) it builds, converts and uses the stand-in in --out, and prints
    no warning and no TensorFlow start-up line between its own lines."""
    import subprocess
    import sys

    env = dict(os.environ, VIT_HUB_OFFLINE="1", VIT_HUB_CACHE=os.fspath(tmp_path / "cache"))
    done = subprocess.run([sys.executable, DEMO, "--out", os.fspath(tmp_path)],
                          capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stderr[-5000:]
    output = done.stdout + done.stderr
    assert "Warning" not in output and "I0000" not in output, output
    assert "load_pretrained('vit_b32_fe'): 87,455,232 parameters" in done.stdout
