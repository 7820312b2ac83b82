"""The stages of `python -m rnnfast verify`, their time limits and the budget rule.

Order: env (always, first), build, probe, smoke, tests, sanitize, bench. Each stage has a
limit (the most it may take) and a minimum (less than this is not worth starting).
The rule, in `stage_time`: a stage gets its limit or what the budget has left after
holding back the minimums of the stages still to come, whichever is less; when that
is under its own minimum it is "skipped: budget". So a slow early stage squeezes the
later ones instead of pushing the run past --budget-s, and the bench always keeps
room to run. Every stage's GPU work runs in child processes (child.py) held to the
stage's time; the verify process itself never runs a kernel.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

import rnnfast
from rnnfast.backends import evidence
from rnnfast.bench import cases as bench_cases, providers as bench_providers, report
from rnnfast.verify import smoke
from rnnfast.verify.child import parse_result_line, run_cases, run_cases_side_by_side, run_process


@dataclass(frozen=True)
class StageSpec:
    name: str
    limit_s: float    # the most this stage may take
    minimum_s: float  # not started with less than this
    what: str


STAGES = (
    StageSpec("build", 180, 60, "the CUDA extension for this GPU's architecture, offline"),
    StageSpec("probe", 45, 20, "the latency models' figures measured: barriers, L2, DSMEM, mma.sync"),
    StageSpec("smoke", 120, 30, "every backend x dtype x shape against nn.LSTM"),
    StageSpec("tests", 120, 30, "the CUDA-only pytest files, each under a time limit"),
    StageSpec("sanitize", 75, 30, "compute-sanitizer memcheck, racecheck, synccheck on tiny cases and a multicast one"),
    StageSpec("bench", 150, 90, "standard cases, every provider, ratios to cuDNN in the same run"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
SUMMARY_RESERVE_S = 10.0  # kept back for writing the results
# The folder that holds the imported rnnfast package: children import from there too.
PACKAGE_ROOT = Path(rnnfast.__file__).resolve().parent.parent

# Per item inside stages: a smoke case (Triton compiles its kernels on first use), the
# start of a worker (import torch, create the CUDA context), a bench case, a test file.
CASE_TIMEOUT_S = 60.0
SMOKE_WORKERS = 4
WORKER_STARTUP_S = 60.0
BENCH_CASE_MINIMUM_S = 20.0
TEST_FILE_MINIMUM_S = 15.0
SANITIZE_TOOLS = ("memcheck", "racecheck", "synccheck")  # in order of importance
# A tool's run: the worker's start under the tool (torch, the CUDA context, Triton's
# compiles) before its first case.
SANITIZE_TOOL_MINIMUM_S = 25.0
SANITIZER_ERROR_EXIT = 86

# The CUDA-only pytest files, each with its pytest selection: of tests/test_triton.py the
# tests marked gpu (its grids of shapes and plan forms, some 160 kernels to compile, are
# the interpreter's in CI; on a GPU they take far longer than this stage: run that file
# whole by hand).
GPU_TEST_FILES = (("tests/test_cuda_backend.py", ()), ("tests/test_triton.py", ("-m", "gpu")),
                  ("tests/test_cuda_graphs.py", ()), ("tests/test_autocast.py", ()))

# DESIGN.md §8's cases as the issue asks for them, each forward and forward+backward
# (the fine-tune case: a training step with all layers trainable and with the lower two
# frozen; fastrnns fp32 also with gate rows frozen, rnnfast/bench/frozen.py). fp32 runs
# twice: TF32 off for cuDNN too (the fair comparison: rnnfast's fp32 kernels never use
# TF32) and on (what nn.LSTM does by default).
BENCH_CASES = (
    (bench_cases.Case("flashrnn-dense", 1024, 16, 768, 768, 1, "fp16", ("fwd", "fwdbwd")), False),
    (bench_cases.Case("fastrnns", 100, 64, 512, 512, 1, "fp32",
                      ("fwd", "fwdbwd", "frozen_gates", "frozen_units")), False),
    (bench_cases.Case("fastrnns-tf32", 100, 64, 512, 512, 1, "fp32", ("fwd", "fwdbwd")), True),
    (bench_cases.Case("sweep", 256, 256, 1024, 1024, 1, "bf16", ("fwd", "fwdbwd")), False),
    (bench_cases.Case("finetune", 70, 64, 400, 1152, 3, "bf16", ("fwdbwd", "frozen_layers")), False),
)


def time_needed(spec: StageSpec, later: list[StageSpec]) -> float:
    """The least time left at which the stage starts: its minimum, the later stages'
    minimums and the reserve for the results."""
    return spec.minimum_s + sum(s.minimum_s for s in later) + SUMMARY_RESERVE_S


def stage_time(spec: StageSpec, remaining_s: float, later: list[StageSpec],
               limit_s: Optional[float] = None) -> Optional[float]:
    """Seconds the stage may take now, or None when the budget cannot fit it."""
    if remaining_s < time_needed(spec, later):
        return None
    available = remaining_s - time_needed(spec, later) + spec.minimum_s
    return min(spec.limit_s if limit_s is None else limit_s, available)


def share(remaining_s: float, items_after: int, reserve_each_s: float) -> float:
    """Time for the next of several items, which come in order of importance: what
    remains less a reserve for each later item that can still have one, so that one
    slow item cannot starve the rest, and a short budget drops the last items, not the
    first. Below reserve_each_s: not enough for the item."""
    can_follow = max(0, min(items_after, int(remaining_s // reserve_each_s) - 1))
    return remaining_s - can_follow * reserve_each_s


class Log:
    """logs.txt: every child's output under a header per step, each step's kept to
    MAX_SECTION characters (a finished command's last ones, a worker's first ones) so
    that the file stays small enough to fetch and commit."""

    MAX_SECTION = 200_000

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # the build and smoke stages write from several threads
        path.write_text("")

    def section(self, title: str, text: str) -> None:
        if len(text) > self.MAX_SECTION:
            text = f"[... {len(text) - self.MAX_SECTION} characters cut ...]\n" + text[-self.MAX_SECTION:]
        with self.lock, open(self.path, "a") as f:
            f.write(f"\n===== {title} =====\n{text.rstrip()}\n")

    def line_writer(self, title: str) -> Callable[[str], None]:
        """A writer for a worker's lines as they come, under one header."""
        written: Optional[int] = None

        def write(line: str) -> None:
            nonlocal written
            if written is None:
                self.section(title, "")
                written = 0
            if written < self.MAX_SECTION:
                with self.lock, open(self.path, "a") as f:
                    f.write(line[:self.MAX_SECTION - written] + "\n")
            written += len(line) + 1
        return write


