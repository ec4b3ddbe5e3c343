"""What the benchmark modules share: paths, the smoke stand-ins, a model's FLOPs, and the
spread of a measured rate. Light: importing it loads neither TensorFlow nor an engine."""

import os
import statistics

from vit_hub.architecture import (
    RESNET_EXPANSION,
    RESNET_WIDTH,
    needs_projection,
    resnet_out_channels,
    resnet_plan,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(REPO, "out", "bench")

# In smoke mode each model is replaced by a tiny stand-in of its kind, registered (in
# the parent and in every child) as NAME_smoke through the public catalogue API.
SMOKE_VARIANT = ("vit_smoke8", dict(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4,
                                    mlp_dim=64))


def smoke_fields(name):
    """The catalogue fields of `name`'s tiny stand-in."""
    import vit_hub

    entry = vit_hub.get_entry(name)
    owner, model, framework, variation, version = entry.handle.split("/")
    return {**entry.to_dict(), "variant": SMOKE_VARIANT[0], "image_size": 32,
            "handle": f"{owner}/{model}/{framework}/{variation}-smoke/{version}"}


def smoke_model(name):
    """(the stand-in's name, {"name", "fields"}: what a child needs to register it)."""
    return f"{name}_smoke", {"name": f"{name}_smoke", "fields": smoke_fields(name)}


def register_smoke(name, fields):
    """Registers the stand-in `name` with catalogue `fields` (from `smoke_fields`)."""
    import vit_hub

    vit_hub.register_variant(SMOKE_VARIANT[0], **SMOKE_VARIANT[1])
    vit_hub.register_model(name, fields)


def checkpoint_paths(name):
    """(SavedModel folder, cache folder) of `name`'s test-built checkpoint."""
    return os.path.join(WORK, "hub", name), os.path.join(WORK, "cache", name)


def spread(rates):
    """A rate measured over rounds: {"images_per_s": median, "min", "max", "rounds"}."""
    return {"images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "rounds": list(rates)}


# === What a model costs ===


def flops_per_image(arch):
    """Multiply-adds x 2 of one forward pass of an Architecture (matmuls and attention;
    norms ignored)."""
    d, mlp, tokens = arch.hidden_dim, arch.mlp_dim, arch.num_tokens
    patches = tokens - 1
    if arch.resnet_units:  # the stem, then a 1x1 conv on its output channels
        embed = resnet_flops(arch) + 2 * patches * resnet_out_channels() * d
    else:
        embed = 2 * patches * arch.patch_size ** 2 * 3 * d
    block = 2 * tokens * d * (4 * d + 2 * mlp) + 4 * tokens * tokens * d
    head = 2 * d * arch.num_classes if arch.include_top else 0
    return embed + arch.num_layers * block + head


def resnet_flops(arch):
    """Multiply-adds x 2 of a hybrid's ResNet stem: the convolutions (norms ignored)."""
    height, width = arch.image_size
    flops = 2 * (height // 2) * (width // 2) * 7 * 7 * 3 * RESNET_WIDTH  # conv_root
    pixels, channels = (height // 4) * (width // 4), RESNET_WIDTH  # after the max pool
    for _, _, filters, strides in resnet_plan(arch.resnet_units):
        out, expanded = pixels // strides ** 2, RESNET_EXPANSION * filters
        flops += 2 * (pixels * channels * filters + out * 9 * filters * filters
                      + out * filters * expanded)
        if needs_projection(channels, filters, strides):  # the projection shortcut
            flops += 2 * out * channels * expanded
        pixels, channels = out, expanded
    return flops
