"""Native weights: filling a `VisionTransformer` all or nothing, and the converted-weights
file (vit_hub's one tensor file format, `tensor_file`, with the architecture as record).
"""

import contextlib

import numpy as np

from vit_hub import tensor_file
from vit_hub.architecture import Architecture
from vit_hub.errors import ConfigError, WeightsError, warn
from vit_hub.resize import resize

FORMAT = "vit_hub.weights"
FORMAT_VERSION = 1
WEIGHTS_FILE = tensor_file.Kind("a vit_hub weights file",
                                "Convert it again with this version (convert-weights).")


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


def fit_problems(tensors, expected, source="checkpoint"):
    """Every problem that keeps `tensors` from filling `expected` ({key: shape}), as
    sentences: missing keys, surplus keys, wrong shapes."""
    problems = []
    missing = [key for key in expected if key not in tensors]
    surplus = [key for key in tensors if key not in expected]
    if missing:
        problems.append(f"missing from the {source}: {', '.join(missing)}")
    if surplus:
        problems.append(f"in the {source} but not in the model: {', '.join(surplus)}")
    for key, array in tensors.items():
        if key in expected and tuple(np.shape(array)) != tuple(expected[key]):
            problems.append(
                f"{key}: {source} has shape {tuple(np.shape(array))}, "
                f"the model expects {tuple(expected[key])}"
            )
    return problems


def raise_problems(what, problems, source="checkpoint", error=None):
    """Raises `error` (WeightsError) listing `problems`, if any; `what` names the model."""
    if problems:
        raise (error or WeightsError)(
            f"The {source} does not match {what}:\n  - "
            + "\n  - ".join(problems)
            + "\nCheck that the checkpoint and the model name/config are the same variant."
        )


def assign(model, tensors, source="weights file", names=None):
    """Assigns `{key: array}` to `model`'s variables, keys mapped by `names` (default:
    keys are native paths). Every tensor must be used once and fit its variable's shape;
    otherwise nothing is assigned and the error lists each missing, surplus and
    mis-shaped tensor."""
    variables = native_variables(model)
    names = names if names is not None else {path: path for path in variables}
    expected = {key: tuple(variables[native].shape) for key, native in names.items()}
    what = Architecture.of(model).describe(model.name)
    raise_problems(what, fit_problems(tensors, expected, source), source)
    for key, native in names.items():
        variables[native].assign(np.asarray(tensors[key], np.float32))


def save_weights_file(model, path):
    """Writes `model`'s weights to `path` atomically (temporary file, then rename)."""
    if getattr(model, "lora", None):
        raise ConfigError(f"{model.name!r} has LoRA adapters, which a weights file does not "
                          "hold: call model.merge_lora() first (the file then holds the "
                          "adapted kernels), or save_lora_weights() for the adapters alone.")
    variables = native_variables(model)
    return write_weights_file(path, {k: np.asarray(v) for k, v in variables.items()},
                              Architecture.of(model))


def write_weights_file(path, tensors, architecture):
    """Writes `{canonical path: array-like}` and the Architecture to `path` atomically,
    one tensor in memory at a time."""
    return tensor_file.write(path, FORMAT, FORMAT_VERSION,
                             {"architecture": architecture.to_dict()}, tensors)


@contextlib.contextmanager
def open_weights_file(path):
    """Opens a converted-weights file: yields ({canonical path: h5py dataset}, Architecture).
    The datasets are read when used (`np.asarray`), one at a time: loading a model reads
    each tensor once, straight into its variable, with no second copy of the weights."""
    with tensor_file.open_file(path, FORMAT, FORMAT_VERSION, WEIGHTS_FILE) as (datasets,
                                                                              records):
        try:
            architecture = Architecture.from_dict(records["architecture"])
        except (KeyError, ValueError, TypeError) as err:  # ConfigError: a ValueError
            raise WeightsError(f"{path} has no readable architecture record ({err}): it is "
                               "not a vit_hub weights file of this version. Convert it "
                               "again.") from None
        yield datasets, architecture


def resample_position_embeddings(embeddings, old_grid, new_grid):
    """Position embeddings (1, 1 + rows*cols, D) for another patch grid: the class token's
    embedding is kept, the patch grid is resized bicubically, antialiased when it
    shrinks (as timm does by default), the same on every backend."""
    embeddings = np.asarray(embeddings, np.float32)
    (old_rows, old_cols), (new_rows, new_cols) = old_grid, new_grid
    if embeddings.shape[1] != 1 + old_rows * old_cols:
        raise WeightsError(f"position embeddings of {embeddings.shape[1]} tokens do not fit "
                           f"a {old_rows}x{old_cols} grid plus the class token")
    grid = embeddings[0, 1:].reshape(old_rows, old_cols, -1)
    resized = resize(grid, (new_rows, new_cols), "bicubic", antialias=True)
    return np.concatenate([embeddings[:, :1], resized.reshape(1, new_rows * new_cols, -1)], 1)


def build_model(tensors, architecture, source, **model_kwargs):
    """The one way a model is made from weights, for loading and for conversion's check:
    the `VisionTransformer` of `architecture` (changed by `model_kwargs`: another image
    size, head or dtype) filled from `{native path: array}`, all or nothing. Models
    without head return the class token, as the published fe models do."""
    return fill(empty_model(architecture, **model_kwargs), tensors, architecture, source)


def empty_model(architecture, **model_kwargs):
    """The `VisionTransformer` of `architecture` changed by `model_kwargs`, its variables
    allocated but not initialised: `fill` gives them their values (a new head: zeros)."""
    from vit_hub.layers import weights_to_be_loaded
    from vit_hub.model import VisionTransformer  # (imports the layers, registering all)
    from vit_hub.precision import warn_if_unsuited

    config = architecture.to_dict()
    if not architecture.include_top:
        config["pooling"] = "token"
    config.update(model_kwargs)
    with weights_to_be_loaded():  # every weight is assigned by fill, or a fresh head's zeros
        model = VisionTransformer(**config)
    warn_if_unsuited(model.dtype_policy)  # (checked by the constructor)
    return model


def fill(model, tensors, architecture, source):
    """Assigns the weights of `architecture` ({native path: array or h5py dataset}) to
    `empty_model(architecture, ...)`, all or nothing, and returns the model."""
    tensors, names = _fit(tensors, architecture, model)
    assign(model, tensors, source=source, names=names)
    return model


def _fit(tensors, architecture, model):
    """Adapts the stored tensors to `model`: position embeddings resampled to its grid,
    the head dropped or left fresh where the model's differs. Returns the tensors and the
    {key: native path} of those to assign."""
    tensors = dict(tensors)
    key = "position_embedding/embeddings"
    old_grid = architecture.grid_size
    if old_grid != model.grid_size and key in tensors:
        tensors[key] = resample_position_embeddings(tensors[key], old_grid, model.grid_size)
        height, width = architecture.image_size
        warn(
            f"{model.name}: position embeddings resampled from a {old_grid[0]}x{old_grid[1]} "
            f"to a {model.grid_size[0]}x{model.grid_size[1]} patch grid (image size "
            f"{model.image_size[0]}x{model.image_size[1]}). The weights were trained at "
            f"{height}x{width}: fine-tune at the new size for full accuracy.")
    new_head = model.include_top and (
        not architecture.include_top or model.num_classes != architecture.num_classes)
    if new_head or not model.include_top:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("head/")}
    names = {k: k for k in native_variables(model) if not (new_head and k.startswith("head/"))}
    return tensors, names
