"""`vit_hub.KerasLayer`: the one-line way out for code written against `hub.KerasLayer`.

    model = tf.keras.Sequential([hub.KerasLayer(HANDLE)])       # fails under Keras 3
    model = tf.keras.Sequential([vit_hub.KerasLayer(HANDLE)])   # works, natively

It takes the handles `hub.KerasLayer` took for the published ViTs (Kaggle and TF-Hub
URLs, kagglehub handles, catalogue names) and computes what the hub layer computed, from
the same input (B, H, W, 3) float32 in [-1, 1]: fe models the class-token features,
classification models the logits. Unlike the hub layer it is a Keras 3 layer: it goes
into Sequential and functional models, fine-tunes with `trainable=True` (classification
models too), and a model holding it saves to `.keras` and loads without the vit_hub
cache (the file carries the architecture and, as any Keras file, the weights).
"""

import inspect

import keras

from vit_hub.architecture import Architecture, check_flag, check_kwargs
from vit_hub.errors import ArgumentError
from vit_hub.lora import DEFAULT_TARGET

# What `hub.KerasLayer` passes to the published SavedModels: no extra call arguments, no
# TF1 tags, and the one serving signature, whose one output is `output_0`.
SIGNATURE, OUTPUT_KEY = "serving_default", "output_0"


@keras.saving.register_keras_serializable(package="vit_hub")
class KerasLayer(keras.layers.Layer):
    """A published ViT as a Keras 3 layer, called like `hub.KerasLayer`.

    Args:
        handle: the model, in any form `hub.KerasLayer` took (see `vit_hub.get_entry`).
        trainable: fine-tune its weights (default False, as `hub.KerasLayer`).
        signature, signature_outputs_as_dict, output_key: `hub.KerasLayer`'s; accepted
            when they ask for what the published models give
            (`signature='serving_default'` with `output_key='output_0'`, or
            `signature_outputs_as_dict=True`), refused otherwise.
        arguments, output_shape, tags, load_options: `hub.KerasLayer`'s too; accepted
            when they hold what the published models take, refused otherwise.
        cache_dir, offline: where the converted weights are (see `load_pretrained`).
        architecture, lora: set by `.keras` loading: build this network with no
            weights (Keras restores them from the file), with LoRA if it had it; users
            do not pass them.

    `enable_lora`, `save_lora_weights`, `load_lora_weights` and `merge_lora` act on the
    network as `VisionTransformer`'s do (`enable_lora` also makes the layer trainable).
    """

    def __init__(self, handle, trainable=False, arguments=None, signature=None,
                 signature_outputs_as_dict=None, output_key=None, output_shape=None,
                 tags=None, load_options=None, *, cache_dir=None, offline=None,
                 architecture=None, lora=None, **kwargs):
        valid = [p for p in inspect.signature(KerasLayer.__init__).parameters
                 if p not in ("self", "kwargs")] + ["name", "dtype"]  # (Keras' own)
        check_kwargs("KerasLayer", kwargs, valid)
        check_flag(trainable, "trainable")  # before anything is loaded
        super().__init__(**kwargs)
        self.outputs_as_dict = _check_hub_arguments(
            arguments, signature, signature_outputs_as_dict, output_key, tags, load_options)
        if architecture is None:  # a new layer: the converted weights, from the cache
            from vit_hub.pretrained import load_pretrained

            self.model = load_pretrained(handle, cache_dir=cache_dir, offline=offline)
        else:  # from a .keras file, which holds the weights: no catalogue, no cache
            self.model = _network(architecture)
        if output_shape is not None and tuple(output_shape) != self.model.output_shape[1:]:
            raise ArgumentError(
                f"output_shape {tuple(output_shape)} is not what {self.model.name} returns, "
                f"{self.model.output_shape[1:]}; leave it out.")
        self.handle = handle
        self.signature = signature
        self.output_key = output_key
        self.signature_outputs_as_dict = signature_outputs_as_dict
        self.trainable = trainable  # set once the network is there, so it reaches it
        if lora:
            self.model.enable_lora(lora["rank"], lora["target"], lora["alpha"])
        self.built = True  # the network is built with its inputs' shape

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        # A bool only: "no" or 0.5 would be taken as True (hub.KerasLayer takes them so).
        keras.layers.Layer.trainable.fset(self, check_flag(value, "trainable"))

    def enable_lora(self, rank, target=DEFAULT_TARGET, alpha=None):
        self.trainable = True  # the layer's own switch, which gates its weights' training
        self.model.enable_lora(rank, target, alpha)

    def save_lora_weights(self, path):
        return self.model.save_lora_weights(path)

    def load_lora_weights(self, path):
        self.model.load_lora_weights(path)  # (enabling LoRA makes its factors trainable)
        if not self.trainable:  # a frozen layer stays frozen, its new adapters too
            # Through the property itself: TensorFlow's attribute setting would return
            # early, the value being the same.
            keras.layers.Layer.trainable.fset(self, False)

    def merge_lora(self):
        self.model.merge_lora()

    def call(self, inputs, training=None):
        outputs = self.model(inputs, training=training)
        return {OUTPUT_KEY: outputs} if self.outputs_as_dict else outputs

    def compute_output_spec(self, inputs, training=None):
        # Said, not traced: the network's output is known from its build.
        output = self.model.outputs[0]
        spec = keras.KerasTensor((inputs.shape[0], *output.shape[1:]), dtype=output.dtype)
        return {OUTPUT_KEY: spec} if self.outputs_as_dict else spec

    def get_config(self):
        return {
            **super().get_config(),
            "handle": self.handle,
            "signature": self.signature,
            "signature_outputs_as_dict": self.signature_outputs_as_dict,
            "output_key": self.output_key,
            "architecture": Architecture.of(self.model).to_dict(),
            **({"lora": self.model.get_config()["lora"]} if self.model.lora else {}),
        }


