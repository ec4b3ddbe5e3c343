"""The report of a benchmark run, from its JSON alone: the targets' verdicts and the
measured reasons behind them, the printed report, Markdown tables and the chart.

    python -m benchmarks.report out/bench.json [--markdown docs/benchmarks_table.md]

prints the report of any of `run`'s JSON files (models, compare, embed, serve, finetune) and,
with --markdown, writes its tables; every table names the CPU class it was measured on
(the CPU's model and the instruction sets that decide bf16 and int8 speed). `run` prints
the same report at the end (`text`) and stores `assess`'s verdicts in its JSON.
"""

import argparse
import json
import os
import sys

from vit_hub.runtime.engine import describe_cpu_class

# The issues' targets, ratios measured in one run (ViT-B/32 fe on this machine).
TARGETS = {"call_batch1_vs_hub": 1.0, "first_prediction_vs_hub": 0.5,
           "load_rss_vs_weights": 1.3, "bf16_large_batch_vs_hub_fp32": 1.8,
           "bf16_batch1_vs_own_fp32": 1.2, "bf16_cosine_to_fp32": 0.999,
           "conversion_vs_io_floor": 3.0, "conversion_rss_vs_weights": 2.0,
           # The OpenVINO runtime's, set on an AVX-512 + BF16 + VNNI machine; "batch32" and
           # "batch1" are the largest and smallest batch measured.
           "openvino_bf16_batch32_vs_hub": 1.9, "openvino_int8_batch32_vs_hub": 3.0,
           "openvino_int8_batch1_vs_hub": 2.5, "openvino_first_prediction_vs_hub": 0.35,
           "openvino_fp32_max_abs_vs_tolerance": 1.0}
LOWER_IS_BETTER = {"first_prediction_vs_hub", "load_rss_vs_weights", "conversion_vs_io_floor",
                   "conversion_rss_vs_weights", "openvino_first_prediction_vs_hub",
                   "openvino_fp32_max_abs_vs_tolerance"}
# Fine-tuning's targets, against the hub layer's best step rate.
FINETUNE_TARGETS = {"tensorflow_fp32_every_run": 1.0, "tensorflow_bf16": 1.8, "best": 2.0}
UNKNOWN_CLASS = "instruction sets not recorded"


# === Verdicts ===


def assess(result):
    """What `run` stores beside a model's figures: each target's verdict and whether
    ONNX Runtime is to be offered."""
    return {"targets": verdicts(result), "onnxruntime_vs_openvino": runtime_choice(result)}


def verdicts(result):
    """Each target of the issues: met or missed, by how much, and the measured why."""
    per_batch = result["throughput"]
    small, large = per_batch[min(per_batch, key=int)], per_batch[max(per_batch, key=int)]
    c, f = result["conversion"], result["first_prediction"]
    measured = {
        "call_batch1_vs_hub": small["vs_hub"]["native_call"],
        "first_prediction_vs_hub": f["ratio"],
        "load_rss_vs_weights": f["native_load_rss_bytes"] / c["weights_bytes"],
        "bf16_large_batch_vs_hub_fp32": large["vs_hub"]["native_bf16_call"],
        "bf16_batch1_vs_own_fp32": small["bf16_call_vs_own_fp32_call"],
        "bf16_cosine_to_fp32": result["cosine_to_fp32"]["native_bf16_call"],
        "conversion_vs_io_floor": c["ratio_to_floor"],
        "conversion_rss_vs_weights": c["rss_to_weights"],
        # None where the contender is absent (bf16 on a CPU without it): missed, and why.
        "openvino_bf16_batch32_vs_hub": large["vs_hub"].get("openvino_bf16"),
        "openvino_int8_batch32_vs_hub": large["vs_hub"].get("openvino_int8"),
        "openvino_int8_batch1_vs_hub": small["vs_hub"].get("openvino_int8"),
        "openvino_first_prediction_vs_hub": f["openvino_ratio"],
        "openvino_fp32_max_abs_vs_tolerance": (
            fp32["accuracy"]["max_abs"] / fp32["accuracy"]["tolerance"]
            if isinstance(fp32 := result["openvino"]["openvino_fp32"], dict) else None),
    }
    why = reasons(result)
    met = lambda key, value: value is not None and (
        value <= TARGETS[key] if key in LOWER_IS_BETTER else value >= TARGETS[key])
    return {key: {"measured": None if value is None else round(value, 4),
                  "target": TARGETS[key], "met": met(key, value), "why": why[key]}
            for key, value in measured.items()}


