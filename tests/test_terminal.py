"""What vit_hub leaves on the terminal: TensorFlow starts without its C++ start-up log
lines where vit_hub imports it (the commands, and library calls, which change no
environment variable), every other line written meanwhile still reaches stderr; warnings
point at the user's line; conversions in one process do not make TensorFlow warn."""

import logging
import os
import subprocess
import sys
import warnings

import pytest

from tests.conftest import TINY_NAME
from vit_hub.terminal import _START_UP_NOISE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stderr_of(code):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": ROOT}, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_tensorflow_starts_without_its_log_lines_and_other_lines_pass():
    # Unfiltered, TensorFlow 2.21 prints 6 to 9 start-up lines here, even at
    # TF_CPP_MIN_LOG_LEVEL=3 (measured): the exact stderr below has none of them.
    lines = (b"E0000 00:00:1.5 1 main.cc:1] a real error\n"
             b"I0000 00:00:1.5 1 port.cc:153] oneDNN custom operations are on.\n"
             b"Traceback: a line of our own\n")
    shown = stderr_of(
        "import os, sys\n"
        "from vit_hub.terminal import _START_UP_NOISE, _stderr_filtered, "
        "start_tensorflow_quietly\n"
        "start_tensorflow_quietly()\n"
        "assert 'tensorflow' in sys.modules and os.environ['TF_CPP_MIN_LOG_LEVEL'] == '2'\n"
        f"with _stderr_filtered(_START_UP_NOISE):\n    os.write(2, {lines!r})\n")
    assert shown == "E0000 00:00:1.5 1 main.cc:1] a real error\nTraceback: a line of our own\n"


def test_a_library_call_that_imports_tensorflow_keeps_its_start_up_lines_off():
    """The first Keras model of a process imports TensorFlow (Keras' backend): through
    vit_hub, without the start-up lines and without touching the environment. The same
    import done directly shows them (else this test could not fail)."""
    direct = stderr_of("import tensorflow as tf\ntf.config.list_physical_devices()\n")
    if not any(_START_UP_NOISE.match(line) for line in direct.splitlines()):
        pytest.skip("this TensorFlow prints no start-up lines here")
    changed = "import os, sys\nbefore = dict(os.environ)\n{}\nassert 'tensorflow' in " \
        "sys.modules\nsys.stderr.write(repr(sorted(set(os.environ.items()) ^ " \
        "set(before.items()))))\n"
    keras_alone = stderr_of(changed.format("import keras")).splitlines()[-1]
    shown = stderr_of(changed.format(
        "import vit_hub\n"
        "model = vit_hub.VisionTransformer(image_size=32, patch_size=8, hidden_dim=32, "
        "num_layers=1, num_heads=2, mlp_dim=32)")).splitlines()
    assert not [line for line in shown if _START_UP_NOISE.match(line)], shown
    # The environment changes only as Keras' own import changes it (TF_CPP_MIN_LOG_LEVEL).
    assert shown[-1] == keras_alone


def test_a_warning_points_at_the_users_line(tmp_path):
    """However deep in vit_hub a warning is decided (here: resampling, inside the load),
    it is reported at the caller's line in the user's file."""
    import vit_hub
    from tests import checkpoints

    cache = checkpoints.cache_copy(tmp_path / "cache", TINY_NAME)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, image_size=48, offline=True)
    [resampled] = [w for w in caught if "resampled" in str(w.message)]
    assert resampled.filename == __file__, resampled.filename


def test_conversions_in_one_process_do_not_make_tensorflow_warn(tmp_path, caplog,
                                                                tiny_saved_model):
    """TensorFlow warns of "excessive retracing" when a process builds several
    predict functions (Keras' predict makes one per model): a parity check uses the
    model's call, so converting many models says nothing."""
    from vit_hub.conversion.pipeline import convert_into_cache

    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for i in range(6):
            convert_into_cache(TINY_NAME, cache_dir=tmp_path / str(i), source=tiny_saved_model)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
