"""Architectures as data: the hyperparameters that decide a ViT's weights, as a frozen
record, and the table of named variants they are registered in.

Widths, depths, heads and MLP sizes are those of the ViT paper (Dosovitskiy et al., 2020,
table 1) and of the AugReg checkpoints (Steiner et al., 2021) published on Kaggle Models.
Nothing here imports Keras: the catalogue, the cache and `convert-weights --list` use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
from typing import Any

from vit_hub.errors import ArgumentError, ConfigError

_NAME = re.compile(r"[a-z0-9_]+")


def image_hw(image_size):
    """(height, width) of an image size given as an int or a pair: the one place where
    image sizes are normalised. Raises ConfigError for anything else."""
    pair = (image_size, image_size) if is_int(image_size) else image_size
    try:
        height, width = pair
    except (TypeError, ValueError):
        height = width = None
    if not (is_int(height) and is_int(width) and height > 0 and width > 0):
        raise ConfigError(f"image_size must be a positive int or a (height, width) pair of "
                          f"positive ints, got {image_size!r}{_size_hint(image_size)}.")
    return int(height), int(width)


def _size_hint(image_size):
    """What is wrong with an image size that `image_hw` refuses, and the fix, or ''."""
    values = image_size if isinstance(image_size, (tuple, list)) else (image_size,)
    if any(isinstance(v, bool) for v in values):
        return ": a bool is not a size"
    if any(isinstance(v, float) and v.is_integer() and v > 0 for v in values):
        fixed = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
        return f" (a float): pass {fixed[0] if len(fixed) == 1 else tuple(fixed)!r}"
    if isinstance(image_size, (tuple, list)) and len(image_size) == 3:
        return ": pass (height, width), without the channels"
    if any(isinstance(v, numbers.Real) and v <= 0 for v in values):
        return ": sizes are at least 1 pixel"
    return ""


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """A real number, numpy's included; not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_flag(value, name, allow_none=False):
    """`value` if it is a bool (or None, if allowed); else an ArgumentError (a TypeError):
    a string such as "no" would be taken as True."""
    if isinstance(value, bool) or (allow_none and value is None):
        return value
    raise ArgumentError(f"{name} must be True or False{' or None' if allow_none else ''}, "
                        f"got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What decides the shapes of a ViT's weights. `image_size` is normalised to
    (height, width); the record is what weights files store and what models report
    (`Architecture.of(model)`).

    `resnet_units` is empty for a plain ViT. For a hybrid ResNet+ViT (R26+S/32,
    R50+L/32) it holds the bottleneck units of the 4 ResNet stages, e.g. (2, 2, 2, 2);
    the stem then downsamples by 32, which is the `patch_size` (each token is one cell of
    the stem's 1/32 grid, embedded by a 1x1 convolution).
    """

    patch_size: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    image_size: tuple = (224, 224)
    include_top: bool = True
    num_classes: int = 1000
    resnet_units: tuple = ()

    def __post_init__(self):
        bad = [f"{field}={getattr(self, field)!r}" for field in _SHAPE_FIELDS + ("num_classes",)
               if not is_int(getattr(self, field)) or getattr(self, field) <= 0]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: {', '.join(_SHAPE_FIELDS)} and num_classes "
                              "must be positive ints (ViT-B/16: patch_size=16, hidden_dim=768, "
                              "num_layers=12, num_heads=12, mlp_dim=3072).")
        object.__setattr__(self, "image_size", image_hw(self.image_size))
        object.__setattr__(self, "include_top", check_flag(self.include_top, "include_top"))
        object.__setattr__(self, "resnet_units", check_resnet_units(self.resnet_units))
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"hidden_dim ({self.hidden_dim}) must be divisible by "
                              f"num_heads ({self.num_heads}).")
        if self.resnet_units and self.patch_size != RESNET_STRIDE:
            raise ConfigError(f"a hybrid ResNet+ViT has patch_size {RESNET_STRIDE} (the "
                              f"stride of its ResNet stem), got {self.patch_size}.")
        height, width = self.image_size
        if height % self.patch_size or width % self.patch_size:
            multiples = ", ".join(str(self.patch_size * k) for k in (7, 14, 16, 24))
            raise ConfigError(
                f"image_size {height}x{width} is not a positive multiple of the patch size "
                f"{self.patch_size}: the patch grid must tile the image exactly. Resize the "
                f"images or pick a multiple of {self.patch_size} (e.g. {multiples})."
            )

    @property
    def grid_size(self):
        """(rows, columns) of the patch grid."""
        height, width = self.image_size
        return height // self.patch_size, width // self.patch_size

    @property
    def num_tokens(self):
        rows, columns = self.grid_size
        return rows * columns + 1

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def shape_kwargs(self):
        """The fields of a variant (no image size, no head)."""
        fields = {field: getattr(self, field) for field in _SHAPE_FIELDS}
        return {**fields, "resnet_units": self.resnet_units} if self.resnet_units else fields

    def to_dict(self):
        """The JSON form weights files and metadata record (plain ViTs without the empty
        `resnet_units`, so their files are those of earlier versions)."""
        record = {**dataclasses.asdict(self), "image_size": list(self.image_size),
                  "resnet_units": list(self.resnet_units)}
        if not self.resnet_units:
            del record["resnet_units"]
        return record

    @classmethod
    def from_dict(cls, record):
        """The inverse of `to_dict`; ConfigError naming missing or unknown fields."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(record, dict):
            raise ConfigError(f"an architecture record is a dict of {sorted(fields)}, got "
                              f"{record!r}.")
        missing = sorted(set(_SHAPE_FIELDS) - set(record))
        unknown = sorted(set(record) - fields)
        if missing or unknown:
            raise ConfigError(f"architecture record: missing {missing}, unknown {unknown}.")
        return cls(**record)

    @classmethod
    def of(cls, model):
        """The architecture of a built `VisionTransformer`."""
        return cls(**{f.name: getattr(model, f.name) for f in dataclasses.fields(cls)})

    def describe(self, name="the model"):
        stem = (f"ResNet stem {self.resnet_units} + " if self.resnet_units else "")
        return (f"{name} ({stem}{self.num_layers} blocks, hidden {self.hidden_dim}, patch "
                f"{self.patch_size}, {'with' if self.include_top else 'without'} head)")


_SHAPE_FIELDS = ("patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim")

# The layout of the hybrids' ResNet stem, the one statement of it that the Keras stem,
# the name map and the benchmarks' FLOP count read.
RESNET_STAGES = 4
RESNET_STRIDE = 32  # root conv /2, max pool /2, stages 2-4 /2 each
RESNET_WIDTH = 64  # channels of the root conv; stage s has 64 * 2**(s-1) filters per unit
RESNET_EXPANSION = 4  # a bottleneck unit puts out 4x the filters it computes with
R26_UNITS = (2, 2, 2, 2)  # bottleneck units per stage of R26+S/32's stem
R50_UNITS = (3, 4, 6, 3)  # and of R50+L/32's


def check_resnet_units(units):
    """`units` as a tuple: () for a plain ViT, or the 4 stages' bottleneck units."""
    units = tuple(units or ())
    if units and (len(units) != RESNET_STAGES or not all(is_int(n) and n > 0 for n in units)):
        raise ConfigError(f"resnet_units must be {RESNET_STAGES} positive ints (units per "
                          f"ResNet stage, e.g. {R26_UNITS} for R26, {R50_UNITS} for R50), got "
                          f"{units!r}.")
    return tuple(int(n) for n in units)


def resnet_plan(units, width=RESNET_WIDTH):
    """[(stage, unit, filters, strides)] of every bottleneck unit of a ResNet stem, 1-based
    as the checkpoints name them (`block{stage}/unit{unit}`); stride 2 opens stages 2-4."""
    return [(stage, unit, width * 2 ** (stage - 1), 2 if stage > 1 and unit == 1 else 1)
            for stage, count in enumerate(units, start=1) for unit in range(1, count + 1)]


def needs_projection(in_channels, filters, strides):
    """Whether a bottleneck unit has the projection shortcut (`conv_proj`, `gn_proj`): its
    output differs from its input in channels or in size, so the input cannot be added."""
    return in_channels != RESNET_EXPANSION * filters or strides != 1


def resnet_out_channels(width=RESNET_WIDTH):
    """Channels of a stem's output, what the 1x1 patch embedding sees: 2048 at width 64."""
    return RESNET_EXPANSION * width * 2 ** (RESNET_STAGES - 1)

# name -> Architecture at 224x224 with a 1000-class head; see register_variant.
_VARIANTS = {}


def register_variant(name: str, *, overwrite: bool = False, **architecture: Any) -> Architecture:
    """Adds a named variant for `create_vit(name)` and catalogue entries, e.g.
    `register_variant("vit_tiny8", patch_size=8, hidden_dim=32, num_layers=2,
    num_heads=4, mlp_dim=64)`. Registering a name again with the same architecture does
    nothing; with another one it is an error unless `overwrite=True`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"variant name {name!r}: use lower-case letters, digits and '_'.")
    unknown = sorted(set(architecture) - set(_SHAPE_FIELDS) - {"resnet_units"})
    missing = sorted(set(_SHAPE_FIELDS) - set(architecture))
    if unknown or missing:
        raise ConfigError(f"register_variant({name!r}) takes {list(_SHAPE_FIELDS)} and, for "
                          f"a hybrid, resnet_units; missing {missing}, unknown {unknown}.")
    record = Architecture(**architecture)
    if _VARIANTS.get(name, record) != record and not overwrite:
        raise ConfigError(f"variant {name!r} is already registered as {_VARIANTS[name]}; "
                          "pass overwrite=True to replace it.")
    _VARIANTS[name] = record
    return record


def list_variants() -> list[str]:
    """Names accepted by `create_vit`, in registration order (smallest first)."""
    return list(_VARIANTS)


def get_variant(name: str) -> Architecture:
    """The Architecture of a registered variant (224x224, 1000-class head)."""
    if name not in _VARIANTS:
        raise ConfigError(f"Unknown ViT variant {name!r}. {suggest(name, _VARIANTS)}"
                          f"Known variants: {', '.join(_VARIANTS)}.")
    return _VARIANTS[name]


def variant_config(name):
    """The architecture hyperparameters of a variant, as `VisionTransformer` kwargs."""
    return get_variant(name).shape_kwargs()


def suggest(name, choices):
    """'Did you mean ...?' text for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.5)
    return f"Did you mean {' or '.join(map(repr, close))}? " if close else ""


# size: (hidden_dim, num_layers, num_heads, mlp_dim)
_SIZES = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
    "h": (1280, 32, 16, 5120),
}
for _resnet, _size, _patch in [((), "ti", 16), ((), "s", 16), ((), "s", 32), ((), "b", 8),
                               ((), "b", 16), ((), "b", 32), ((), "l", 16), ((), "l", 32),
                               ((), "h", 14), ((), "h", 16),
                               # The hybrids: a ResNet-26 / ResNet-50 stem before the ViT.
                               (R26_UNITS, "s", 32), (R50_UNITS, "l", 32)]:
    _width, _depth, _heads, _mlp = _SIZES[_size]
    _stem = f"r{2 + 3 * sum(_resnet)}_" if _resnet else ""  # R26: 2 + 3 * 8 layers
    register_variant(f"vit_{_stem}{_size}{_patch}", patch_size=_patch, hidden_dim=_width,
                     num_layers=_depth, num_heads=_heads, mlp_dim=_mlp, resnet_units=_resnet)


def check_kwargs(function, kwargs, valid, takes=None):
    """ArgumentError (a TypeError) unless every key of `kwargs` is in `valid`: it names the
    unknown ones, the closest valid one, and what `function` takes (`takes`, default the
    list of `valid`)."""
    unknown = [key for key in kwargs if key not in valid]
    if not unknown:
        return
    if len(unknown) == 1:
        what = f"an unexpected keyword argument {unknown[0]!r}. {suggest(unknown[0], valid)}"
    else:
        named = []
        for key in unknown:
            hint = suggest(key, valid).strip()
            named.append(f"{key!r}" + (f" ({hint[0].lower()}{hint[1:]})" if hint else ""))
        what = f"unexpected keyword arguments {', '.join(named)}. "
    takes = takes or f"Valid keyword arguments: {', '.join(valid)}."
    raise ArgumentError(f"{function}() got {what}{takes}")