def runtime_choice(result):
    """ONNX Runtime is offered to users only where it beats OpenVINO: per batch, the
    fastest of each (and fp32 to fp32, int8 to int8), and which is faster."""
    if "export_s" not in result["onnxruntime"]:  # not measured: it says why
        return {"offer_onnxruntime": False, "verdict": result["onnxruntime"]["onnxruntime"]}
    rows = {}
    for batch, t in result["throughput"].items():
        rates = t["images_per_s"]
        ort, ov = (max((k for k in rates if k.startswith(prefix)), key=rates.get, default=None)
                   for prefix in ("onnxruntime_", "openvino_"))
        if ort is None or ov is None:  # (OpenVINO fp32 failed its gate: its record says why)
            continue
        rows[batch] = {"fastest_onnxruntime": ort, "fastest_openvino": ov,
                       "ratio": rates[ort] / rates[ov],
                       "faster": "onnxruntime" if rates[ort] > rates[ov] else "openvino",
                       **{p: rates[f"onnxruntime_{p}"] / rates[f"openvino_{p}"]
                          for p in ("fp32", "int8") if f"openvino_{p}" in rates}}
    cos = result["cosine_to_fp32"]
    verdict = "; ".join(
        f"batch {b}: {r['faster']} is faster ({r['fastest_onnxruntime']} at {r['ratio']:.2f}x "
        f"{r['fastest_openvino']}; ONNX Runtime/OpenVINO fp32 {r.get('fp32', 0):.2f}x, int8 "
        f"{r.get('int8', 0):.2f}x)" for b, r in rows.items())
    verdict += (f"; int8 cosine to fp32: onnxruntime {cos['onnxruntime_int8']:.5f}, openvino "
                f"{cos.get('openvino_int8', float('nan')):.5f}")
    return {"by_batch": rows, "verdict": verdict,
            "offer_onnxruntime": any(r["faster"] == "onnxruntime" for r in rows.values())}


def reasons(result):
    """The measured facts behind each figure, for the report of a missed target."""
    c, f = result["conversion"], result["first_prediction"]
    per_batch = result["throughput"]
    flops = result["flops_per_image"]
    peak = result["machine_matmul_gflops_fp32"]
    small = per_batch[min(per_batch, key=int)]["images_per_s"]
    rate = lambda key: ", ".join(f"{t['images_per_s'][key]:.1f} (batch {b})"
                                 for b, t in per_batch.items() if key in t["images_per_s"])
    hub_pct = ", ".join(f"{100 * t['images_per_s']['hub_layer'] * flops / 1e9 / peak:.0f}% "
                        f"(batch {b})" for b, t in per_batch.items())
    return {
        "call_batch1_vs_hub": f"model(x) runs a compiled graph: {small['native_call']:.1f} "
        f"img/s against the hub layer's {small['hub_layer']:.1f} and the op-by-op eager path's "
        f"{small['native_eager']:.1f}; the hub graph (XLA) runs at {hub_pct} of the fp32 "
        "matmul peak",
        "first_prediction_vs_hub": f"native load {f['native_load_s']:.2f} s (model build, "
        f"sha256 alongside, HDF5 read into the variables) + first call "
        f"{f['native_s'] - f['native_load_s']:.2f} s (tracing the graph); hub load "
        f"{f['hub_load_s']:.2f} s + first call {f['hub_s'] - f['hub_load_s']:.2f} s",
        "load_rss_vs_weights": f"{f['native_load_rss_bytes'] / 2**20:.0f} MiB over the "
        f"initialised backend for {c['weights_bytes'] / 2**20:.0f} MiB of weights: the "
        "variables, one tensor in flight, and the Keras model's own objects",
        "bf16_large_batch_vs_hub_fp32": "bf16 model(x): " + rate("native_bf16_call")
        + f"; hub fp32: {rate('hub_layer')}; at batch {max(per_batch, key=int)} bf16 runs at "
        f"{per_batch[max(per_batch, key=int)]['roofline_pct_bf16']:.0f}% of the bf16 matmul "
        f"peak ({result['machine_matmul_gflops_bf16'] / peak:.2f}x the fp32 peak); softmax, "
        "GELU, LayerNorm and the casts run in float32 around the matmuls",
        "bf16_batch1_vs_own_fp32": "bf16 vs fp32 model(x) by batch: "
        + ", ".join(f"{t['bf16_call_vs_own_fp32_call']:.2f}x (batch {b})"
                    for b, t in per_batch.items())
        + f"; at batch 1 the matmuls are {result['tokens']} x {result['width']} and the "
        "casts and float32 parts take a larger share",
        "bf16_cosine_to_fp32": f"int8 (Keras quantize) for comparison: cosine "
        f"{result['cosine_to_fp32']['native_int8_call']:.5f}, " + rate("native_int8_call")
        + " img/s",
        "conversion_vs_io_floor": f"{c['ratio_to_fsync_floor']:.1f}x the floor with fsync "
        f"({c['io_floor_fsync_s']:.2f} s): the cache's writes are fsynced for durability",
        "conversion_rss_vs_weights": f"{c['rss_after_imports_bytes'] / 2**20:.0f} MiB are "
        f"taken by importing TensorFlow before any tensor is read "
        f"({c['rss_after_imports_bytes'] / c['weights_bytes']:.2f}x the weights); the "
        "conversion streams one tensor at a time on top of that",
        **openvino_reasons(result, rate),
    }


