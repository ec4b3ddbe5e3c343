"""A pretrained model under tf.distribute.MirroredStrategy on two logical CPUs: built by
`vit_hub.load_weights` (load_pretrained's loader) inside the scope, feature extraction equal to the plain model, one
training step of a new head. Runs in a subprocess: logical devices can only be set
before TensorFlow initialises its runtime, which this pytest process has long done."""

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import vit_hub
from tests.conftest import TINY, TINY_IMAGE
from vit_hub.weights import save_weights_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "DISTRIBUTE_RESULT "

CHILD = r"""
import json, os, sys
import numpy as np
import tensorflow as tf

# Before anything creates a tensor: split the one physical CPU into two logical ones.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import vit_hub

keras.utils.set_random_seed(0)
path, image_size = sys.argv[1], int(sys.argv[2])
images = np.random.default_rng(7).uniform(-1, 1, (4, image_size, image_size, 3)).astype("float32")
labels = np.array([0, 1, 2, 1])
result = {"logical_cpus": len(tf.config.list_logical_devices("CPU"))}

# The same computation outside any strategy.
plain = vit_hub.load_weights(path)
expected = np.asarray(plain(images))

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result["replicas"] = strategy.num_replicas_in_sync
with strategy.scope():
    backbone = vit_hub.load_weights(path)
    variable = backbone.weights[0].value
    result["variable_type"] = type(variable).__name__
    result["variable_copies"] = [v.device for v in getattr(variable, "values", [variable])]

# (1) Feature extraction, 2 images per replica: Keras' predict (the model keeps the
# strategy it was built under) and an explicit strategy.run.
result["model_strategy"] = type(backbone.distribute_strategy).__name__
features = backbone.predict(images, batch_size=4, verbose=0)
result["features_shape"] = list(features.shape)
result["features_max_abs_diff"] = float(np.abs(features - expected).max())
batch = next(iter(strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices(images).batch(4))))
per_replica = strategy.run(lambda x: backbone(x, training=False), args=(batch,))
result["replica_shapes"] = [list(t.shape) for t in strategy.experimental_local_results(per_replica)]
gathered = strategy.gather(per_replica, axis=0).numpy()
result["run_max_abs_diff"] = float(np.abs(gathered - expected).max())

# (2) A new Dense head on the pretrained backbone, one distributed training step.
with strategy.scope():
    inputs = keras.Input((image_size, image_size, 3), name="images")
    logits = keras.layers.Dense(3, name="new_head")(backbone(inputs))
    classifier = keras.Model(inputs, logits)
    classifier.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
head = classifier.get_layer("new_head")
snapshot = lambda weights: [np.array(w) for w in weights]
before = snapshot(classifier.trainable_weights)
backbone_before, head_before = snapshot(backbone.trainable_weights), snapshot(head.weights)
history = classifier.fit(images, labels, batch_size=4, epochs=1, verbose=0)
differ = lambda new, old: [bool(np.any(a != b)) for a, b in zip(new, old)]
changed = differ(snapshot(classifier.trainable_weights), before)
result["classifier_strategy"] = type(classifier.distribute_strategy).__name__
result["steps"] = int(classifier.optimizer.iterations.numpy())
result["loss"] = history.history["loss"]
result["weights_changed"] = sum(changed)
result["weights_total"] = len(changed)
result["backbone_changed"] = sum(differ(snapshot(backbone.trainable_weights), backbone_before))
result["backbone_total"] = len(backbone_before)
result["backbone_unchanged"] = [w.path for w, c in zip(backbone.trainable_weights,
    differ(snapshot(backbone.trainable_weights), backbone_before)) if not c]
result["head_changed"] = all(differ(snapshot(head.weights), head_before))
print("DISTRIBUTE_RESULT " + json.dumps(result), flush=True)
"""


def test_pretrained_model_under_mirrored_strategy(tmp_path):
    # A converted-weights file of a tiny fe model with random weights (every tensor,
    # class token included, so that a wrong or missing assignment shows).
    model = vit_hub.VisionTransformer(
        image_size=TINY_IMAGE, **TINY, include_top=False, pooling="token"
    )
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.2, variable.shape).astype(np.float32))
    weights = save_weights_file(model, tmp_path / "tiny_fe.h5")

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
           "CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, weights, str(TINY_IMAGE)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    assert proc.returncode == 0 and lines, (
        f"subprocess failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    result = json.loads(lines[-1][len(MARK):])

    assert result["logical_cpus"] == 2
    assert result["replicas"] == 2
    # Built in the scope: every variable mirrored on both devices.
    assert result["variable_type"] == "MirroredVariable"
    assert [d.split("/")[-1] for d in result["variable_copies"]] == [
        "device:CPU:0", "device:CPU:1"
    ]

    # Feature extraction on 2 + 2 images equals the plain model's on 4.
    hidden = TINY["hidden_dim"]
    assert result["model_strategy"] == "MirroredStrategy"
    assert result["features_shape"] == [4, hidden]
    assert result["features_max_abs_diff"] <= 1e-5
    assert result["replica_shapes"] == [[2, hidden], [2, hidden]]
    assert result["run_max_abs_diff"] <= 1e-5

    assert result["classifier_strategy"] == "MirroredStrategy"
    assert result["steps"] == 1
    assert len(result["loss"]) == 1 and np.isfinite(result["loss"][0])
    assert result["head_changed"]
    # The backbone is trained too (nothing disconnected by the wrapping): every weight
    # moves, except that the attention key biases may not: their gradient is zero in exact
    # arithmetic (b_k adds q.b_k to all of a query's scores, which the softmax cancels),
    # so their float32 update is rounding noise, far below a weight's ulp.
    key_biases = {f"block_{i}/attention/key/bias" for i in range(TINY["num_layers"])}
    assert set(result["backbone_unchanged"]) <= key_biases
    assert result["backbone_changed"] >= result["backbone_total"] - len(key_biases) > 0
    assert result["weights_total"] == result["backbone_total"] + 2  # + the head's two
    assert result["weights_changed"] == result["weights_total"] - len(result["backbone_unchanged"])
