"""Training across devices with keras.distribution on JAX: `vit_hub.layout_map` shards the
kernels over a simulated 8-device CPU mesh and training gives the single-device losses;
DataParallel too; and two processes on localhost train data-parallel as two hosts would.

Each run is a fresh process: XLA's device count is fixed when JAX starts. Runs in the
TensorFlow leg (it starts JAX itself).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import TINY, TINY_HYBRID, TINY_HYBRID_IMAGE, TINY_IMAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The distributed runs sum the same float32 products in other orders (per-device partial
# sums, then all-reduce): measured, losses (~2) and weights after 8 SGD steps differ by
# 2e-7 (plain) to 1.3e-6 (hybrid); 1e-5 leaves room without hiding a wrong shard.
TOLERANCE = 1e-5

COMMON = r"""
import json, sys
import numpy as np
import keras, jax
import vit_hub

def data(image_size, n=32):
    rng = np.random.default_rng(0)
    return (rng.uniform(-1, 1, (n, image_size, image_size, 3)).astype("float32"),
            rng.integers(0, 8, n))

def initial_weights(config, image_size):
    keras.utils.set_random_seed(0)
    return vit_hub.VisionTransformer(image_size=image_size, num_classes=8, **config).get_weights()

def train(config, image_size, weights, x, y, batch_size):
    # The model is built under the distribution in force, so its variables are laid out
    # as the distribution says; the weights are the same in every run.
    model = vit_hub.VisionTransformer(image_size=image_size, num_classes=8, **config)
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = []
    callback = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
    model.fit(x, y, batch_size=batch_size, epochs=2, shuffle=False, verbose=0,
              callbacks=[callback])
    return model, losses
"""

MESH = COMMON + r"""
configs = {"plain": (json.loads(sys.argv[1]), int(sys.argv[2])),
           "hybrid": (json.loads(sys.argv[3]), int(sys.argv[4]))}
devices = keras.distribution.list_devices()
result = {"devices": len(devices)}
for kind, (config, size) in configs.items():
    x, y = data(size)
    weights = initial_weights(config, size)
    single, losses = train(config, size, weights, x, y, 8)
    result[kind] = {"single": losses}
    final = {v.path: keras.ops.convert_to_numpy(v) for v in single.weights}
    distributions = {
        "data_parallel": keras.distribution.DataParallel(devices=devices),
        "model_parallel": keras.distribution.ModelParallel(
            layout_map=vit_hub.layout_map(keras.distribution.DeviceMesh(
                (2, 4), ["batch", "model"], devices)), batch_dim_name="batch"),
    }
    if kind == "hybrid":  # its stem is what the layout map adds; data parallel is the same
        del distributions["data_parallel"]
    for name, distribution in distributions.items():
        keras.distribution.set_distribution(distribution)
        model, losses = train(config, size, weights, x, y, 8)
        keras.distribution.set_distribution(None)
        result[kind][name] = losses
        result[kind][name + "_weights_diff"] = max(
            float(np.abs(keras.ops.convert_to_numpy(v) - final[v.path]).max())
            for v in model.weights)
        result[kind][name + "_layouts"] = {
            v.path: [str(a) for a in v.value.sharding.spec] + [list(v.value.addressable_shards[0].data.shape)]
            for v in model.weights if v.value.sharding.spec and any(v.value.sharding.spec)}
    if kind == "plain":  # weights loaded from a file under the distribution land sharded
        import os, tempfile
        path = os.path.join(tempfile.mkdtemp(), "weights.h5")
        vit_hub.weights.save_weights_file(single, path)
        keras.distribution.set_distribution(distributions["model_parallel"])
        loaded = vit_hub.load_weights(path)
        outputs = loaded.predict(x[:8], verbose=0)
        keras.distribution.set_distribution(None)
        query = next(v for v in loaded.weights if v.path.endswith("query/kernel"))
        result[kind]["loaded_query_spec"] = [str(a) for a in query.value.sharding.spec]
        result[kind]["loaded_outputs_diff"] = float(np.abs(
            outputs - single.predict(x[:8], verbose=0)).max())
print("RESULT " + json.dumps(result))
"""

HOSTS = COMMON + r"""
port, process, config, size = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
keras.distribution.initialize(job_addresses=f"localhost:{port}", num_processes=2,
                              process_id=process)
x, y = data(size)
weights = initial_weights(config, size)
devices = keras.distribution.list_devices()
# Each host feeds its half of every global batch of 8 (rows 4p..4p+3 of each batch): the
# data is sharded here, as a user's input pipeline does, so Keras does not shard it again.
keras.distribution.set_distribution(keras.distribution.DataParallel(
    devices=devices, auto_shard_dataset=False))
local = np.concatenate([np.arange(b, b + 8)[4 * process:4 * process + 4] for b in range(0, len(x), 8)])
_, losses = train(config, size, weights, x[local], y[local], 4)
print("RESULT " + json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                              "devices": len(devices), "local_devices": jax.local_device_count(),
                              "losses": losses}))
