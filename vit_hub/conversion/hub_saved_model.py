"""Reads a published hub SavedModel's weights as `{Linen path: array}`.

The checkpoint is read with `tf.train.load_checkpoint`: no graph is loaded or run. The
published exports store the params as `variables/<i>`, the position of each tensor in
`tf.nest.flatten` of the Linen params dict, with no names at all (every variable is
`Variable:0`). So the name of index `i` is computed: `tf.nest.flatten` sorts dict keys at
every level, which is sorting the paths by their '/'-split components. Each index must
then also have the shape the model expects; a shape check alone cannot catch two
same-shaped tensors in swapped places, which is why conversion ends with a parity run.
"""

import os
import re

from vit_hub.conversion.name_map import linen_shapes
from vit_hub.errors import ConversionError

_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_FLAT = re.compile(r"^variables/(\d+)" + re.escape(_VALUE) + "$")


def flatten_order(linen_paths):
    """The order of `tf.nest.flatten` over the nested dict these paths describe."""
    return sorted(linen_paths, key=lambda path: path.split("/"))


def checkpoint_prefix(saved_model_dir):
    prefix = os.path.join(os.fspath(saved_model_dir), "variables", "variables")
    if not os.path.exists(prefix + ".index"):
        raise ConversionError(
            f"{saved_model_dir} is not a SavedModel directory: {prefix}.index is missing. "
            "Pass the folder that holds saved_model.pb and variables/ (for a Kaggle "
            "download, the folder kagglehub.model_download returned)."
        )
    return prefix


class LazyTensor:
    """A checkpoint tensor read only when converted to an array, so that a conversion
    holds one tensor in memory at a time."""

    def __init__(self, reader, key, shape):
        self.reader, self.key, self.shape = reader, key, tuple(shape)

    def __array__(self, dtype=None, copy=None):
        try:
            value = self.reader.get_tensor(self.key)
        except (ValueError, IndexError, RuntimeError) as err:  # a short or corrupt read
            raise ConversionError(_unreadable(self.key, err)) from None
        return value.astype(dtype) if dtype is not None else value


def read_checkpoint(saved_model_dir):
    """{checkpoint key: LazyTensor} of every variable value in the SavedModel."""
    from vit_hub.terminal import import_tensorflow

    tf = import_tensorflow()

    prefix = checkpoint_prefix(saved_model_dir)
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError, IndexError) as err:
        raise ConversionError(_unreadable(saved_model_dir, err)) from None
    return {k: LazyTensor(reader, k, shape) for k, shape in shapes.items() if k.endswith(_VALUE)}


def _unreadable(what, err):
    return (f"Cannot read the variables of {what}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. The download is probably "
            "truncated or corrupt: delete it and download again (convert-weights NAME --force).")


def read_hub_saved_model(saved_model_dir, architecture):
    """The SavedModel's tensors as `{Linen path: LazyTensor}` for an `Architecture`.

    Accepts the published flat layout (`variables/<i>`) and a layout whose keys carry
    the Linen names (any prefix). Raises ConversionError listing every count or shape
    that does not fit; no tensor data is read until the caller converts one.
    """
    values = read_checkpoint(saved_model_dir)
    expected = linen_shapes(architecture)
    flat = {int(m.group(1)): v for k, v in values.items() if (m := _FLAT.match(k))}
    if flat:
        return _match_by_order(flat, expected, architecture, saved_model_dir)
    return _match_by_name(values, expected, saved_model_dir)


def _match_by_order(flat, expected, arch, source):
    order = flatten_order(expected)
    problems = []
    if sorted(flat) != list(range(len(flat))):
        problems.append(f"variable indices are not 0..{len(flat) - 1}")
    if len(flat) != len(order):
        # Index i no longer names the same tensor: describe the checkpoint instead.
        problems.append(
            f"it holds {len(flat)} tensors, the model needs {len(order)}"
            + _count_hint(len(flat) - len(order), arch.include_top)
        )
        shapes = [tuple(flat[i].shape) for i in sorted(flat)]
        problems.append(f"the checkpoint looks like {describe_shapes(shapes)}; the model "
                        f"is {describe_architecture(arch)}")
    else:
        for index, linen in enumerate(order):
            if flat[index].shape != expected[linen]:
                problems.append(
                    f"variables/{index} ({linen}) has shape {flat[index].shape}, "
                    f"expected {expected[linen]}"
                )
    if problems:
        raise ConversionError(
            f"The SavedModel {source} does not match {arch.describe()}:\n  - "
            + "\n  - ".join(problems[:12])
            + (f"\n  - ... and {len(problems) - 12} more" if len(problems) > 12 else "")
            + "\nCheck that the checkpoint is the variant and kind (fe/classification) "
            "you asked for."
        )
    return {linen: flat[index] for index, linen in enumerate(order)}


def describe_shapes(shapes):
    """Width, patch (or ResNet stem) and token count read off a checkpoint's shapes."""
    kernels = [s for s in shapes if len(s) == 4]
    tokens = next((s[1] for s in shapes if len(s) == 3 and s[0] == 1 and s[1] > 1), "?")
    width = shapes[0][-1] if shapes else "?"
    if (7, 7, 3, 64) in kernels:  # conv_root: a hybrid; each unit has one 3x3 conv
        units = sum(1 for s in kernels if s[:2] == (3, 3))
        return (f"a hybrid ResNet+ViT with a {units}-unit ResNet stem (R26 has 8, R50 16), "
                f"width {width}, {tokens} tokens")
    patch = next((s[0] for s in kernels if s[2] == 3), "?")
    return f"width {width}, patch {patch}, {tokens} tokens"


def describe_architecture(arch):
    """The model, in the words of `describe_shapes`."""
    if arch.resnet_units:
        return (f"a hybrid ResNet+ViT with a {sum(arch.resnet_units)}-unit ResNet stem, "
                f"width {arch.hidden_dim}, {arch.num_tokens} tokens")
    return f"width {arch.hidden_dim}, patch {arch.patch_size}, {arch.num_tokens} tokens"


def _count_hint(surplus, include_top):
    if surplus == 2 and not include_top:
        return " (2 more: a classification checkpoint, with head, asked for as fe?)"
    if surplus == -2 and include_top:
        return " (2 fewer: an fe checkpoint, without head, asked for as classification?)"
    if surplus % 16 == 0 and surplus:
        return f" ({surplus // 16:+d} encoder blocks of 16 tensors: another depth?)"
    return ""


def _match_by_name(values, expected, source):
    tensors = {}
    for key, value in values.items():
        path = key[: -len(_VALUE)]
        if path == "save_counter" or path.startswith("trainable_variables/"):
            continue  # bookkeeping, and second references to the same variables
        linen = next((name for name in expected if path == name or path.endswith("/" + name)), None)
        tensors[linen or path] = value
    if not any(name in tensors for name in expected):
        raise ConversionError(
            f"{source} holds neither the published `variables/<i>` layout nor Linen-named "
            f"variables (found e.g. {sorted(values)[:3]}); it is not a ViT hub export."
        )
    return tensors