def openvino_reasons(result, rate):
    """The OpenVINO targets' measured why: the CPU's capabilities and flags, and the
    OpenVINO fp32 rate, the ceiling reference for bf16 and int8 here."""
    ov, f, per_batch = result["openvino"], result["first_prediction"], result["throughput"]
    flags = lambda names: ", ".join(f"{n} {'yes' if ov['cpu_flags'].get(n) else 'no'}"
                                    for n in names)
    cpu = f"CPU plugin capabilities {ov['capabilities']}"
    ceiling = (f"OpenVINO fp32 (the ceiling reference) {rate('openvino_fp32')}; "
               f"hub {rate('hub_layer')}")
    vs_fp32 = lambda key: ", ".join(
        f"{t['images_per_s'][key] / t['images_per_s']['openvino_fp32']:.2f}x (batch {b})"
        for b, t in per_batch.items() if {key, "openvino_fp32"} <= set(t["images_per_s"]))

    def built(key):  # its rates and accuracy, or why it is absent
        entry = ov[key]
        if isinstance(entry, str):
            return entry
        acc = entry["accuracy"]
        note = f" ({entry['gate_note']})" if entry["gate_note"] else ""
        return (f"{rate(key)} img/s = {vs_fp32(key)} OpenVINO fp32, cosine min "
                f"{acc['cosine_min']:.5f}{note}")

    fp32 = ov["openvino_fp32"]
    exact = fp32 if isinstance(fp32, str) else (
        f"max abs {fp32['accuracy']['max_abs']:.2e} against the gate "
        f"{fp32['accuracy']['tolerance']:.1e} (1e-4 x the output scale "
        f"{fp32['accuracy']['scale']:.2f}); cosine min {fp32['accuracy']['cosine_min']:.6f}, "
        f"top-1 agreement {fp32['accuracy']['top1_agreement']}")
    int8 = (f"int8 (NNCF): {built('openvino_int8')}; {cpu}; /proc/cpuinfo: "
            f"{flags(('avx512_vnni', 'avx_vnni', 'amx_int8'))} (without VNNI an int8 "
            f"multiply-add takes several instructions); {ceiling}")
    return {
        "openvino_bf16_batch32_vs_hub": f"bf16: {built('openvino_bf16')}; {cpu}; /proc/cpuinfo: "
        f"{flags(('avx512f', 'avx512_bf16', 'amx_bf16'))}; {ceiling}",
        "openvino_int8_batch32_vs_hub": int8,
        "openvino_int8_batch1_vs_hub": int8,
        "openvino_first_prediction_vs_hub": f"OpenVINO from its IR cache: read + compile "
        f"{f['openvino_load_s']:.2f} s + first call {f['openvino_s'] - f['openvino_load_s']:.2f} s "
        f"(imports {f['openvino_import_s']:.2f} s excluded; TensorFlow imported: "
        f"{f['openvino_tensorflow_imported']}, Keras: {f['openvino_keras_imported']}); hub load "
        f"{f['hub_load_s']:.2f} s + first call {f['hub_s'] - f['hub_load_s']:.2f} s",
        "openvino_fp32_max_abs_vs_tolerance": exact,
    }


