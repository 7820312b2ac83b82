"""`python -m rnnfast bench` end to end on a tiny CPU case, and the pieces a wrong
number would come from: the floor arithmetic, provider reporting, correctness gating."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import rnnfast
from rnnfast.__main__ import main
from rnnfast.bench import floor, providers, runner
from rnnfast.bench.cases import Case, custom_case

MODES = "fwd,fwdbwd,bwd,frozen_layers,bias_only,memory"
PROVIDERS = "torch,rnnfast/reference,rnnfast/triton,rnnfast/cuda,steploop,flashrnn"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--device", "cpu", "--batch", "2", "--hidden", "8", "--seq", "3", "--layers", "2",
            "--mode", MODES, "--providers", PROVIDERS, "--repeats", "3", "--warmup", "1",
            "--out", str(out)]
    result = subprocess.run([sys.executable, "-m", "rnnfast", *argv], capture_output=True, text=True,
                            timeout=240, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return out, argv, result.stdout


def test_cli_writes_json_with_every_provider_mode_and_environment(bench_run):
    out, argv, stdout = bench_run
    data = json.loads((out / "results.json").read_text())
    env = data["environment"]
    assert env["command"] == "python -m rnnfast " + " ".join(argv)
    assert env["torch"] == torch.__version__ and env["device_type"] == "cpu"
    for key in ("device", "driver", "cudnn", "triton", "rnnfast", "threads"):
        assert key in env
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(data["rates"]["fp32"]) == {"matmul_flops", "bandwidth", "step_latency"}

    rows = {(r["mode"], r["provider"]): r for r in data["results"]}
    triton_reason = rnnfast.available_backends()["triton"]  # None: runs, in the interpreter here
    triton_status = "interpreter, not timed" if triton_reason is None else f"unavailable: {triton_reason}"
    assert {m for m, _ in rows} == set(MODES.split(","))
    assert {p for _, p in rows} == set(PROVIDERS.split(","))  # nothing silently dropped
    for mode in MODES.split(","):
        base = rows[(mode, "torch")]
        assert base["status"] == "ok" and base["ratio"] == 1.0
        for name in ("rnnfast/reference", "steploop"):
            r = rows[(mode, name)]
            assert r["status"] == "ok", r
            assert r["max_rel_diff"] <= r["tolerance"] == 1e-4
            assert r["ratio"] > 0
            if mode == "memory":
                assert r["peak_bytes"] > 0
            else:
                assert r["min_ms"] <= r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] <= r["max_ms"]
                assert r["repeats"] == 3 and r["floor_ms"] > 0 and r["bound"] in ("compute", "memory", "latency")
        assert rows[(mode, "rnnfast/triton")]["status"] == triton_status
        assert "median_ms" not in rows[(mode, "rnnfast/triton")]
        assert rows[(mode, "rnnfast/cuda")]["status"].startswith("unavailable")
        if importlib.util.find_spec("flashrnn") is None:
            assert rows[(mode, "flashrnn")]["status"].startswith("not installed")
    assert triton_status in stdout and "nn.LSTM (CPU native)" in stdout


def test_cli_writes_csv_matching_json_and_plots(bench_run):
    out, _, _ = bench_run
    data = json.loads((out / "results.json").read_text())
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["mode"], r["provider"], r["status"]) for r in table] == \
        [(r["mode"], r["provider"], r["status"]) for r in data["results"]]
    ok = [r for r in table if r["status"] == "ok" and r["mode"] == "fwdbwd"]
    assert all(float(r["ratio"]) > 0 for r in ok)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "plots" / "speedup_fwdbwd.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--providers", "torch,cudnn"], "unknown provider 'cudnn'; expected some of torch, rnnfast/reference"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'; expected some of fp32, bf16, fp16, fp64"),
    (["--mode", "train"], "unknown mode 'train'; expected some of fwd, fwdbwd, bwd"),
    (["--mode", "frozen_layers"], "needs --layers >= 2, got 1"),
    (["--batch", "0"], "--batch must be a positive integer, got 0"),
    (["--cases", "tiny"], "unknown case group 'tiny'; expected some of fastrnns"),
])
def test_bad_cli_input_says_what_was_expected(args, message, capsys, tmp_path):
    shape = [] if "--cases" in args else ["--seq", "2", "--hidden", "4"]
    if "--batch" in args:
        shape = ["--seq", "2"]
    assert main(["bench", "--device", "cpu", *shape, *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_floor_arithmetic():
    case = Case("custom", T=10, B=4, I=6, H=8, layers=2, dtype="fp32")
    fwd_flop = 2 * 10 * 4 * 32 * (6 + 8) + 2 * 10 * 4 * 32 * (8 + 8)  # 2*T*B*4H*(I_l+H) per layer
    rates = floor.Rates(matmul_flops=1e9, bandwidth=1e12, step_latency=1e-6)
    f = floor.case_floor(case, "fwd", rates)
    assert f["flop"] == fwd_flop and f["steps"] == 20
    assert f["compute_ms"] == pytest.approx(fwd_flop / 1e9 * 1e3)
    assert f["bound"] == "compute" and f["floor_ms"] == f["compute_ms"]
    assert floor.case_floor(case, "fwdbwd", rates)["flop"] == 3 * fwd_flop
    assert floor.case_floor(case, "bwd", rates)["flop"] == 2 * fwd_flop
    assert floor.case_floor(case, "bias_only", rates)["flop"] == 2 * fwd_flop
    # frozen lower layer: forward only; the top layer forward + backward
    assert floor.case_floor(case, "frozen_layers", rates)["flop"] == \
        2 * 10 * 4 * 32 * (6 + 8) + 3 * 2 * 10 * 4 * 32 * (8 + 8)
    slow_steps = floor.case_floor(case, "fwdbwd", floor.Rates(1e18, 1e18, 1e-3))
    assert slow_steps["bound"] == "latency" and slow_steps["floor_ms"] == pytest.approx(40 * 1.0)
    fwd_bytes = 4 * (10 * 4 * (6 + 8) + 32 * (6 + 8) + 10 * 4 * (8 + 8) + 32 * (8 + 8))
    assert floor.case_work(case, "fwd")["bytes"] == fwd_bytes


def test_a_cpus_16bit_compute_floor_is_the_faster_of_its_gemm_and_fp32s(monkeypatch):
    """On a CPU a 16-bit product can always be taken in fp32 (the cpu backend widens
    layers where the CPU has no 16-bit dot product), so the floor's rate is the faster
    of the two GEMMs: a fraction of the floor never exceeds 1 because torch's 16-bit
    GEMM is slow there."""
    rates = {torch.float32: 3e11, torch.float16: 2e10, torch.bfloat16: 6e11}
    monkeypatch.setattr(floor, "_matmul_flops", lambda device, dtype: rates[dtype])
    cpu = torch.device("cpu")
    assert floor.measure_rates(cpu, torch.float16).matmul_flops == 3e11
    assert floor.measure_rates(cpu, torch.bfloat16).matmul_flops == 6e11
    assert floor.measure_rates(cpu, torch.float32).matmul_flops == 3e11


def test_every_provider_is_listed_with_a_reason_when_it_cannot_run():
    listed = providers.all_providers(torch.device("cpu"), torch.float32)
    assert [p.name for p in listed] == list(providers.KNOWN_PROVIDERS)
    by_name = {p.name: p for p in listed}
    assert by_name["torch"].skip is None and by_name["rnnfast/reference"].skip is None
    # on a CPU: the extension is not built, or (built against a CUDA torch) no device
    assert by_name["rnnfast/cuda"].skip == f"unavailable: {rnnfast.available_backends()['cuda']}"
    assert ("not built" in by_name["rnnfast/cuda"].skip
            or by_name["rnnfast/cuda"].skip.endswith("no CUDA device"))
    flash = by_name["flashrnn"].skip
    assert flash.startswith("not installed") if importlib.util.find_spec("flashrnn") is None \
        else "CUDA" in flash
    assert [p.name for p in providers.select(listed, ["steploop"])] == ["torch", "steploop"]


def test_a_provider_that_disagrees_with_nn_lstm_is_reported_not_timed():
    def wrong(ref):  # a real module with a real bug: the recurrent weights scaled
        model = providers.StepLoopLSTM(ref)
        with torch.no_grad():
            model.weight_hh_l0.mul_(1.5)
        return model
    case = custom_case(4, 3, 8, 5, 1, "fp32", ["fwd", "memory"])
    ps = [providers.Provider("torch", lambda ref: ref), providers.Provider("steploop", wrong)]
    rows = runner.run_case(case, ps, torch.device("cpu"), repeats=2, warmup=0)
    bad = [r for r in rows if r["provider"] == "steploop"]
    assert len(bad) == 2
    for r in bad:
        assert r["status"].startswith("failed correctness: max rel diff")
        assert "median_ms" not in r and "peak_bytes" not in r and "ratio" not in r


def test_frozen_rows_modes_time_each_fraction_against_nothing_frozen(tmp_path):
    """frozen_gates / frozen_units: rows per frozen fraction for rnnfast, nn.LSTM's fully
    trainable backward for scale, the weight-gradient products alone, and a plot."""
    argv = ["bench", "--device", "cpu", "--batch", "4", "--hidden", "40", "--seq", "5",
            "--mode", "frozen_gates,frozen_units", "--providers", "torch,rnnfast/reference,steploop",
            "--repeats", "3", "--warmup", "1", "--no-floor", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    for mode, fractions in (("frozen_gates", [0, 0.25, 0.5, 0.75]),
                            ("frozen_units", [0, 0.25, 0.5, 0.75, 0.9])):
        for provider in ("rnnfast/reference", "weight-gradient products"):
            series = [r for r in rows if (r["mode"], r["provider"]) == (mode, provider)]
            assert [r["frozen"] for r in series] == fractions
            assert all(r["status"] == "ok" and r["ratio"] > 0 for r in series)
            assert series[0]["ratio"] == 1.0
        torch_rows = [r for r in rows if (r["mode"], r["provider"]) == (mode, "torch")]
        assert [(r["frozen"], r["status"]) for r in torch_rows] == [(0, "ok")]
        steploop = [r for r in rows if (r["mode"], r["provider"]) == (mode, "steploop")]
        assert len(steploop) == 1 and steploop[0]["status"].startswith("unsupported mode")
    if importlib.util.find_spec("matplotlib") is not None:
        assert len(list((tmp_path / "plots").glob("frozen_*.png"))) == 1


def test_frozen_fractions_follow_the_hidden_size():
    from rnnfast.bench.frozen import settings
    assert [(f, s) for f, s in settings("frozen_gates", 8)] == [
        (0.0, None), (0.25, {"gates": "i"}), (0.5, {"gates": "if"}), (0.75, {"gates": "ifg"})]
    units = settings("frozen_units", 20)
    assert [f for f, _ in units] == [0.0, 0.25, 0.5, 0.75, 0.9]
    assert units[-1][1] == {"units": range(18)}


def test_environment_records_the_settings_that_change_results(monkeypatch):
    """Instruction-set caps and thread counts set in the environment do not show in the
    command line, so the record names them (e.g. a run held to AVX2)."""
    from rnnfast.bench import report
    for name in report.RESULT_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = report.environment(torch.device("cpu"), ["bench"])
    assert env["settings"] == {"DNNL_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