@dataclass
class Context:
    out_dir: Path
    device: torch.device
    dry_run: bool
    repo: Optional[Path]       # source tree (setup.py, csrc/, tests/); None for a wheel install
    log: Log
    repeats: int = 10
    warmup: int = 3
    providers: Optional[list[str]] = None
    say: Callable[[str], None] = print
    results: dict = field(default_factory=dict)  # what each stage found, for the summary

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    def child_env(self, interpret: bool = False, **extra: str) -> dict:
        """The environment of a child: this rnnfast first on the path, unbuffered
        output, Triton's interpreter only where asked for."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("TRITON_INTERPRET", None)
        if interpret:
            env["TRITON_INTERPRET"] = "1"
        env.update(extra)
        return env

    def worker(self, kind: str) -> list[str]:
        return [sys.executable, "-m", "rnnfast.verify.worker", kind]


def source_tree() -> Optional[Path]:
    """The checkout rnnfast was imported from, if it was (editable install or PYTHONPATH)."""
    is_checkout = (PACKAGE_ROOT / "setup.py").is_file() and (PACKAGE_ROOT / "csrc").is_dir()
    return PACKAGE_ROOT if is_checkout else None


def cuda_tool(name: str) -> Optional[str]:
    """Path of a CUDA toolkit program: PATH, then $CUDA_HOME/bin, $CUDA_PATH/bin,
    /usr/local/cuda/bin."""
    found = shutil.which(name)
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", name), os.X_OK):
            return os.path.join(home, "bin", name)
    return None


def _run_quiet(command: list[str], timeout_s: float = 20) -> Optional[str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _nvcc_version() -> Optional[str]:
    nvcc = cuda_tool("nvcc")
    text = _run_quiet([nvcc, "--version"]) if nvcc else None
    match = re.search(r"release [\d.]+, V([\d.]+)", text or "")
    return match.group(1) if match else None


NVIDIA_SMI_FIELDS = ("clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "power.limit",
                     "temperature.gpu", "persistence_mode")


def _nvidia_smi(props) -> dict:
    """Clocks (MHz), power limit (W), temperature (C) and persistence mode, read once."""
    uuid = str(getattr(props, "uuid", "") or "")
    ids = ([uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"] if uuid else []) + ["0"]
    for gpu_id in ids:
        text = _run_quiet(["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}",
                           "--format=csv,noheader,nounits", "-i", gpu_id])
        if text and text.strip():
            values = [v.strip() for v in text.strip().splitlines()[0].split(",")]
            return dict(zip(NVIDIA_SMI_FIELDS, values))
    return {"error": "nvidia-smi did not answer"}


def environment(ctx: Context, argv: list[str]) -> dict:
    """Everything that makes the numbers reproducible; written first, as env.json."""
    env = report.environment(ctx.device, argv)
    env["slug"] = report.slug(ctx.device)
    env["nvcc"] = _nvcc_version()
    env["compute_sanitizer"] = cuda_tool("compute-sanitizer")
    env["source_tree"] = str(ctx.repo) if ctx.repo else None
    git = _run_quiet(["git", "-C", str(ctx.repo), "rev-parse", "HEAD"]) if ctx.repo else None
    # A copy of the tree without .git (a rented machine) names its commit in the environment.
    env["git_commit"] = git.strip() if git else os.environ.get("RNNFAST_SOURCE_COMMIT")
    env["dry_run"] = ctx.dry_run
    if ctx.gpu:
        props = torch.cuda.get_device_properties(ctx.device)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "sms": props.multi_processor_count,
                      "memory_gib": round(props.total_memory / 2**30, 1),
                      "l2_bytes": getattr(props, "L2_cache_size", None)}
        env["nvidia_smi"] = _nvidia_smi(props)
    else:
        env["gpu"] = None
    return env


# -- the stages ---------------------------------------------------------------------------
# Each takes the context and its seconds, and returns its status line: PASS, FAIL,
# TIMEOUT, PARTIAL (ran out of time), "skipped: why" or "unsupported: why".

NO_GPU = "skipped: needs a CUDA device (dry run on the CPU)"


def build(ctx: Context, seconds: float) -> str:
    """pip install -e . offline, the extension for this GPU's compute capability only;
    then a fresh process must find the cuda backend available."""
    if not ctx.gpu:
        return NO_GPU
    if ctx.repo is None:
        return f"skipped: no source tree around {PACKAGE_ROOT / 'rnnfast'} (installed from a wheel)"
    nvcc = cuda_tool("nvcc")
    if nvcc is None:
        return "FAIL: nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"
    deadline = time.monotonic() + seconds
    major, minor = torch.cuda.get_device_capability(ctx.device)
    # nvcc's folder, and the interpreter's (a venv's ninja, not activated), on the PATH.
    path = [os.path.dirname(nvcc), os.path.dirname(sys.executable), os.environ.get("PATH", "")]
    env = ctx.child_env(RNNFAST_CUDA_ARCHS=f"{major}{minor}", RNNFAST_FORCE_CUDA_BUILD="1",
                        MAX_JOBS=str(os.cpu_count() or 1), PATH=os.pathsep.join(path))
    ctx.results["build"] = {"arch": f"sm_{major}{minor}"}
    # The CPU kernels (csrc/cpu) compile on first use, which would fall inside a later
    # stage's limit (any CPU layer on `auto` builds them): here, beside pip's build,
    # whose four objects leave most cores idle.
    cpu_thread = threading.Thread(target=_build_cpu_kernels, args=(ctx, seconds, env), daemon=True)
    cpu_thread.start()
    try:
        command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                   "--no-index", "-e", str(ctx.repo)]
        ctx.say(f"  {' '.join(command)}  (RNNFAST_CUDA_ARCHS={major}{minor})")
        done = run_process(command, seconds, env, cwd=ctx.repo)
        ctx.log.section("build: " + " ".join(command), done.output)
        ctx.results["build"]["pip_seconds"] = round(done.seconds, 1)
        if done.timed_out:
            return f"TIMEOUT: pip install ran past {seconds:.0f} s"
        if done.returncode != 0:
            return f"FAIL: pip install exited with code {done.returncode} (logs.txt)"
        probe = run_process([sys.executable, "-c", "from rnnfast import backends; "
                             "print('cuda backend:', backends.available_backends()['cuda'])"],
                            max(10.0, deadline - time.monotonic()), ctx.child_env(), cwd=ctx.repo)
        ctx.log.section("build: import check", probe.output)
        if "cuda backend: None" not in probe.output:
            last = probe.output.strip().splitlines()[-1:] or ["no output"]
            return f"FAIL: built, but the cuda backend is not available: {last[0][:200]}"
    finally:
        cpu_thread.join()  # ends within `seconds`: its own limit
    cpu_kernels = ctx.results["build"].get("cpu_kernels", "not built")
    return f"PASS (sm_{major}{minor}, pip {done.seconds:.0f} s; CPU kernels {cpu_kernels})"


def _build_cpu_kernels(ctx: Context, seconds: float, env: dict) -> None:
    """The cpu backend's extension built (or loaded) in a child, as a CPU layer on
    `auto` would; results["build"]["cpu_kernels"] says how it went. Not a verdict on the
    GPU: where it fails, CPU layers run on the reference backend with a warning."""
    done = run_process([sys.executable, "-c", "from rnnfast.backends import cpu; "
                        "print('cpu backend:', cpu._load())"], seconds, env, cwd=ctx.repo)
    ctx.log.section("build: the CPU kernels", done.output)
    ctx.results["build"]["cpu_kernels"] = (
        f"timed out after {done.seconds:.0f} s" if done.timed_out
        else f"{done.seconds:.0f} s" if "cpu backend: None" in done.output
        else "failed (logs.txt)")


def probe_stage(ctx: Context, seconds: float) -> str:
    """rnnfast/backends/probe.py in a worker: the figures the latency models assume,
    measured with the kernels' own barrier, exchange and mma code (results["probe"])."""
    if not ctx.gpu:
        return NO_GPU
    case = {"id": "latency probes", "device": str(ctx.device)}
    result = run_cases(ctx.worker("probe"), [case], seconds, time.monotonic() + seconds,
                       env=ctx.child_env(), cwd=ctx.out_dir, log=ctx.log.line_writer("probe: worker output"))[0]
    if result["status"] != "PASS":
        return f"{result['status']}: {result.get('error', '')[:200]}"
    found = result["figures"]
    ctx.results["probe"] = found
    measured = [name for name, value in found.items() if isinstance(value, float)]
    for name in measured:
        ctx.say(f"  {name:24} {found[name]:.4g}")
    for name, why in found["skipped"].items():
        ctx.say(f"  {name:24} not measured: {why[:160]}")
    for name, why in found["failed"].items():
        ctx.say(f"  {name:24} FAILED: {why[:160]}")
    counts = f"{len(measured)} figures, {len(found['skipped'])} not measured here"
    if found["failed"]:
        return f"FAIL: {', '.join(found['failed'])} failed; {counts}"
    return f"PASS: {counts}"


