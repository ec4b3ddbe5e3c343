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
    for batch in ("1", "2"):
        rates = model["throughput"][batch]["images_per_s"]
        smallest = {"native_int8_call", "native_eager"} if batch == "1" else set()
        assert set(rates) == {"hub_layer", "native_call", "native_predict_on_batch",
                              "native_xla", "native_bf16_call"} | smallest
        assert all(rate > 0 for rate in rates.values())
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
                                     "conversion_vs_io_floor", "conversion_rss_vs_weights"}
    for verdict in model["targets"].values():  # by how much, and why
        assert verdict["measured"] > 0 and len(verdict["why"]) > 40
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "target first_prediction_vs_hub" in printed


def test_compare_smoke(tmp_path):
    out = tmp_path / "compare.json"
    printed = run("compare", "--smoke", "--variants", "vit_ti16,vit_s16", "--json", str(out))
    rows = json.loads(out.read_text())["compare"]
    assert [r["variant"] for r in rows] == ["vit_ti16", "vit_s16"]
    assert rows[1]["params"] > rows[0]["params"] > 0
    assert rows[1]["gflops_per_image"] > rows[0]["gflops_per_image"] > 0
    assert all(r["images_per_s"] > 0 and r["peak_rss_bytes"] > 0 for r in rows)
    assert rows[0]["output_shape"] == [None, 192] and "vit_s16" in printed
