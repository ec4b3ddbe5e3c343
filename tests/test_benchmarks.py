"""The benchmark tool's smoke mode (tiny models, short rounds): every figure is produced,
each throughput contender timed in a process of its own with its spread, the CPU class
recorded, and the report rendered from the JSON alone. The full-size runs are
`python -m benchmarks.run`, not CI."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
CLASS_SETS = ("AVX2", "AVX-512F", "AVX512_VNNI", "AVX512_BF16", "AMX")


def run(module, *args):
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(the JSON, what the run printed, the JSON's path) of one smoke run."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = run("benchmarks.run", "--smoke", "--batch", "1,2", "--json", str(out))
    return json.loads(out.read_text()), printed, out


def test_smoke_writes_every_figure(smoke):
    report, printed, out = smoke
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
        for key, record in figures["spread"].items():
            assert record["min"] <= record["images_per_s"] <= record["max"], (backend, key)
            assert figures[f"{key}_images_per_s"] == record["images_per_s"]
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
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "target first_prediction_vs_hub" in printed
    assert "openvino_fp32: built" in printed and "target openvino_int8_batch1_vs_hub" in printed


def test_each_contender_in_its_own_process_with_its_spread(smoke):
    report = smoke[0]
    model = report["models"][0]
    assert model["throughput_method"]["rounds"] == 2  # --smoke
    peaks = {"fp32": report["machine"]["matmul_gflops_fp32"],
             "bf16": report["machine"]["matmul_gflops_bf16"]}
    for batch, figures in model["throughput"].items():
        assert set(figures["contenders"]) == set(figures["images_per_s"])
        for key, record in figures["contenders"].items():
            assert len(record["rounds"]) == 2 and all(r > 0 for r in record["rounds"])
            assert record["min"] == min(record["rounds"]) and record["max"] == max(record["rounds"])
            assert record["min"] <= record["images_per_s"] <= record["max"], (batch, key)
            assert figures["images_per_s"][key] == record["images_per_s"]
            # The share of the machine's limit: fp32's peak, bf16's for bf16 paths.
            assert record["peak"] == ("bf16" if "bf16" in key else "fp32")
            share = 100 * record["images_per_s"] * model["flops_per_image"] / 1e9
            assert record["peak_pct"] == pytest.approx(share / peaks[record["peak"]])
    # Each child held its own engine only.
    processes = model["throughput_processes"]
    assert set(processes) == set(model["throughput"]["1"]["contenders"])
    for key, process in processes.items():
        loaded = set(process["engine_modules_imported"])
        assert process["process_s"] > 0
        if key.startswith("openvino_"):
            assert "openvino" in loaded and not loaded & {"tensorflow", "keras", "onnxruntime"}
            assert process["compiled"]["INFERENCE_PRECISION_HINT"]
        elif key.startswith("onnxruntime_"):
            assert "onnxruntime" in loaded, key
            assert not loaded & {"tensorflow", "keras", "jax", "torch", "openvino"}, key
            assert "session.intra_op.allow_spinning" in process["session_options"]
        else:  # the hub layer and the Keras contenders: TensorFlow
            assert "tensorflow" in loaded and not loaded & {"openvino", "onnxruntime"}, key


def test_the_cpu_class_is_recorded(smoke):
    machine = smoke[0]["machine"]
    with open("/proc/cpuinfo") as f:
        lines = f.read().splitlines()
    name = next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
    flags = set(next(l.split(":", 1)[1].split() for l in lines if l.startswith("flags")))
    assert machine["cpu_class"]["model"] == name
    sets = machine["cpu_class"]["instruction_sets"]
    assert tuple(sets) == CLASS_SETS
    assert sets["AVX2"] == ("avx2" in flags) and sets["AVX-512F"] == ("avx512f" in flags)
    assert sets["AVX512_BF16"] == ("avx512_bf16" in flags)
    assert sets["AVX512_VNNI"] == ("avx512_vnni" in flags)
    assert sets["AMX"] == bool(flags & {"amx_bf16", "amx_int8", "amx_tile"})


def test_the_report_is_rendered_from_the_json(smoke, tmp_path):
    report, printed, out = smoke
    table = tmp_path / "table.md"
    shown = run("benchmarks.report", str(out), "--markdown", str(table))
    # The run printed the same report (report.py's), from the same figures.
    assert shown.split("\nwrote ")[0].strip() in printed
    text = table.read_text()
    machine = report["machine"]
    cpu = machine["cpu_class"]["model"]
    blocks = text.split("\n\n")
    tables = [b for b in blocks if b.lstrip().startswith("| ")]
    assert len(tables) >= 5
    for block in tables:  # every table captioned with the CPU class it was measured on
        caption = blocks[blocks.index(block) - 1]
        assert cpu in caption and all(label in caption for label in CLASS_SETS), caption
    model = report["models"][0]
    hub = model["throughput"]["1"]["contenders"]["hub_layer"]
    assert f"{hub['images_per_s']:.1f} ({hub['min']:.1f}-{hub['max']:.1f}, 2 rounds)" in text
    assert "first_prediction_vs_hub" in text and model["model"] in text


def test_no_child_is_run_from_a_code_string():
    """Children run `python -m benchmarks.<module> <task> <json>`: no `python -c`, no
    exec/eval, no code templates; one module starts processes."""
    assert (BENCHMARKS / "__init__.py").is_file()
    starters = set()
    for path in BENCHMARKS.glob("*.py"):
        source = path.read_text()
        tree = ast.parse(source, str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                assert not (isinstance(func, ast.Name) and func.id in ("exec", "eval", "compile")), path
                assert not (isinstance(func, ast.Attribute) and func.attr == "format"), path
            if isinstance(node, ast.Constant) and node.value == "-c":
                pytest.fail(f"{path.name}: a '-c' command line")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                    node.value.id in ("subprocess", "multiprocessing", "os")
                    and node.attr in ("run", "Popen", "Process", "system", "execv", "spawnv")):
                starters.add(path.name)
        if "TASKS" in source and path.name != "child.py":  # every task a module function
            tasks = next(n for n in tree.body if isinstance(n, ast.Assign)
                         and getattr(n.targets[0], "id", None) == "TASKS")
            functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            names = {n.id for n in ast.walk(tasks.value) if isinstance(n, ast.Name)}
            assert names - {"task"} <= functions, path
            assert "child.main(TASKS)" in source, path
    assert starters == {"child.py"}


def test_compare_smoke(tmp_path):
    out = tmp_path / "compare.json"
    printed = run("benchmarks.run", "compare", "--smoke", "--variants", "vit_ti16,vit_s16",
                  "--json", str(out))
    result = json.loads(out.read_text())
    rows = result["compare"]
    assert [r["variant"] for r in rows] == ["vit_ti16", "vit_s16"]
    assert rows[1]["params"] > rows[0]["params"] > 0
    assert rows[1]["gflops_per_image"] > rows[0]["gflops_per_image"] > 0
    assert all(r["images_per_s"] > 0 and r["peak_rss_bytes"] > 0 for r in rows)
    assert rows[0]["output_shape"] == [None, 192] and "vit_s16" in printed
    assert result["machine"]["cpu_class"]["model"] in printed


def test_openvino_settings_smoke(tmp_path):
    """Each OpenVINO setting measured with its spread, and where the time goes, with the
    CPU class over the table."""
    out, markdown = tmp_path / "settings.json", tmp_path / "settings.md"
    printed = run("benchmarks.run", "openvino-settings", "--smoke", "--batch", "1,2",
                  "--json", str(out), "--markdown", str(markdown))
    result = json.loads(out.read_text())["openvino_settings"]
    from benchmarks.openvino_settings import SETTINGS

    assert list(result["spread"]) == ["fp32", "int8"]
    for settings in result["spread"].values():
        assert list(settings) == list(SETTINGS)
        for by_batch in settings.values():
            assert list(by_batch) == ["1", "2"]
            for record in by_batch.values():
                assert record["min"] <= record["images_per_s"] <= record["max"]
                assert len(record["rounds"]) == 2
    for profile in result["profile"].values():
        assert profile["batch"] == 2 and profile["ms_per_call"] > 0
        assert 0.5 < sum(profile["share_by_type"].values()) <= 1 + 1e-9
    assert "OpenVINO int8: setting" in printed and "vit_hub (hint f32, defaults)" in printed
    table = markdown.read_text()
    assert "AVX2" in table and "| OpenVINO fp32: setting |" in table


@pytest.mark.slow  # two Ray + Serve starts per runtime: minutes, not CI
def test_serve_smoke(tmp_path):
    out = tmp_path / "serve.json"
    printed = run("benchmarks.run", "serve", "--smoke", "--json", str(out))
    result = json.loads(out.read_text())["serve"]
    assert set(result["runtimes"]) == {"keras", "openvino"}
    for runtime, figures in result["runtimes"].items():
        assert figures["in_process_images_per_s"] > 0, runtime
        assert set(figures["by_clients"]) == {"1", "8", "32"}
        for row in figures["by_clients"].values():
            assert row["requests"] > 0 and row["failures"] == 0
            assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert figures["by_clients"]["32"]["mean_batch"] > 1  # batched together
        assert figures["vs_in_process_at_32"] > 0 and figures["batch_wait_ms"] == 10
        [longer] = figures["longer_waits"]
        assert longer["batch_wait_ms"] == 50 and set(longer["by_clients"]) == {"1", "8", "32"}
    assert "target served/in-process at 32 clients" in printed
