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

from vit_hub.runtime.convert import to_openvino
from vit_hub.runtime.openvino_model import PRECISIONS, OpenVINOModel, load_openvino

__all__ = ["to_openvino", "load_openvino", "OpenVINOModel", "PRECISIONS"]
