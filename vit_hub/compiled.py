"""`model(images)` at compiled speed: the inference call, traced once per input signature.

Keras runs `model(x)` outside `fit`/`predict` op by op. For a ViT that is most of the
cost at small batches: on TensorFlow each of ~1000 ops is dispatched eagerly, without
graph optimisation (oneDNN fusions, constant folding), 2.6x slower than the same model as
a graph at batch 1; on JAX each op is a separate dispatch. So a plain inference call on
concrete images (eager, `training` false, nothing else passed) runs a compiled function
of the model instead: TensorFlow a `tf.function` (a graph, not XLA: oneDNN's graph path
also runs bf16 at the hardware's bf16 rate, XLA:CPU does not), JAX `jax.jit` over
`stateless_call` with the current variable values. Variables are read at each call, so
training, weight loading and assignment are seen at once; gradients through the
TensorFlow function work (GradientTape); under a JAX trace the inputs are tracers and the
plain path is taken. PyTorch runs eagerly already (its native mode).

On OpenVINO (Keras' inference backend) an op-by-op call builds the model's graph node by
node at every call and compiles it when the result is read (300x slower at batch 1); and
Keras' own compiled `predict` asks the CPU plugin for no precision, so on CPUs with bf16
(AVX512_BF16, AMX) it silently computes in bf16 (5e-2 off). Concrete images (numpy, or a
tensor that is a Constant) run an OpenVINO model of the call compiled with
INFERENCE_PRECISION_HINT f32 instead, built once per image shape; the variables are
constants in it, so it is rebuilt once any was assigned. Symbolic inputs (Keras' export
traces with Parameters) take the plain path.
"""

import functools

import keras
import numpy as np

from vit_hub import precision


def applies(args, kwargs):
    """Whether this call is a plain inference call on concrete images."""
    # A functional model calling this one as a layer passes mask=None too: nothing.
    if (len(args) != 1 or any(key not in ("training", "mask") for key in kwargs)
            or kwargs.get("training") or kwargs.get("mask") is not None):
        return False
    if _in_stateless_scope():  # the variables' values come from the scope, not from them
        return False
    # PyTorch runs eagerly already: its native mode, nothing to compile.
    return keras.backend.backend() != "torch" and is_concrete(args[0])


def is_concrete(images):
    """Whether `images` hold values now: numpy, or an eager tensor of the backend (not a
    KerasTensor, a TensorFlow graph tensor, a JAX tracer or an OpenVINO graph node)."""
    if isinstance(images, np.ndarray):
        return True
    if isinstance(images, keras.KerasTensor) or not hasattr(images, "shape"):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(images, jax.core.Tracer)
    if backend == "torch":
        import torch

        return images.device.type != "meta" and not torch.compiler.is_compiling()
    if backend == "openvino":
        from keras.src.backend.openvino.core import OpenVINOKerasTensor

        if isinstance(images, OpenVINOKerasTensor):
            return images.output.get_node().get_type_name() == "Constant"
    return False


def _in_stateless_scope():
    # Keras exports the scope (keras.StatelessScope) but not the question; its own
    # predicate is the one answer that stays right across versions.
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    return in_stateless_scope()


class CompiledCalls:
    """Mixin for a `keras.Model` (before it in the bases): plain inference calls run
    compiled, and `compile(jit_compile='auto')` means XLA on TensorFlow at float32.

    `model.compiled_calls = False` gives the op-by-op path (e.g. to step through the
    layers in a debugger). The class calls `_start_compiled_calls()` once built."""

    compiled_calls = True

    def _start_compiled_calls(self):
        self._inference = CompiledInference(self, super().__call__)
        if keras.backend.backend() == "openvino":
            # Keras' OpenVINO predict/evaluate compile their own model with no precision
            # hint (bf16 on CPUs that have it) unless a layer does not support jit: then
            # they call `self(x, training=False)`, i.e. the f32-pinned compiled call.
            self.supports_jit = False

    def __call__(self, *args, **kwargs):
        if self.compiled_calls and applies(args, kwargs) and self._inference.usable:
            return self._inference(args[0])
        return super().__call__(*args, **kwargs)

    def compile(self, *args, jit_compile="auto", **kwargs):
        """As `keras.Model.compile`, but `jit_compile='auto'` on TensorFlow at float32
        means XLA: Keras leaves it off on CPU-only machines, where a ViT's training step
        is then about twice as slow (docs/benchmarks.md). Not for bf16: oneDNN's graph
        path computes it at the CPU's bf16 rate, XLA:CPU does not."""
        if (jit_compile == "auto" and keras.backend.backend() == "tensorflow"
                and self.dtype_policy.compute_dtype == "float32"):
            jit_compile = True
        super().compile(*args, jit_compile=jit_compile, **kwargs)


