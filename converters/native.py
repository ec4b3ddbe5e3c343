"""Puts Linen-named tensors into a native `VisionTransformer`, all or nothing."""

import numpy as np

from converters.name_map import linen_to_native


class ConversionError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def flatten(tree, prefix=""):
    """{'a': {'b': x}} -> {'a/b': x}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}/{key}" if prefix else key))
    return flat


def native_variables(model):
    """{path relative to the model: variable}, e.g. 'block_0/attention/query/kernel'."""
    variables = {}
    for layer in model.layers:
        for variable in layer.weights:
            start = variable.path.find(layer.name + "/")
            variables[variable.path[max(start, 0):]] = variable
    return variables


def assign_linen(model, tensors, source="checkpoint"):
    """Assigns `{Linen path: array}` to `model`'s variables.

    Every tensor must be used once and fit its variable's shape; otherwise nothing is
    assigned and the error lists each missing, surplus and mis-shaped tensor.
    """
    names = linen_to_native(model.num_layers, model.include_top)
    variables = native_variables(model)
    problems = []
    missing = sorted(set(names) - set(tensors))
    surplus = sorted(set(tensors) - set(names))
    if missing:
        problems.append(f"missing from the {source}: {', '.join(missing)}")
    if surplus:
        problems.append(f"in the {source} but not in the model: {', '.join(surplus)}")
    for linen, array in tensors.items():
        if linen in names:
            expected = tuple(variables[names[linen]].shape)
            if tuple(np.shape(array)) != expected:
                problems.append(
                    f"{linen}: {source} has shape {tuple(np.shape(array))}, "
                    f"the model expects {expected}"
                )
    if problems:
        raise ConversionError(
            f"The {source} does not match {model.name} ({model.num_layers} blocks, "
            f"hidden {model.hidden_dim}, patch {model.patch_size}, "
            f"{'with' if model.include_top else 'without'} head):\n  - "
            + "\n  - ".join(problems)
            + "\nCheck that the checkpoint and the model name/config are the same variant."
        )
    for linen, native in names.items():
        variables[native].assign(np.asarray(tensors[linen], np.float32))