def _network(architecture):
    """The network of an architecture record, with no weights of its own: Keras assigns
    the `.keras` file's right after."""
    from vit_hub.layers import weights_to_be_loaded
    from vit_hub.model import VisionTransformer

    record = Architecture.from_dict(architecture)
    with weights_to_be_loaded():
        return VisionTransformer(**record.to_dict(),
                                 pooling=None if record.include_top else "token")


def _check_hub_arguments(arguments, signature, as_dict, output_key, tags, load_options):
    """Whether calls return `{'output_0': ...}`; ArgumentError for what the published
    models do not take, saying what to pass instead."""
    problems = []
    if arguments:
        problems.append(f"arguments={arguments!r}: the published models take no extra call "
                        "arguments")
    if tags:
        problems.append(f"tags={tags!r}: tags are for TF1 Hub modules; these are TF2 "
                        "SavedModels")
    if load_options is not None:
        problems.append("load_options: nothing is loaded through tf.saved_model")
    if signature not in (None, SIGNATURE):
        problems.append(f"signature={signature!r}: the published models have one, "
                        f"{SIGNATURE!r}")
    if output_key not in (None, OUTPUT_KEY):
        problems.append(f"output_key={output_key!r}: the one output is {OUTPUT_KEY!r}")
    if signature is None and (output_key or as_dict):
        problems.append("output_key and signature_outputs_as_dict go with "
                        f"signature={SIGNATURE!r} (without it the output is one tensor)")
    if signature and not (output_key or as_dict):
        problems.append(f"signature={SIGNATURE!r} returns a dict: pass "
                        f"output_key={OUTPUT_KEY!r} for the tensor, or "
                        "signature_outputs_as_dict=True for the dict")
    if problems:
        raise ArgumentError("vit_hub.KerasLayer takes hub.KerasLayer's arguments only "
                            "with the values the published models take:\n  - "
                            + "\n  - ".join(problems))
    return bool(signature and as_dict)
