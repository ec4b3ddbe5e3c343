"""vit_hub's benchmarks: measured against `hub.KerasLayer` and against the machine.

    python -m benchmarks.run --models vit_b32_fe --json out/bench.json
    python -m benchmarks.run --smoke                       # tiny models (CI)
    python -m benchmarks.report out/bench.json --markdown docs/benchmarks_table.md

The parent (`run`) measures nothing heavy itself: every figure comes from a fresh child
process, one at a time, started as

    python -m benchmarks.<module> <task> '<JSON keyword arguments>'

which calls the module's task, a plain function, and prints its result as one JSON line
(`child`). A smoke stand-in is passed to the child as data and registered there by
`common.register_smoke`.

- `common`: paths, the smoke stand-ins, a model's FLOPs, a rate's spread.
- `child`: the child-process protocol, and what timing children share.
- `machine`: the CPU class (model name, instruction sets) and the matmul peaks.
- `startup`: checkpoints, conversion and first predictions (fresh-process costs).
- `accuracy`: bf16/int8/OpenVINO/ONNX Runtime against fp32, and the IR and ONNX files
  that the throughput children load.
- `throughput`: steady images/s, one engine per process, R rounds each; per backend.
- `compare`, `embed`, `serve`, `finetune`: the other modes of `run`.
- `report`: verdicts, reasons, the printed report, the Markdown tables and the chart,
  all from the JSON.
"""