def finetune_targets(contenders):
    """Fine-tuning's targets against the hub layer's best step rate."""
    def ratio(key, field="vs_hub_best"):
        return contenders.get(key, {}).get(field)

    best_key = max((k for k in contenders if k != "hub" and "vs_hub_best" in contenders[k]),
                   key=lambda k: contenders[k]["vs_hub_best"], default=None)
    measured = {"tensorflow_fp32_every_run": ratio("tensorflow_fp32", "every_run_vs_hub_best"),
                "tensorflow_bf16": ratio("tensorflow_bf16"),
                "best": ratio(best_key) if best_key else None}
    return {key: {"target": FINETUNE_TARGETS[key], "measured": value,
                  "met": value is not None and value >= FINETUNE_TARGETS[key],
                  **({"contender": best_key} if key == "best" else {})}
            for key, value in measured.items()}


# === The CPU class ===


def cpu_class(machine):
    """'<CPU model> (AVX2, AVX-512F, ..., no AMX)' from a run's machine record."""
    if not machine:
        return f"unknown CPU ({UNKNOWN_CLASS})"
    recorded = machine.get("cpu_class")
    if not recorded:
        return f"{machine.get('cpu', 'unknown CPU')} ({UNKNOWN_CLASS})"
    return describe_cpu_class(recorded)


def measured_on(machine):
    """The line every table of the run is captioned with."""
    cores = f", {machine['cores']} cores" if machine and machine.get("cores") else ""
    peaks = ""
    if machine and "matmul_gflops_fp32" in machine:
        peaks = (f"; matmul peaks {machine['matmul_gflops_fp32']:.0f} GFLOP/s fp32, "
                 f"{machine['matmul_gflops_bf16']:.0f} GFLOP/s bf16")
    return f"CPU class: {cpu_class(machine)}{cores}{peaks}"


# === The printed report ===


def text(report):
    """The report of a run's JSON, as `run` prints it at the end."""
    machine = report.get("machine")
    lines = [measured_on(machine)]
    for result in report.get("models", []):
        lines += model_lines(result)
    if "compare" in report:
        lines += compare_lines(report["compare"])
    if "embed" in report:
        lines += embed_lines(report["embed"])
    if "serve" in report:
        lines += serve_lines(report["serve"])
    if "finetune" in report:
        lines += finetune_lines(report["finetune"])
    if "openvino_settings" in report:
        for header, rows in settings_tables(report["openvino_settings"]).values():
            lines += [" | ".join(row) for row in (header, *rows)]
    return "\n".join(lines)


def settings_tables(result):
    """Per precision: (header, rows) of OpenVINO under each setting (median images/s per
    batch, min-max), then where the time goes (PERF_COUNT)."""
    tables = {}
    for precision, settings in result["spread"].items():
        batches = list(next(iter(settings.values())))
        header = [f"OpenVINO {precision}: setting",
                  *(f"batch {b}: images/s, median (min-max)" for b in batches)]
        rows = [[name, *(f"{r['images_per_s']:.1f} ({r['min']:.1f}-{r['max']:.1f})"
                         for r in by_batch.values())] for name, by_batch in settings.items()]
        profile = result["profile"][precision]
        where = [f"PERF_COUNT at batch {profile['batch']} ({profile['ms_per_call']:.0f} ms a "
                 "call)", ", ".join(f"{k} {v:.0%}" for k, v in profile["share_by_type"].items())]
        kernels = ["matmul kernels", ", ".join(f"{k} {v:.0%}"
                                               for k, v in profile["matmul_kernels"].items())]
        pad = [""] * (len(header) - 2)
        tables[precision] = (header, rows + [where + pad, kernels + pad])
    return tables


