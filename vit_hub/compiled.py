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
"""

import functools

import keras


def applies(args, kwargs):
    """Whether this call is a plain inference call on concrete images."""
    if len(args) != 1 or any(key != "training" for key in kwargs) or kwargs.get("training"):
        return False
    images = args[0]
    if isinstance(images, keras.KerasTensor) or not hasattr(images, "shape"):
        return False
    if _in_stateless_scope():  # the variables' values come from the scope, not from them
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(images, jax.core.Tracer)
    return False


def _in_stateless_scope():
    # Keras exports the scope (keras.StatelessScope) but not the question; its own
    # predicate is the one answer that stays right across versions.
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    return in_stateless_scope()


class CompiledInference:
    """The compiled `images -> call(images, training=False)` of `model`, built on first
    use. A plain object on purpose: a `tf.function` attribute of the model itself would
    be tracked by TensorFlow and saved into its SavedModel exports."""

    def __init__(self, model, call):
        self.model, self.call, self.function = model, call, None
        self.usable = True

    def __call__(self, images):
        if self.function is None:
            self.function = self._build()
        try:
            return self.function(images)
        except Exception:
            # Some models compile on one backend and not another (JAX's XLA:CPU has no
            # float16 matmul with float32 accumulation, which mixed_float16 asks for).
            # The plain path decides: it raises the same error if the input is wrong,
            # otherwise its answer is the answer and this model stays on the plain path.
            outputs = self.call(images, training=False)
            self.usable = False
            return outputs

    def _build(self):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # A partial, not a lambda: TensorFlow counts traces per code object, so every
            # model's lambda would add to one count and warn of "excessive retracing" once
            # a process has made a few models (each traces once or twice).
            return tf.function(functools.partial(self.call, training=False),
                               reduce_retracing=True, autograph=False)
        import jax

        model = self.model

        def stateless(trainable, non_trainable, images):
            outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
            return outputs

        jitted = jax.jit(stateless)
        return lambda images: jitted([v.value for v in model.trainable_variables],
                                     [v.value for v in model.non_trainable_variables], images)
