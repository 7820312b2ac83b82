"""What a verify run leaves in its folder, laid out to be committed as
bench/results/<gpu-slug>/verify/ (and few enough files to fetch from a lent machine):

  env.json             the environment, written first (stages.environment)
  summary.md           the stage table (stage, status, seconds), then parity, GPU tests,
                       sanitizer, speed ratios to cuDNN, the latency models' figures as
                       measured (probe) and the CUDA model beside the measured times,
                       and the auto-pick rows earned
  verify.json          every stage's status and every case's result
  smoke.csv            one row per parity case
  bench/results.json   rnnfast.bench's rows (report.write), the same format as
  bench/results.csv    `python -m rnnfast bench` writes
  logs.txt             every child's output
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from rnnfast.backends.evidence import Earned
from rnnfast.backends.latency import H100, measured_gpu
from rnnfast.bench import explain, report
from rnnfast.bench.providers import BASELINE
from rnnfast.verify.stages import BENCH_CASES


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def stage_table(stages: list[dict], budget_s: float) -> list[str]:
    total = sum(s["seconds"] for s in stages)
    rows = [[s["stage"], s["status"].replace("|", "/"), f"{s['seconds']:.1f}"] for s in stages]
    return _table(["stage", "status", "seconds"], rows + [["total", f"budget {budget_s:.0f} s", f"{total:.1f}"]])


def _parity_cell(result: dict) -> str:
    if result.get("worst") is None:
        return result["status"]
    cell = f"{result['status']} {result['worst']:.2f}"
    if result.get("worst_vs_reference") is not None:
        cell += f" (ref {result['worst_vs_reference']:.2f})"
    return cell


def parity_table(smoke: list[dict]) -> list[str]:
    """Rows backend x dtype, columns shapes; a cell is the status and, where the case
    ran, its worst tensor's error as a fraction of what the §6 rule allows."""
    if not smoke:
        return []
    shapes = list(dict.fromkeys(r["shape"]["name"] for r in smoke))
    cells = {(r["backend"], r["dtype"], r["shape"]["name"]): _parity_cell(r) for r in smoke}
    rows = []
    for backend, dtype in dict.fromkeys((r["backend"], r["dtype"]) for r in smoke):
        rows.append([backend, dtype, *(cells.get((backend, dtype, s), "") for s in shapes)])
    return ["## Parity with nn.LSTM (DESIGN.md §6)", "",
            "Cell: status and the worst tensor's error as a fraction of the allowed error "
            "(2x nn.LSTM's own error in that dtype against float64, the largest over 4 orders of its hidden units and a projection's outputs, plus a floor of 1 rounding step in bf16/fp16, 16 in fp32; "
            "at most 1.00 passes); in brackets the same against the reference backend's error, which keeps the recurrent "
            "product's fp32 sums as the kernels do (not part of the verdict). TF32 off.", "",
            *_table(["backend", "dtype", *shapes], rows)]


def tests_table(tests: list[dict]) -> list[str]:
    if not tests:
        return []
    rows = [[t["file"], t["status"], ", ".join(f"{n} {k}" for k, n in t["counts"].items()),
             f"{t['seconds']:.1f}"] for t in tests]
    return ["## GPU tests", "", *_table(["file", "status", "counts", "seconds"], rows)]


def sanitize_table(sanitize: list[dict]) -> list[str]:
    if not sanitize:
        return []
    rows = [[s["tool"], s["status"], s["errors"], s["warnings"],
             f"{sum(c['status'] == 'PASS' for c in s['cases'])} of {len(s['cases'])}", f"{s['seconds']:.1f}"]
            for s in sanitize]
    return ["## compute-sanitizer", "",
            *_table(["tool", "status", "errors", "warnings", "cases passed", "seconds"], rows)]


def _ratio_cell(row: dict) -> str:
    if row["status"] == "ok" and row.get("ratio") is not None:
        return f"{row['ratio']:.2f}x"
    return row["status"].split(":")[0].split(" (")[0]


def ratio_table(rows: list[dict]) -> list[str]:
    """One row per case and mode: cuDNN's median time, then every provider's time as a
    ratio to it (below 1 is faster) or why it has none."""
    rows = [r for r in rows if "frozen" not in r]  # frozen_table's rows
    if not rows:
        return []
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows) if p != BASELINE]
    table = []
    for case, mode in dict.fromkeys((r["case"], r["mode"]) for r in rows):
        block: dict = {}
        for r in rows:  # the baseline ran once per provider run: its first time is shown
            if (r["case"], r["mode"]) == (case, mode):
                block.setdefault(r["provider"], r)
        base = block.get(BASELINE, {})
        base_cell = f"{base['median_ms']:.3f}" if "median_ms" in base else base.get("status", "")
        table.append([case, mode, base_cell, *(_ratio_cell(block[p]) if p in block else "" for p in providers)])
    return ["## Speed: time as a ratio to cuDNN in the same run (below 1 is faster)", "",
            *_table(["case", "mode", "cuDNN ms", *providers], table)]


