"""`python -m rnnfast` and the backend registry."""
import subprocess
import sys

import pytest
import torch

import rnnfast
from rnnfast import backends


def test_cli_check_runs_and_reports_parity():
    result = subprocess.run([sys.executable, "-m", "rnnfast", "check", "--seq", "5", "--batch", "3",
                             "--hidden", "16", "--repeats", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "reference  available" in out
    triton_status = "available" if rnnfast.available_backends()["triton"] is None else "unavailable"
    assert f"triton     {triton_status}" in out
    assert "reference" in out.split("parity with torch.nn.LSTM")[1].split("forward+backward")[0]
    assert " ok" in out and "FAILED" not in out
    assert "torch.nn.LSTM" in out.split("forward+backward")[1]


def test_auto_picks_a_backend_that_supports_the_call():
    # The C++ CPU backend where it is built (it is faster at every size measured), in
    # every float dtype (16-bit layers on its bf16 kernels or widened).
    on_cpu = "cpu" if backends.available_backends()["cpu"] is None else "reference"
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert backends.resolve("auto", torch.device("cpu"), dtype) == on_cpu
    assert backends.resolve("reference", torch.device("cpu"), torch.bfloat16) == "reference"


def test_unavailable_and_unknown_backends_raise_clear_errors():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'reference', 'triton', 'cuda', 'cpu'\), got 'fast'"):
        rnnfast.LSTM(3, 4, backend="fast")
    for name in [n for n, reason in rnnfast.available_backends().items() if reason is not None]:
        with pytest.raises(RuntimeError, match=f"rnnfast backend '{name}' is not available"):
            rnnfast.LSTM(3, 4, backend=name)
    assert set(rnnfast.available_backends()) == {"reference", "triton", "cuda", "cpu"}


def test_unsupported_call_falls_back_once_with_a_warning(monkeypatch):
    import dataclasses
    picky = dataclasses.replace(backends._REGISTRY["reference"], name="triton", priority=5,
                                unsupported_reason=lambda device, dtype: "float64 is not supported"
                                if dtype == torch.float64 else None)
    monkeypatch.setitem(backends._REGISTRY, "triton", picky)
    monkeypatch.delitem(backends._REGISTRY, "cpu")  # it would take float64 on CPU
    monkeypatch.setattr(backends, "_warned_fallbacks", set())
    assert backends.resolve("auto", torch.device("cpu"), torch.float32) == "triton"
    assert backends.resolve("auto", torch.device("cpu"), torch.float64) == "reference"
    with pytest.warns(UserWarning, match="does not support this call \\(float64 is not supported\\)"):
        assert backends.resolve("triton", torch.device("cpu"), torch.float64) == "reference"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backends.resolve("triton", torch.device("cpu"), torch.float64)  # said once only


def test_ops_are_registered_with_torch_library():
    assert hasattr(torch.ops.rnnfast, "lstm_layer_forward")
    assert hasattr(torch.ops.rnnfast, "lstm_layer_backward")
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x, h0, c0 = torch.empty(7, 3, 5), torch.empty(3, 4), torch.empty(3, 4)
        w_ih, w_hh = torch.empty(16, 5), torch.empty(16, 4)
        y, h_n, c_n, gates, cells, hidden = torch.ops.rnnfast.lstm_layer_forward(
            x, None, h0, c0, w_ih, w_hh, None, None, None, False, "all", "reference")
    assert y.shape == (7, 3, 4) and gates.shape == (21, 16) and cells.shape == (21, 4)
    torch.library.opcheck(torch.ops.rnnfast.lstm_layer_forward,
                          (torch.randn(4, 2, 3), None, torch.randn(2, 5), torch.randn(2, 5),
                           torch.randn(20, 3), torch.randn(20, 5), torch.randn(20), torch.randn(20),
                           None, True, "all", "reference"))


def test_auto_looks_for_triton_once_per_process(monkeypatch):
    """Every layer call on `auto` asks whether triton is usable; where it is not imported
    the search for it takes ~40 us (more than a B=1 layer's own work on CPU), so it is
    done once."""
    import importlib.util

    from rnnfast.backends import triton as triton_backend

    searches = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: searches.append(name) or real(name, *a))
    monkeypatch.setattr(triton_backend, "_found", None)  # not looked up yet
    for _ in range(3):
        backends.resolve("auto", torch.device("cpu"), torch.float32)
    assert searches.count("triton") == 1


def test_triton_in_an_interpreter_that_cannot_run_it_is_unavailable_with_the_reason(monkeypatch):
    """Triton 3.6's interpreter (the GPU image's Triton) fails inside every kernel with
    numpy >= 2.4 (a scalar argument turned into an int from a 1-element array); 3.7
    fixed it. The backend says so up front instead of an InterpreterError mid-layer."""
    from rnnfast.backends import triton as triton_backend

    problem = triton_backend.interpreter_problem("3.6.0", "2.4.6")
    assert "Triton 3.6.0's interpreter cannot run with numpy 2.4.6" in problem
    assert "triton>=3.7 or numpy<2.4" in problem
    assert triton_backend.interpreter_problem("3.6.0", "2.4.0rc1") is not None
    for fine in (("3.7.1", "2.4.6"), ("3.6.0", "2.3.5"), ("3.6.0", None), ("4.0.0", "3.0.0")):
        assert triton_backend.interpreter_problem(*fine) is None, fine

    monkeypatch.setattr(triton_backend, "_found", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_backend, "_interpreter_problem_here", lambda: problem)
    assert triton_backend.unavailable_reason() == problem
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # compiled kernels: the interpreter is not asked
    assert triton_backend.unavailable_reason() in (None, "no CUDA device (set TRITON_INTERPRET=1 to run its "
                                                   "kernels on CPU in Triton's interpreter, which is slow "
                                                   "and meant for testing)")
