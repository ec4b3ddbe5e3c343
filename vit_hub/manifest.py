"""The catalogue of published models: `weights_manifest.json`, shipped in the package."""

import functools
import importlib.resources
import json
import re

from vit_hub.variants import suggest, variant_config

# owner/model/framework/variation/version, each a plain slug: no '..', no '/', no spaces.
_HANDLE = re.compile(r"^[a-z0-9-]+/[a-z0-9-]+/[A-Za-z0-9]+/[a-z0-9-]+/[0-9]+$")
_NAME = re.compile(r"^[a-z0-9_]+$")
_FIELDS = {"handle": str, "variant": str, "kind": str, "image_size": int, "num_tensors": int,
           "num_params": int}


class ManifestError(ValueError):
    """A manifest entry is missing or malformed."""


@functools.cache
def load_manifest():
    text = importlib.resources.files("vit_hub").joinpath("weights_manifest.json").read_text()
    models = json.loads(text)["models"]
    for name, entry in models.items():
        validate_entry(name, entry)
    return models


def validate_entry(name, entry):
    """Raises ManifestError naming each bad field, so a broken manifest fails loudly
    before any path is built from it."""
    problems = []
    if not isinstance(entry, dict):
        raise ManifestError(f"Manifest entry {name!r} is invalid: it must be a JSON object "
                            f"of fields, got {entry!r}.")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append("the name must be lower-case letters, digits and '_' (no path "
                        "separators or '..')")
    for field, kind in _FIELDS.items():
        if not isinstance(entry.get(field), kind):
            problems.append(f"'{field}' must be a {kind.__name__}, got {entry.get(field)!r}")
    if isinstance(entry.get("handle"), str) and not _HANDLE.fullmatch(entry["handle"]):
        problems.append(f"'handle' {entry['handle']!r} is not owner/model/framework/variation/"
                        "version with a pinned numeric version")
    for field in ("image_size", "num_tensors", "num_params"):
        value = entry.get(field)
        if isinstance(value, bool) or (isinstance(value, int) and value < 0) or (
                field == "image_size" and value == 0):
            sign = "positive" if field == "image_size" else "non-negative"
            problems.append(f"'{field}' must be a {sign} int, got {value!r}")
    if entry.get("kind") not in ("fe", "classification"):
        problems.append(f"'kind' must be 'fe' or 'classification', got {entry.get('kind')!r}")
    if problems:
        raise ManifestError(f"Manifest entry {name!r} is invalid: " + "; ".join(problems) + ".")


def list_models():
    """Names accepted by `load_pretrained`."""
    return list(load_manifest())


def get_entry(name):
    """The manifest entry of `name`, validated (ManifestError naming each bad field)."""
    models = load_manifest()
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a model name: names are lower-case letters, digits and '_' "
            f"(no '/', '\\' or '..'). {suggest(str(name), models)}"
            f"Available: {', '.join(models)}."
        )
    if name not in models:
        raise ValueError(
            f"Unknown pretrained model {name!r}. {suggest(name, models)}"
            f"Available: {', '.join(models)}."
        )
    validate_entry(name, models[name])  # also entries added at run time
    return models[name]


def architecture_for(entry):
    """VisionTransformer kwargs of a manifest entry as published (1000-class head)."""
    if entry.get("converter") != "vit":
        raise NotImplementedError(
            f"{entry['handle']} is a hybrid ResNet+ViT ({entry['variant']}); its converter "
            "is not there yet. The plain ViTs (s16, b8, b16, b32, l16) convert."
        )
    return {**variant_config(entry["variant"]), "image_size": entry["image_size"],
            "num_classes": 1000}
