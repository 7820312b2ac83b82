"""`python -m rnnfast verify` on the CPU: the dry run walks every stage, a hanging case
becomes TIMEOUT without stopping the run, the budget rule, the summary's format, the
sanitizer/pytest output parsing, the bench worker, and the auto-pick evidence rule."""
import contextlib
import dataclasses
import io
import json
import os
import sys
import textwrap
import time
import warnings

import pytest
import torch

from rnnfast import backends
from rnnfast.__main__ import main
from rnnfast.backends import evidence
from rnnfast.verify import child, smoke, stages, summary, worker
from rnnfast.verify.stages import STAGES, StageSpec


# The dry run's kernel cases run Triton's interpreter; where it cannot run (Triton 3.6
# with numpy >= 2.4: rnnfast.backends.triton.interpreter_problem) they are UNAVAILABLE.
TRITON_RUNS = backends.available_backends()["triton"] is None


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """`python -m rnnfast verify --dry-run` (in this process: the cases run in workers
    all the same): (exit code, stdout, results folder)."""
    out = tmp_path_factory.mktemp("verify")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        returncode = main(["verify", "--dry-run", "--out", str(out)])
    return returncode, stdout.getvalue(), out


def test_dry_run_walks_every_stage_and_writes_the_results(dry_run):
    returncode, stdout, out = dry_run
    assert returncode == 0, stdout
    assert sorted(os.listdir(out)) == ["env.json", "logs.txt", "smoke.csv", "summary.md", "verify.json"]
    record = json.loads((out / "verify.json").read_text())
    status = {s["stage"]: s["status"] for s in record["stages"]}
    assert list(status) == ["env", "build", "probe", "smoke", "tests", "sanitize", "bench"]
    assert status["smoke"].startswith("PASS")
    for stage in ("build", "probe", "tests", "sanitize", "bench"):
        assert status[stage] == "skipped: needs a CUDA device (dry run on the CPU)"
    smoke = record["smoke"]
    assert {(c["backend"], c["dtype"]) for c in smoke} == {("reference", "fp32"), ("triton", "fp32")}
    assert {c["shape"]["name"] for c in smoke} == {"T=1", "packed", "masks"}
    if TRITON_RUNS:
        assert all(c["status"] == "PASS" and 0 < c["worst"] <= 1 for c in smoke)
        # triton's cases also against the reference backend (not the reference's own: it
        # would be judged against itself)
        assert all((c["worst_vs_reference"] is None) == (c["backend"] == "reference") for c in smoke)
        assert all(0 < c["worst_vs_reference"] <= 1 for c in smoke if c["backend"] == "triton")
    else:
        assert [c["status"] for c in smoke if c["backend"] == "triton"] == ["UNAVAILABLE"] * 3
        assert all(c["status"] == "PASS" and 0 < c["worst"] <= 1 for c in smoke if c["backend"] == "reference")
    env = json.loads((out / "env.json").read_text())
    assert env["gpu"] is None and env["torch"] == torch.__version__ and env["dry_run"] is True
    # Printed last: the summary, stage table first.
    assert stdout.rstrip().endswith((out / "summary.md").read_text().rstrip())
    assert f"{'PASS' if TRITON_RUNS else 'UNAVAILABLE':<12}triton fp32 masks" in stdout


def test_summary_format(dry_run):
    out = dry_run[2]
    lines = (out / "summary.md").read_text().splitlines()
    assert lines[0].startswith("# rnnfast verify: ") and lines[0].endswith("(dry run)")
    table = lines[lines.index("| stage | status | seconds |"):]
    assert table[1] == "|---|---|---|"
    assert [row.split(" | ")[0] for row in table[2:10]] == [
        "| env", "| build", "| probe", "| smoke", "| tests", "| sanitize", "| bench", "| total"]
    parity = lines[lines.index("| backend | dtype | packed | T=1 | masks |"):]
    assert parity[1] == "|---|---|---|---|---|"
    assert [row.split(" | ")[:2] for row in parity[2:4]] == [["| reference", "fp32"], ["| triton", "fp32"]]
    cells = [row.strip("| ").split(" | ")[2:] for row in parity[2:4]]
    assert all(cell.startswith("PASS ") for cell in cells[0])
    assert all(cell.startswith("PASS ") if TRITON_RUNS else cell == "UNAVAILABLE" for cell in cells[1])


