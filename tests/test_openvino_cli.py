"""`convert-weights --runtime openvino`: after the weights, it builds and caches the
OpenVINO IR and prints its measured agreement with fp32; a later offline load finds it.
A precision that cannot be honoured is refused before anything is converted."""

import os

import pytest

from tests.conftest import TINY_NAME, cache_files
from tests.fault_support import cli
from tests.test_catalogue import HEAVY, run_python
from vit_hub.errors import CacheError

pytest.importorskip("openvino")


def convert(capsys, source, cache, *flags):
    return cli(capsys, TINY_NAME, "--source", source, "--cache-dir", cache, *flags)


def test_the_ir_is_built_cached_and_summarised(capsys, tiny_saved_model, tmp_path,
                                               monkeypatch):
    import vit_hub

    # Offline too: the IR is built from the cached weights, nothing is downloaded.
    monkeypatch.setenv("VIT_HUB_OFFLINE", "1")
    cache = tmp_path / "cache"
    code, out, err = convert(capsys, tiny_saved_model, cache, "--runtime", "openvino")
    assert code == 0, err
    fast = vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino",
                                   offline=True)  # cached: not built again
    assert fast.precision == "fp32"
    assert f"{TINY_NAME}: {fast.summary()}" in out.splitlines()
    assert "OpenVINO fp32: " in out and "against the fp32 Keras model" in out
    before = {f: os.stat(cache / f).st_mtime_ns for f in cache_files(cache)}
    again = cli(capsys, TINY_NAME, "--cache-dir", cache, "--runtime", "openvino")
    assert again[0] == 0 and f"{TINY_NAME}: {fast.summary()}" in again[1]
    assert {f: os.stat(cache / f).st_mtime_ns for f in cache_files(cache)} == before


def test_int8_below_its_gate_fails_and_caches_no_ir(capsys, tiny_saved_model, tmp_path):
    import vit_hub

    # A gate stricter than int8 reaches on any CPU (the tiny model's int8 may pass 0.99).
    cache = tmp_path / "cache"
    code, out, err = convert(capsys, tiny_saved_model, cache, "--runtime", "openvino",
                             "--precision", "int8", "--min-cosine", "0.99999")
    assert code == 1 and f"convert-weights: {TINY_NAME}: OpenVINO int8" in err
    assert "gate 0.99999" in err and "Traceback" not in err
    assert "converted" in out  # the weights are cached all the same
    with pytest.raises(CacheError, match="--runtime openvino --precision int8"):
        vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino",
                                precision="int8", offline=True)


def test_bf16_is_refused_before_any_work_on_a_cpu_without_it(capsys, tiny_saved_model,
                                                             tmp_path):
    from vit_hub.runtime.engine import cpu_capabilities

    cache = tmp_path / "cache"
    code, out, err = convert(capsys, tiny_saved_model, cache, "--runtime", "openvino",
                             "--precision", "bf16")
    if "BF16" in cpu_capabilities():
        assert code == 0 and f"{TINY_NAME}: OpenVINO bf16:" in out, err
    else:
        assert code == 2 and "convert-weights: precision 'bf16' needs a CPU with bf16" in err
        assert not cache.exists()  # nothing converted


@pytest.mark.parametrize("argv, words", [
    ([TINY_NAME, "--precision", "int8"], "--precision int8 is the OpenVINO runtime's: add "
                                         "--runtime openvino"),
    ([TINY_NAME, "--runtime", "keras", "--precision", "fp32"], "add --runtime openvino"),
    (["--list", "--runtime", "openvino"], "--runtime goes with NAMEs or --all"),
    ([TINY_NAME, "--runtime", "openvino", "--precision", "fp16"], "invalid choice: 'fp16'"),
])
def test_usage_errors(capsys, argv, words):
    code, out, err = cli(capsys, *argv)
    assert code == 2 and words in err


def test_the_usage_error_imports_no_framework():
    done = run_python("import sys; from vit_hub.cli.convert_weights import main\n"
                      "try:\n    main(['vit_b32_fe', '--precision', 'int8'])\n"
                      f"except SystemExit as exit:\n    print('CODE', exit.code, {HEAVY})")
    assert done.stdout.splitlines()[-1] == "CODE 2 []", done.stderr