def fmt_spread(record):
    return (f"{record['images_per_s']:.1f} ({record['min']:.1f}-{record['max']:.1f}, "
            f"{len(record['rounds'])} rounds)")


def model_lines(result):
    verdict = assess(result)
    c, f = result["conversion"], result["first_prediction"]
    lines = [f"\n{result['model']} ({result['checkpoint']})",
             f"  conversion {c['seconds']:.1f} s (I/O floor {c['io_floor_s']:.2f} s, "
             f"x{c['ratio_to_floor']:.1f}; with fsync {c['io_floor_fsync_s']:.2f} s, "
             f"x{c['ratio_to_fsync_floor']:.1f}); peak RSS {c['peak_rss_bytes'] / 2**20:.0f} "
             f"MiB = x{c['rss_to_weights']:.2f} the weights",
             f"  first prediction: native {f['native_s']:.2f} s, hub layer {f['hub_s']:.2f} s "
             f"(x{f['ratio']:.2f}); load peak RSS {f['native_load_rss_bytes'] / 2**20:.0f} MiB",
             f"  first prediction: OpenVINO from its IR cache {f['openvino_s']:.2f} s "
             f"(x{f['openvino_ratio']:.2f} the hub layer's; TensorFlow imported: "
             f"{f['openvino_tensorflow_imported']}, Keras: {f['openvino_keras_imported']})",
             "  cosine to fp32: " + ", ".join(f"{k} {v:.5f}"
                                              for k, v in result["cosine_to_fp32"].items())]
    ov = result["openvino"]
    lines.append(f"  OpenVINO: capabilities {ov['capabilities']}; /proc/cpuinfo: "
                 + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in ov["cpu_flags"].items()))
    for key, entry in ov.items():
        if key.startswith("openvino_"):  # accuracy against the Keras fp32 model, or why absent
            lines.append(f"  {key}: " + (entry if isinstance(entry, str) else
                         f"built {entry['build_s']:.1f} s; " + accuracy_line(key, entry)))
    ort = result["onnxruntime"]
    lines.append("  onnxruntime: " + (ort["onnxruntime"] if "export_s" not in ort else
                 f"{ort['onnxruntime']}, export {ort['export_s']:.1f} s, "
                 f"quantize {ort['quantize_s']:.1f} s")
                 + f"; {verdict['onnxruntime_vs_openvino']['verdict']}")
    for batch, t in result["throughput"].items():
        lines.append(f"  batch {batch} images/s, median (min-max), each engine in its own "
                     f"process; roofline fp32 {t['roofline_pct_fp32']:.0f}%, bf16 "
                     f"{t['roofline_pct_bf16']:.0f}%:")
        for key, record in t["contenders"].items():
            lines.append(f"    {key:24} {fmt_spread(record)}  x{t['vs_hub'][key]:.2f} the hub"
                         f"  {record['peak_pct']:.1f}% of the {record['peak']} peak")
    for name, b in result.get("backends", {}).items():
        if "error" in b:
            lines.append(f"  {name}: {b['error']}")
            continue
        rates = ", ".join(f"{k} {fmt_spread(v)}" for k, v in b["spread"].items())
        lines.append(f"  {name:10} first prediction {b['first_prediction_s']:.2f} s; "
                     f"images/s: {rates}")
    for key, v in verdict["targets"].items():
        lines.append(f"  target {key}: {v['measured']} (target {v['target']}) "
                     f"{'met' if v['met'] else 'MISSED: ' + v['why']}")
    return lines


def accuracy_line(key, entry):
    """An OpenVINO contender's accuracy record as its `summary()` says it."""
    from vit_hub.runtime.openvino_model import describe_accuracy

    note = f" ({entry['gate_note']})" if entry["gate_note"] else ""
    return f"OpenVINO {key.split('_')[1]}: {describe_accuracy(entry['accuracy'])}{note}"


