"""The benchmark tool's smoke mode (tiny models, one repeat): every figure is produced.
The full-size runs are `python benchmarks/run.py`, not CI."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    printed = run("--smoke", "--batch", "1,2", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["machine"]["matmul_gflops_fp32"] > 0 and report["machine"]["cores"] >= 1
    model = report["models"][0]
    assert model["conversion"]["seconds"] > 0 and model["conversion"]["io_floor_s"] > 0
    assert model["conversion"]["peak_rss_bytes"] > model["conversion"]["weights_bytes"] > 0
    first = model["first_prediction"]
    assert first["native_s"] > 0 and first["hub_s"] > 0
    assert first["ratio"] == first["native_s"] / first["hub_s"]
    # From the filled IR cache, in a fresh process: neither TensorFlow nor Keras imported.
    assert first["openvino_s"] > first["openvino_load_s"] > 0
    assert first["openvino_ratio"] == first["openvino_s"] / first["hub_s"]
    assert first["openvino_tensorflow_imported"] is False
    assert first["openvino_keras_imported"] is False
    # The OpenVINO runtime: each precision's accuracy beside its speed, or why it is absent.
    openvino = model["openvino"]
    bf16 = "BF16" in openvino["capabilities"]
    assert set(openvino["cpu_flags"]) >= {"avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni"}
    exact = openvino["openvino_fp32"]["accuracy"]
    assert 0 <= exact["max_abs"] <= exact["tolerance"] and exact["cosine_min"] > 0.9999
    assert -1 <= openvino["openvino_int8"]["accuracy"]["cosine_min"] <= 1 + 1e-9
    if bf16:
        assert openvino["openvino_bf16"]["accuracy"]["cosine_min"] > 0.99
    else:
        assert openvino["openvino_bf16"].startswith("not available: this CPU offers FP32")
    # ONNX Runtime: measured where the onnx package is installed, else said why not.
    onnx = model["onnxruntime"]
    measured_onnx = "export_s" in onnx
    if measured_onnx:
        assert onnx["export_s"] > 0 and onnx["quantize_s"] > 0
        assert model["max_abs_to_fp32"]["onnxruntime_fp32"] < 1e-3
        assert all(r["faster"] in ("onnxruntime", "openvino")
                   for r in model["onnxruntime_vs_openvino"]["by_batch"].values())
    else:
        assert onnx["onnxruntime"].startswith("not measured: ")
    assert model["onnxruntime_vs_openvino"]["verdict"]
    runtimes = {"openvino_fp32", "openvino_int8"} | ({"openvino_bf16"} if bf16 else set()) \
        | ({"onnxruntime_fp32", "onnxruntime_int8"} if measured_onnx else set())
    assert runtimes <= set(model["cosine_to_fp32"])
    assert model["cosine_to_fp32"]["openvino_fp32"] > 0.9999
    for batch in ("1", "2"):
        rates = model["throughput"][batch]["images_per_s"]
        smallest = {"native_int8_call", "native_eager"} if batch == "1" else set()
        assert set(rates) == {"hub_layer", "native_call", "native_predict_on_batch",
                              "native_xla", "native_bf16_call"} | smallest | runtimes
        assert all(rate > 0 for rate in rates.values())
        assert model["throughput"][batch]["vs_hub"]["openvino_fp32"] > 0
        assert model["throughput"][batch]["roofline_pct_fp32"] > 0
    for backend in ("tensorflow", "jax", "torch"):  # same cache, fresh processes
        figures = model["backends"][backend]
        assert figures["first_prediction_s"] > 0, figures
        assert figures["tensorflow_imported"] == (backend == "tensorflow")
        assert all(figures[f"{call}_batch{batch}_images_per_s"] > 0
                   for call in ("call", "predict_on_batch") for batch in (1, 2))
        assert ("bf16_call_batch1_images_per_s" in figures) == (backend != "torch")
    assert first["native_load_rss_bytes"] > 0
    assert 0.9 < model["cosine_to_fp32"]["native_bf16_call"] <= 1.0 + 1e-9
    assert set(model["targets"]) == {"call_batch1_vs_hub", "first_prediction_vs_hub",
                                     "load_rss_vs_weights", "bf16_large_batch_vs_hub_fp32",
                                     "bf16_batch1_vs_own_fp32", "bf16_cosine_to_fp32",
                                     "conversion_vs_io_floor", "conversion_rss_vs_weights",
                                     "openvino_bf16_batch32_vs_hub",
                                     "openvino_int8_batch32_vs_hub", "openvino_int8_batch1_vs_hub",
                                     "openvino_first_prediction_vs_hub",
                                     "openvino_fp32_max_abs_vs_tolerance"}
    for key, verdict in model["targets"].items():  # by how much, and why
        assert len(verdict["why"]) > 40, key
        if key == "openvino_bf16_batch32_vs_hub" and not bf16:  # absent: missed, said why
            assert verdict["measured"] is None and not verdict["met"]
            assert "not available" in verdict["why"] and "avx512_bf16 no" in verdict["why"]
        elif key == "openvino_fp32_max_abs_vs_tolerance":  # (may round to 0)
            assert 0 <= verdict["measured"] <= 1 and verdict["met"]
        else:
            assert verdict["measured"] > 0, key
    int8_why = model["targets"]["openvino_int8_batch1_vs_hub"]["why"]
    assert "OpenVINO fp32 (the ceiling reference)" in int8_why and "avx512_vnni" in int8_why
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "target first_prediction_vs_hub" in printed
    assert "openvino_fp32: built" in printed and "target openvino_int8_batch1_vs_hub" in printed


def test_compare_smoke(tmp_path):
    out = tmp_path / "compare.json"
    printed = run("compare", "--smoke", "--variants", "vit_ti16,vit_s16", "--json", str(out))
    rows = json.loads(out.read_text())["compare"]
    assert [r["variant"] for r in rows] == ["vit_ti16", "vit_s16"]
    assert rows[1]["params"] > rows[0]["params"] > 0
    assert rows[1]["gflops_per_image"] > rows[0]["gflops_per_image"] > 0
    assert all(r["images_per_s"] > 0 and r["peak_rss_bytes"] > 0 for r in rows)
    assert rows[0]["output_shape"] == [None, 192] and "vit_s16" in printed