def smoke_cases(ctx: Context) -> list[dict]:
    """GPU: every backend x fp32/bf16/fp16 x every shape. CPU (dry run): the reference
    and Triton (interpreter) backends, fp32, on the tiny shapes. The backends take
    turns, so that a stage cut short by its time limit has checked each of them alike."""
    if ctx.gpu:  # the backends that run CUDA tensors (the cpu backend would fall back)
        names, dtypes, shapes = ("reference", *evidence.GPU_BACKENDS), ("fp32", "bf16", "fp16"), smoke.SHAPES
    else:
        names, dtypes = ("reference", "triton"), ("fp32",)
        shapes = tuple(s for s in smoke.SHAPES if s.name in smoke.DRY_RUN_SHAPES)
    return [{"id": f"{b} {dt} {s.name}", "backend": b, "dtype": dt, "shape": s.as_dict(),
             "device": str(ctx.device)} for dt in dtypes for s in shapes for b in names]


def _case_line(result: dict) -> str:
    detail = result.get("error") or result.get("reason") or "; ".join(result.get("violations", [])[:2])
    if not detail and "worst" in result:
        detail = f"worst tensor at {result['worst']:.2f} of the allowed error"
    if result.get("fallback"):
        detail += f" ({result['fallback'][0][:120]})"
    return f"  {result['status']:<11} {result['id']:<30} {detail[:160]}"