"""


def jax_env(devices):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIT_HUB")}
    env.update(KERAS_BACKEND="jax", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


def result_of(done):
    assert done.returncode == 0, done.stderr[-4000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def mesh_runs():
    args = [json.dumps(TINY), str(TINY_IMAGE), json.dumps(TINY_HYBRID), str(TINY_HYBRID_IMAGE)]
    done = subprocess.run([sys.executable, "-c", MESH, *args], env=jax_env(8), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    return result_of(done)


@pytest.mark.parametrize("kind, distribution", [("plain", "data_parallel"),
                                                ("plain", "model_parallel"),
                                                ("hybrid", "model_parallel")])
def test_distributed_fit_gives_the_single_device_losses(mesh_runs, kind, distribution):
    assert mesh_runs["devices"] == 8
    run = mesh_runs[kind]
    assert len(run["single"]) == 8  # 2 epochs of 4 steps
    np.testing.assert_allclose(run[distribution], run["single"], rtol=0, atol=TOLERANCE)
    print(f"{kind} {distribution}: losses differ by at most "
          f"{np.abs(np.subtract(run[distribution], run['single'])).max():.1e}, weights by "
          f"{run[distribution + '_weights_diff']:.1e}")
    assert run[distribution + "_weights_diff"] <= TOLERANCE


def test_layout_map_shards_whole_heads_and_mlp_units(mesh_runs):
    layouts = mesh_runs["plain"]["model_parallel_layouts"]
    heads, head_dim = TINY["num_heads"], TINY["hidden_dim"] // TINY["num_heads"]
    width, mlp = TINY["hidden_dim"], TINY["mlp_dim"]
    for block in range(TINY["num_layers"]):  # 4-way model axis: a quarter on each device
        for projection in ("query", "key", "value"):
            assert layouts[f"block_{block}/attention/{projection}/kernel"] == \
                ["None", "model", "None", [width, heads // 4, head_dim]]
            assert layouts[f"block_{block}/attention/{projection}/bias"] == \
                ["model", "None", [heads // 4, head_dim]]
        assert layouts[f"block_{block}/attention/attention_output/kernel"] == \
            ["model", "None", "None", [heads // 4, head_dim, width]]
        assert layouts[f"block_{block}/mlp/dense_1/kernel"] == ["None", "model", [width, mlp // 4]]
        assert layouts[f"block_{block}/mlp/dense_1/bias"] == ["model", [mlp // 4]]
        assert layouts[f"block_{block}/mlp/dense_2/kernel"] == ["model", "None", [mlp // 4, width]]
    assert len(layouts) == TINY["num_layers"] * 10  # q, k, v (kernel, bias), out, mlp: nothing else


def test_a_model_loaded_under_model_parallel_is_sharded_and_computes_the_same(mesh_runs):
    assert mesh_runs["plain"]["loaded_query_spec"] == ["None", "model", "None"]
    assert mesh_runs["plain"]["loaded_outputs_diff"] <= TOLERANCE


def test_layout_map_shards_the_hybrid_stem_convolutions(mesh_runs):
    layouts = mesh_runs["hybrid"]["model_parallel_layouts"]
    stem = {path: spec for path, spec in layouts.items() if path.startswith("stem/")}
    assert "stem/conv_root/kernel" in stem
    assert len(stem) == 1 + 4 * 4  # the root conv; per stage one unit: conv1-3 + conv_proj
    for spec in stem.values():
        assert spec[:4] == ["None", "None", "None", "model"]


def test_layout_map_names_a_missing_mesh_axis():
    code = ("import keras, vit_hub\n"
            "mesh = keras.distribution.DeviceMesh((8,), ['batch'], keras.distribution.list_devices())\n"
            "try:\n    vit_hub.layout_map(mesh)\n"
            "except vit_hub.ConfigError as err:\n    print('RESULT ' + __import__('json').dumps(str(err)))\n")
    message = result_of(subprocess.run([sys.executable, "-c", code], env=jax_env(8), cwd=ROOT,
                                       capture_output=True, text=True, timeout=300))
    assert "'model'" in message and "['batch']" in message


def test_two_processes_on_localhost_train_data_parallel(mesh_runs):
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    args = [json.dumps(TINY), str(TINY_IMAGE)]
    hosts = [subprocess.Popen([sys.executable, "-c", HOSTS, str(port), str(p), *args],
                              env=jax_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in (0, 1)]
    results = []
    for host in hosts:
        stdout, stderr = host.communicate(timeout=600)
        results.append(result_of(subprocess.CompletedProcess(host.args, host.returncode,
                                                             stdout, stderr)))
    for p, result in enumerate(results):
        assert (result["process"], result["processes"]) == (p, 2)
        assert (result["devices"], result["local_devices"]) == (4, 2)
        # Both hosts see the global loss of each global batch of 8: the one-device run's.
        np.testing.assert_allclose(result["losses"], mesh_runs["plain"]["single"], rtol=0,
                                   atol=TOLERANCE)