class CompiledInference:
    """The compiled `images -> call(images, training=False)` of `model`, built on first
    use. A plain object on purpose: a `tf.function` attribute of the model itself would
    be tracked by TensorFlow and saved into its SavedModel exports.

    It is traced again when the model's variables change in number: LoRA factors added
    or merged change the computation, which a traced function would not see. A model
    that cannot be compiled here (float16 on JAX's CPU: `precision.float16_fails_here`,
    said in a warning where the policy is asked for) takes the plain path; any other
    failure is raised, not hidden."""

    def __init__(self, model, call):
        self.model, self.call, self.function = model, call, None
        self.variable_count = None
        self.reason = precision.float16_fails_here(model.dtype_policy)
        self.usable = self.reason is None

    def __call__(self, images):
        count = len(self.model.variables)
        if self.function is None or count != self.variable_count:
            self.function, self.variable_count = self._build(), count
        return self.function(images)

    def _build(self):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # A partial, not a lambda: TensorFlow counts traces per code object, so every
            # model's lambda would add to one count and warn of "excessive retracing" once
            # a process has made a few models (each traces once or twice).
            return tf.function(functools.partial(self.call, training=False),
                               reduce_retracing=True, autograph=False)
        if keras.backend.backend() == "openvino":
            return OpenVINOInference(self.model, self.call)
        import jax

        model = self.model

        def stateless(trainable, non_trainable, images):
            outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
            return outputs

        jitted = jax.jit(stateless)
        return lambda images: jitted([v.value for v in model.trainable_variables],
                                     [v.value for v in model.non_trainable_variables], images)


class OpenVINOInference:
    """`images -> call(images, training=False)` as OpenVINO models compiled for exact
    float32, one per image shape (H, W, C), with the variables' current values baked in."""

    PRECISION = {"INFERENCE_PRECISION_HINT": "f32"}  # never the plugin's silent bf16

    def __init__(self, model, call):
        self.model, self.call = model, call
        self.values, self.compiled = [], {}  # the values baked in; (H, W, C) -> compiled

    def __call__(self, images):
        # An assignment replaces a variable's value object: one identity check per
        # variable per call tells whether the compiled models are stale. The old values
        # are held, so their identities cannot be reused by new objects.
        values = [v.value for v in self.model.variables]
        if len(values) != len(self.values) or any(
                a is not b for a, b in zip(values, self.values)):
            self.values, self.compiled = values, {}
        data = keras.ops.convert_to_numpy(images).astype(self.model.inputs[0].dtype,
                                                         copy=False)
        shape = data.shape[1:]
        if shape not in self.compiled:
            self.compiled[shape] = self._compile(shape, data.dtype)
        compiled = self.compiled[shape]
        outputs = compiled(data)[0]
        if compiled.output(0).get_element_type().to_string() == "bf16":
            # OpenVINO hands bf16 results over as float16 arrays of the same bits (numpy
            # has no bfloat16); read as float16 they are other numbers (Keras' own
            # compiled predict does so: a mixed_bfloat16 model's outputs come out wrong).
            import ml_dtypes

            outputs = outputs.view(ml_dtypes.bfloat16)
        return keras.ops.convert_to_tensor(outputs)

    def _compile(self, shape, dtype):
        # As Keras' OpenVINO trainer builds its model (`_get_compiled_model`), plus the
        # precision: a Parameter with a dynamic batch, the plain call traced on it.
        import openvino as ov
        import openvino.opset16 as ov_opset
        from keras.src.backend.openvino.core import OPENVINO_DTYPES, OpenVINOKerasTensor, get_device

        parameter = ov_opset.parameter([-1, *shape], OPENVINO_DTYPES[str(dtype)])
        outputs = self.call(OpenVINOKerasTensor(parameter.output(0)), training=False)
        graph = ov.Model([ov_opset.result(outputs.output)], [parameter])
        return ov.compile_model(graph, get_device(), self.PRECISION)
