"""One conversion: a published checkpoint -> a verified native model and weights file."""

import dataclasses
import datetime
import json
import os

from converters import ConversionError
from converters.hub_saved_model import read_hub_saved_model
from converters.name_map import assign_linen
from converters.npz import read_npz
from converters.parity import ParityReport, check_parity


@dataclasses.dataclass
class Conversion:
    model: object
    source: str
    parity: ParityReport | None


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


def convert(source, architecture, include_top, *, verify=True, reference=None,
            progress=None):
    """Builds the native model for `architecture` (VisionTransformer kwargs), fills it
    from `source` and, when `verify`, checks it against the hub SavedModel (`source`
    itself, or `reference` for an npz source). Raises ConversionError / ParityError.
    `progress(step)` is called with 'convert', then 'verify'."""
    from vit_hub import VisionTransformer

    (progress or (lambda _: None))("convert")
    source = os.fspath(source)
    # fe models output the class token after the final norm, (B, hidden_dim).
    model = VisionTransformer(
        include_top=include_top, pooling=None if include_top else "token", **architecture
    )
    if source_format(source) == "saved_model":
        tensors = read_hub_saved_model(source, model)
        reference = reference or source
    else:
        tensors = read_npz(source, include_top)
    assign_linen(model, tensors, source=f"checkpoint {source}")
    parity = None
    (progress or (lambda _: None))("verify")
    if verify:
        if reference is None:
            raise ConversionError(
                f"Cannot verify {source}: an npz has no hub outputs to compare with. Pass "
                "the hub SavedModel as reference, or skip verification (--no-verify)."
            )
        parity = check_parity(model, reference)
    return Conversion(model, source, parity)


def write_converted(conversion, weights_path, name, extra=None):
    """Writes the weights file, then its metadata JSON beside it (both atomically), and
    returns the metadata. The metadata holds the sha256 that loading verifies."""
    import vit_hub
    from vit_hub.files import sha256, write_text
    from vit_hub.weights import FORMAT_VERSION, architecture, save_weights_file

    save_weights_file(conversion.model, weights_path)
    metadata = {
        "name": name,
        "format_version": FORMAT_VERSION,
        "weights_file": os.path.basename(weights_path),
        "sha256": sha256(weights_path),
        "architecture": architecture(conversion.model),
        "source": conversion.source,
        "parity": dataclasses.asdict(conversion.parity) if conversion.parity else None,
        "vit_hub_version": vit_hub.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_text(metadata_path(weights_path), json.dumps(metadata, indent=2) + "\n")
    return metadata


def metadata_path(weights_path):
    return os.path.splitext(os.fspath(weights_path))[0] + ".json"
