"""OpenVINO as vit_hub's inference runtime: a native model traced once into an OpenVINO
model and compiled on the CPU at a stated precision.

- `to_openvino(model, precision=...)`: from a Keras model in hand (fine-tuned, new head,
  another size).
- `vit_hub.load_pretrained(name, runtime="openvino", precision=...)`: from a name, the IR
  cached beside the weights; a cache hit imports neither TensorFlow nor Keras.
- `load_openvino(path)`: an IR written by `OpenVINOModel.save`.

fp32 is pinned (OpenVINO's CPU plugin would pick bf16 by itself on CPUs that have it) and
passes the parity gate against the Keras model; bf16 and int8 carry their measured
agreement with fp32 on held-out photographs (`OpenVINOModel.accuracy`).
"""

import importlib
from typing import TYPE_CHECKING

# Imported on first use (PEP 562), so that the light modules of this package
# (`options`, read by the command-line tools' --help) do not bring in the runtime.
_HOMES = {
    "to_openvino": "vit_hub.runtime.convert",
    "load_openvino": "vit_hub.runtime.openvino_model",
    "OpenVINOModel": "vit_hub.runtime.openvino_model",
    "PRECISIONS": "vit_hub.runtime.options",
}
__all__ = ["to_openvino", "load_openvino", "OpenVINOModel", "PRECISIONS"]

if TYPE_CHECKING:
    from vit_hub.runtime.convert import to_openvino
    from vit_hub.runtime.openvino_model import OpenVINOModel, load_openvino
    from vit_hub.runtime.options import PRECISIONS


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