def frozen_table(rows: list[dict]) -> list[str]:
    """Modes frozen_gates/frozen_units: each provider's backward time with a fraction of
    the gate rows frozen, as a ratio to the same provider with nothing frozen."""
    rows = [r for r in rows if "frozen" in r and r["provider"] != BASELINE]
    if not rows:
        return []
    fractions = sorted({r["frozen"] for r in rows})
    table = []
    for case, mode, provider in dict.fromkeys((r["case"], r["mode"], r["provider"]) for r in rows):
        cells = {r["frozen"]: _ratio_cell(r) for r in rows
                 if (r["case"], r["mode"], r["provider"]) == (case, mode, provider)}
        table.append([case, mode, provider, *(cells.get(f, "") for f in fractions)])
    return ["## Freezing gate rows: backward time over the same provider's with nothing frozen", "",
            *_table(["case", "mode", "provider", *(f"{f:.0%} frozen" for f in fractions)], table)]


# The probe's figures beside the models' assumptions: (label, its key in probe.measure's
# result, the assumption it is compared with (latency.H100), unit scale, unit).
PROBE_ROWS = (
    ("SM clock, tensor cores busy", "clock_hz", H100.clock_hz, 1e-9, "GHz"),
    ("L2 round trip, one dependent load", "l2_round_trip_s", H100.l2_round_trip_s, 1e6, "µs"),
    ("grid barrier, CUDA kernels", "barrier_s", H100.barrier_s, 1e6, "µs"),
    ("grid barrier, 16 blocks arriving", "barrier_few_blocks_s", H100.barrier_s, 1e6, "µs"),
    ("grid barrier + a dependent L2 copy", "grid_exchange_s", H100.barrier_s + H100.l2_round_trip_s, 1e6, "µs"),
    ("grid barrier + a dependent multicast copy", "grid_multicast_exchange_s",
     H100.barrier_s + H100.l2_round_trip_s + H100.multicast_extra_s, 1e6, "µs"),
    ("grid barrier, Triton kernels", "triton_barrier_s", H100.barrier_s, 1e6, "µs"),
    ("tagged-word exchange, Triton kernels", "triton_tagged_wait_s", H100.tagged_wait_s, 1e6, "µs"),
    ("cluster exchange: st.async to every peer, mbarrier wait", "cluster_exchange_s",
     H100.cluster_exchange_s, 1e6, "µs"),
    ("reduce split: cluster barrier, peers' partial sums", "cluster_reduce_s",
     H100.cluster_reduce_s, 1e6, "µs"),
    ("mma.sync to a dependent mma.sync", "mma_latency_clocks", H100.mma_latency_clocks, 1, "clocks"),
    ("mma.sync rate, 8 warps an SM", "mma_sync_flops", H100.mma_sync_fraction * H100.tensor_flops, 1e-12, "TFLOP/s"),
)