def compare_lines(rows):
    return [f"{row['variant']:9} params {row['params']:>12,}  tokens {row['tokens']:>4}  "
            f"GFLOPs {row['gflops_per_image']:7.1f}  {row['images_per_s']:6.2f} img/s "
            f"(batch 1, XLA)  peak RSS {row['peak_rss_bytes'] / 2**30:5.2f} GiB  "
            f"output {tuple(row['output_shape'])}" for row in rows]


def embed_lines(result):
    rates, overhead = result["images_per_s"], result["overhead_vs_predict_loop"]
    return [f"{key:30} {rates[key]:7.2f} img/s  {overhead[key]:5.2f}x the predict loop's time"
            for key in rates] + [
        f"rows {result['rows']}, max abs difference to predict "
        f"{result['max_abs_diff_vs_predict']:.1e} (OpenVINO "
        f"{result['max_abs_diff_openvino_vs_predict']:.1e})"]


def serve_lines(result):
    lines = [f"\nvit-serve {result['model']}, max batch {result['max_batch']}, "
             f"{result['seconds']:g} s per concurrency, loopback"]
    for runtime, r in result["runtimes"].items():
        lines.append(f"  {runtime}: in-process batches {r['in_process_images_per_s']:.1f} "
                     f"img/s; started in {r['start_s']:.1f} s")
        for waited in (r, *r.get("longer_waits", [])):
            lines.append(f"   batch wait {waited.get('batch_wait_ms', 10)} ms:")
            for clients, row in waited["by_clients"].items():
                lines.append(f"    {clients:>3} clients {row['requests_per_s']:8.1f} req/s  "
                             f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                             f"mean batch {row['mean_batch']:5.1f}  "
                             f"failures {row['failures']}")
            lines.append(f"    target served/in-process at 32 clients >= "
                         f"{result['target']:.0%}: measured "
                         f"{waited['vs_in_process_at_32']:.0%}, "
                         f"{'met' if waited['met'] else 'missed'}")
    return lines


def finetune_lines(result):
    lines = [f"\nFine-tuning {result['model']} + Dense({result.get('classes', 10)}), batch "
             f"{result['batch']}, Adam; {result['step_gflop']:.1f} GFLOP a step"]
    for key, row in result["contenders"].items():
        if "error" in row:
            lines.append(f"  {key:30} not measured: {row['error']}")
            continue
        runs = "/".join(f"{s:.2f}" for s in row["step_s_runs"])
        lines.append(f"  {key:30} {row['step_s']:6.2f} s/step ({runs})  "
                     f"{row['vs_hub_best']:5.2f}x hub  "
                     f"{row['trainable_params'] / 1e6:7.2f}M trainable  "
                     f"peak RSS {row['peak_rss_bytes'] / 2**30:5.2f} GiB  "
                     f"{row['fp32_peak_pct']:4.0f}% of fp32 peak")
    for key, verdict in finetune_targets(result["contenders"]).items():
        value = verdict["measured"]
        shown = "not measured" if value is None else f"{value:.2f}x"
        lines.append(f"  target {key}: >= {verdict['target']}x, measured {shown}: "
                     f"{'met' if verdict['met'] else 'missed'}")
    return lines


# === Markdown ===


