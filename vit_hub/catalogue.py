"""The catalogue of pretrained models: the published ones (`weights_manifest.json`, shipped
in the package) and those registered at run time with `register_model`.

Every entry, shipped or registered, passes the same validation and becomes a frozen
`ModelEntry`. Handles and names are checked here once, because paths are built from them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import re
import urllib.parse

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


def register_model(name: str, entry: ModelEntry | dict, *, overwrite: bool = False) -> ModelEntry:
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
    holder = next((other.name for other in _models().values() if other.name != name
                   and _published_as(other.handle) == _published_as(record.handle)), None)
    if holder:  # a handle must name one model, or resolving it would depend on order
        raise CatalogueError(f"model {name!r}: the handle {record.handle} is {holder}'s; "
                             "give each model its own owner/model/variation.")
    _REGISTERED[name] = record
    return record


def _published_as(handle):
    """owner/model/variation of a handle, the part that names a model (any case)."""
    owner, model, _, variation, _ = handle.lower().split("/")
    return owner, model, variation


def list_models() -> list[str]:
    """Names accepted by `load_pretrained`."""
    return list(_models())


# What users have in their code (hub.KerasLayer(...)), parsed with strict fullmatches of
# plain slugs, never joined into a path: each form resolves to an existing ModelEntry.
_SLUG = r"[A-Za-z0-9][A-Za-z0-9-]*"  # no '.', '/', '%' or spaces: never '..'
_KAGGLE_HANDLE = re.compile(  # owner/model/framework/variation[/version]
    rf"(?P<owner>{_SLUG})/(?P<model>{_SLUG})/(?P<framework>[A-Za-z0-9]+)/(?P<variation>{_SLUG})"
    r"(?:/(?P<version>[0-9]+))?")
_KAGGLE_PATHS = (  # kaggle.com URL paths: short and long ('frameworks/.../variations/...')
    re.compile(rf"/models/{_KAGGLE_HANDLE.pattern}/?"),
    re.compile(rf"/models/(?P<owner>{_SLUG})/(?P<model>{_SLUG})/frameworks/(?P<framework>"
               rf"[A-Za-z0-9]+)/variations/(?P<variation>{_SLUG})(?:/versions/"
               r"(?P<version>[0-9]+))?/?"))
_TFHUB_PATH = re.compile(r"/sayakpaul/(?P<name>[a-z0-9_]+)(?:/(?P<version>[0-9]+))?/?")
_KAGGLE_HOSTS = ("kaggle.com", "www.kaggle.com")
_TFHUB_HOSTS = ("tfhub.dev", "www.tfhub.dev")
_FORMS = ("Accepted forms: a model name ('vit_b16_fe'), its kagglehub handle "
          "('spsayakpaul/vision-transformer/tensorFlow2/vit-b16-fe', version optional), its "
          "Kaggle URL ('https://www.kaggle.com/models/spsayakpaul/vision-transformer/"
          "TensorFlow2/vit-b16-fe/1') or its TF-Hub URL ('https://tfhub.dev/sayakpaul/"
          "vit_b16_fe/1').")


def _parse_handle(text):
    """What a non-name string refers to: ('kaggle', owner, model, framework, variation,
    version) for a kagglehub handle or kaggle.com URL, ('tfhub', name, version) for a
    tfhub.dev/sayakpaul URL (version None when not given); None for anything else."""
    if not re.fullmatch(r"[\x21-\x7e]+", text):  # printable ASCII, no spaces or controls
        return None
    if "://" not in text:
        match = _KAGGLE_HANDLE.fullmatch(text)
        return match and ("kaggle", *match.group("owner", "model", "framework", "variation",
                                                  "version"))
    try:
        url = urllib.parse.urlsplit(text)
    except ValueError:
        return None
    if url.scheme.lower() not in ("http", "https") or url.fragment:
        return None
    host = url.netloc.lower()  # exact: no user, password or port
    if host in _TFHUB_HOSTS and url.query in ("", "tf-hub-format=compressed"):
        match = _TFHUB_PATH.fullmatch(url.path)
        return match and ("tfhub", *match.group("name", "version"))
    if host in _KAGGLE_HOSTS and not url.query:
        match = next(filter(None, (p.fullmatch(url.path) for p in _KAGGLE_PATHS)), None)
        return match and ("kaggle", *match.group("owner", "model", "framework", "variation",
                                                  "version"))
    return None


def _find(text, parsed, models):
    """The entry `parsed` (from _parse_handle) names; CatalogueError saying what is close."""
    if parsed[0] == "tfhub":  # TF-Hub published only the shipped models
        shipped = _shipped()
        if parsed[1] not in shipped:
            raise CatalogueError(f"{text!r} is not a vit_hub model: tfhub.dev/sayakpaul has no "
                                 f"{parsed[1]!r} here. {suggest(parsed[1], shipped)}{_FORMS}")
        return shipped[parsed[1]]
    owner, model, framework, variation = (part.lower() for part in parsed[1:5])
    published = {}  # (owner, model) -> {variation: entry}
    for entry in models.values():
        parts = entry.handle.lower().split("/")
        published.setdefault(tuple(parts[:2]), {})[parts[3]] = entry
    variations = published.get((owner, model))
    if variations is None:
        close = suggest("/".join(filter(None, parsed[1:])), [e.handle for e in models.values()])
        raise CatalogueError(f"{text!r} is not in the vit_hub catalogue: its models are "
                             f"published as {', '.join('/'.join(k) for k in published)}. "
                             f"{close}{_FORMS}")
    entry = variations.get(variation)
    if entry is None:
        raise CatalogueError(f"Unknown variation {parsed[4]!r} of {owner}/{model} in {text!r}. "
                             f"{suggest(variation, variations)}{_FORMS}")
    if entry.handle.split("/")[2].lower() != framework:
        raise CatalogueError(f"{text!r}: vit_hub converts the {entry.handle.split('/')[2]!r} "
                             f"framework of {owner}/{model}/{variation} ({entry.name}), not "
                             f"{parsed[3]!r}.")
    return entry


def get_entry(name: str) -> ModelEntry:
    """The ModelEntry of a model, given as any form users have in their code:
      - its name: 'vit_b16_fe';
      - its kagglehub handle, framework in any case, version optional:
        'spsayakpaul/vision-transformer/tensorFlow2/vit-b16-fe/1';
      - its Kaggle URL, short or long, version optional (http(s), 'www.', trailing '/'):
        'https://www.kaggle.com/models/spsayakpaul/vision-transformer/TensorFlow2/vit-b16-fe/1',
        'https://www.kaggle.com/models/spsayakpaul/vision-transformer/frameworks/TensorFlow2/'
        'variations/vit-b16-fe/versions/1';
      - its TF-Hub URL (shipped models), '?tf-hub-format=compressed' and version optional:
        'https://tfhub.dev/sayakpaul/vit_b16_fe/1'.
    Registered models resolve by their own handle's owner/model/variation. A version other
    than the pinned one, or anything else, is a CatalogueError saying what is close."""
    models = _models()
    if not isinstance(name, str):
        raise CatalogueError(f"{name!r} is not a model name or handle: expected a string. "
                             f"{_FORMS}")
    if is_name(name):
        if name not in models:
            raise CatalogueError(f"Unknown pretrained model {name!r}. {suggest(name, models)}"
                                 f"Available: {', '.join(models)}.")
        return models[name]
    parsed = _parse_handle(name)
    if parsed is None:
        close = next(filter(None, (suggest(piece, models) for piece in
                                   reversed(re.split(r"[/\\?#=&]+", name)) if piece)), "")
        what = ("a Kaggle or TF-Hub URL of a vit_hub model (kaggle.com/models/<owner>/<model>/"
                "<framework>/<variation>[/<version>] or tfhub.dev/sayakpaul/<name>[/<version>])"
                if "://" in name else
                "a model name: names are lower-case letters, digits and '_' "
                "(no '/', '\\' or '..')")
        raise CatalogueError(f"{name!r} is not {what}. {close}{_FORMS} "
                             f"Available: {', '.join(models)}.")
    entry, version = _find(name, parsed, models), parsed[-1]
    pinned = entry.handle.rsplit("/", 1)[1]
    if version is not None and int(version) != int(pinned):
        raise CatalogueError(
            f"{name!r} asks for version {version} of {entry.name}, but vit_hub pins version "
            f"{pinned} ({entry.handle}): only that version is converted and verified. Leave "
            f"the version out or use {pinned}.")
    return entry
