"""What a run leaves behind: a table on stdout, JSON + CSV + PNG plots on disk, and the
environment that makes the numbers reproducible (device, driver, torch, cuDNN, Triton,
the CPU instruction set torch uses, the environment variables that change results,
the exact command line)."""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
from collections import defaultdict
from pathlib import Path

import torch

from .providers import BASELINE, baseline_label


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()}, {torch.get_num_threads()} threads"


def slug(device: torch.device) -> str:
    """Folder name for a device's results, e.g. nvidia-h100-80gb-hbm3, cpu-amd-epyc-2core
    (CPU: the cores torch computes on, one thread each as torch sets it by default)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu {_cpu_name()} {torch.get_num_threads()}core"
    name = re.sub(r"\(r\)|\(tm\)|processor|cpu @.*?ghz", " ", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def _version(package: str):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# Environment variables that change what a run measures without showing in its command
# line: the instruction sets torch, oneDNN and MKL may use, and the thread counts.
RESULT_SETTINGS = ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA",
                   "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS")


def environment(device: torch.device, argv) -> dict:
    import rnnfast
    cuda = device.type == "cuda"
    return {
        "device": device_name(device), "device_type": device.type,
        "driver": _driver() if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "triton": _version("triton"), "flashrnn": _version("flashrnn"),
        "rnnfast": rnnfast.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "settings": {k: os.environ[k] for k in RESULT_SETTINGS if k in os.environ},
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "baseline": baseline_label(device),
        "command": "python -m rnnfast " + shlex.join(argv),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _fmt_value(row) -> str:
    if "peak_bytes" in row:
        b = row["peak_bytes"]
        return f"{b / 2**20:10.2f} MiB" if b >= 2**20 else f"{b / 2**10:10.2f} KiB"
    if "median_ms" in row:
        spread = f"[{row['q1_ms']:.3g}-{row['q3_ms']:.3g}]"
        return f"{row['median_ms']:10.3f} ms {spread:<17}"
    return ""


def table(rows, device: torch.device) -> str:
    """One block per (case, mode): value, spread (quartiles), ratio to nn.LSTM (time or
    bytes: below 1 is better), fraction of the floor, correctness."""
    lines = []
    blocks = defaultdict(list)
    for r in rows:
        blocks[(r["case"], r["mode"])].append(r)
    for (case, mode), rs in blocks.items():
        lines.append(f"\n{case} | {mode}")
        for r in rs:
            name = baseline_label(device) if r["provider"] == BASELINE else r["provider"]
            if "frozen" in r:
                name += f", {r['frozen']:.0%} frozen"
            if r["status"] != "ok" or ("median_ms" not in r and "peak_bytes" not in r):
                status = r["status"] if len(r["status"]) <= 90 else r["status"][:87] + "..."
                lines.append(f"  {name:<22} {status}")
                continue
            ratio = f"{r['ratio']:6.2f}x" if r.get("ratio") is not None else "     - "
            floor = (f"  {100 * r['fraction_of_floor']:5.1f}% of {r['bound']} floor"
                     if r.get("fraction_of_floor") is not None else "")
            diff = f"  check {r['max_rel_diff']:.1e}" if r.get("max_rel_diff") is not None else ""
            lines.append(f"  {name:<22} {_fmt_value(r)} {ratio}{floor}{diff}")
    lines.append("\nratio: time (memory: bytes) relative to nn.LSTM in the same run, lower is better "
                 "(frozen_gates/frozen_units: relative to the same provider with nothing frozen); "
                 "[q1-q3] quartiles of the repeats")
    return "\n".join(lines)


CSV_FIELDS = ["case", "group", "T", "B", "I", "H", "layers", "dtype", "mode", "provider", "frozen", "status",
              "median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "repeats", "ratio", "peak_bytes",
              "max_rel_diff", "tolerance", "flop", "bytes", "steps", "floor_ms", "bound",
              "fraction_of_floor"]


def write(out_dir: Path, rows, env: dict, rates: dict, plots: bool = True, log=print) -> list[Path]:
    """results.json, results.csv and plots/*.png in out_dir; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "results.csv"]
    paths[0].write_text(json.dumps({"environment": env, "rates": rates, "results": rows}, indent=1))
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if plots:
        try:
            import matplotlib
        except ImportError:
            log("matplotlib is not installed: no plots (pip install 'rnnfast[bench]')")
        else:
            matplotlib.use("Agg")
            paths += _plots(out_dir / "plots", rows, env)
    return paths


def _timed(rows):
    return [r for r in rows if r["status"] == "ok" and "median_ms" in r]


def _plots(folder: Path, rows, env) -> list[Path]:
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    timed = _timed(rows)
    # Time vs batch / hidden / seq per provider, for sweeps (the other two axes held at
    # their middle values).
    sweep = [r for r in timed if r["group"] == "sweep"]
    for dtype, mode in sorted({(r["dtype"], r["mode"]) for r in sweep}):
        rs = [r for r in sweep if r["dtype"] == dtype and r["mode"] == mode]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for ax, axis in zip(axes, ("B", "H", "T")):
            others = [a for a in ("B", "H", "T") if a != axis]
            fixed = {a: sorted({r[a] for r in rs})[len({r[a] for r in rs}) // 2] for a in others}
            for provider in dict.fromkeys(r["provider"] for r in rs):
                pts = sorted((r[axis], r["median_ms"]) for r in rs if r["provider"] == provider
                             and all(r[a] == fixed[a] for a in others))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=provider)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(axis)
            ax.set_ylabel("ms (median)")
            ax.set_title(f"vs {axis}, " + ", ".join(f"{a}={v}" for a, v in fixed.items()))
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{env['device']} — sweep {mode} {dtype}")
        written.append(_save(plt, fig, folder / f"sweep_{mode}_{dtype}.png"))
    written += _frozen_plots(folder, timed, env)
    # Speed-up over nn.LSTM per case, one figure per mode.
    for mode in dict.fromkeys(r["mode"] for r in timed if "frozen" not in r):
        rs = [r for r in timed if r["mode"] == mode and r["provider"] != BASELINE and r.get("ratio")]
        if not rs:
            continue
        cases = list(dict.fromkeys(r["case"] for r in rs))
        providers = list(dict.fromkeys(r["provider"] for r in rs))
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(cases) * len(providers) + 2), 4.5))
        width = 0.8 / len(providers)
        for k, provider in enumerate(providers):
            speed = {r["case"]: 1 / r["ratio"] for r in rs if r["provider"] == provider}
            xs = [i + k * width for i, c in enumerate(cases) if c in speed]
            ax.bar(xs, [speed[c] for c in cases if c in speed], width, label=provider)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
        ax.set_xticklabels(cases, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"speed-up over {env['baseline']}")
        ax.set_title(f"{env['device']} — {mode}")
        ax.legend(fontsize=8)
        written.append(_save(plt, fig, folder / f"speedup_{mode}.png"))
    return written


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _frozen_plots(folder: Path, timed, env) -> list[Path]:
    """frozen_gates/frozen_units: time relative to nothing frozen against the frozen
    fraction, per provider, beside the ideal (the trainable fraction)."""
    import matplotlib.pyplot as plt

    written = []
    scaling = [r for r in timed if "frozen" in r and r["provider"] != BASELINE]
    for case in dict.fromkeys(r["case"] for r in scaling):
        modes = list(dict.fromkeys(r["mode"] for r in scaling if r["case"] == case))
        fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            rs = [r for r in scaling if r["case"] == case and r["mode"] == mode]
            for provider in dict.fromkeys(r["provider"] for r in rs):
                pts = sorted((r["frozen"], r["ratio"]) for r in rs if r["provider"] == provider)
                ax.plot(*zip(*pts), marker="o", label=provider)
            fractions = sorted({r["frozen"] for r in rs})
            ax.plot(fractions, [1 - f for f in fractions], "k--", linewidth=0.8,
                    label="ideal: trainable fraction")
            ax.set_xlabel("frozen fraction of the gate rows")
            ax.set_ylabel("time / time with nothing frozen")
            ax.set_ylim(0, max(1.15, 1.05 * max(r["ratio"] for r in rs)))
            ax.set_title(mode)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{env['device']} — {case}")
        written.append(_save(plt, fig, folder / f"frozen_{''.join(ch if ch.isalnum() else '_' for ch in case)}.png"))
    return written