def table(caption, header, rows):
    """A Markdown table captioned with the CPU class (`caption`)."""
    lines = [f"*{caption}*", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(report):
    """The tables of a run's JSON; every table captioned with the CPU class."""
    caption = measured_on(report.get("machine"))
    parts = ["<!-- Generated by `python -m benchmarks.report`: edit the benchmark, not "
             "this file. -->\n"]
    for result in report.get("models", []):
        parts += model_tables(result, caption)
    if "compare" in report:
        parts += ["## Every variant (fresh process each, batch 1, XLA)\n", table(
            caption, ["variant", "params", "tokens", "GFLOPs", "img/s", "peak RSS"],
            [[r["variant"], f"{r['params']:,}", r["tokens"], f"{r['gflops_per_image']:.1f}",
              f"{r['images_per_s']:.2f}", f"{r['peak_rss_bytes'] / 2**30:.2f} GiB"]
             for r in report["compare"]])]
    if "embed" in report:
        e = report["embed"]
        parts += [f"## vit-embed against a predict loop ({e['model']}, {e['images']} images, "
                  f"batch {e['batch_size']})\n", table(
                      caption, ["command", "img/s", "time vs the predict loop", "runs (s)"],
                      [[key, f"{e['images_per_s'][key]:.2f}",
                        f"{e['overhead_vs_predict_loop'][key]:.2f}x",
                        " / ".join(f"{s:.1f}" for s in e["seconds"][key])]
                       for key in e["images_per_s"]])]
    if "serve" in report:
        v = report["serve"]
        parts += [f"## vit-serve under load ({v['model']}, max batch {v['max_batch']}, "
                  f"{v['seconds']:g} s per concurrency, loopback)\n", table(
                      caption, ["runtime", "batch wait", "clients", "req/s", "p50 ms",
                                "p99 ms", "mean batch", "served / in-process"],
                      [[runtime, f"{waited.get('batch_wait_ms', 10)} ms", clients,
                        f"{row['requests_per_s']:.1f}",
                        f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
                        f"{row['mean_batch']:.1f}",
                        f"{row['requests_per_s'] / r['in_process_images_per_s']:.0%}"]
                       for runtime, r in v["runtimes"].items()
                       for waited in (r, *r.get("longer_waits", []))
                       for clients, row in waited["by_clients"].items()])]
    if "finetune" in report:
        parts += finetune_tables(report["finetune"], caption)
    if "openvino_settings" in report:
        parts.append("## OpenVINO under its own settings\n")
        parts += [table(caption, header, rows) for header, rows in
                  settings_tables(report["openvino_settings"]).values()]
    return "\n".join(parts)


def model_tables(result, caption):
    verdict = assess(result)
    per_batch = result["throughput"]
    keys = list(per_batch[min(per_batch, key=int)]["contenders"])
    header = ["contender"]
    for batch in per_batch:
        header += [f"batch {batch}: images/s, median (min-max, rounds)", "vs hub", "% of peak"]
    rows = []
    for key in keys:
        row = [key]
        for t in per_batch.values():
            record = t["contenders"].get(key)
            row += (["not measured", "", ""] if record is None else [
                fmt_spread(record), f"{t['vs_hub'][key]:.2f}x",
                f"{record['peak_pct']:.1f}% ({record['peak']})"])
        rows.append(row)
    gflops = result["flops_per_image"] / 1e9
    parts = [f"## {result['model']} ({result['checkpoint']}; {gflops:.3g} GFLOPs/image)\n",
             "### Steady throughput (each engine in its own process)\n",
             table(caption, header, rows)]
    ov, ort = result["openvino"], result["onnxruntime"]
    notes = {key: (entry if isinstance(entry, str) else accuracy_line(key, entry))
             for key, entry in ov.items() if key.startswith("openvino_")}
    rows = [[key, f"{value:.5f}", f"{result['max_abs_to_fp32'][key]:.2e}",
             notes.get(key, "")] for key, value in result["cosine_to_fp32"].items()]
    rows += [[key, "not measured", "", note] for key, note in notes.items()
             if key not in result["cosine_to_fp32"]]
    if "export_s" not in ort:
        rows.append(["onnxruntime", "not measured", "", ort["onnxruntime"]])
    parts += ["### Agreement with Keras fp32 `model(x)`\n",
              table(caption, ["contender", "cosine min", "max abs", "record"], rows)]
    f, c = result["first_prediction"], result["conversion"]
    rows = [["vit_hub `load_pretrained`", f"{f['native_s']:.2f}", f"{f['native_load_s']:.2f}",
             f"{f['native_s'] - f['native_load_s']:.2f}", f"{f['ratio']:.2f}x"],
            ["`hub.KerasLayer`", f"{f['hub_s']:.2f}", f"{f['hub_load_s']:.2f}",
             f"{f['hub_s'] - f['hub_load_s']:.2f}", "1.00x"],
            ["OpenVINO from its IR cache", f"{f['openvino_s']:.2f}",
             f"{f['openvino_load_s']:.2f}", f"{f['openvino_s'] - f['openvino_load_s']:.2f}",
             f"{f['openvino_ratio']:.2f}x"]]
    parts += ["### First prediction from a warm cache (fresh processes, imports excluded)\n",
              table(caption, ["contender", "seconds", "load", "first call", "vs hub"], rows),
              "### Conversion and load memory\n",
              table(caption, ["figure", "value"], [
                  ["conversion", f"{c['seconds']:.2f} s"],
                  ["I/O floor (with fsync)", f"{c['io_floor_s']:.2f} s "
                   f"({c['io_floor_fsync_s']:.2f} s)"],
                  ["conversion vs the I/O floor (with fsync)",
                   f"{c['ratio_to_floor']:.1f}x ({c['ratio_to_fsync_floor']:.1f}x)"],
                  ["conversion peak RSS", f"{c['peak_rss_bytes'] / 2**20:.0f} MiB = "
                   f"{c['rss_to_weights']:.2f}x the weights"],
                  ["load peak RSS above the backend",
                   f"{f['native_load_rss_bytes'] / 2**20:.0f} MiB"]])]
    if "backends" in result:
        names = list(result["backends"])
        calls = list(dict.fromkeys(k for b in result["backends"].values()
                                   for k in b.get("spread", {})))
        rows = [["first prediction (s)"] + [
            b.get("error", f"{b.get('first_prediction_s', 0):.2f}")
            for b in result["backends"].values()]]
        rows += [[f"{call} images/s"] + [
            fmt_spread(b["spread"][call]) if call in b.get("spread", {}) else "not measured"
            for b in result["backends"].values()] for call in calls]
        parts += ["### Per Keras backend (a fresh process each, same cache)\n",
                  table(caption, ["figure", *names], rows)]
    rows = [[key, "not measured" if v["measured"] is None else v["measured"], v["target"],
             "met" if v["met"] else "missed", v["why"]]
            for key, v in verdict["targets"].items()]
    parts += ["### Targets\n", table(caption, ["target", "measured", "wanted", "verdict",
                                               "why (measured)"], rows),
              f"ONNX Runtime against OpenVINO: {verdict['onnxruntime_vs_openvino']['verdict']}\n"]
    return parts


def finetune_tables(result, caption):
    rows = []
    for key, row in result["contenders"].items():
        if "error" in row:
            rows.append([key, "not measured", "", "", "", row["error"]])
            continue
        runs = " / ".join(f"{s:.2f}" for s in row["step_s_runs"])
        rows.append([key, f"{row['step_s']:.2f} ({runs})", f"{row['vs_hub_best']:.2f}x",
                     f"{row['trainable_params'] / 1e6:.2f}M",
                     f"{row['peak_rss_bytes'] / 2**30:.2f} GiB",
                     f"{row['fp32_peak_pct']:.0f}% of the fp32 peak"])
    targets = [[key, "not measured" if v["measured"] is None else f"{v['measured']:.2f}x",
                f">= {v['target']}x", "met" if v["met"] else "missed"]
               for key, v in finetune_targets(result["contenders"]).items()]
    return [f"## Fine-tuning {result['model']} + Dense({result.get('classes', 10)}), batch "
            f"{result['batch']}, Adam ({result['step_gflop']:.1f} GFLOP a step)\n",
            table(caption, ["contender", "s/step (runs)", "vs the hub's best", "trainable",
                            "peak RSS", "share of the limit"], rows),
            table(caption, ["target (vs the hub's best step)", "measured", "wanted",
                            "verdict"], targets)]


# === The chart ===


def chart(results, path):
    """Each model's and batch's medians, min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(r["model"], batch, t["contenders"]) for r in results
              for batch, t in r["throughput"].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (model, batch, records) in zip(axes[0], panels):
        medians = [r["images_per_s"] for r in records.values()]
        low = [m - r["min"] for m, r in zip(medians, records.values())]
        high = [r["max"] - m for m, r in zip(medians, records.values())]
        ax.barh(list(records), medians, xerr=[low, high],
                color=["grey"] + ["tab:blue"] * (len(records) - 1))
        ax.set_title(f"{model}, batch {batch}")
        ax.set_xlabel("images / s, median and min-max (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description="the report of a benchmark JSON")
    parser.add_argument("json", help="a JSON written by python -m benchmarks.run")
    parser.add_argument("--markdown", default=None, help="write the tables here")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        report = json.load(f)
    print(text(report))
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(markdown(report))
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