def test_summary_renders_speed_ratios_tests_sanitizer_and_earned_rows():
    env = {"gpu": {"name": "NVIDIA H200", "sms": 132, "capability": "9.0"}, "driver": "580", "cuda": "13.0",
           "cudnn": 91000, "nvcc": "13.0.88", "torch": "2.11.0", "triton": "3.6.0", "rnnfast": "0.1.0",
           "time": "2026-12-01T00:00:00+00:00", "device": "NVIDIA H200"}
    stage_rows = [{"stage": "env", "status": "PASS", "seconds": 2.0},
                  {"stage": "bench", "status": "PASS: 1 PASS", "seconds": 30.0}]
    bench_rows = [{"case": "sweep T=256", "mode": "fwd", "provider": "torch", "status": "ok", "median_ms": 2.5,
                   "ratio": 1.0},
                  {"case": "sweep T=256", "mode": "fwd", "provider": "rnnfast/cuda", "status": "ok",
                   "median_ms": 2.0, "ratio": 0.8},
                  {"case": "sweep T=256", "mode": "fwd", "provider": "flashrnn",
                   "status": "not installed (pip install flashrnn)"}]
    results = {"bench_rows": bench_rows,
               "tests": [{"file": "tests/test_triton.py", "status": "PASS", "seconds": 40.0,
                          "counts": {"passed": 50, "skipped": 2}}],
               "sanitize": [{"tool": "memcheck", "status": "PASS", "errors": 0, "warnings": 0, "seconds": 20.0,
                             "cases": [{"id": "cuda fp32 tiny", "status": "PASS"}]}]}
    bench_rows += [{"case": "fastrnns T=100", "mode": "frozen_gates", "provider": "rnnfast/cuda", "frozen": f,
                    "status": "ok", "median_ms": 3.0 - 2 * f, "ratio": 1 - 2 * f / 3} for f in (0, 0.75)]
    earned = [evidence.Earned("cuda", "NVIDIA H200", "bf16", "bench/results/nvidia-h200/verify")]
    text = summary.render(env, stage_rows, results, earned, 480)
    assert "| fastrnns T=100 | frozen_gates | rnnfast/cuda | 1.00x | 0.50x |" in text
    assert "fastrnns T=100 | frozen_gates | 3.000" not in text  # not in the cuDNN ratio table
    assert "| total | budget 480 s | 32.0 |" in text
    assert "| case | mode | cuDNN ms | rnnfast/cuda | flashrnn |" in text
    assert "| sweep T=256 | fwd | 2.500 | 0.80x | not installed |" in text
    assert "| tests/test_triton.py | PASS | 50 passed, 2 skipped | 40.0 |" in text
    assert "| memcheck | PASS | 0 | 0 | 1 of 1 | 20.0 |" in text
    assert "Earned(backend='cuda', gpu='NVIDIA H200', dtype='bf16'" in text


WORKER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    for case in json.loads(sys.argv[-1]):
        if case["id"] == "hang":
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            open(case["pidfile"], "w").write(str(child.pid))
            time.sleep(600)
        if case["id"] == "die":
            os._exit(9)
        print("noise the parent logs", flush=True)
        print(json.dumps({**case, "status": "PASS"}), flush=True)
        if case["id"] == "restart":
            sys.exit(%d)
