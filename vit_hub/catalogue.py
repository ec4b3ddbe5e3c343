"""The catalogue of pretrained models: the published ones (`weights_manifest.json`, shipped
in the package) and those registered at run time with `register_model`.

Every entry, shipped or registered, passes the same validation and becomes a frozen
`ModelEntry`. Handles and names are checked here once, because paths are built from them.
"""

import dataclasses
import functools
import importlib.resources
import json
import re

from vit_hub.architecture import get_variant, image_hw, suggest
from vit_hub.errors import CatalogueError, ConfigError, UnsupportedModelError

# owner/model/framework/variation/version, each a plain slug: no '..', no '/', no spaces.
_HANDLE = re.compile(r"[a-z0-9-]+/[a-z0-9-]+/[A-Za-z0-9]+/[a-z0-9-]+/[0-9]+")
_NAME = re.compile(r"[a-z0-9_]+")
KINDS = ("fe", "classification")
CONVERTERS = ("vit",)


def is_name(name):
    """Whether `name` can be a model name, hence one path component (never '..')."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def is_handle(handle):
    """Whether `handle` is a pinned Kaggle handle of plain slugs."""
    return isinstance(handle, str) and _HANDLE.fullmatch(handle) is not None


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One pretrained model: where it is published and what it computes."""

    name: str
    handle: str  # kagglehub handle, version pinned
    variant: str  # a registered variant (see vit_hub.register_variant)
    kind: str  # 'fe' (class-token features) or 'classification' (logits)
    image_size: tuple  # (height, width) it was trained and published at
    num_tensors: int  # tensors in the published checkpoint
    num_params: int
    converter: str = None  # 'vit'; None: listed, but no native converter yet
    input_range: tuple = (-1.0, 1.0)
    output: dict = None  # {"kind": "features" | "logits", "shape": [None, D]}
    source_checkpoint: str = None
    top1: float = None  # published ImageNet-1k top-1 (%), see weights_manifest.json
    note: str = None

    @property
    def classification(self):
        return self.kind == "classification"

    @property
    def architecture(self):
        """The network as published (a 1000-class head for classification models).
        UnsupportedModelError for entries registered without a converter."""
        if self.converter is None:
            raise UnsupportedModelError(
                f"{self.name} ({self.handle}) has no native converter: its entry says "
                "'converter': null. Register it with 'converter': 'vit' if its variant "
                f"({self.variant}) describes its network.")
        return get_variant(self.variant).replace(
            image_size=self.image_size, include_top=self.classification, num_classes=1000)

    def to_dict(self):
        """The manifest's JSON form (without the name, which is the key)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items()
                  if v is not None or k == "converter"}  # null converter: said, not implied
        del fields["name"]
        return {**fields, "image_size": self.image_size[0] if self.image_size[0] ==
                self.image_size[1] else list(self.image_size),
                "input_range": list(self.input_range)}

    @classmethod
    def from_dict(cls, name, fields):
        """Validates a manifest entry; CatalogueError naming each bad field."""
        problems = _problems(name, fields)
        if problems:
            raise CatalogueError(f"Catalogue entry {name!r} is invalid: "
                                 + "; ".join(problems) + ".")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(name=name, **{**{k: v for k, v in fields.items() if k in known},
                                 "image_size": image_hw(fields["image_size"]),
                                 "input_range": tuple(fields.get("input_range", (-1.0, 1.0)))})


_TYPES = {"handle": str, "variant": str, "kind": str, "num_tensors": int, "num_params": int}


def _problems(name, fields):
    """Each bad field of a manifest entry, as a phrase."""
    if not isinstance(fields, dict):
        return [f"it must be a JSON object of fields, got {fields!r}"]
    problems = []
    if not is_name(name):
        problems.append("the name must be lower-case letters, digits and '_' (no path "
                        "separators or '..')")
    known = {f.name for f in dataclasses.fields(ModelEntry)} - {"name"}
    problems += [f"unknown field {key!r}" for key in fields if key not in known]
    for field, kind in _TYPES.items():
        value = fields.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"'{field}' must be a {kind.__name__}, got {value!r}")
        elif kind is int and value < 0:
            problems.append(f"'{field}' must be a non-negative int, got {value!r}")
    if isinstance(fields.get("handle"), str) and not is_handle(fields["handle"]):
        problems.append(f"'handle' {fields['handle']!r} is not owner/model/framework/"
                        "variation/version with a pinned numeric version")
    top1 = fields.get("top1")
    if top1 is not None and (not isinstance(top1, (int, float)) or isinstance(top1, bool)
                             or not 0 <= top1 <= 100):
        problems.append(f"'top1' must be a percentage (0 to 100) or null, got {top1!r}")
    if fields.get("kind") not in KINDS:
        problems.append(f"'kind' must be 'fe' or 'classification', got {fields.get('kind')!r}")
    try:
        image_hw(fields.get("image_size"))
    except ConfigError:
        problems.append(f"'image_size' must be a positive int or [height, width], got "
                        f"{fields.get('image_size')!r}")
    converter = fields.get("converter")
    if converter is not None and converter not in CONVERTERS:
        problems.append(f"'converter' must be one of {CONVERTERS} or null, got {converter!r}")
    if converter is not None and isinstance(fields.get("variant"), str):
        try:
            get_variant(fields["variant"])
        except ConfigError as err:
            problems.append(f"'variant': {err} Register it first (vit_hub.register_variant)")
    return problems


@functools.cache
def _shipped():
    text = importlib.resources.files("vit_hub").joinpath("weights_manifest.json").read_text()
    return {name: ModelEntry.from_dict(name, fields)
            for name, fields in json.loads(text)["models"].items()}


_REGISTERED = {}


def _models():
    return {**_shipped(), **_REGISTERED}


def register_model(name, entry, *, overwrite=False):
    """Adds a model to the catalogue: `entry` is a dict of manifest fields (as in
    weights_manifest.json) or a ModelEntry, validated like the shipped manifest. Its
    variant must be registered. Registering a name again with the same entry does
    nothing; with another entry it is an error unless `overwrite=True`."""
    if isinstance(entry, ModelEntry):
        entry = entry.to_dict()
    record = ModelEntry.from_dict(name, entry)
    existing = _models().get(name)
    if existing is not None and existing != record and not overwrite:
        raise CatalogueError(f"model {name!r} is already in the catalogue ({existing.handle});"
                             " pass overwrite=True to replace it.")
    _REGISTERED[name] = record
    return record


def list_models():
    """Names accepted by `load_pretrained`."""
    return list(_models())


def get_entry(name):
    """The ModelEntry of `name`; CatalogueError for an unknown or malformed name."""
    models = _models()
    if not is_name(name):
        raise CatalogueError(
            f"{name!r} is not a model name: names are lower-case letters, digits and '_' "
            f"(no '/', '\\' or '..'). {suggest(str(name), models)}"
            f"Available: {', '.join(models)}.")
    if name not in models:
        raise CatalogueError(f"Unknown pretrained model {name!r}. {suggest(name, models)}"
                             f"Available: {', '.join(models)}.")
    return models[name]

