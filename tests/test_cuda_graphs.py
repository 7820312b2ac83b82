"""CUDA graphs: a whole training step with rnnfast.LSTM (forward, backward, optimizer
step) is captured once and replayed on new data, giving what eager steps give. This
needs the launch path free of host syncs and host-to-device copies (dense input: the
Triton launcher builds no step tables for it). The capture itself skips without a CUDA
device; on CPU the same step is checked for every op that would read a value back to
the host (a sync, which capture forbids)."""
import os
import traceback

import pytest
import torch
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import rnnfast
from conftest import BACKENDS, CUDA_BACKENDS, kernels_must_run, requires_cuda
PACKAGE_DIR = os.path.dirname(rnnfast.__file__)

# aten ops whose result size or value must be read on the host: on a CUDA tensor each
# one waits for the GPU, which is an error inside a CUDA-graph capture.
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal",
              "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave"}


class HostReadRecorder(TorchDispatchMode):
    """Records host-reading ops issued from rnnfast's own code (torch's non-capturable
    optimizers read their step counter; that is theirs, and capturable=True avoids it)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bool_index = name.startswith("index") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool
            for t in tree_leaves((args, kwargs)))
        if name in HOST_READS or bool_index:
            ours = [f for f in traceback.extract_stack() if f.filename.startswith(PACKAGE_DIR)]
            if ours:
                self.found.append(f"{func} at {ours[-1].filename}:{ours[-1].lineno}")
        return func(*args, **(kwargs or {}))


def _step(model, optimizer, x, target):
    optimizer.zero_grad(set_to_none=False)
    out, _ = model(x)
    loss = (out - target).square().mean()
    loss.backward()
    optimizer.step()
    return loss


def _partly_frozen(model):
    return rnnfast.freeze(model, layers=[1], gates="f", units=[1, 5])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
def test_dense_training_step_reads_nothing_back_to_the_host(backend, masked):
    torch.manual_seed(0)
    model = rnnfast.LSTM(8, 16, num_layers=2, dropout=0.25, backend=backend)
    if masked:
        _partly_frozen(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, target = torch.randn(5, 3, 8), torch.randn(5, 3, 16)
    _step(model, optimizer, x, target)  # first call: compile, fill caches
    with HostReadRecorder() as recorder:
        _step(model, optimizer, x, target)
    assert recorder.found == []


def test_host_read_recorder_catches_boolean_indexing_in_rnnfast_code():
    """The check above must be able to fail: rnnfast's own argument checks on packed
    batch sizes read values (on CPU tensors there, which is no sync) and are caught."""
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(3, 8), torch.randn(2, 8)])
    with HostReadRecorder() as recorder:
        rnnfast.LSTM(8, 16)(packed)
    assert any("functional.py" in found for found in recorder.found)


@requires_cuda
@kernels_must_run
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
def test_training_step_captured_and_replayed(backend, masked):
    torch.manual_seed(0)
    device = torch.device("cuda")
    eager = rnnfast.LSTM(8, 16, num_layers=2, device=device, backend=backend)
    graphed = rnnfast.LSTM(8, 16, num_layers=2, device=device, backend=backend)
    graphed.load_state_dict(eager.state_dict())
    if masked:
        _partly_frozen(eager)
        _partly_frozen(graphed)
    opt_eager = torch.optim.Adam(eager.parameters(), lr=1e-2, capturable=True)
    opt_graphed = torch.optim.Adam(graphed.parameters(), lr=1e-2, capturable=True)
    batches = [(torch.randn(12, 4, 8, device=device), torch.randn(12, 4, 16, device=device))
               for _ in range(4)]
    static_x, static_target = (t.clone() for t in batches[0])

    # Warm up on a side stream (allocations, Triton compilation, the optimizer's state),
    # as CUDA graphs require; the warm-up steps are undone by reloading the weights and
    # zeroing the optimizer's state in place: a fresh Adam's, but made before the capture
    # (loading the empty state of before the warm-up would have the capture create it,
    # and every replay start Adam over).
    weights = {k: v.clone() for k, v in graphed.state_dict().items()}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            _step(graphed, opt_graphed, static_x, static_target)
    torch.cuda.current_stream().wait_stream(side)
    graphed.load_state_dict(weights)
    assert opt_graphed.state, "the warm-up made Adam's state"
    for state in opt_graphed.state.values():
        for value in state.values():
            value.zero_()

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _step(graphed, opt_graphed, static_x, static_target)

    for x, target in batches:
        expected = _step(eager, opt_eager, x, target)
        static_x.copy_(x)
        static_target.copy_(target)
        graph.replay()
        assert_close(static_loss, expected)
    for a, b in zip(graphed.parameters(), eager.parameters()):
        assert_close(a, b)
