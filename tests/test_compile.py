"""torch.compile(fullgraph=True) and torch.export trace through rnnfast.LSTM (the
layer is a torch.library op with a fake implementation): same outputs and gradients as
eager, one compile for all shapes with dynamic=True; and deterministic mode."""
import shutil

import pytest
import torch
from torch.testing import assert_close

import rnnfast


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(
        not (shutil.which("g++") or shutil.which("clang++")),
        reason="inductor on CPU compiles C++ and needs g++ or clang++")),
])
def test_fullgraph_compile_matches_eager(backend):
    """A training step's loss (LSTM with projection, both directions, and a head): the
    compiled function's outputs and gradients equal eager's."""
    torch.manual_seed(0)
    model = rnnfast.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3)
    head = torch.nn.Linear(6, 2)
    x = torch.randn(7, 3, 5, requires_grad=True)
    wrt = [x, *model.parameters(), *head.parameters()]

    def loss_and_outputs(x):
        out, (h, c) = model(x)
        return head(out).square().sum() + h.sum() + c.sum(), out, h, c

    compiled = torch.compile(loss_and_outputs, fullgraph=True, backend=backend)
    results = []
    for run in (loss_and_outputs, compiled):
        loss, *outputs = run(x)
        results.append([*outputs, *torch.autograd.grad(loss, wrt)])
    for a, b in zip(*results):
        assert_close(a, b)


def test_dynamic_shapes_compile_once_for_new_batch_and_sequence_lengths():
    import torch._dynamo.testing
    model = rnnfast.LSTM(5, 8, num_layers=2, bidirectional=True)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    for seq, batch in [(7, 3), (9, 4), (4, 2)]:
        x = torch.randn(seq, batch, 5, requires_grad=True)
        out, _ = compiled(x)
        out.sum().backward()
        assert_close(out, model(x)[0])
    assert counter.frame_count == 1


def test_torch_export_of_an_inference_model():
    model = rnnfast.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3).eval()
    with torch.no_grad():
        exported = torch.export.export(model, (torch.randn(7, 3, 5),))
    assert "rnnfast.lstm_layer_forward" in exported.graph_module.code
    x = torch.randn(7, 3, 5)
    out, (h, c) = exported.module()(x)
    expected_out, (expected_h, expected_c) = model(x)
    for a, b in ((out, expected_out), (h, expected_h), (c, expected_c)):
        assert_close(a, b)


def test_deterministic_algorithms_with_interlayer_dropout():
    """Same seed, same result, under torch.use_deterministic_algorithms(True)."""
    model = rnnfast.LSTM(5, 8, num_layers=3, dropout=0.3)
    x = torch.randn(7, 3, 5)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            torch.manual_seed(11)
            out, _ = model(x)
            results.append([out, *torch.autograd.grad(out.square().sum(), list(model.parameters()))])
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_eager_skips_the_ops_but_dispatch_modes_still_see_them(monkeypatch):
    """Plain eager mode calls the ops' implementations directly (autograd.plain_eager),
    inference and training alike; under a dispatch mode the layer goes through the custom
    ops, which the mode sees, with the same outputs and gradients."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from rnnfast import autograd

    class Recording(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = rnnfast.LSTM(5, 8, backend="reference")
    x = torch.randn(6, 2, 5)
    direct = []
    monkeypatch.setattr(autograd, "plain_eager",
                        lambda args, plain=autograd.plain_eager: direct.append(plain(args)) or direct[-1])

    def step():
        with torch.no_grad():
            inference, _ = model(x)
        out, _ = model(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        return inference, out, grads

    eager = step()
    assert direct == [True, True, True]       # inference forward, training forward, backward
    with Recording() as mode:
        seen = step()
    assert direct[3:] == [False, False, False]
    assert {"rnnfast.lstm_layer_forward.default", "rnnfast.lstm_layer_backward.default"} <= set(mode.ops)
    for a, b in zip([*eager[:2], *eager[2]], [*seen[:2], *seen[2]]):
        assert torch.equal(a, b)


def test_helpers_are_marked_constant_as_torch_marks_them():
    """rnnfast marks its untraceable helpers (the CPU build, the GPU kind) constant to
    torch.compile without importing torch._dynamo (backends/traced.py): the mark must
    be exactly what torch.compiler.assume_constant_result sets."""
    from rnnfast.backends import cpu, evidence, triton
    from rnnfast.backends.traced import compile_constant

    def ours():
        return 1

    def torchs():
        return 1

    assert compile_constant(ours) is ours
    assert torch.compiler.assume_constant_result(torchs) is torchs
    assert ours.__dict__ == torchs.__dict__ == {"_dynamo_marked_constant": True}
    for helper in (cpu._load, cpu.unavailable_reason, evidence._gpu_kind, triton._installed):
        assert helper.__dict__ == torchs.__dict__


def test_import_and_a_layer_call_leave_torch_dynamo_unloaded():
    """`import rnnfast` and an eager layer call must not import torch._dynamo (1.4 s of
    every process's start, measured)."""
    import subprocess
    import sys

    code = ("import sys, torch, rnnfast; m = rnnfast.LSTM(4, 4); m(torch.randn(3, 2, 4))[0]"
            ".sum().backward(); print('torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"
