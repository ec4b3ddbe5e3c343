"""One conversion: a published checkpoint -> a verified native model and weights file."""

import dataclasses
import datetime
import importlib.metadata
import json
import os

import numpy as np

from vit_hub.conversion.hub_saved_model import (
    describe_architecture,
    describe_shapes,
    flatten_order,
    read_hub_saved_model,
)
from vit_hub.conversion.name_map import linen_shapes, to_native
from vit_hub.conversion.npz import read_npz
from vit_hub.conversion.parity import ParityReport, check_parity
from vit_hub.errors import ConversionError


@dataclasses.dataclass
class Conversion:
    tensors: dict  # {Linen path: array or LazyTensor}, names and shapes checked
    architecture: object  # vit_hub.Architecture
    source: str
    parity: ParityReport | None = None
    model: object = None  # the native model, built only to verify


def source_format(source):
    """'saved_model' or 'npz', from what is on disk."""
    if os.path.isdir(source):
        return "saved_model"
    if os.path.isfile(source) and str(source).endswith(".npz"):
        return "npz"
    raise ConversionError(
        f"{source} is neither a SavedModel directory nor an .npz file. Pass the folder "
        "holding saved_model.pb (e.g. a Kaggle download) or an original ViT .npz."
    )


def convert(source, architecture, *, verify=True, reference=None, progress=None):
    """Reads `source` for `architecture` (an Architecture), checking every name
    and shape and, when `verify`, builds the native model and checks it against the hub
    SavedModel (`source` itself, or `reference` for an npz source). Without `verify` no
    model is built and tensors stay lazy, so writing streams them one at a time.
    Raises ConversionError / ParityError. `progress(step)` gets 'convert', 'verify'."""
    from vit_hub.weights import fit_problems, raise_problems

    step = progress or (lambda _: None)
    step("convert")
    source = os.fspath(source)
    if source_format(source) == "saved_model":
        tensors = read_hub_saved_model(source, architecture)
        reference = reference or source
    else:
        tensors = read_npz(source, architecture.include_top)
    problems = fit_problems(tensors, linen_shapes(architecture), "checkpoint")
    if problems:
        shapes = [tuple(np.shape(tensors[k])) for k in flatten_order(tensors)]
        problems.append(f"the checkpoint looks like {describe_shapes(shapes)}; the model is "
                        f"{describe_architecture(architecture)}")
    raise_problems(architecture.describe(), problems, f"checkpoint {source}", ConversionError)
    conversion = Conversion(tensors, architecture, source)
    step("verify")
    if verify:
        if reference is None:
            raise ConversionError(
                f"Cannot verify {source}: an npz has no hub outputs to compare with. Pass "
                "the hub SavedModel as reference, or skip verification (--no-verify)."
            )
        from vit_hub.weights import build_model

        native = to_native(tensors, architecture)
        conversion.model = build_model(native, architecture, f"checkpoint {source}")
        conversion.parity = check_parity(conversion.model, reference)
    return conversion


def write_converted(conversion, weights_path, name, extra=None):
    """Writes the weights file, then its metadata JSON beside it (both atomically), and
    returns the metadata. The metadata holds the sha256 that loading verifies."""
    from vit_hub.files import sha256, write_text
    from vit_hub.weights import FORMAT_VERSION, write_weights_file

    native = to_native(conversion.tensors, conversion.architecture)
    write_weights_file(weights_path, native, conversion.architecture)
    metadata = {
        "name": name,
        "format_version": FORMAT_VERSION,
        "weights_file": os.path.basename(weights_path),
        "sha256": sha256(weights_path),
        "architecture": conversion.architecture.to_dict(),
        "source": conversion.source,
        "parity": dataclasses.asdict(conversion.parity) if conversion.parity else None,
        "vit_hub_version": importlib.metadata.version("vit_hub"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_text(metadata_path(weights_path), json.dumps(metadata, indent=2) + "\n")
    return metadata


def metadata_path(weights_path):
    return os.path.splitext(os.fspath(weights_path))[0] + ".json"