def model_section(found: dict, bench_rows: list[dict]) -> list[str]:
    """The probe stage's figures beside the models' assumptions; then the CUDA model of
    each verify bench case with the assumed and with the measured figures, beside this
    run's own times of rnnfast/cuda and cuDNN (median ms)."""
    if not found:
        return []
    rows = [[label, f"{assumed * scale:.3g}", f"{found[key] * scale:.3g}" if key in found else "not measured", unit]
            for label, key, assumed, scale, unit in PROBE_ROWS]
    lines = ["## The latency models' figures, measured (rnnfast/backends/probe.py)", "",
             f"Assumed: rnnfast/backends/latency.py's {H100.name}. Measured here with the kernels' own "
             "barrier, exchange and mma code (csrc/lstm_probe.cu, triton/probe.py)"
             + (f"; cluster of {found['cluster_blocks']} blocks" if "cluster_blocks" in found else "")
             + (f"; multicast in {found['multicast_blocks'] // found['multicast_size']} clusters of "
                f"{found['multicast_size']}" if "multicast_size" in found else "")
             + (f"; reduce split in clusters of {found['reduce_size']}" if "reduce_size" in found
                else "") + ".", "",
             *_table(["figure", "assumed", "measured", "unit"], rows)]
    lines += [f"- not measured, {name}: {why}" for name, why in found.get("skipped", {}).items()]
    lines += [f"- **failed**, {name}: {why}" for name, why in found.get("failed", {}).items()]
    measured = measured_gpu(found, "cuda")
    times: dict = {}  # the first time of each (case, mode, provider), as ratio_table shows
    for r in bench_rows:
        if r.get("status") == "ok" and "median_ms" in r and "frozen" not in r:
            times.setdefault((r["case"], r["mode"], r["provider"]), r["median_ms"])
    table = []
    for case, _ in BENCH_CASES:
        if case.layers != 1:
            continue
        modelled = [explain.cuda_layers(case, gpu)[1:] for gpu in (H100, measured)]
        for mode, index in (("fwd", 0), ("fwdbwd", 1)):
            cells = [f"{m[index] * 1e3:.3f}" if m[index] is not None else "falls back" for m in modelled]
            table.append([case.name, mode, *cells,
                          *(f"{times[case.name, mode, p]:.3f}" if (case.name, mode, p) in times else ""
                            for p in ("rnnfast/cuda", BASELINE))])
    return lines + ["", "The CUDA model (rnnfast/backends/cuda/model.py) of each case, one layer, in ms: "
                    "with the assumed figures, with the measured ones, and this run's medians.", "",
                    *_table(["case", "mode", "model, assumed", "model, measured figures",
                             "rnnfast/cuda, measured", "cuDNN, measured"], table)]


def earned_section(earned: list[Earned], gpu: bool) -> list[str]:
    lines = ["## backend=\"auto\" evidence (rnnfast/backends/evidence.py)", ""]
    if not gpu:
        return lines + ["None: a dry run on the CPU earns nothing."]
    if not earned:
        return lines + ["This run earns no row: no GPU backend passed every parity case of a dtype "
                        "and beat cuDNN in every timed case of it."]
    return lines + ["Rows this run earns, to paste into EARNED once these results are committed:", "",
                    "```python", *(f"    {row!r}," for row in earned), "```"]


def render(env: dict, stages: list[dict], results: dict, earned: list[Earned], budget_s: float) -> str:
    gpu = env.get("gpu")
    title = gpu["name"] if gpu else f"{env['device']} (dry run)"
    facts = [f"torch {env['torch']}", f"Triton {env['triton']}", f"rnnfast {env['rnnfast']}"]
    if gpu:
        facts = [f"{gpu['sms']} SMs, CC {gpu['capability']}", f"driver {env['driver']}",
                 f"CUDA {env['cuda']}", f"cuDNN {env['cudnn']}", f"nvcc {env['nvcc']}", *facts]
    if env.get("git_commit"):
        facts.append(f"commit {env['git_commit'][:12]}")
    lines = [f"# rnnfast verify: {title}", "", ", ".join(facts) + f"; {env['time']}", "",
             *stage_table(stages, budget_s)]
    for section in (parity_table(results.get("smoke", [])), tests_table(results.get("tests", [])),
                    sanitize_table(results.get("sanitize", [])), ratio_table(results.get("bench_rows", [])),
                    frozen_table(results.get("bench_rows", [])),
                    model_section(results.get("probe", {}), results.get("bench_rows", [])),
                    earned_section(earned, bool(gpu))):
        if section:
            lines += ["", *section]
    return "\n".join(lines) + "\n"


SMOKE_FIELDS = ["id", "backend", "dtype", "shape", "status", "worst", "worst_vs_reference", "baseline",
                "seconds", "detail"]


def write(out_dir: Path, env: dict, stages: list[dict], results: dict, earned: list[Earned],
          budget_s: float) -> str:
    """Writes verify.json, smoke.csv, bench/ and summary.md, the raw results first (a
    fault in rendering must not lose them); returns the summary text."""
    record = {"environment": env, "budget_s": budget_s, "stages": stages,
              **{k: v for k, v in results.items() if k != "bench_rows"},
              "earned": [asdict(e) for e in earned]}
    (out_dir / "verify.json").write_text(json.dumps(record, indent=1, default=str))
    with open(out_dir / "smoke.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SMOKE_FIELDS)
        writer.writeheader()
        for r in results.get("smoke", []):
            detail = r.get("error") or r.get("reason") or "; ".join(r.get("violations", []) + r.get("fallback", []))
            writer.writerow({**{k: r.get(k) for k in SMOKE_FIELDS}, "shape": r["shape"]["name"], "detail": detail})
    if results.get("bench_rows"):
        report.write(out_dir / "bench", results["bench_rows"], env, {}, plots=False)
    text = render(env, stages, results, earned, budget_s)
    (out_dir / "summary.md").write_text(text)
    return text