""" % child.RESTART_EXIT_CODE)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
        return f.read().split(") ")[1][0] != "Z"


def test_a_hanging_case_becomes_timeout_and_the_rest_still_run(tmp_path):
    pidfile = str(tmp_path / "grandchild.pid")
    cases = [{"id": "first"}, {"id": "hang", "pidfile": pidfile}, {"id": "die"}, {"id": "restart"},
             {"id": "last"}]
    logged, reported = [], []
    started = time.monotonic()
    results = child.run_cases([sys.executable, "-c", WORKER], cases, case_timeout_s=2.0,
                              deadline=time.monotonic() + 60, startup_s=10.0, log=logged.append,
                              on_result=reported.append)
    assert [r["status"] for r in results] == ["PASS", "TIMEOUT", "FAIL", "PASS", "PASS"]
    assert results[1]["error"] == "no result within 2 s: worker killed" and 2.0 <= results[1]["seconds"] < 6
    assert "exited with code 9" in results[2]["error"]
    assert reported == results and "noise the parent logs" in logged
    assert time.monotonic() - started < 20
    # The whole process group went: the hung worker's own child too.
    assert not _alive(int(open(pidfile).read()))


def test_a_case_given_the_whole_stage_that_hangs_is_timeout(tmp_path):
    """As the probe stage and a stage's last bench item run: the case's limit is the
    time left, so its end and the deadline meet. A hang there is the case's."""
    cases = [{"id": "hang", "pidfile": str(tmp_path / "pid")}]
    results = child.run_cases([sys.executable, "-c", WORKER], cases, case_timeout_s=2.0,
                              deadline=time.monotonic() + 2.0)
    assert [r["status"] for r in results] == ["TIMEOUT"]


def test_cases_side_by_side_come_back_in_order_with_each_workers_verdicts(tmp_path):
    """Three workers at once: the hang costs its own case, the dead worker its own, the
    others pass; the results come back in the cases' order, each worker's output in its
    own log."""
    cases = [{"id": "first"}, {"id": "hang", "pidfile": str(tmp_path / "pid")}, {"id": "die"},
             {"id": "restart"}, {"id": "last"}, {"id": "sixth"}]
    logs: dict = {}
    started = time.monotonic()
    results = child.run_cases_side_by_side(
        3, [sys.executable, "-c", WORKER], cases, case_timeout_s=2.0, deadline=time.monotonic() + 60,
        log=lambda k: logs.setdefault(k, []).append)
    assert [(r["id"], r["status"]) for r in results] == [
        ("first", "PASS"), ("hang", "TIMEOUT"), ("die", "FAIL"), ("restart", "PASS"), ("last", "PASS"),
        ("sixth", "PASS")]
    assert sorted(logs) == [0, 1, 2] and all("noise the parent logs" in logs[k] for k in (0, 2))
    assert time.monotonic() - started < 15  # side by side: the hang did not hold up the rest


def test_the_stage_deadline_stops_cases_as_skipped(tmp_path):
    cases = [{"id": "hang", "pidfile": str(tmp_path / "pid")}, {"id": "never"}]
    results = child.run_cases([sys.executable, "-c", WORKER], cases, case_timeout_s=30.0,
                              deadline=time.monotonic() + 1.5)
    assert [r["status"] for r in results] == ["SKIPPED", "SKIPPED"]
    assert results[0]["error"].startswith("stopped at the stage's time limit")
    assert results[1]["error"] == "not started: the stage's time limit came first"


def test_run_process_kills_at_its_limit():
    done = child.run_process([sys.executable, "-c", "print('started', flush=True); import time; time.sleep(60)"], 1.0)
    assert done.timed_out and "started" in done.output and done.seconds < 6
    done = child.run_process([sys.executable, "-c", "import sys; print('ok'); sys.exit(3)"], 30)
    assert done.returncode == 3 and done.output == "ok\n"


def test_budget_rule():
    build, smoke, bench = (StageSpec("build", 180, 60, ""), StageSpec("smoke", 120, 30, ""),
                           StageSpec("bench", 150, 45, ""))
    # Plenty of time: the stage's own limit.
    assert stages.stage_time(build, 1000, [smoke, bench]) == 180
    # Tight: what is left after the reserve and the later stages' minimums.
    assert stages.stage_time(build, 200, [smoke, bench]) == 200 - stages.SUMMARY_RESERVE_S - 30 - 45
    # Cannot fit its own minimum: skipped.
    assert stages.stage_time(build, 140, [smoke, bench]) is None
    assert stages.stage_time(bench, 54, []) is None and stages.stage_time(bench, 56, []) == 46
    # --limit STAGE=SECONDS replaces the stage's limit.
    assert stages.stage_time(smoke, 1000, [], limit_s=40) == 40
    assert stages.share(100, 2, 15) == 70
    assert sum(s.limit_s for s in STAGES) > 480 >= sum(s.minimum_s for s in STAGES) + stages.SUMMARY_RESERVE_S


