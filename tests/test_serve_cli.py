"""The `vit-serve` command in fresh processes, as a user runs it: it prints the URL and
the model line, answers over HTTP, and Ctrl-C (SIGINT) stops it with exit status 130,
leaving no process behind; bad options are refused before anything starts (exit 2, one
line, no Ray started). This module starts no Ray of its own in the test process."""

import io
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import vit_hub
from tests.conftest import TINY_IMAGE, TINY_NAME, kill_session
from tests.fault_support import free_port

pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `vit-serve`, with the tiny test catalogue registered (as a user registers a model).
CLI = "import tests.conftest, sys; from vit_hub.cli.vit_serve import main; sys.exit(main())"
TIMEOUT = 30


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from tests import checkpoints

    return str(checkpoints.cache_copy(tmp_path_factory.mktemp("serve-cli") / "cache",
                                      TINY_NAME))


def environment():
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("RAY_ADDRESS", None)
    return env


def session_processes(sid):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) == sid:
                with open(f"/proc/{pid}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                        found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


def refused(*argv, timeout=120):
    done = subprocess.run([sys.executable, "-c", CLI, *argv], env=environment(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr.strip().splitlines()


def test_serves_prints_the_url_and_the_model_and_stops_cleanly_on_ctrl_c(cache, tmp_path):
    from PIL import Image

    port = free_port()
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        job = subprocess.Popen([sys.executable, "-c", CLI, TINY_NAME, "--cache-dir", cache,
                                "--offline", "--port", str(port)], env=environment(),
                               cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while "model " not in (tmp_path / "out").read_text():
            assert job.poll() is None, (tmp_path / "err").read_text()[-3000:]
            assert time.monotonic() < deadline, "vit-serve did not start within 150 s"
            time.sleep(0.2)
        printed = (tmp_path / "out").read_text().splitlines()
        assert printed[0].startswith(f"vit-serve: serving at http://127.0.0.1:{port} ")
        from vit_hub.runtime.engine import describe_cpu_class

        assert printed[1] == (f"model {TINY_NAME}: {TINY_IMAGE}x{TINY_IMAGE} images -> 32 "
                              f"features; Keras ({os.environ.get('KERAS_BACKEND', 'tensorflow')})"
                              f" fp32, the reference model (exact), on {describe_cpu_class()}")
        buffer = io.BytesIO()
        Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(buffer, "PNG")
        answer = requests.post(f"http://127.0.0.1:{port}/v1/embed", data=buffer.getvalue(),
                               headers={"Content-Type": "image/png"}, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        model = vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, offline=True)
        expected = model.predict(vit_hub.preprocess(buffer.getvalue(), TINY_IMAGE), verbose=0)
        assert np.abs(np.asarray(answer.json()["features"]) - expected[0]).max() <= 1e-5
        os.kill(job.pid, signal.SIGINT)
        code = job.wait(timeout=60)
        left = []
        deadline = time.monotonic() + 30
        while (left := session_processes(job.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        kill_session(job.pid)
        job.wait()
    said = (tmp_path / "err").read_text()
    assert code == 130, said[-3000:]
    assert said.strip().splitlines()[-1] == "vit-serve: stopped; Serve shut down."
    assert "Traceback" not in said and not left, (left, said[-3000:])
    assert (tmp_path / "out").read_text().splitlines() == printed  # no Ray lines after
    vit_hub.serve.check_port("127.0.0.1", port)  # free again: nothing listens there


def test_bad_options_are_refused_before_anything_starts(cache):
    code, lines = refused("vit_b32_fx", "--cache-dir", cache, "--offline")
    assert code == 2 and len(lines) == 1 and "vit_b32_fe" in lines[0], lines  # did you mean
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = refused(TINY_NAME, "--cache-dir", cache, "--offline", "--port",
                              str(port))
    assert code == 2 and lines == [f"vit-serve: Port {port} on 127.0.0.1 is in use (another "
                                   "server listens there): choose another --port, or stop "
                                   "that server."], lines
    code, lines = refused(TINY_NAME, "--precision", "int8")
    assert code == 2 and "add --runtime openvino" in lines[-1]
    code, lines = refused(TINY_NAME, "--max-batch", "0")
    assert code == 2 and "--max-batch must be at least 1" in lines[-1]
    from vit_hub.runtime.engine import cpu_capabilities

    if "BF16" not in cpu_capabilities():
        code, lines = refused(TINY_NAME, "--cache-dir", cache, "--runtime", "openvino",
                              "--precision", "bf16")
        assert code == 2 and len(lines) == 1 and "needs a CPU with bf16" in lines[0], lines