def _count(results: list[dict], what: str) -> str:
    """PASS / FAIL / PARTIAL line for a list of case results."""
    tally: dict[str, int] = {}
    for r in results:
        tally[r["status"]] = tally.get(r["status"], 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(tally.items()))
    if tally.get("FAIL") or tally.get("TIMEOUT"):
        return f"FAIL: {counts} of {len(results)} {what}"
    if tally.get("SKIPPED"):
        return f"PARTIAL: {counts} of {len(results)} {what} (time limit)"
    return f"PASS: {counts}"


def smoke_workers(ctx: Context) -> int:
    """Workers side by side: on a GPU one per 4 CPU cores, at most SMOKE_WORKERS. What
    a case costs is mostly the CPU's (compiling Triton's kernels, float64 and cuDNN
    peers, Python), and processes do not share the GPU at once (no MPS: their kernels
    take turns), so a cooperative or cluster launch still finds every SM free."""
    return max(1, min(SMOKE_WORKERS, (os.cpu_count() or 1) // 4)) if ctx.gpu else 1


def _prefixed(prefix: str, write: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: write(prefix + line)  # workers side by side: whose line it is


def smoke_stage(ctx: Context, seconds: float) -> str:
    """The cases over smoke_workers() workers, each case under CASE_TIMEOUT_S: a hang or
    a crash costs that case and a worker start. A worker starts once (one CUDA context,
    kernels compiled once per worker; Triton's disk cache shares them)."""
    results = run_cases_side_by_side(
        smoke_workers(ctx), ctx.worker("smoke"), smoke_cases(ctx), CASE_TIMEOUT_S, time.monotonic() + seconds,
        env=ctx.child_env(interpret=not ctx.gpu), cwd=ctx.out_dir, startup_s=WORKER_STARTUP_S,
        log=lambda k: _prefixed(f"[{k}] ", ctx.log.line_writer(f"smoke: worker {k} output (lines [{k}])")),
        on_result=lambda r: ctx.say(_case_line(r)))
    ctx.results["smoke"] = results
    return _count(results, "cases")


PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


PYTEST_OUTCOME = re.compile(r"^\S+::\S+.* (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def pytest_counts(output: str) -> dict:
    """{"passed": 40, "skipped": 2, ...} from pytest's last summary line; for a run
    killed at its limit, which never printed one, from its -v lines so far."""
    for line in reversed(output.strip().splitlines()[-8:]):
        found = PYTEST_COUNTS.findall(line)
        if found:
            return {("errors" if kind.startswith("error") else kind): int(n) for n, kind in found}
    counts: dict = {}
    for line in output.splitlines():
        outcome = PYTEST_OUTCOME.match(line)
        if outcome:
            kind = {"ERROR": "errors", "XFAIL": "xfailed", "XPASS": "xpassed"}.get(
                outcome.group(1), outcome.group(1).lower())
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def tests_stage(ctx: Context, seconds: float) -> str:
    if not ctx.gpu:
        return NO_GPU
    if ctx.repo is None or not (ctx.repo / "tests").is_dir():
        return "skipped: no tests/ folder (rnnfast installed from a wheel)"
    if importlib.util.find_spec("pytest") is None:
        return "skipped: pytest is not installed"
    deadline = time.monotonic() + seconds
    results = []
    for k, (path, selection) in enumerate(GPU_TEST_FILES):
        limit = share(deadline - time.monotonic(), len(GPU_TEST_FILES) - k - 1, TEST_FILE_MINIMUM_S)
        if limit < TEST_FILE_MINIMUM_S:
            results.append({"file": path, "status": "SKIPPED", "seconds": 0.0, "counts": {}})
            continue
        # -v: each test's outcome as it ends, so a file killed at its limit still counts.
        command = [sys.executable, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", *selection, path]
        done = run_process(command, limit, ctx.child_env(), cwd=ctx.repo)
        ctx.log.section(f"tests: {' '.join(command[1:])}", done.output)
        counts = pytest_counts(done.output)
        status = ("TIMEOUT" if done.timed_out else "PASS" if done.returncode == 0 else "FAIL")
        results.append({"file": path, "status": status, "seconds": round(done.seconds, 1),
                        "counts": counts, "returncode": done.returncode})
        ctx.say(f"  {status:<8} {path:<30} {', '.join(f'{n} {k}' for k, n in counts.items())}"
                f" ({done.seconds:.0f} s)")
    ctx.results["tests"] = results
    return _count(results, "test files")


SANITIZER_ERRORS = re.compile(r"ERROR SUMMARY: (\d+) errors?")
RACECHECK_HAZARDS = re.compile(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)")
SANITIZER_UNSUPPORTED = re.compile(r"Device not supported|not supported on this (platform|device)", re.I)


def sanitizer_verdict(tool: str, output: str, returncode: Optional[int]) -> dict:
    """A sanitizer run judged from its output: status PASS, FAIL, TIMEOUT or
    "unsupported", the error count, and the cases that reported (JSON lines)."""
    cases = [c for c in (parse_result_line(line) for line in output.splitlines()) if c and "status" in c]
    errors = sum(int(n) for n in SANITIZER_ERRORS.findall(output))
    hazards = RACECHECK_HAZARDS.findall(output)
    if hazards:
        errors = max(errors, sum(int(e) for _, e, _ in hazards))
    warnings_ = sum(int(w) for _, _, w in hazards)
    if returncode is None:
        status = "TIMEOUT"
    elif SANITIZER_UNSUPPORTED.search(output) and not cases:
        status = f"unsupported: {SANITIZER_UNSUPPORTED.search(output).group(0)}"
    elif cases and all(c["status"] == "UNAVAILABLE" for c in cases):
        status = "skipped: neither the cuda nor the triton backend is available"
    elif errors or returncode != 0 or any(c["status"] not in ("PASS", "UNAVAILABLE", "FALLBACK")
                                          for c in cases):
        status = "FAIL"
    elif any(c["status"] == "FALLBACK" for c in cases):  # clean, but not every kernel was watched
        status = "FALLBACK"
    else:
        status = "PASS"
    return {"tool": tool, "status": status, "errors": errors, "warnings": warnings_,
            "returncode": returncode, "cases": [{"id": c.get("id"), "status": c["status"]} for c in cases]}


def sanitize_cases(ctx: Context) -> list[dict]:
    """The CUDA and Triton backends x fp32/bf16 on the tiny shapes, and the CUDA kernels
    on the shapes only they plan differently (smoke.SANITIZE_CUDA_SHAPES)."""
    runs = [(b, dt, s) for b in ("cuda", "triton") for dt in ("fp32", "bf16") for s in smoke.SANITIZE_SHAPES]
    runs += [("cuda", dt, s) for dt, s in smoke.SANITIZE_CUDA_SHAPES]
    return [{"id": f"{b} {dt} {s.name}", "backend": b, "dtype": dt, "shape": s.as_dict(),
             "device": str(ctx.device)} for b, dt, s in runs]


def sanitize_stage(ctx: Context, seconds: float) -> str:
    if not ctx.gpu:
        return NO_GPU
    tool = cuda_tool("compute-sanitizer")
    if tool is None:
        return "unsupported: compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"
    cases = sanitize_cases(ctx)
    deadline = time.monotonic() + seconds
    results = []
    for k, name in enumerate(SANITIZE_TOOLS):
        limit = share(deadline - time.monotonic(), len(SANITIZE_TOOLS) - k - 1, SANITIZE_TOOL_MINIMUM_S)
        if limit < SANITIZE_TOOL_MINIMUM_S:
            results.append({"tool": name, "status": "SKIPPED", "errors": 0, "warnings": 0,
                            "returncode": None, "cases": [], "seconds": 0.0})
            continue
        # Without torch's caching allocator every tensor is its own allocation, so an
        # access past a tensor's end is outside any allocation: memcheck sees it.
        env = ctx.child_env(**({"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"} if name == "memcheck" else {}))
        # Only the worker itself (not the ptxas that Triton may start); API errors are
        # left out: torch provokes some on purpose, and a failed launch of ours raises
        # in the worker, which fails its case.
        command = [tool, "--tool", name, "--target-processes", "application-only", "--report-api-errors", "no",
                   "--error-exitcode", str(SANITIZER_ERROR_EXIT), "--print-limit", "20",
                   *ctx.worker("exercise"), json.dumps(cases)]
        done = run_process(command, limit, env, cwd=ctx.out_dir)
        ctx.log.section(f"sanitize: {name}", done.output)
        verdict = {**sanitizer_verdict(name, done.output, done.returncode), "seconds": round(done.seconds, 1)}
        results.append(verdict)
        ctx.say(f"  {verdict['status']:<8} {name:<10} {verdict['errors']} errors, "
                f"{len(verdict['cases'])} of {len(cases)} cases ran ({done.seconds:.0f} s)")
    ctx.results["sanitize"] = results
    statuses = [r["status"] for r in results]
    if all(s.startswith(("unsupported", "skipped")) for s in statuses):
        return statuses[0]
    return _count(results, "tools")


# The providers the auto-pick evidence rests on are timed first, apart from the slow
# peers (Python step loops, a torch.compile per shape), so that a case cut short by its
# time limit loses the peers' numbers, not the kernels'. Each run times cuDNN itself:
# every ratio is to cuDNN in the same process.
PROVIDER_RUNS = (("kernels", ("torch", "rnnfast/triton", "rnnfast/cuda")),
                 ("peers", ("torch", "rnnfast/reference", "steploop", "steploop+compile", "flashrnn")))


def bench_items(ctx: Context) -> list[dict]:
    """Every kernels run of the cases, then every peers run (with --providers: one run
    of those per case)."""
    runs = [("selected", tuple(ctx.providers))] if ctx.providers else PROVIDER_RUNS
    return [{"id": f"{case.name} ({run})", "case": {k: v for k, v in case.as_dict().items() if k != "name"},
             "tf32": tf32, "providers": list(providers), "repeats": ctx.repeats, "warmup": ctx.warmup,
             "device": str(ctx.device)} for run, providers in runs for case, tf32 in BENCH_CASES]


def bench_stage(ctx: Context, seconds: float) -> str:
    """Each case in a fresh worker (its own CUDA context and memory), through
    rnnfast.bench's runner: correctness against nn.LSTM, then timing of every provider."""
    if not ctx.gpu:
        return NO_GPU
    deadline = time.monotonic() + seconds
    items = bench_items(ctx)
    results, rows = [], []
    for k, item in enumerate(items):
        limit = share(deadline - time.monotonic(), len(items) - k - 1, BENCH_CASE_MINIMUM_S)
        if limit < BENCH_CASE_MINIMUM_S:
            results.append({"id": item["id"], "status": "SKIPPED", "error": "not started: time limit"})
            continue
        result = run_cases(ctx.worker("bench"), [item], limit, deadline,
                           env=ctx.child_env(), cwd=ctx.out_dir,
                           log=ctx.log.line_writer(f"bench: {item['id']}"))[0]
        results.append({key: value for key, value in result.items() if key != "rows"})
        rows += [{**row, "run": item["id"]} for row in result.get("rows", [])]
        ctx.say(f"  {result['status']:<8} {item['id']:<55} ({result.get('seconds', 0):.0f} s)"
                + (f" {result['error'][:120]}" if result.get("error") else ""))
    ctx.results["bench"] = results
    ctx.results["bench_rows"] = rows
    return _count(results, "cases")


RUNNERS = {"build": build, "probe": probe_stage, "smoke": smoke_stage, "tests": tests_stage,
           "sanitize": sanitize_stage, "bench": bench_stage}