@pytest.mark.parametrize("seconds,started", [(90, 4), (150, 7), (400, 10)])
def test_a_short_budget_drops_the_last_bench_items_not_the_first(seconds, started):
    """The bench stage given `seconds`, each item taking all the time it is given: the
    first items start (the kernels' runs, on which the auto-pick evidence rests, come
    first), each with at least the minimum; the first takes what the others cannot use."""
    items = len(stages.BENCH_CASES) * len(stages.PROVIDER_RUNS)
    remaining, limits = float(seconds), []
    for k in range(items):
        limit = stages.share(remaining, items - k - 1, stages.BENCH_CASE_MINIMUM_S)
        if limit >= stages.BENCH_CASE_MINIMUM_S:
            limits.append((k, limit))
            remaining -= limit
    assert [k for k, _ in limits] == list(range(started))
    assert all(limit >= stages.BENCH_CASE_MINIMUM_S for _, limit in limits)
    assert sum(limit for _, limit in limits) == seconds or started == items


def test_stages_that_cannot_fit_the_budget_are_skipped(tmp_path):
    assert main(["verify", "--dry-run", "--budget-s", "120", "--stages", "smoke,bench", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "verify.json").read_text())
    status = {s["stage"]: s["status"] for s in record["stages"]}
    assert status["build"] == "skipped: not in --stages"
    # smoke would leave less than bench's minimum (90 s) of the 120: skipped, bench runs.
    assert status["smoke"].startswith("skipped: budget")
    assert status["bench"] == "skipped: needs a CUDA device (dry run on the CPU)"


