"""What vit_hub leaves on the terminal: TensorFlow's start-up log lines off it.

TensorFlow's C++ libraries print a few lines when they load (oneDNN notices, "Could not find
cuda drivers", the CPU-feature note), before absl's logging is set up, so
TF_CPP_MIN_LOG_LEVEL cannot stop them; on a machine without a GPU its first device query
adds an error line about cuInit. They say nothing a user of `convert-weights` or the demo
can act on. `start_tensorflow_quietly` (for programs) and `tensorflow_start_up_filtered`
(where a library call of vit_hub's imports TensorFlow) import it and make that first query
with the process's stderr caught, then pass on every line that is not one of those.
"""

import contextlib
import os
import re
import sys
import tempfile

# The absl preamble, info and warning lines (I/W + MMDD), the CPU-feature note's second
# line, and cuInit failing where there is no GPU driver.
_START_UP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} "
    r"|To enable the following instructions"
    r"|E\d{4} .*failed call to cuInit")


def start_tensorflow_quietly():
    """Imports TensorFlow and finds its devices, its start-up log lines filtered out: for
    programs (the commands, the demo), which own their process.

    Errors keep showing: only the lines above are dropped, and TF_CPP_MIN_LOG_LEVEL
    (default 2 here: errors only) still governs what TensorFlow logs afterwards."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import_tensorflow()


def import_tensorflow():
    """TensorFlow, its start-up lines filtered out where this imports it first (see
    `tensorflow_start_up_filtered`): vit_hub's library calls import it so."""
    with tensorflow_start_up_filtered():
        import tensorflow
    return tensorflow


@contextlib.contextmanager
def tensorflow_start_up_filtered():
    """Where vit_hub is the one that imports TensorFlow (its first Keras model, a
    conversion, an export): TensorFlow's start-up lines are dropped, every other line
    written in the meantime is passed on when the block ends, and nothing else changes
    (no environment variable). Where TensorFlow is already imported, nothing is done.

    While the block runs, what other threads write to file descriptor 2 is held back
    until it ends, then passed on."""
    if "tensorflow" in sys.modules:
        yield
        return
    with _stderr_filtered(_START_UP_NOISE):
        yield
        tf = sys.modules.get("tensorflow")
        if tf is not None and hasattr(tf, "config"):  # its first device query logs too
            tf.config.list_physical_devices()


@contextlib.contextmanager
def _stderr_filtered(noise):
    """Catches file descriptor 2 (C++ writes there, not to sys.stderr) in a temporary
    file; on leaving, writes back every line that `noise` does not match."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not noise.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
