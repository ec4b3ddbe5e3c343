"""Reads an original google-research ViT `.npz` checkpoint as `{Linen path: array}`."""

import zipfile

import numpy as np

from vit_hub.conversion.name_map import canonical, original_to_linen
from vit_hub.errors import ConversionError


def read_npz(path, include_top):
    """The npz's tensors under Linen names (pre-Linen `LayerNorm_2`, `MlpBlock_3`,
    `MultiHeadDotProductAttention_1` renamed). Objects are never unpickled.

    The published `-fe` hub models are the classification checkpoints minus the head, so
    a head in the file is dropped when `include_top` is False.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            tensors = {original_to_linen(key): archive[key] for key in archive.files}
    except ValueError as err:  # numpy refuses object arrays without allow_pickle
        raise ConversionError(
            f"{path} holds pickled Python objects ({err}); a ViT checkpoint holds only "
            "arrays, and pickles are not loaded because they can run code."
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ConversionError(
            f"Cannot read {path} as an .npz archive ({type(err).__name__}: {err}). "
            "It is truncated or not an npz: download it again."
        ) from None
    if not include_top:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("head/")}
    return {k: np.asarray(canonical(k, v), np.float32) for k, v in tensors.items()}