@pytest.mark.parametrize("argv,message", [
    (["--stages", "smoke,fly"], "expected a comma list of build, probe, smoke, tests, sanitize, bench"),
    (["--limit", "bench"], "expected STAGE=SECONDS"),
    (["--budget-s", "-5"], "expected a positive number of seconds"),
    (["--providers", "cudnn"], "expected a comma list of torch,"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    assert main(["verify", "--dry-run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_sanitized_case_says_when_its_layer_ran_on_another_backend(monkeypatch):
    """What a sanitizer watches (smoke.exercise): a layer that fell back (here the cpu
    backend, made to refuse fp16 layers) is FALLBACK, not PASS."""
    shape, cpu = smoke.SANITIZE_SHAPES[0], torch.device("cpu")
    assert smoke.exercise("reference", "fp32", shape, cpu)["status"] == "PASS"
    refusing = dataclasses.replace(backends._REGISTRY["cpu"], unsupported_reason=lambda device, dtype:
                                   "no fp16 kernels" if dtype == torch.float16 else None)
    monkeypatch.setitem(backends._REGISTRY, "cpu", refusing)
    fell_back = smoke.exercise("cpu", "fp16", shape, cpu)
    assert fell_back["status"] == "FALLBACK" and "using the reference backend" in fell_back["fallback"][0]


@pytest.mark.skipif(backends.available_backends()["triton"] is not None, reason="needs the triton backend")
def test_a_case_hears_the_triton_launchers_fallback_every_time(monkeypatch):
    """A layer none of whose Triton plans the device accepts runs on the reference: every
    case that meets it says FALLBACK, though the launcher announces it once a process."""
    from rnnfast.backends.triton import launch
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    monkeypatch.setattr(launch, "_fits", lambda *args, **kwargs: False)
    monkeypatch.setattr(launch, "_device_accepts", {})
    monkeypatch.setattr(launch, "_warned", set())
    for _ in range(2):
        result = smoke.exercise("triton", "fp32", smoke.SANITIZE_SHAPES[1], torch.device("cpu"))
        assert result["status"] == "FALLBACK" and "accepted none of the plans" in result["fallback"][0]


def test_a_fault_writing_the_summary_keeps_the_results(tmp_path, monkeypatch, capsys):
    def fault(*args):
        raise ZeroDivisionError("a figure of 0")
    monkeypatch.setattr(summary, "render", fault)
    assert main(["verify", "--dry-run", "--stages", "build", "--out", str(tmp_path)]) == 1
    assert [s["stage"] for s in json.loads((tmp_path / "verify.json").read_text())["stages"]][:2] == [
        "env", "build"]
    assert "writing the summary failed" in capsys.readouterr().err
    assert "ZeroDivisionError: a figure of 0" in (tmp_path / "logs.txt").read_text()


def test_a_tree_without_git_names_its_commit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNFAST_SOURCE_COMMIT", "0123456789abcdef")
    ctx = stages.Context(out_dir=tmp_path, device=torch.device("cpu"), dry_run=True, repo=tmp_path,
                         log=stages.Log(tmp_path / "logs.txt"))
    assert stages.environment(ctx, [])["git_commit"] == "0123456789abcdef"


def test_sanitizer_and_pytest_output_parsing():
    case = json.dumps({"id": "cuda fp32 tiny", "status": "PASS"})
    clean = f"========= COMPUTE-SANITIZER\n{case}\n========= ERROR SUMMARY: 0 errors\n"
    assert stages.sanitizer_verdict("memcheck", clean, 0)["status"] == "PASS"
    dirty = clean.replace("0 errors", "3 errors")
    verdict = stages.sanitizer_verdict("memcheck", dirty, stages.SANITIZER_ERROR_EXIT)
    assert verdict["status"] == "FAIL" and verdict["errors"] == 3
    races = f"{case}\n========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)\n"
    verdict = stages.sanitizer_verdict("racecheck", races, stages.SANITIZER_ERROR_EXIT)
    assert (verdict["status"], verdict["errors"], verdict["warnings"]) == ("FAIL", 1, 1)
    refused = "========= Error: Device not supported\n========= ERROR SUMMARY: 1 error\n"
    assert stages.sanitizer_verdict("memcheck", refused, 1)["status"] == "unsupported: Device not supported"
    assert stages.sanitizer_verdict("synccheck", "", None)["status"] == "TIMEOUT"
    unavailable = json.dumps({"id": "cuda fp32 tiny", "status": "UNAVAILABLE"})
    assert stages.sanitizer_verdict("memcheck", f"{unavailable}\n", 0)["status"].startswith("skipped: neither")
    # A case whose launch fell back ran kernels the tool was not asked to watch.
    fell_back = json.dumps({"id": "cuda fp32 multicast", "status": "FALLBACK"})
    assert stages.sanitizer_verdict("memcheck", f"{clean}{fell_back}\n", 0)["status"] == "FALLBACK"
    assert stages.sanitizer_verdict("memcheck", f"{dirty}{fell_back}\n", 86)["status"] == "FAIL"
    assert stages.pytest_counts("...\nFAILED x\n2 failed, 40 passed, 3 skipped in 12.5s\n") == {
        "failed": 2, "passed": 40, "skipped": 3}
    assert stages.pytest_counts("1 error in 0.3s") == {"errors": 1}
    killed = ("tests/test_triton.py::test_a[fp32] PASSED                    [  1%]\n"
              "tests/test_triton.py::test_b[B=3-H=20] FAILED                [  2%]\n"
              "tests/test_triton.py::test_c SKIPPED (needs CUDA)            [  3%]\n"
              "tests/test_triton.py::test_d PASSED                          [  4%]\n")
    assert stages.pytest_counts(killed) == {"passed": 2, "failed": 1, "skipped": 1}


def test_bench_worker_runs_a_case_through_rnnfast_bench(capsys):
    from rnnfast.bench.cases import Case
    item = {"id": "tiny", "case": {k: v for k, v in Case("custom", 4, 2, 3, 5, 1, "fp32", ("fwd", "fwdbwd"))
                                   .as_dict().items() if k != "name"},
            "tf32": False, "providers": ["torch", "rnnfast/reference"], "repeats": 2, "warmup": 0,
            "device": "cpu"}
    assert worker.main(["bench", json.dumps([item])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "PASS" and result["id"] == "tiny"
    rows = result["rows"]
    assert [(r["mode"], r["provider"]) for r in rows] == [
        ("fwd", "torch"), ("fwd", "rnnfast/reference"), ("fwdbwd", "torch"), ("fwdbwd", "rnnfast/reference")]
    assert all(r["status"] == "ok" and r["ratio"] > 0 and r["tf32"] is False for r in rows)
    assert "| custom T=4 B=2 I=3 H=5 fp32 | fwd |" in "\n".join(summary.ratio_table(rows))


def test_bench_items_are_the_issue_cases_kernels_first():
    ctx = stages.Context(out_dir=None, device=torch.device("cuda"), dry_run=False, repo=None, log=None)
    items = stages.bench_items(ctx)
    cases = ["flashrnn-dense T=1024 B=16 I=H=768 fp16", "fastrnns T=100 B=64 I=H=512 fp32",
             "fastrnns-tf32 T=100 B=64 I=H=512 fp32", "sweep T=256 B=256 I=H=1024 bf16",
             "finetune T=70 B=64 I=400 H=1152 L=3 bf16"]
    assert [i["id"] for i in items] == [f"{c} (kernels)" for c in cases] + [f"{c} (peers)" for c in cases]
    assert [i["tf32"] for i in items[:5]] == [False, False, True, False, False]
    assert items[4]["case"]["modes"] == ["fwdbwd", "frozen_layers"]
    assert items[0]["providers"] == ["torch", "rnnfast/triton", "rnnfast/cuda"] and items[0]["repeats"] == 10
    from rnnfast.bench.providers import KNOWN_PROVIDERS
    # Every provider but the CPU backend's, which has nothing to time on a GPU.
    assert {p for i in items for p in i["providers"]} == set(KNOWN_PROVIDERS) - {"rnnfast/cpu"}
    ctx.providers = ["rnnfast/cuda"]
    assert [i["providers"] for i in stages.bench_items(ctx)] == [["rnnfast/cuda"]] * 5


def test_sanitize_cases_reach_every_cuda_kernel_and_plan_form_an_h100_makes():
    """The tiny shapes in both backends and fp32/bf16, plus the CUDA-only shapes:
    between them an H100/H200 launches every kernel of csrc/ (grid, cluster and
    register forms of each direction, the backward's reduce split), and a multicast
    grid (the bulk copies and mbarriers)."""
    from rnnfast.backends.cuda import plan as cuda_plan
    ctx = stages.Context(out_dir=None, device=torch.device("cuda"), dry_run=False, repo=None, log=None)
    cases = stages.sanitize_cases(ctx)
    assert len(cases) == 2 * 2 * len(smoke.SANITIZE_SHAPES) + len(smoke.SANITIZE_CUDA_SHAPES)
    forms = set()
    for case in cases:
        if case["backend"] != "cuda":
            continue
        shape = smoke.Shape.from_dict(case["shape"])
        out = shape.proj or shape.H
        for direction in ("forward", "backward"):
            plan = cuda_plan.make_plan(direction, shape.B, shape.H, out, bool(shape.proj),
                                       2 if case["dtype"] == "bf16" else 4, cuda_plan.H100_SMS,
                                       cuda_plan.H100_SMEM_PER_BLOCK, 9)
            forms.add((direction, plan.kind, bool(plan.reg_k_tiles), bool(plan.reduce_ctas)))
            forms.add("multicast" if plan.multicast else "")
    assert forms == {("forward", "grid", False, False), ("forward", "cluster", False, False),
                     ("forward", "cluster", True, False), ("backward", "grid", False, False),
                     ("backward", "grid", True, False), ("backward", "cluster", False, False),
                     ("backward", "cluster", True, False), ("backward", "grid", False, True),
                     "multicast", ""}


def test_earned_rows_need_every_parity_case_and_a_win_in_every_timed_row():
    smoke = [{"backend": "cuda", "dtype": "bf16", "status": "PASS"},
             {"backend": "cuda", "dtype": "bf16", "status": "PASS"},
             {"backend": "cuda", "dtype": "fp16", "status": "PASS"},
             {"backend": "cuda", "dtype": "fp16", "status": "FALLBACK"},
             {"backend": "triton", "dtype": "fp32", "status": "PASS"}]
    bench = [{"provider": "rnnfast/cuda", "dtype": "bf16", "mode": "fwd", "status": "ok", "ratio": 0.7},
             {"provider": "rnnfast/cuda", "dtype": "bf16", "mode": "fwdbwd", "status": "ok", "ratio": 0.9},
             {"provider": "rnnfast/cuda", "dtype": "fp16", "mode": "fwd", "status": "ok", "ratio": 0.5},
             {"provider": "rnnfast/triton", "dtype": "fp32", "mode": "fwd", "status": "ok", "ratio": 0.9},
             {"provider": "rnnfast/triton", "dtype": "fp32", "mode": "fwdbwd", "status": "ok", "ratio": 1.1}]
    earned = evidence.earned_rows("NVIDIA H200", smoke, bench, "bench/results/nvidia-h200/verify")
    assert earned == [evidence.Earned("cuda", "NVIDIA H200", "bf16", "bench/results/nvidia-h200/verify")]
    assert evidence.earned_rows("NVIDIA H200", smoke[:2], [], "x") == []  # no timing, no row
    # Frozen-rows rows compare the backend with itself: they neither earn nor block a row.
    frozen = [{"provider": "rnnfast/cuda", "dtype": dtype, "mode": "frozen_units", "frozen": 0.5,
               "status": "ok", "ratio": ratio} for dtype, ratio in (("bf16", 1.3), ("fp16", 0.4))]
    assert evidence.earned_rows("NVIDIA H200", smoke, bench + frozen, "x") == \
        [evidence.Earned("cuda", "NVIDIA H200", "bf16", "x")]
    assert evidence.earned_rows("NVIDIA H200", smoke[:2], frozen, "x") == []


def test_auto_picks_a_gpu_backend_only_where_a_row_earned_it(monkeypatch):
    device = torch.device("cuda", 0)
    monkeypatch.setattr(evidence, "_gpu_kind", lambda index: "NVIDIA H200")
    triton = backends._REGISTRY["triton"]
    runnable = dataclasses.replace(triton, unavailable_reason=lambda: None,
                                   unsupported_reason=lambda device, dtype: None)
    monkeypatch.setitem(backends._REGISTRY, "triton", runnable)
    monkeypatch.setitem(backends._REGISTRY, "cuda", dataclasses.replace(
        backends._REGISTRY["cuda"], unavailable_reason=lambda: "not built"))
    monkeypatch.setattr(backends, "_warned_fallbacks", set())
    # No committed evidence (the table as shipped): auto never picks a GPU backend, and
    # says so once per dtype, with each GPU backend's reason.
    assert evidence.EARNED == ()
    with pytest.warns(UserWarning) as heard:
        assert backends.resolve("auto", device, torch.bfloat16) == "reference"
    assert [str(w.message) for w in heard] == [
        "rnnfast: on NVIDIA H200, backend='auto' runs bfloat16 layers on the reference "
        "backend: correct, but every step is about ten separate PyTorch ops, where "
        "nn.LSTM's cuDNN kernels fuse the sequence. It does not pick rnnfast's GPU kernels "
        "(triton: no committed verify results for this GPU and dtype; cuda: not built). "
        "`python -m rnnfast verify` tests and times them on this GPU (docs/verify.md); "
        "backend='cuda' or backend='triton' runs them before that, unverified."]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per dtype
        assert backends.resolve("auto", device, torch.bfloat16) == "reference"
    with pytest.warns(UserWarning, match="runs float16 layers on the reference backend"):
        assert backends.resolve("auto", device, torch.float16) == "reference"
    backends.forget_announced_fallbacks()
    with pytest.warns(UserWarning, match="runs bfloat16 layers"):  # verify's cases each hear it
        assert backends.resolve("auto", device, torch.bfloat16) == "reference"
    monkeypatch.setattr(evidence, "EARNED", (evidence.Earned("triton", "NVIDIA H200", "bf16", "x"),))
    assert backends.resolve("auto", device, torch.bfloat16) == "triton"
    with pytest.warns(UserWarning, match="runs float16 layers"):             # another dtype
        assert backends.resolve("auto", device, torch.float16) == "reference"
    # A GPU row says nothing of CPU layers: bf16 there stays on the CPU backends, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve("auto", torch.device("cpu"), torch.bfloat16) in ("cpu", "reference")
    monkeypatch.setattr(evidence, "_gpu_kind", lambda index: "NVIDIA H100 PCIe")
    assert backends.resolve("auto", device, torch.bfloat16) == "reference"   # another GPU kind


def test_auto_on_a_gpu_says_nothing_while_torch_compile_traces(monkeypatch):
    """A warning inside a traced call would break the graph: torch.compile with
    fullgraph=True traces resolve silently, and the next eager call says it."""
    monkeypatch.setattr(evidence, "_gpu_kind", lambda index: "NVIDIA H200")
    monkeypatch.setattr(backends, "_warned_fallbacks", set())

    def picked(x):
        return x + len(backends.resolve("auto", torch.device("cuda", 0), torch.float32))

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="rnnfast")
        assert torch.compile(picked, fullgraph=True, backend="eager")(torch.zeros(1)).item() == len("reference")
    with pytest.warns(UserWarning, match="runs float32 layers"):
        picked(torch.zeros(1))


@pytest.mark.parametrize("name", [s.name for s in smoke.SHAPES if s.H < 100])
def test_a_relabelled_baseline_gives_the_baselines_results(name):
    """The smoke check's baseline in another order of every layer's hidden units
    (smoke._Relabelling: parameters, upstream gradients, outputs, final states and
    parameter gradients each reordered and put back; with a projection its outputs too)
    computes the same layer: in float64 its results are the original run's to rounding,
    for 2 layers, both directions, a projection, packed input."""
    shape = next(s for s in smoke.SHAPES if s.name == name)
    torch.manual_seed(0)
    model = torch.nn.LSTM(**smoke._config(shape), dtype=torch.float64)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    x64, upstream = smoke._inputs(shape, torch.device("cpu"))
    plain = smoke._outputs_and_grads(model, shape, x64, names, upstream, torch.float64)
    relabelling = smoke._Relabelling(shape, 7)
    relabelled = relabelling.run(model, state, x64, names, upstream, torch.float64)
    for a, b in zip(plain, relabelled):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-12 * max(1.0, a.abs().max())
    # it really reordered the recurrent product's rows and its sum (over the projection's
    # outputs where there is one)
    rows, cols = relabelling._index("weight_hh_l0")
    identity = torch.arange(len(cols))
    assert not torch.equal(rows, torch.arange(len(rows))) and not torch.equal(cols, identity)


def test_smoke_case_reports_a_fallback_and_fails_a_wrong_kernel(monkeypatch):
    from rnnfast.backends import reference
    from rnnfast.verify import smoke
    shape = next(s for s in smoke.SHAPES if s.name == "T=1")
    cpu = torch.device("cpu")
    base = dataclasses.replace(backends._REGISTRY["reference"], name="triton", priority=1)
    monkeypatch.setitem(backends._REGISTRY, "triton", dataclasses.replace(
        base, unsupported_reason=lambda device, dtype: "not this one"))
    for _ in range(2):  # said once per process by the registry, reported for every case
        result = smoke.check("triton", "fp32", shape, cpu)
        assert result["status"] == "FALLBACK" and "using the reference backend" in result["fallback"][0]

    def off_by_a_little(*args):
        y, *rest = reference.forward(*args)
        return (y * (1 + 1e-4), *rest)
    monkeypatch.setitem(backends._REGISTRY, "triton", dataclasses.replace(base, forward=off_by_a_little))
    result = smoke.check("triton", "fp32", shape, cpu)
    assert result["status"] == "FAIL" and result["worst"] > 1 and result["worst_vs_reference"] > 1
    assert result["violations"][0].startswith("output: error ")
