"""Tiny checkpoints in the published format, and caches converted from them, built once
and shared by every test module, pytest-xdist worker and backend run.

Exporting a SavedModel (Flax + jax2tf) and converting it (TensorFlow, then the parity
check through hub.KerasLayer) take seconds each, and modules, workers and the four
backend runs used to redo them. What they produce depends only on the model, the seed
and the code, so it is kept in the temporary folder under a digest of vit_hub's sources
and this file: the first process to ask builds it under a file lock, with vit_hub's own
atomic folder write (a reader never sees half of one). Tests read these folders; a test
that changes a cache works on `cache_copy`.
"""

import hashlib
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

import vit_hub
from vit_hub.files import atomic_folder

SOURCES = Path(vit_hub.__file__).parent
SEED = 3


def _digest():
    digest = hashlib.sha256()
    for path in sorted([*SOURCES.rglob("*.py"), Path(__file__)]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


ROOT = Path(tempfile.gettempdir()) / "vit_hub-tests" / _digest()


def built(name, build):
    """ROOT/name, made by `build(folder)` (into an empty folder) unless it exists."""
    target = ROOT / name
    if target.exists():
        return target
    ROOT.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if not target.exists():
            with atomic_folder(target) as staging:
                build(staging)
    return target


def hub_config(name):
    """The published-format config of catalogue model `name` (a registered tiny one)."""
    from vit_hub.conversion import published_format

    entry = vit_hub.get_entry(name)
    arch = entry.architecture
    return published_format.HubConfig(
        arch.patch_size, arch.hidden_dim, arch.num_layers, arch.num_heads, arch.mlp_dim,
        num_classes=1000, image_size=entry.image_size[0], resnet_units=arch.resnet_units)


def saved_model(name, seed=SEED):
    """The SavedModel folder of `name` in the published format (random weights, `seed`)."""

    def build(folder):
        from vit_hub.conversion import published_format

        config, kind = hub_config(name), vit_hub.get_entry(name).kind
        params = published_format.init_params(config, kind, seed=seed)
        published_format.export_saved_model(params, config, kind, str(folder))

    return str(built(f"{name}-{seed}", build))


def converted_cache(*names, seed=SEED):
    """A vit_hub cache folder holding `names` converted from their `saved_model`s, parity
    checked. Read it only: see `cache_copy`."""

    def build(folder):
        from vit_hub.conversion.pipeline import convert_into_cache

        for name in names:
            convert_into_cache(name, cache_dir=folder, source=saved_model(name, seed))

    return built(f"cache-{'+'.join(names)}-{seed}", build)


def cache_copy(folder, *names, seed=SEED):
    """A private copy of `converted_cache(*names)` at `folder`, for a test that writes."""
    shutil.copytree(converted_cache(*names, seed=seed), folder,
                    ignore=shutil.ignore_patterns("*.lock"))
    return Path(folder)
