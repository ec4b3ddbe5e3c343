"""Model parallelism with `keras.distribution` (JAX backend): where each weight lives.

`layout_map` shards the transformer's big kernels Megatron-style along the mesh's model
axis: the query/key/value projections by head and the attention output by head (so each
device computes whole heads), the MLP's first dense by output unit and the second by input
unit (so the GELU between them is local), and the hybrid ResNet stem's convolutions by
output channel. Everything else (norms, embeddings, the head) is replicated. Sharded
sizes must divide by the model axis: ViT-B's 12 heads go on 2, 3, 4, 6 or 12 devices.
`keras.distribution.DataParallel` needs no map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras


def layout_map(device_mesh: keras.distribution.DeviceMesh,
               model_dim: str = "model") -> keras.distribution.LayoutMap:
    """A `keras.distribution.LayoutMap` for `ModelParallel` over `device_mesh`:

        mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
        keras.distribution.set_distribution(keras.distribution.ModelParallel(
            layout_map=vit_hub.layout_map(mesh), batch_dim_name="batch"))
        model = vit_hub.load_pretrained("vit_l16_fe")   # weights land sharded
    """
    import keras

    if model_dim not in device_mesh.axis_names:
        from vit_hub.errors import ConfigError

        raise ConfigError(f"The device mesh has axes {list(device_mesh.axis_names)}, not "
                          f"{model_dim!r}: pass model_dim= one of them.")
    layouts = keras.distribution.LayoutMap(device_mesh)
    m = model_dim
    # Keys are regular expressions over variable paths (`block_3/mlp/dense_1/kernel`),
    # matched whole by current Keras and searched by older: the leading `.*` serves both.
    for pattern, axes in {
        r".*attention/(query|key|value)/kernel": (None, m, None),  # (width, heads, head dim)
        r".*attention/(query|key|value)/bias": (m, None),
        r".*attention/attention_output/kernel": (m, None, None),  # (heads, head dim, width)
        r".*mlp/dense_1/kernel": (None, m),  # (width, mlp)
        r".*mlp/dense_1/bias": (m,),
        r".*mlp/dense_2/kernel": (m, None),  # (mlp, width)
        r".*stem/.*conv[^/]*/kernel": (None, None, None, m),  # (kh, kw, in, out)
    }.items():
        layouts[pattern] = axes
    return layouts
